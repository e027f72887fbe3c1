"""The typed daemon status: its JSON round trip, and one clear error for a malformed answer."""

import copy
import json
import os

import pytest

from mptcpize_py.daemon import control, protocol
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.status import DaemonStatus, StatusFormatError
from tests.conftest import mptcpize
from tests.unit.status_builder import counters, daemon_status, policy, process, rule

ODD_EXE = '/opt/we"ird\\dir/new\nline\udcffexe'   # quote, backslash, newline, a non-UTF-8 byte
RULES = (rule(16, "allow", "exe", "/usr/bin/iperf3", name="perf", target="/usr/bin/iperf3 (dev 8:1 ino 5)",
              upgraded=7),
         rule(17, "allow", "exe", ODD_EXE, line=3, upgraded=2),
         rule(18, "deny", "cgroup", "/backup", line=5),
         rule(19, "allow", "unit", "nginx.service", file="unit-nginx.service.toml", line=4,
              target="/system.slice/nginx.service (cgroup id 99)", upgraded=1))
STATUS = daemon_status(
    policy(RULES, pending=("10.toml:5: cgroup=/backup: not there yet",), problems=("x.toml:1: gone",),
           reloads=3, failed_reloads=1),
    [process(100, RULES[0], unit="iperf.service", cgroup="/system.slice/iperf.service", upgraded=7),
     process(101, RULES[1], exe=ODD_EXE, cgroup="/user.slice", upgraded=2, alive=False),
     process(102, RULES[3], exe=None, unit="nginx.service", upgraded=1),
     process(103, exe="/usr/bin/nc", upgraded=4)],
    totals=counters(upgraded=14, denied=2, events_dropped=1), dry_run=True, uptime_s=3600.1)


def wire(status: DaemonStatus) -> dict:
    """What a client decodes from the daemon's answer line."""
    return json.loads(protocol.encode(status.to_json_dict()))


def test_round_trip():
    assert DaemonStatus.from_json_dict(wire(STATUS)) == STATUS
    empty = daemon_status()
    assert DaemonStatus.from_json_dict(wire(empty)) == empty


def test_wire_keys():
    # The control protocol and `status --json`: these names are an interface.
    d = STATUS.to_json_dict()
    assert list(d) == ["backend", "dry_run", "pid", "uptime_s", "policy", "totals", "processes",
                       "events_dropped", "paths", "version", "rule_upgrades", "unit_upgrades", "loader"]
    assert list(d["policy"]) == ["dir", "summary", "files", "rules", "pending", "problems", "reloads",
                                 "failed_reloads"]
    assert list(d["policy"]["rules"][0]) == ["id", "description", "action", "kind", "value", "target",
                                             "upgraded"]
    assert list(d["processes"][0]) == ["pid", "start_ns", "exe", "rule", "rule_id", "kind", "unit",
                                       "cgroup", "upgraded", "alive"]
    assert list(d["rule_upgrades"][0]) == ["file", "rule", "upgraded"]


def test_an_older_daemons_answer_still_parses():
    # A daemon of the previous version (still running during a package upgrade) sends none of the
    # metrics sums: the client parses it, with empty sums.
    d = wire(STATUS)
    for key in ("version", "rule_upgrades", "unit_upgrades"):
        del d[key]
    st = DaemonStatus.from_json_dict(d)
    assert st.version is None and st.rule_upgrades == () and st.unit_upgrades == {}


def test_unknown_keys_are_ignored():
    d = wire(STATUS)
    d["added_later"] = 1
    d["policy"]["rules"][0]["added_later"] = {}
    assert DaemonStatus.from_json_dict(d) == STATUS


