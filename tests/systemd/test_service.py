"""systemd as PID 1 manages the hardened mptcpize-py.service and a real service enabled with
`mptcpize-py enable --now`: what the service's listening socket is (SO_PROTOCOL, as the service itself
reads it, and `ss -M`), across restarts and after `disable`; that /etc comes back byte for byte; that
READY, STATUS=, reload and the watchdog work; and what fails without each capability of the unit.
The unit and the command are the Debian package's (installed by conftest.py's `package` fixture):
systemd runs /usr/bin/mptcpize-py, and so do these tests.

Run by `make test-systemd` (scripts/vm-systemd.sh). One daemon start for the module (bcc compiles for
~30 s under TCG); the tests run in file order and share it."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.systemd.installed import UNIT_DIR, diff, etc_snapshot, mptcpize
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.usefixtures("package")

SERVICE = "mptcpize-py.service"
WATCHDOG_S = 30   # systemd/mptcpize-py.service: WatchdogSec=30s
WEB = "mzu-web.service"
ALIAS = "mzu-alias.service"      # a symlink to WEB: another name of the same unit
PORT = 18765
TEST_DIR = Path("/run/mzu-test")
CAPS = ("CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG")   # systemd/mptcpize-py.service's bounding set
CAP_BITS = {"CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39}

LISTENER = f"""
import json, os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT}))
s.listen()
out = {{"pid": os.getpid(), "protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
       "workers": os.environ.get("MZU_WORKERS"), "greeting": os.environ.get("MZU_GREETING")}}
with open(os.environ["RUNTIME_DIRECTORY"] + "/socket.json", "w") as f:
    json.dump(out, f)
while True:
    s.accept()[0].close()
"""

# A sandboxed, unprivileged service with Environment= lines (what mptcpd's unit rewrite loses). It
# lives in /run/systemd/system so that /etc holds only what enable writes.
WEB_UNIT = f"""[Unit]
Description=mptcpize-py test listener

[Service]
Environment=MZU_WORKERS=4
Environment="MZU_GREETING=hello world"
User=nobody
RuntimeDirectory=mzu-web
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ExecStart=/usr/bin/python3 {TEST_DIR}/listener.py
"""


def run(*argv, check=True, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=scaled(timeout))
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def show(unit: str, *props: str) -> dict[str, str]:
    out = run("systemctl", "show", *(f"--property={p}" for p in props), "--", unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_cursor() -> str:
    out = run("journalctl", "-q", "-n", "0", "--show-cursor").stdout
    return out.strip().rsplit("cursor: ", 1)[-1]


def journal_after(cursor: str, unit: str) -> str:
    return run("journalctl", "-q", "--no-pager", "-o", "cat", f"--after-cursor={cursor}", "-u", unit).stdout


def listener_socket() -> dict:
    """What the running listener wrote about its listening socket (its current MainPID's)."""
    def reported() -> dict | None:
        pid = show(WEB, "MainPID")["MainPID"]
        try:
            data = json.loads(Path("/run/mzu-web/socket.json").read_text())
        except (OSError, ValueError):
            return None
        return data if str(data["pid"]) == pid else None

    return wait_for(reported, f"{WEB}'s MainPID to report its socket", interval=0.5,
                    details=lambda: run("systemctl", "status", WEB, check=False).stdout)


def mptcp_listeners() -> str:
    return run("ss", "-Mln").stdout


class Env:
    pass


def nocap_unit(cap: str) -> str:
    """The installed unit with `cap` taken out of its bounding set."""
    text = (UNIT_DIR / SERVICE).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("CapabilityBoundingSet="))
    assert line == "CapabilityBoundingSet=" + " ".join(CAPS), "update CAPS: the unit changed"
    return text.replace(line, "CapabilityBoundingSet=" + " ".join(c for c in CAPS if c != cap))


