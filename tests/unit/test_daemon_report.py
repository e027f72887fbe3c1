"""Pure parts of the daemon: cgroup -> unit, /proc/PID/cgroup parsing, the `status` text renderer."""

import json

from mptcpize_py import report
from mptcpize_py.daemon.service import dir_fingerprint
from mptcpize_py.host.procfs import parse_cgroup as parse_proc_cgroup
from mptcpize_py.host.systemd import unit_of_cgroup
from mptcpize_py.status import DaemonStatus
from tests.unit.status_builder import counters, daemon_status, policy, process, rule

IPERF = rule(16, "allow", "exe", "/usr/bin/iperf3", line=1, target="/usr/bin/iperf3 (dev 8:1 ino 5)",
             upgraded=503)
BACKUP = rule(17, "deny", "unit", "backup.service", line=4)
STATUS = daemon_status(
    policy((IPERF, BACKUP), pending=("10.toml:4: unit=backup.service: not running yet",),
           reloads=2, failed_reloads=1),
    [process(100, IPERF, unit="iperf.service", cgroup="/system.slice/iperf.service", upgraded=500),
     process(101, IPERF, exe=None, cgroup="/user.slice", upgraded=3, alive=False)],  # exe: exited
    totals=counters(upgraded=503, denied=4))


def test_unit_of_cgroup():
    assert unit_of_cgroup("/system.slice/nginx.service") == "nginx.service"
    assert unit_of_cgroup("/system.slice/nginx.service/worker") == "nginx.service"
    assert unit_of_cgroup("/user.slice/user-0.slice/session-3.scope") == "session-3.scope"
    assert unit_of_cgroup("/system.slice") is None
    assert unit_of_cgroup("/mzd-allow") is None
    assert unit_of_cgroup("/") is None
    assert unit_of_cgroup(None) is None


def test_parse_proc_cgroup():
    assert parse_proc_cgroup("0::/system.slice/a.service\n") == "/system.slice/a.service"
    hybrid = "12:memory:/x\n1:name=systemd:/init.scope\n0::/init.scope\n"
    assert parse_proc_cgroup(hybrid) == "/init.scope"
    assert parse_proc_cgroup("1:name=systemd:/\n") is None


def test_status_text():
    lines = report.status_text(STATUS)
    text = "\n".join(lines)
    assert lines[0] == "backend: bpf (daemon pid 42, up 12.5 s)"
    assert "policy: 1 allow, 1 deny rules from 1 file; netns: host" in lines[1]
    assert "(reloads 2, refused 1)" in lines[1]
    assert "  deny unit=backup.service (10.toml:4) -> ?" in lines
    assert "  pending: 10.toml:4: unit=backup.service: not running yet" in lines
    assert "totals: 503 socket(s) upgraded in 2 process(es); not upgraded: denied=4" in lines
    assert "events dropped: 0" in lines
    row = next(ln for ln in lines if ln.strip().startswith("100 "))
    assert "500" in row and "yes" in row and "iperf.service" in row and "/usr/bin/iperf3" in row
    row = next(ln for ln in lines if ln.strip().startswith("101 "))
    assert " no " in row and "/user.slice" in row and " ? " in row
    assert row.endswith(" allow exe=/usr/bin/iperf3 (10.toml:1)")
    assert "Traceback" not in text


def test_status_text_of_an_empty_policy():
    lines = report.status_text(daemon_status())
    assert lines[0].startswith("backend: bpf")
    assert any(ln.startswith("totals: 0 socket(s) upgraded in 0 process(es)") for ln in lines)
    assert not any(ln.lstrip().startswith("PID") for ln in lines)


def test_status_json_is_the_wire_format():
    assert json.loads(report.status_json(STATUS)) == STATUS.to_json_dict()
    assert DaemonStatus.from_json_dict(json.loads(report.status_json(STATUS))) == STATUS


def test_dir_fingerprint(tmp_path):
    assert dir_fingerprint(tmp_path / "missing") is None
    empty = dir_fingerprint(tmp_path)
    (tmp_path / "a.toml").write_text("")
    (tmp_path / ".hidden.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    one = dir_fingerprint(tmp_path)
    assert one != empty and [e[0] for e in one] == ["a.toml"]
    (tmp_path / "a.toml").write_text("[netns]\n")
    assert dir_fingerprint(tmp_path) != one