def _set(d: dict, path: str, value) -> None:
    """Sets (value KeyError: deletes) the item at a dotted path; numbers index arrays."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        d = d[key]
    if value is KeyError:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


@pytest.mark.parametrize("path,value,message", [
    ("policy.rules.3.upgraded", "7", "field policy.rules[3].upgraded: expected int, got str"),
    ("policy.rules.1.target", 5, "field policy.rules[1].target: expected str or null, got int"),
    ("processes.2.alive", 1, "field processes[2].alive: expected bool, got int"),
    ("processes.0.pid", True, "field processes[0].pid: expected int, got bool"),
    ("processes.0.exe", KeyError, "field processes[0].exe: missing"),
    ("processes.1", [], "field processes[1]: expected object, got array"),
    ("policy.files", "10.toml", "field policy.files: expected array, got str"),
    ("policy.pending", [None], "field policy.pending[0]: expected str, got null"),
    ("policy", None, "field policy: expected object, got null"),
    ("totals.denied", 2.0, "field totals.denied: expected int, got float"),
    ("uptime_s", "1 h", "field uptime_s: expected number, got str"),
    ("backend", KeyError, "field backend: missing"),
])
def test_malformed_answer_names_the_field(path, value, message):
    d = copy.deepcopy(wire(STATUS))
    _set(d, path, value)
    with pytest.raises(StatusFormatError) as e:
        DaemonStatus.from_json_dict(d)
    assert e.value.message == f"daemon status: {message}"
    assert isinstance(e.value, MptcpizeError) and e.value.exit_code == 1 and e.value.hint


def test_not_an_object():
    with pytest.raises(StatusFormatError, match=r"^daemon status: expected object, got array$"):
        DaemonStatus.from_json_dict([])


def test_rule_comes_from_its_file_only():
    assert RULES[3].comes_from("unit-nginx.service.toml")
    assert not RULES[3].comes_from("nginx.service.toml")
    assert not RULES[0].comes_from("unit-nginx.service.toml")
    quoted = rule(20, "allow", "unit", "a.service", name="(unit-a.service.toml:1)", file="10.toml")
    assert quoted.comes_from("10.toml") and not quoted.comes_from("unit-a.service.toml")


@pytest.fixture
def fake_daemon(tmp_path):
    """A control socket whose `status` answers what the test puts in answer[0]."""
    answer = [STATUS.to_json_dict()]
    path = tmp_path / "run" / "control"
    with control.ControlServer({"status": lambda _req, _peer: answer[0]}, path,
                               allowed_uids={os.geteuid()}):
        yield answer, dict(os.environ, MPTCPIZE_CONTROL=str(path))


def test_cli_status_json_is_the_daemons_answer(fake_daemon):
    _, env = fake_daemon
    proc = mptcpize("status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == json.dumps(wire(STATUS), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("metrics",)])
def test_cli_malformed_answer_is_one_error_line(fake_daemon, command):
    answer, env = fake_daemon
    answer[0] = wire(STATUS)
    answer[0]["policy"]["rules"][3]["upgraded"] = "7"
    proc = mptcpize(*command, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == \
        "mptcpize-py: error: daemon status: field policy.rules[3].upgraded: expected int, got str"
    assert proc.stderr.splitlines()[1].startswith("mptcpize-py: hint: ")
    assert len(proc.stderr.splitlines()) == 2


STRICT = {"PYTHONIOENCODING": "utf-8:strict"}   # as under a UTF-8 locale other than C.UTF-8


def test_cli_status_text_of_odd_names_is_escaped_under_a_strict_utf8_stdout(fake_daemon):
    # A non-UTF-8 byte in an executable's name made every later `status` fail with UnicodeEncodeError.
    _, env = fake_daemon
    proc = mptcpize("status", env=dict(env, **STRICT))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert all(ln.isprintable() for ln in proc.stdout.splitlines())
    row = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("101 "))
    assert '/opt/we"ird\\\\dir/new\\nline\\xffexe' in row


def test_cli_status_json_of_odd_names_is_exact_under_a_strict_utf8_stdout(fake_daemon):
    _, env = fake_daemon
    proc = mptcpize("status", "--json", env=dict(env, **STRICT))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert DaemonStatus.from_json_dict(json.loads(proc.stdout)) == STATUS
    assert json.loads(proc.stdout)["processes"][1]["exe"] == ODD_EXE



def test_cli_output_quoting_an_undecodable_argument_does_not_fail(tmp_path):
    # Renderers escape the names they show; a line that still quotes what the user typed (here the
    # unit, echoed by `resync --unit`) is written with \udcff for the byte rather than a traceback.
    path = tmp_path / "run" / "control"
    answer = {"ok": True, "rules": [{"id": 16, "action": "allow", "target": "/system.slice/\x1b[2J (cgroup id 9)"}]}
    with control.ControlServer({"resync": lambda _req, _peer: answer}, path, allowed_uids={os.geteuid()}):
        proc = mptcpize("resync", "--unit", "a\udcff.service",
                        env=dict(os.environ, MPTCPIZE_CONTROL=str(path), **STRICT))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "a\\udcff.service: allow rule 16: /system.slice/\\x1b[2J (cgroup id 9)\n"
