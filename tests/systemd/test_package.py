"""The Debian package's life cycle under systemd as PID 1, as users live it. Installed with apt
(conftest.py's `package`), it starts and enables nothing, and runs from /usr: Debian's python3, its
dist-packages, the BPF sources as files. Its man pages, bash completion and policy directory are where
man, bash and the daemon look. On a kernel without the hook (here: the daemon cannot read the kernel's
BTF) the daemon exits 69 and is not restarted, and reinstalling the package with the daemon enabled
still succeeds. `apt remove` leaves a unit that `enable` selected starting, with plain TCP; `apt purge`
leaves /etc as it was before installation.

Runs last in the tier (conftest.py orders it): it removes the package. The tests run in file order."""

import json
import os
from pathlib import Path

import pytest

from mptcpize_py import __version__
from tests.conftest import REPO
from tests.systemd import installed
from tests.systemd.installed import MPTCPIZE, SERVICE, UNIT_DIR, UNITS, mptcpize, run, show, user_env
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("package")

DIST = Path("/usr/lib/python3/dist-packages/mptcpize_py")
POLICY_DIR = Path("/etc/mptcpize-py/policy.d")
EXAMPLE = Path("/usr/share/doc/mptcpize-py/examples/example-policy.toml")
WEB = "mzp-web.service"
PORT = 18767
TEST_DIR = Path("/run/mzp-test")
NO_HOOK = Path(f"/run/systemd/system/{SERVICE}.d/mzp-no-hook.conf")

LISTENER = f"""
import json, os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT}))
s.listen()
with open(os.environ["RUNTIME_DIRECTORY"] + "/socket.json", "w") as f:
    json.dump({{"pid": os.getpid(), "protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}}, f)
while True:
    s.accept()[0].close()
"""
# In /run/systemd/system: /etc holds only what the package and enable write.
WEB_UNIT = f"""[Unit]
Description=mptcpize-py package test listener

[Service]
User=nobody
RuntimeDirectory=mzp-web
ExecStart=/usr/bin/python3 {TEST_DIR}/listener.py
"""


def apt(*args: str, timeout=300):
    return run("apt-get", "-y", "-q", *args, timeout=timeout, env=user_env(DEBIAN_FRONTEND="noninteractive"))


def journal_cursor() -> str:
    return run("journalctl", "-q", "-n", "0", "--show-cursor").stdout.strip().rsplit("cursor: ", 1)[-1]


def journal_after(cursor: str, unit: str) -> str:
    return run("journalctl", "-q", "--no-pager", "-o", "cat", f"--after-cursor={cursor}", "-u", unit).stdout


def listener_socket() -> dict:
    def reported() -> dict | None:
        pid = show(WEB, "MainPID")["MainPID"]
        try:
            data = json.loads(Path("/run/mzp-web/socket.json").read_text())
        except (OSError, ValueError):
            return None
        return data if str(data["pid"]) == pid else None

    return wait_for(reported, f"{WEB}'s MainPID to report its socket", interval=0.5,
                    details=lambda: run("systemctl", "status", WEB, check=False).stdout)


def test_installing_starts_nothing_and_runs_from_usr(package):
    assert installed.dpkg_status() == f"install ok installed {__version__}"
    assert package.units_after_install == {
        SERVICE: {"UnitFileState": "disabled", "ActiveState": "inactive"},
    }, package.units_after_install
    # The daemon writes its metrics itself: no privileged oneshot and timer beside it.
    assert sorted(p.name for p in UNIT_DIR.glob("mptcpize-py*")) == [SERVICE]
    for unit in UNITS:
        fragment = show(unit, "FragmentPath")["FragmentPath"]
        assert os.path.realpath(fragment) == os.path.realpath(UNIT_DIR / unit), fragment
    assert "path=/usr/bin/mptcpize-py " in show(SERVICE, "ExecStart")["ExecStart"]
    assert mptcpize("--version").stdout == f"mptcpize-py {__version__}\n"
    origin = run("/usr/bin/python3", "-I", "-c", "import mptcpize_py; print(mptcpize_py.__file__)", cwd="/")
    assert origin.stdout.strip() == str(DIST / "__init__.py")
    # The BPF sources bcc compiles at start: real files (the checkout has a symlink), the checkout's;
    # and the program compiled when the package was built, which libbpf loads.
    assert not (DIST / "bpf").is_symlink()
    for name in ("mptcpize.bpf.c", "mptcpize.h", "loaders.h"):
        assert (DIST / "bpf" / name).read_bytes() == (REPO / "bpf" / name).read_bytes()
    for name in ("mptcpize.bpf.o", "mptcpize-dry-run.bpf.o"):
        assert (DIST / "bpf" / name).read_bytes()[:4] == b"\x7fELF"
    # What the first user ran: check, from the installed files.
    proc = mptcpize("check", timeout=300)
    assert proc.returncode == 0 and "run backend: bpf" in proc.stdout, proc.stdout + proc.stderr
    assert "program loader: libbpf" in proc.stdout, proc.stdout


