"""Under systemd as PID 1, the installed, hardened mptcpize-py.service with a real service enabled with
`mptcpize-py enable --now`:

- the daemon itself keeps /var/lib/prometheus/node-exporter/mptcpize.prom (node_exporter's textfile
  collector; the unit may write there and nowhere else on /var): readable by an unprivileged user,
  with the expected series under stable labels, refreshed on its own, `mptcpize_daemon_up 0` after a
  stop; no other unit runs for it, and `systemd-analyze security` rates the unit as before;
- journald: the "upgraded" record has the fixed MESSAGE_ID= and OBJECT_PID=, from which journald adds
  the upgraded process's OBJECT_SYSTEMD_UNIT=, so `journalctl MESSAGE_ID=… OBJECT_SYSTEMD_UNIT=…`
  finds it.

Run by `make test-systemd` (scripts/vm-systemd.sh); the unit and the command are the Debian package's
(conftest.py)."""

import json
import os
import re
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mptcpize_py import __version__
from tests.systemd.installed import mptcpize, run, show
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("package")

DAEMON = "mptcpize-py.service"
WEB = "mzc-web.service"
PORT = 18766
TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")   # Debian's prometheus-node-exporter's
PROM = TEXTFILE_DIR / "mptcpize.prom"
TEST_DIR = Path("/run/mzc-test")
# host/systemd.py MESSAGE_ID_UPGRADED, written out: the id is an interface (man page, alerts).
MESSAGE_ID_UPGRADED = "39e237fede894f41a4c1d1b9f9400edc"
EXPOSURE_BEFORE = 2.5   # `systemd-analyze security` of the unit before it wrote metrics (systemd 252)

LISTENER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT}))
s.listen()
while True:
    s.accept()[0].close()
"""
WEB_UNIT = f"""[Unit]
Description=mptcpize-py metrics and journal test listener

[Service]
User=nobody
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ExecStart=/usr/bin/python3 {TEST_DIR}/listener.py
"""


def samples(text: str) -> dict:
    """{(family, frozenset(labels)): value}"""
    return {(f.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def read_prom() -> dict | None:
    try:
        return samples(PROM.read_text())
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def units():
    # node_exporter's directory exists before the daemon starts: the unit's ReadWritePaths= applies
    # to what is there at start.
    TEXTFILE_DIR.mkdir(parents=True, exist_ok=True)
    PROM.unlink(missing_ok=True)
    TEST_DIR.mkdir(exist_ok=True)
    (TEST_DIR / "listener.py").write_text(LISTENER)
    Path(f"/run/systemd/system/{WEB}").write_text(WEB_UNIT)
    run("systemctl", "daemon-reload")
    run("systemctl", "restart", DAEMON, timeout=300)
    proc = mptcpize("enable", "--now", WEB)   # the listener's first socket is already upgraded
    assert proc.returncode == 0, proc.stderr
    yield
    mptcpize("disable", "--now", WEB)
    run("systemctl", "stop", WEB, check=False)


def test_the_daemon_writes_the_textfile(units):
    unit_series = ("mptcpize_unit_upgraded_sockets", frozenset({("unit", WEB)}))

    def counted() -> dict | None:
        s = read_prom()
        return s if s and s.get(unit_series, 0) >= 1 else None

    s = wait_for(counted, f"the daemon to count {WEB} in {PROM}", timeout=60, interval=0.5,
                 details=lambda: PROM.read_text() if PROM.exists() else "no file")
    st = os.stat(PROM)
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
    assert [p.name for p in TEXTFILE_DIR.iterdir()] == ["mptcpize.prom"]   # no temporary file left
    # node_exporter runs as an unprivileged user: it can read it.
    as_nobody = run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(PROM))
    assert "mptcpize_daemon_up 1" in as_nobody.stdout.splitlines()
    assert s[("mptcpize_daemon_up", frozenset())] == 1
    assert s[("mptcpize_build_info", frozenset({("version", __version__)}))] == 1
    # enable's rule, by its file and what it matches: no line number in the label.
    rule = frozenset({("file", f"unit-{WEB}.toml"), ("rule", f"unit={WEB}")})
    assert s[("mptcpize_rule_upgraded_sockets", rule)] >= 1, s
    assert ("mptcpize_policy_reloads", frozenset({("result", "failure")})) in s
    assert s[("mptcpize_policy_reloads", frozenset({("result", "success")}))] >= 1   # enable's record


def test_it_is_refreshed_without_a_timer(units):
    before = os.stat(PROM).st_mtime_ns
    wait_for(lambda: os.stat(PROM).st_mtime_ns != before, f"the daemon to refresh {PROM} (every 15 s)",
             timeout=90, interval=1)
    listed = run("systemctl", "list-units", "--all", "--no-legend", "--plain", "mptcpize-py*").stdout
    assert [ln.split()[0] for ln in listed.splitlines()] == [DAEMON], listed


def test_the_unit_is_not_less_secure(units):
    out = run("systemd-analyze", "security", DAEMON, check=False).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert m and float(m.group(1)) <= EXPOSURE_BEFORE, out[-400:]


def test_the_upgraded_record_names_the_process_for_journald(units):
    main_pid = show(WEB, "MainPID")["MainPID"]

    def record() -> dict | None:
        out = run("journalctl", "-q", "--no-pager", "-o", "json", f"MESSAGE_ID={MESSAGE_ID_UPGRADED}",
                  f"OBJECT_SYSTEMD_UNIT={WEB}").stdout
        found = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
        return next((r for r in found if r.get("OBJECT_PID") == main_pid), None)

    rec = wait_for(record, f"journald to hold the upgrade record of {WEB}'s pid {main_pid}", timeout=60,
                   interval=1,
                   details=lambda: run("journalctl", "-q", "--no-pager", "-u", DAEMON, "-n", "20").stdout)
    assert rec["OBJECT_SYSTEMD_UNIT"] == WEB
    assert rec["MPTCPIZE_PID"] == main_pid and rec["MPTCPIZE_UNIT"] == WEB
    assert rec["_SYSTEMD_UNIT"] == DAEMON
    assert rec["MESSAGE"].startswith(f"upgraded pid={main_pid} ")


def test_a_stopped_daemon_says_so(units):
    run("systemctl", "stop", DAEMON)
    assert read_prom() == {("mptcpize_daemon_up", frozenset()): 0}
