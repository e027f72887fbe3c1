"""Pure parts of the daemon: cgroup -> unit, /proc/PID/cgroup parsing, the `status` text renderer."""

import json

import pytest

from mptcpize_py import report
from mptcpize_py.host.procfs import parse_cgroup as parse_proc_cgroup
from mptcpize_py.host.systemd import unit_of_cgroup
from mptcpize_py.policysync import dir_fingerprint
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


# systemd's own answer (cg_path_get_unit(), src/basic/cgroup-util.c) for each path: `systemctl status
# PID` and the journal's _SYSTEMD_UNIT= name these units, and only these.
@pytest.mark.parametrize("cgroup, unit", [
    # A delegated subtree: whatever its owner names its cgroups, they belong to the delegating unit.
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service", "user@1000.service"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-sshd.slice/sshd.service",
     "user@1000.service"),
    ("/system.slice/docker.service/sshd.service", "docker.service"),
    ("/system.slice/foo.service/system.slice/sshd.service", "foo.service"),
    ("/user.slice/user-1000.slice/session-2.scope/sshd.service", "session-2.scope"),
    ("/machine.slice/machine-a.scope/system.slice/sshd.service", "machine-a.scope"),
    # Not a unit where systemd's units are: nothing, however the leaves are named.
    ("/mzd-allow/sshd.service", None),
    ("/x\v0::/system.slice/sshd.service", None),     # a cgroup named with a line break of str.splitlines
    ("/system.slice/x\x0bsshd.service", None),
    ("/system.slice/..", None),
    ("/system.slice/foo@.service/sshd.service", None),   # a template never runs
    ("/system.slice/a@b.slice/sshd.service", None),      # not a valid slice, and a slice is no unit
    ("/system.slice/sshd", None),                         # no unit type
    ("/system.slice/sshd.nosuchtype/x.service", None),
    ("/system.slice/" + "a" * 256 + ".service", None),    # longer than UNIT_NAME_MAX
    # systemd's escaping and path forms
    ("/system.slice/_cpu.service", "cpu.service"),        # cg_escape()d: the unit is cpu.service
    ("/_io.slice/io-x.slice/y.service", "y.service"),
    ("//system.slice///nginx.service//", "nginx.service"),
    ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"),
    ("/system.slice/ssh.socket", "ssh.socket"),
    ("/init.scope", "init.scope"),
    ("/system.slice/sys-fs-fuse-connections.mount", "sys-fs-fuse-connections.mount"),
])
def test_unit_of_cgroup_follows_systemd(cgroup, unit):
    assert unit_of_cgroup(cgroup) == unit


def test_a_cgroup_named_with_a_vertical_tab_is_not_sshd():
    """A cgroup named `x\v0::/system.slice/sshd.service` (any user may create one under a delegated
    cgroup; the kernel refuses only '\n' in names): /proc/PID/cgroup has one line, and the process is
    the unit that owns the subtree, never sshd.service."""
    text = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x\v0::/system.slice/sshd.service\n"
    path = parse_proc_cgroup(text)
    assert path == "/user.slice/user-1000.slice/user@1000.service/app.slice/x\v0::/system.slice/sshd.service"
    assert unit_of_cgroup(path) == "user@1000.service"
    assert unit_of_cgroup(parse_proc_cgroup("0::/x\v0::/system.slice/sshd.service\n")) is None


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


# Names other users choose: a line feed that forges a line, OSC/CSI sequences for root's terminal, a
# byte that is not UTF-8 (os.readlink() gives a lone surrogate), a backslash that could fake an escape.
HOSTILE_EXE = "/home/u/evil\nmptcpize-py: info: upgraded pid=1 exe=/usr/sbin/sshd\x1b]0;pwned\x07\udcff"
HOSTILE_UNIT = "x\x1b[2J\x9b31m.service"
HOSTILE_CGROUP = "/user.slice/user-1000.slice/app\\x1b\x1b[8m"
HOSTILE_RULE = rule(18, "allow", "exe", "/opt/bin\\tool", line=7,
                    target="/opt/bin\\tool -> /home/u/\x1b[5mreal\n (dev 8:1 ino 9)", upgraded=2)
HOSTILE = daemon_status(
    policy((IPERF, HOSTILE_RULE), pending=("10.toml:9: cgroup=/x: does not exist yet (no cgroup "
                                           "/sys/fs/cgroup/x\x1b[1m)",),
           problems=("10.toml:7: exe=/opt/b: leads to /home/u/\nforged\udcfe",)),
    [process(200, HOSTILE_RULE, exe=HOSTILE_EXE, unit=HOSTILE_UNIT, cgroup="/system.slice/" + HOSTILE_UNIT,
             upgraded=1),
     process(201, HOSTILE_RULE, exe=HOSTILE_EXE, cgroup=HOSTILE_CGROUP, upgraded=1)])


def assert_shown_safely(lines: list[str]) -> None:
    for line in lines:
        assert line.isprintable(), f"a raw control character or undecodable byte in {line!r}"
    "\n".join(lines).encode("utf-8")   # a strict UTF-8 stream takes it


