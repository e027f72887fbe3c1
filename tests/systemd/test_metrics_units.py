"""systemd/mptcpize-py-metrics.service and .timer under systemd as PID 1, with the hardened daemon
running: the service, with only its bounding set of capabilities, writes the textfile that
node_exporter would read, and what it counts includes an MPTCP listener of an unprivileged, sandboxed
service (other uid: reading its /proc/PID/fd needs CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE; its
network namespace is entered with CAP_SYS_ADMIN). The timer refreshes the file. The units and the
command are the Debian package's (conftest.py).

Run by `make test-systemd` (scripts/vm-systemd.sh)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.systemd.installed import mptcpize
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.usefixtures("package")

DAEMON = "mptcpize-py.service"
METRICS = "mptcpize-py-metrics.service"
TIMER = "mptcpize-py-metrics.timer"
WEB = "mzc-web.service"
PORT = 18766
TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")
PROM = TEXTFILE_DIR / "mptcpize.prom"
RULE_PREFIX = f"allow unit={WEB}"   # the rule `enable` writes
TEST_DIR = Path("/run/mzc-test")

LISTENER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT}))
s.listen()
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), flush=True)
while True:
    s.accept()[0].close()
"""
WEB_UNIT = f"""[Unit]
Description=mptcpize-py metrics test listener

[Service]
User=nobody
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


def samples(text: str) -> dict:
    """{(family, frozenset(labels)): value}"""
    return {(f.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture(scope="module")
def units():
    # The package installed the units (not enabled); the textfile directory is node_exporter's.
    TEXTFILE_DIR.mkdir(parents=True, exist_ok=True)
    TEST_DIR.mkdir(exist_ok=True)
    (TEST_DIR / "listener.py").write_text(LISTENER)
    Path(f"/run/systemd/system/{WEB}").write_text(WEB_UNIT)
    run("systemctl", "daemon-reload")
    run("systemctl", "start", DAEMON)
    proc = mptcpize("enable", "--now", WEB)   # the listener's first socket is already upgraded
    assert proc.returncode == 0, proc.stderr
    yield
    run("systemctl", "stop", TIMER, check=False)
    mptcpize("disable", "--now", WEB)
    run("systemctl", "stop", WEB, check=False)


def test_service_writes_the_textfile(units):
    run("systemctl", "start", METRICS)
    props = run("systemctl", "show", "--property=Result", "--property=ExecMainStatus", METRICS).stdout
    assert "Result=success" in props and "ExecMainStatus=0" in props, props
    st = os.stat(PROM)
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
    assert [p.name for p in TEXTFILE_DIR.iterdir()] == ["mptcpize.prom"]   # no temporary file left
    s = samples(PROM.read_text())
    assert s[("mptcpize_daemon_up", frozenset())] == 1
    assert s[("mptcpize_netns_scrape_errors", frozenset())] == 0
    # The sandboxed listener of uid nobody, seen by a service holding only its bounding set.
    assert s[("mptcpize_mptcp_listeners", frozenset({("netns", "host")}))] >= 1
    per_rule = {dict(k)["rule"]: v for (name, k), v in s.items() if name == "mptcpize_upgrades"}
    assert any(rule.startswith(RULE_PREFIX) and v >= 1 for rule, v in per_rule.items()), per_rule
    assert s[("mptcpize_unit_upgrades", frozenset({("unit", WEB)}))] >= 1


def test_timer_refreshes_it(units):
    before = os.stat(PROM).st_mtime_ns
    run("systemctl", "start", TIMER)
    wait_for(lambda: os.stat(PROM).st_mtime_ns != before, f"{TIMER} to refresh {PROM}", timeout=60,
             interval=1)
    assert "mptcpize_daemon_up 1" in PROM.read_text().splitlines()