def test_the_installed_seccomp_backend_preloads_the_packaged_shim(package, tmp_path):
    """The shim is a C library in the package's private directory, not a Python extension: the
    package's Python dependency has no upper bound (dh_python3 pins one for a .so in dist-packages),
    and the installed command's seccomp backend preloads it into a dynamically linked program."""
    depends = run("dpkg-query", "-W", "-f=${Depends}", "mptcpize-py").stdout
    assert "python3" in depends and "<<" not in depends, depends
    probe = tmp_path / "shimprobe"
    run("gcc", "-O2", "-o", str(probe), str(REPO / "tests" / "progs" / "shimprobe.c"))
    proc = mptcpize("run", "--backend", "seccomp", "--", str(probe), "kinds", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert got["shim"] == "mapped" and got["tcp4"] == "262" and got["udp4"] == "17", got


def test_man_pages_completion_and_license(package):
    assert run("man", "-w", "mptcpize-py").stdout.strip() == "/usr/share/man/man8/mptcpize-py.8.gz"
    assert run("man", "-w", "5", "mptcpize-py-policy").stdout.strip() == \
        "/usr/share/man/man5/mptcpize-py-policy.5.gz"
    for section, page, name in (("8", "mptcpize-py", "MPTCPIZE-PY(8)"),
                                ("5", "mptcpize-py-policy", "MPTCPIZE-PY-POLICY(5)")):
        shown = run("man", section, page, env=user_env(MANPAGER="cat", MANWIDTH="100", LC_ALL="C.UTF-8"))
        assert shown.stdout.startswith(name) and "\nNAME\n" in shown.stdout, shown.stdout[:300]
    # Documentation=man:… resolves now, and the units verify as installed.
    verify = run("systemd-analyze", "verify", *(str(UNIT_DIR / u) for u in UNITS), check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # bash-completion's loader finds the completion by the command's name, as on a tab press.
    loaded = run("bash", "--norc", "--noprofile", "-c",
                 ". /usr/share/bash-completion/bash_completion && _completion_loader mptcpize-py; "
                 "complete -p mptcpize-py")
    assert loaded.stdout.strip() == "complete -F _mptcpize_py mptcpize-py"
    offered = run("bash", "--norc", "--noprofile", "-c",
                  ". /usr/share/bash-completion/bash_completion && _completion_loader mptcpize-py; "
                  "COMP_WORDS=(mptcpize-py ena); COMP_CWORD=1; COMP_LINE='mptcpize-py ena'; COMP_POINT=15; "
                  "_mptcpize_py mptcpize-py ena mptcpize-py; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert offered.stdout.split() == ["enable"]
    copyright_ = Path("/usr/share/doc/mptcpize-py/copyright").read_text()
    assert "License: GPL-2" in copyright_ and "/usr/share/common-licenses/GPL-2" in copyright_


def test_an_empty_policy_directory_and_the_example_in_the_docs(package):
    st = POLICY_DIR.stat()
    assert (st.st_uid, oct(st.st_mode & 0o7777)) == (0, "0o755")
    assert os.listdir(POLICY_DIR) == []
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "mptcpize-py").stdout
    assert str(POLICY_DIR) not in conffiles, conffiles
    assert EXAMPLE.read_text() == mptcpize("daemon", "--example-policy").stdout
    proc = mptcpize("daemon", "--check")
    assert proc.returncode == 0 and "0 allow, 0 deny rules" in proc.stdout, proc.stdout + proc.stderr


def test_without_the_hook_the_daemon_exits_69_stays_down_and_installing_succeeds(package):
    """A kernel without the hook, as the daemon sees it: no kernel BTF it can read (InaccessiblePaths=
    in a runtime drop-in), neither /sys/kernel/btf/vmlinux nor the vmlinux files libbpf falls back to
    (libbpf's btf__load_vmlinux_btf(); this machine has /lib/modules/RELEASE/build/vmlinux). The daemon
    enabled, as by a user who wants it at boot, then the package installed again (an upgrade's path:
    postinst restarts an enabled daemon)."""
    run("systemctl", "stop", SERVICE)
    NO_HOOK.parent.mkdir(parents=True, exist_ok=True)
    fallbacks = ("/boot/vmlinux-%v", "/lib/modules/%v/vmlinux-%v", "/lib/modules/%v/build/vmlinux",
                 "/usr/lib/modules/%v/kernel/vmlinux", "/usr/lib/debug/boot/vmlinux-%v",
                 "/usr/lib/debug/boot/vmlinux-%v.debug", "/usr/lib/debug/lib/modules/%v/vmlinux")
    NO_HOOK.write_text("[Service]\nInaccessiblePaths=/sys/kernel/btf/vmlinux "
                       + " ".join(f"-{p}" for p in fallbacks) + "\n")
    try:
        run("systemctl", "daemon-reload")
        run("systemctl", "enable", SERVICE)
        cursor = journal_cursor()
        proc = run("dpkg", "-i", str(package.deb), timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        props = show(SERVICE, "ActiveState", "Result", "ExecMainStatus", "RestartPreventExitStatus")
        assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == \
            ("failed", "exit-code", "69"), (props, proc.stdout, journal_after(cursor, SERVICE))
        assert "69" in props["RestartPreventExitStatus"].split(), props
        wait_for(lambda: "cannot read kernel BTF" in journal_after(cursor, SERVICE),
                 f"{SERVICE} to log why it cannot run", interval=0.5,
                 details=lambda: journal_after(cursor, SERVICE))
        # Restart=on-failure would have put the unit in SubState=auto-restart (ActiveState=activating)
        # until RestartSec= passes (systemd src/core/service.c, SERVICE_AUTO_RESTART): "failed" with no
        # job queued is systemd's decision not to restart, no need to wait RestartSec= out.
        assert show(SERVICE, "ActiveState", "SubState", "NRestarts") == \
            {"ActiveState": "failed", "SubState": "failed", "NRestarts": "0"}
        assert SERVICE not in run("systemctl", "list-jobs", "--no-legend").stdout
    finally:
        NO_HOOK.unlink(missing_ok=True)
        NO_HOOK.parent.rmdir()
        run("systemctl", "disable", SERVICE, check=False)
        run("systemctl", "daemon-reload")
        run("systemctl", "reset-failed", SERVICE, check=False)


def test_apt_remove_keeps_an_enabled_unit_starting_with_tcp(package):
    TEST_DIR.mkdir(exist_ok=True)
    (TEST_DIR / "listener.py").write_text(LISTENER)
    Path(f"/run/systemd/system/{WEB}").write_text(WEB_UNIT)
    run("systemctl", "daemon-reload")
    run("systemctl", "start", SERVICE, timeout=300)
    proc = mptcpize("enable", "--now", WEB)
    assert proc.returncode == 0, proc.stderr
    assert listener_socket()["protocol"] == 262
    dropin = Path(f"/etc/systemd/system/{WEB}.d/mptcpize-py.conf")
    assert f"ExecStartPre=-+{MPTCPIZE} resync --unit %n" in dropin.read_text()

    apt("remove", "mptcpize-py")
    assert installed.dpkg_status() == f"deinstall ok config-files {__version__}"
    assert not os.path.exists(MPTCPIZE)
    # The daemon was stopped (its code is gone) and its unit with it.
    assert show(SERVICE, "LoadState", "ActiveState") == {"LoadState": "not-found", "ActiveState": "inactive"}
    # What enable wrote stays (a reinstall finds the unit enabled): the unit starts, with plain TCP.
    assert dropin.exists()
    assert str(dropin) in show(WEB, "DropInPaths")["DropInPaths"].split()
    before = listener_socket()
    run("systemctl", "restart", WEB)
    after = listener_socket()
    assert after["pid"] != before["pid"] and after["protocol"] == 6, after
    assert show(WEB, "ActiveState")["ActiveState"] == "active"


def test_apt_purge_leaves_etc_as_before_installation(package, etc_before_install):
    apt("purge", "mptcpize-py")
    assert installed.dpkg_status() is None
    # Every test unit lives in /run: all that changed in /etc was the package's and enable's.
    assert installed.diff(etc_before_install, installed.etc_snapshot()) == []
    # systemd was told (daemon-reload): the unit has no drop-in left, and starts as before, TCP.
    assert f"/etc/systemd/system/{WEB}.d" not in show(WEB, "DropInPaths")["DropInPaths"]
    run("systemctl", "restart", WEB)
    assert listener_socket()["protocol"] == 6
    run("systemctl", "stop", WEB)
    Path(f"/run/systemd/system/{WEB}").unlink()
    run("systemctl", "daemon-reload")