@pytest.fixture(scope="module")
def env():
    """Units in /run/systemd/system (so /etc holds only what enable writes), a daemon-reload (~8 s
    under TCG) to load them, then the package's daemon."""
    e = Env()
    TEST_DIR.mkdir(exist_ok=True)
    (TEST_DIR / "listener.py").write_text(LISTENER)
    runtime = Path("/run/systemd/system")
    (runtime / WEB).write_text(WEB_UNIT)
    (runtime / EARLY).write_text(EARLY_UNIT)
    alias = runtime / ALIAS
    if not alias.is_symlink():
        alias.symlink_to(WEB)
    for cap in CAPS:
        (runtime / f"mzu-no-{cap.lower()}.service").write_text(nocap_unit(cap))
    run("systemctl", "daemon-reload")
    e.was_active = show(SERVICE, "ActiveState")["ActiveState"] == "active"
    t0 = time.monotonic()
    proc = run("systemctl", "start", SERVICE, check=False)
    e.start_s = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"{SERVICE} did not start: {proc.stderr}\n"
                    + run("journalctl", "-q", "--no-pager", "-u", SERVICE, check=False).stdout)
    e.ready_at = time.monotonic()
    e.main_pid = show(SERVICE, "MainPID")["MainPID"]
    return e


def test_daemon_ready_under_the_hardened_unit(env):
    props = show(SERVICE, "Type", "ActiveState", "SubState", "StatusText", "WatchdogUSec", "NRestarts",
                 "MainPID")
    assert (props["Type"], props["ActiveState"], props["SubState"]) == ("notify", "active", "running")
    # STATUS= from the daemon: its policy summary and counts.
    assert "allow" in props["StatusText"] and "sockets upgraded" in props["StatusText"], props
    assert props["WatchdogUSec"] == "30s"
    status = Path(f"/proc/{props['MainPID']}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    # The unit's bounding set is all the daemon holds; no new privileges; a seccomp filter.
    assert int(fields["CapEff"], 16) == sum(1 << CAP_BITS[c] for c in CAPS), fields["CapEff"]
    assert int(fields["CapBnd"], 16) == sum(1 << CAP_BITS[c] for c in CAPS), fields["CapBnd"]
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    # The package's code: Debian's python3 running /usr/bin/mptcpize-py, nothing from the checkout.
    cmdline = Path(f"/proc/{props['MainPID']}/cmdline").read_bytes().split(b"\0")[:-1]
    assert cmdline == [b"/usr/bin/python3", b"/usr/bin/mptcpize-py", b"daemon"], cmdline
    environ = Path(f"/proc/{props['MainPID']}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"PYTHON") or str(REPO).encode() in v], environ
    st = mptcpize("status")
    assert st.returncode == 0 and "backend: bpf" in st.stdout, st.stderr
    if not env.was_active:
        print(f"{SERVICE}: READY {env.start_s:.1f} s after systemctl start")


def test_enable_now_makes_the_listening_socket_mptcp(env):
    env.etc_before = etc_snapshot(exact=True)
    cursor = journal_cursor()
    proc = mptcpize("enable", "--now", WEB)
    assert proc.returncode == 0, proc.stderr
    assert f"enabled {WEB}" in proc.stdout and f"restarted {WEB}" in proc.stdout, proc.stdout
    sock = listener_socket()
    assert sock["protocol"] == 262, sock              # IPPROTO_MPTCP from its very first socket
    assert (sock["workers"], sock["greeting"]) == ("4", "hello world")   # Environment= untouched
    assert f"127.0.0.1:{PORT}" in mptcp_listeners()
    changed = diff(env.etc_before, etc_snapshot(exact=True))
    assert changed == ["/etc/mptcpize-py/policy.d/unit-mzu-web.service.toml",
                       f"/etc/systemd/system/{WEB}.d",
                       f"/etc/systemd/system/{WEB}.d/.created-by-mptcpize-py-enable",
                       f"/etc/systemd/system/{WEB}.d/mptcpize-py.conf"], changed
    # systemd applies our drop-in: the unit pulls the daemon in and waits for it.
    props = show(WEB, "DropInPaths", "Wants", "After")
    assert f"/etc/systemd/system/{WEB}.d/mptcpize-py.conf" in props["DropInPaths"].split()
    assert SERVICE in props["Wants"].split() and SERVICE in props["After"].split()
    # The daemon logged the first upgrade of the listener, with its unit.
    def logged() -> str:
        log = journal_after(cursor, SERVICE)
        return log if f"pid={sock['pid']}" in log else ""

    log = wait_for(logged, "the daemon to log the listener's first upgrade", interval=1,
                   details=lambda: journal_after(cursor, SERVICE))
    line = next(ln for ln in log.splitlines() if f"pid={sock['pid']}" in ln)
    assert f"unit={WEB}" in line, line
    # The listener runs as nobody; without CAP_SYS_PTRACE the daemon cannot read its /proc/PID/exe.
    assert "exe=?(" in line, line
    st = mptcpize("status")
    line = next((ln for ln in st.stdout.splitlines() if ln.strip().startswith(f"{WEB}:")), "")
    assert "1 socket(s) upgraded in 1 process(es)" in line, st.stdout
    env.etc_enabled = etc_snapshot(exact=True)


def test_restart_keeps_mptcp(env):
    before = listener_socket()
    run("systemctl", "restart", WEB)
    after = listener_socket()
    assert after["pid"] != before["pid"]
    assert after["protocol"] == 262, after
    assert f"127.0.0.1:{PORT}" in mptcp_listeners()


def test_enable_twice_changes_nothing(env):
    """Through the alias: systemd's name for the unit is what enable writes under."""
    proc = mptcpize("enable", ALIAS)
    assert proc.returncode == 0, proc.stderr
    assert f"{ALIAS} is an alias of {WEB}" in proc.stdout, proc.stdout
    assert f"{WEB} is already enabled: nothing changed" in proc.stdout, proc.stdout
    assert diff(env.etc_enabled, etc_snapshot(exact=True)) == []


def test_reload_and_watchdog(env):
    before = json.loads(mptcpize("status", "--json").stdout)["policy"]["reloads"]
    run("systemctl", "reload", SERVICE)
    wait_for(lambda: json.loads(mptcpize("status", "--json").stdout)["policy"]["reloads"] > before,
             "the SIGHUP of ExecReload= to reload the policy", interval=1)
    # The watchdog (WatchdogSec=30s) kills a daemon that does not ping within 30 s: wait for a ping
    # systemd recorded after that (WatchdogTimestampMonotonic: CLOCK_MONOTONIC in us, as ready_at).
    def pinged_after_one_period() -> bool:
        at = show(SERVICE, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        return int(at or 0) / 1e6 > env.ready_at + WATCHDOG_S

    wait_for(pinged_after_one_period, "a watchdog ping later than one WatchdogSec= after READY",
             timeout=2 * WATCHDOG_S, interval=1)
    props = show(SERVICE, "ActiveState", "MainPID", "NRestarts", "Result")
    assert props == {"ActiveState": "active", "MainPID": env.main_pid, "NRestarts": "0",
                     "Result": "success"}, props


def test_disable_restores_tcp_and_etc(env):
    proc = mptcpize("disable", WEB)
    assert proc.returncode == 0, proc.stderr
    assert f"disabled {WEB}" in proc.stdout
    assert diff(env.etc_before, etc_snapshot(exact=True)) == []      # /etc byte for byte as before enable
    assert f"/etc/systemd/system/{WEB}.d" not in show(WEB, "DropInPaths")["DropInPaths"]
    run("systemctl", "restart", WEB)
    sock = listener_socket()
    assert sock["protocol"] == 6, sock
    assert f"127.0.0.1:{PORT}" not in mptcp_listeners()
    assert (sock["workers"], sock["greeting"]) == ("4", "hello world")


def test_unknown_and_bad_units_write_nothing(env):
    before = etc_snapshot(exact=True)
    proc = mptcpize("enable", "mzu-no-such.service")
    assert proc.returncode == 1 and "systemd does not know mzu-no-such.service" in proc.stderr, proc.stderr
    assert "hint:" in proc.stderr
    proc = mptcpize("enable", "mzu-no-such@x.service")
    assert proc.returncode == 1 and "template mzu-no-such@.service" in proc.stderr, proc.stderr
    proc = mptcpize("enable", "getty@.service")
    assert proc.returncode == 2 and "template" in proc.stderr, proc.stderr
    assert diff(before, etc_snapshot(exact=True)) == []


ESC_EXE = TEST_DIR / "mzu-esc-python"                      # a copy of python3 a policy rule selects
ESC_POLICY = Path("/etc/mptcpize-py/policy.d/zz-mzu-esc.toml")
ESC_COMM = "x\nforged\x1b]0;t\x07"                         # 14 bytes: the kernel keeps 15
SET_COMM_AND_CONNECT = f"""
import ctypes, os, socket
ctypes.CDLL(None).prctl(15, {ESC_COMM.encode()!r}, 0, 0, 0)    # PR_SET_NAME: anyone may
s = socket.socket()
print(os.getpid(), s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), flush=True)
"""


def rule_values() -> list[str]:
    """The values of the daemon's policy rules, from `status --json`."""
    return [r["value"] for r in json.loads(mptcpize("status", "--json").stdout)["policy"]["rules"]]


def journal_field(value) -> str:
    """journalctl -o json gives a field that is not printable UTF-8 as an array of its bytes."""
    return bytes(value).decode("utf-8", "surrogateescape") if isinstance(value, list) else value


def test_hostile_comm_is_one_escaped_line_and_exact_in_its_field(env):
    # A name anyone sets (comm, prctl(PR_SET_NAME)) in the daemon's upgrade record: MESSAGE one line,
    # escaped; MPTCPIZE_COMM exactly what the process set.
    shutil.copy2(os.path.realpath("/usr/bin/python3"), ESC_EXE)
    ESC_POLICY.write_text(f'[[allow]]\nexe = "{ESC_EXE}"\n')
    os.chmod(ESC_POLICY, 0o644)
    try:
        wait_for(lambda: str(ESC_EXE) in rule_values(), "the daemon to load the new rule", interval=0.5)
        cursor = journal_cursor()
        out = run(str(ESC_EXE), "-c", SET_COMM_AND_CONNECT).stdout.split()
        pid, protocol = out
        assert protocol == "262"

        def entry() -> dict | None:
            # The unit's records after the cursor, the upgrade line picked by its text: a field match
            # would hide a record that lost its fields.
            lines = run("journalctl", "-q", "--no-pager", "-o", "json", f"--after-cursor={cursor}",
                        "-u", SERVICE).stdout.splitlines()
            recs = [json.loads(line) for line in lines]
            return next((r for r in recs if journal_field(r.get("MESSAGE", "")).startswith(
                f"upgraded pid={pid} ")), None)

        rec = wait_for(entry, f"the daemon's journal record of pid {pid}", interval=1,
                       details=lambda: journal_after(cursor, SERVICE))
        message = journal_field(rec["MESSAGE"])
        assert message.isprintable() and message.startswith(f"upgraded pid={pid} exe="), message
        fields = {k: journal_field(v) for k, v in rec.items() if k.startswith("MPTCPIZE_")}
        assert fields.get("MPTCPIZE_PID") == pid, rec
        assert fields.get("MPTCPIZE_COMM") == ESC_COMM, rec
        if "exe=?(" in message:   # no CAP_SYS_PTRACE: a root process's /proc/PID/exe is not ours to read
            assert "exe=?(x\\nforged\\x1b]0;t\\x07) " in message, message
        else:
            assert journal_field(rec["MPTCPIZE_EXE"]) == str(ESC_EXE)
    finally:
        ESC_POLICY.unlink(missing_ok=True)
        ESC_EXE.unlink(missing_ok=True)
    # (the upgraded process stays in `status` as a row: the rule is what must go)
    wait_for(lambda: str(ESC_EXE) not in rule_values(), "the daemon to drop the rule", interval=0.5)


# A unit that starts before mptcpize-py.service can, as systemd-timesyncd and systemd-resolved do
# (DefaultDependencies=no, Before=sysinit.target); a stand-in of our own, since the guest masks
# timesyncd and resolved is not installed.
EARLY = "mzu-early.service"
EARLY_UNIT = """[Unit]
Description=mptcpize-py test: an early-boot service
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
ExecStart=/bin/true

[Install]
WantedBy=sysinit.target
"""


def test_an_early_boot_unit_is_refused_and_a_normal_one_still_enables(env):
    """The drop-in's After=mptcpize-py.service on a unit ordered before sysinit.target would close an
    ordering cycle (the daemon starts after sysinit.target and basic.target), which systemd breaks at
    boot by deleting a start job: enable refuses it, exit 1, one line and a hint, /etc unchanged."""
    early = EARLY
    if show(early, "LoadState")["LoadState"] != "loaded":
        pytest.skip(f"{early} is not installed")
    # The premise, as the real systemd has it: the unit is ordered before the daemon's start.
    assert "sysinit.target" in show(early, "Before")["Before"].split()
    assert "sysinit.target" in show(SERVICE, "After")["After"].split()
    before = etc_snapshot(exact=True)
    proc = mptcpize("enable", early)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mptcpize-py: error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert f"{early} starts before {SERVICE} can ({early} is before sysinit.target" in errors[0], errors
    assert "ordering cycle" in errors[0] and "Traceback" not in proc.stderr
    assert "mptcpize-py: hint: select it by its executable instead: [[allow]] exe = " in proc.stderr
    assert diff(before, etc_snapshot(exact=True)) == []
    assert f"/etc/systemd/system/{early}.d" not in show(early, "DropInPaths")["DropInPaths"]
    # An ordinary service still enables (and disables back to the same /etc).
    proc = mptcpize("enable", WEB)
    assert proc.returncode == 0 and f"enabled {WEB}" in proc.stdout, proc.stderr
    assert f"/etc/systemd/system/{WEB}.d/mptcpize-py.conf" in show(WEB, "DropInPaths")["DropInPaths"]
    proc = mptcpize("disable", WEB)
    assert proc.returncode == 0, proc.stderr
    assert diff(before, etc_snapshot(exact=True)) == []


# What the daemon says when the unit's bounding set lacks one capability (README "Running the daemon
# under systemd" lists the same).
WITHOUT = {
    "CAP_BPF": "loading the fmod_ret program needs CAP_BPF",
    "CAP_PERFMON": "loading the fmod_ret program needs CAP_PERFMON",
    "CAP_SYSLOG": "cannot locate net.mptcp.enabled in kernel memory",
}
EXIT_WITHOUT = {"CAP_BPF": "77", "CAP_PERFMON": "77", "CAP_SYSLOG": "69"}


@pytest.mark.parametrize("cap", CAPS)
def test_each_capability_is_needed(env, cap):
    """mzu-no-CAP.service is the shipped unit without CAP; it must fail at start with exit 77/69 (and
    RestartPreventExitStatus= keeps it from looping) and say why."""
    unit = f"mzu-no-{cap.lower()}.service"
    run("systemctl", "stop", SERVICE)   # it shares /run/mptcpize-py, which a failed start removes
    cursor = journal_cursor()
    proc = run("systemctl", "start", unit, check=False)
    assert proc.returncode != 0
    props = show(unit, "ActiveState", "ExecMainStatus", "NRestarts")
    assert props == {"ActiveState": "failed", "ExecMainStatus": EXIT_WITHOUT[cap], "NRestarts": "0"}, \
        props
    wait_for(lambda: WITHOUT[cap] in journal_after(cursor, unit), f"{unit} to log why it failed",
             interval=0.5, details=lambda: journal_after(cursor, unit))