def test_status_text_shows_outside_names_escaped():
    lines = report.status_text(HOSTILE)
    assert_shown_safely(lines)
    exe = ("/home/u/evil\\nmptcpize-py: info: upgraded pid=1 exe=/usr/sbin/sshd\\x1b]0;pwned\\x07\\xff")
    row = next(ln for ln in lines if ln.strip().startswith("200 "))
    assert exe in row and "x\\x1b[2J\\u009b31m.service" in row
    row = next(ln for ln in lines if ln.strip().startswith("201 "))
    assert "/user.slice/user-1000.slice/app\\\\x1b\\x1b[8m" in row
    assert row.endswith(" allow exe=/opt/bin\\\\tool (10.toml:7)")
    assert "  allow exe=/opt/bin\\\\tool (10.toml:7) -> /opt/bin\\\\tool -> /home/u/\\x1b[5mreal\\n " \
           "(dev 8:1 ino 9) [2 upgraded]" in lines
    assert "  pending: 10.toml:9: cgroup=/x: does not exist yet (no cgroup /sys/fs/cgroup/x\\x1b[1m)" in lines
    assert "  problem: 10.toml:7: exe=/opt/b: leads to /home/u/\\nforged\\xfe" in lines


def test_status_text_of_a_hostile_enabled_unit():
    # `enable` validates unit names; a unit row's name comes from the cgroup, which anyone may name.
    unit = rule(19, "allow", "unit", "a.service", file="unit-a.service.toml",
                target="/system.slice/a.service/\x1b[2J (cgroup id 7)")
    lines = report.status_text(daemon_status(policy((unit,)), [process(300, unit, unit="a.service")]))
    assert_shown_safely(lines)
    assert "  a.service: 0 socket(s) upgraded in 1 process(es) (1 alive) -> " \
           "/system.slice/a.service/\\x1b[2J (cgroup id 7)" in lines


def test_status_json_keeps_outside_names_exact():
    text = report.status_json(HOSTILE)
    text.encode("ascii")   # json.dumps escapes: a line of JSON, any terminal
    assert DaemonStatus.from_json_dict(json.loads(text)) == HOSTILE
    assert json.loads(text)["processes"][0]["exe"] == HOSTILE_EXE


def test_policy_check_text_shows_outside_names_escaped():
    from mptcpize_py.policy import parse_policy_text
    from mptcpize_py.resolve import Pending, Resolved
    pol = parse_policy_text('[[allow]]\nexe = "/opt/bin/tool"\n', "10.toml")
    resolved = Resolved(targets={pol.rules[0].id: "/opt/bin/tool -> /home/u/\nx\x1b[1m (dev 8:1 ino 9)"},
                        pending=(Pending("cgroup", None, "/x", "10.toml:1: no cgroup /x\x1b[1m"),),
                        notes=("10.toml:1: unit=a.service: \x07",))
    lines = report.policy_check_text(pol, resolved)
    assert_shown_safely(lines)
    assert "  allow exe=/opt/bin/tool (10.toml:1) -> /opt/bin/tool -> /home/u/\\nx\\x1b[1m (dev 8:1 ino 9)" \
        in lines
    assert "  pending: 10.toml:1: no cgroup /x\\x1b[1m" in lines and "  note: 10.toml:1: unit=a.service: \\x07" \
        in lines


def test_connections_text_shows_outside_names_escaped():
    view = {"scope": "upgraded processes", "namespaces": [{"name": "n\x1b[1m", "error": "gone\n"}],
            "connections": [{"netns": "host", "process": 7, "pid": 8, "process_exe": HOSTILE_EXE,
                             "exe": "/tmp/\x1b[2Jchild", "rule": HOSTILE_RULE.description,
                             "unit": HOSTILE_UNIT, "state": "ESTABLISHED", "local": "10.0.0.1:1",
                             "remote": "10.0.0.2:2", "subflows": 2, "fallback": False,
                             "bytes_sent": 1, "bytes_received": 2}],
            "totals": {"connections": 1, "subflows": 2}}
    lines = report.connections_text(view)
    assert_shown_safely(lines)
    assert "netns n\\x1b[1m: cannot read its connections: gone\\n" in lines
    head = next(ln for ln in lines if ln.startswith("netns host: pid 7 "))
    assert "\\x1b]0;pwned\\x07\\xff" in head and "unit x\\x1b[2J\\u009b31m.service" in head
    assert lines[-2].endswith("  pid 8 /tmp/\\x1b[2Jchild")


def test_run_verbose_rows_escaped():
    from mptcpize_py.run.backend import ProcessReport
    lines = report.run_verbose("seccomp", [ProcessReport(5, HOSTILE_EXE, 2), ProcessReport(6, "[\x1b[8mx]", 1)],
                               {"upgraded": 3, "other_cgroup": 1})
    assert_shown_safely(lines)
    assert len(lines) == 4
    assert lines[1] == ("mptcpize-py: pid=5 exe=/home/u/evil\\nmptcpize-py: info: upgraded pid=1 "
                        "exe=/usr/sbin/sshd\\x1b]0;pwned\\x07\\xff upgraded=2")
    assert lines[2] == "mptcpize-py: pid=6 exe=[\\x1b[8mx] upgraded=1"


def test_path_management_text_shows_outside_names_escaped():
    from mptcpize_py.paths import NetnsPaths
    ns = NetnsPaths("lab\x1b[1m", enabled="1", path_manager="kernel", subflows=2, add_addr_accepted=2,
                    endpoints=[{"address": "10.0.0.1", "id": 1, "dev": "eth\x1b0", "flags": ["subflow"]}])
    lines = report.path_management_text([ns])
    assert_shown_safely(lines)
    assert lines[1].startswith("  netns lab\\x1b[1m: ") and lines[2] == "    endpoint 10.0.0.1 id 1 dev eth\\x1b0 subflow"
