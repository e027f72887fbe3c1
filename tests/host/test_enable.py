"""`enable`/`disable` on this host, through the real CLI: bad names, a kernel whose BPF path is unusable
(exit 69), no systemd as PID 1 (exit 69), non-root (77): one clear line each, nothing written. And
`systemd-analyze verify` on the generated drop-in and on the shipped unit (it needs no systemd PID 1).
The end-to-end run with systemd managing a real service is tests/systemd/test_service.py (VM)."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mptcpize_py import enable
from mptcpize_py.errors import EXIT_UNAVAILABLE, MptcpizeError
from mptcpize_py.host import systemd
from tests.conftest import CLI, REPO, cli_env, mptcpize
from tests.waiting import scaled

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (enable's checks, setpriv)")

WATCHED = ("/etc/systemd/system", "/etc/mptcpize-py")


def etc_snapshot() -> dict:
    """Paths, types, modes and contents of what enable/disable may touch."""
    out = {}
    for top in WATCHED:
        if not os.path.lexists(top):
            out[top] = None
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            out[dirpath] = ("dir", os.lstat(dirpath).st_mode)
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    out[p] = ("link", os.readlink(p))
                else:
                    out[p] = ("file", st.st_mode, Path(p).read_bytes())
    return out


def one_error(proc, code: int, needle: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mptcpize-py: error:")]
    assert proc.returncode == code, proc.stderr
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("verb", ["enable", "disable"])
@pytest.mark.parametrize("name, needle", [
    ("foo@.service", "is a template"),
    ("foo@", "'foo@.service' is a template"),     # read as systemctl reads it, then refused
    ("../../etc/passwd", "'/' is not allowed"),
    ("nginx.socket", "not a service"),
    ("../../etc/passwd.service", "'/' is not allowed"),
    ("--help.service\n", r"'\n' is not allowed"),
    ("x y.service", "' ' is not allowed"),
    ("", "empty unit name"),
])
def test_bad_names_exit_2_nothing_written(verb, name, needle):
    before = etc_snapshot()
    proc = mptcpize(verb, "--", name)
    one_error(proc, 2, needle)
    assert "mptcpize-py: hint:" in proc.stderr
    assert etc_snapshot() == before


def bpf_path_usable() -> tuple[bool, str]:
    report = json.loads(mptcpize("check", "--json").stdout)
    failed = [f"{c['name']}: {c['detail']}" for c in report["checks"]
              if c["required"] and c["status"] == "fail"]
    return not failed, "; ".join(failed)


def test_enable_where_bpf_is_unusable_exits_69_and_writes_nothing():
    usable, why = bpf_path_usable()
    if usable:
        pytest.skip("the BPF path works on this kernel; the refusal is for kernels where it does not")
    before = etc_snapshot()
    for args in (("enable", "nginx.service"), ("enable", "--now", "getty@tty1.service")):
        proc = mptcpize(*args)
        one_error(proc, EXIT_UNAVAILABLE, "the BPF backend the daemon needs is unusable here")
        assert why.split(";")[0].split(":")[0] in proc.stderr   # names the failed check
        assert "hint:" in proc.stderr and proc.stdout == ""
    assert etc_snapshot() == before


def test_without_systemd_pid1_systemctl_fails_cleanly():
    """No systemd as PID 1 (this host): asking systemd about a unit is exit 69 with one line, no
    systemctl noise."""
    if systemd.booted():
        pytest.skip("systemd is PID 1 here")
    if shutil.which("systemctl") is None:
        pytest.skip("no systemctl installed")
    with pytest.raises(MptcpizeError) as e:
        systemd.known_unit("nginx.service")
    assert e.value.exit_code == EXIT_UNAVAILABLE
    assert "systemd is not running" in e.value.message and e.value.hint


def test_disable_without_anything_enabled_changes_nothing():
    before = etc_snapshot()
    proc = mptcpize("disable", "mzu-never-enabled.service")
    assert proc.returncode == 0, proc.stderr
    assert "is not enabled: nothing changed" in proc.stdout
    assert etc_snapshot() == before


def test_a_name_without_suffix_is_a_service_as_in_systemctl(tmp_path):
    """`disable mzu-hb-web` is `disable mzu-hb-web.service`: it removes the files enable wrote under
    the full name, and says so with the full name (no systemd here: nothing to reload)."""
    if systemd.booted():
        pytest.skip("systemd is PID 1 here: disable would reload it")
    unit = "mzu-hb-web.service"
    before = etc_snapshot()
    tree = enable.Tree(policy_path=tmp_path / "policy.d")
    written = enable.write_files(unit, "/usr/bin/mptcpize-py", tree)
    assert tree.dropin(unit) in written
    try:
        proc = mptcpize("disable", "mzu-hb-web", "--policy-dir", str(tmp_path / "policy.d"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"disabled {unit}: removed {tree.dropin(unit)}"), proc.stdout
        assert not tree.dropin(unit).exists() and not tree.policy(unit).exists()
    finally:
        enable.remove_files(unit, tree)
    assert etc_snapshot() == before


@pytest.mark.parametrize("verb", ["enable", "disable"])
def test_non_root_gets_77(verb):
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv")
    before = etc_snapshot()
    proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, verb,
                           "nginx.service"], capture_output=True, text=True, timeout=scaled(120), cwd="/",
                          env=cli_env(any_user=True))
    one_error(proc, 77, "need root")
    assert etc_snapshot() == before


# --- systemd-analyze verify ---------------------------------------------------------------------------

def analyze_verify(unit_dir: Path, unit: str) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed")
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_COLOR="0", LC_ALL="C")
    return subprocess.run([exe, "verify", "--man=no", str(unit_dir / unit)], capture_output=True,
                          text=True, timeout=scaled(120), env=env)


@pytest.fixture
def unit_dir(tmp_path):
    """A service with Environment= lines (what mptcpd's rewrite loses), our drop-in, and the shipped
    mptcpize-py.service it pulls in."""
    d = tmp_path / "units"
    d.mkdir()
    (d / "mzu-web.service").write_text(
        "[Unit]\nDescription=test web server\n\n[Service]\nEnvironment=WORKERS=4\n"
        "Environment=\"GREETING=hello world\"\nExecStart=/usr/bin/python3 -m http.server 18080\n")
    # As `make install-units` installs it from a checkout: the Debian package's /usr/bin/mptcpize-py
    # is not on this machine (the systemd tier verifies the installed package's unit).
    shipped = (REPO / "systemd/mptcpize-py.service").read_text()
    assert "ExecStart=/usr/bin/mptcpize-py " in shipped
    (d / "mptcpize-py.service").write_text(
        shipped.replace("/usr/bin/mptcpize-py", str(Path(sys.prefix) / "bin" / "mptcpize-py")))
    (tmp_path / "root").mkdir()
    tree = enable.Tree(tmp_path / "root")
    enable.write_files("mzu-web.service", enable.cli_executable(), tree)
    (d / "mzu-web.service.d").mkdir()
    shutil.copy(tree.dropin("mzu-web.service"), d / "mzu-web.service.d" / enable.DROPIN_NAME)
    return d


def test_generated_dropin_passes_systemd_analyze_verify(unit_dir):
    proc = analyze_verify(unit_dir, "mzu-web.service")
    assert proc.returncode == 0, proc.stderr
    assert enable.DROPIN_NAME not in proc.stderr + proc.stdout, proc.stderr
    assert "mptcpize-py.service" not in proc.stderr + proc.stdout, proc.stderr


def test_verify_really_reads_the_dropin(unit_dir):
    """Negative control: the same drop-in with an unknown key is reported, by its path."""
    dropin = unit_dir / "mzu-web.service.d" / enable.DROPIN_NAME
    dropin.write_text(dropin.read_text() + "NoSuchSetting=1\n")
    proc = analyze_verify(unit_dir, "mzu-web.service")
    assert f"{dropin}:" in proc.stderr and "NoSuchSetting" in proc.stderr, proc.stderr


def test_shipped_unit_passes_systemd_analyze_verify(unit_dir):
    proc = analyze_verify(unit_dir, "mptcpize-py.service")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
