"""Is it actually working, with the daemon: processes the policy selects (a cgroup rule, in two named
namespaces) make connections over the two-path lab; `status --connections` shows them from the kernel
while they are open (2 subflows, a fallback against a plain TCP peer, bytes), attributes a forked
worker's connection to the upgraded process it descends from, leaves out MPTCP sockets of processes
the daemon did not upgrade; `metrics` parses with Prometheus' own parser and its counts equal
`status --json` and `status --connections --json`. One daemon start for the module (bcc compiles for
~30-60 s under TCG)."""

import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, mptcpize, start_daemon
from tests.netlab import TwoPathLab
from tests.progs.sender import PROGRAM as CLIENT
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.vm

CGROUP = "/sys/fs/cgroup/mzc-conn"
SIZE = 4 << 20
RULE = 'allow cgroup=/mzc-conn "connections test" (10-conn.toml:1)'

# Listens (the upgraded socket() is here), forks a worker that accepts and reads SIZE bytes, reports,
# and holds the connection until stdin closes.
FORKING_SERVER = """
import json, os, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port))
ls.listen(1)
print(json.dumps({"listening": os.getpid()}), flush=True)
if os.fork() == 0:
    ls.settimeout(120)
    conn, _ = ls.accept()
    n = 0
    while n < size:
        data = conn.recv(1 << 16)
        if not data:
            break
        n += len(data)
    print(json.dumps({"pid": os.getpid(), "parent": os.getppid(), "bytes": n,
                      "protocol": conn.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}), flush=True)
    sys.stdin.read()
    os._exit(0)
os.wait()
"""
# A program that asks for MPTCP itself: not upgraded, so not the daemon's business.
OWN_MPTCP = """
import json, os, socket, sys
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
ls.bind(("0.0.0.0", int(sys.argv[1])))
ls.listen(1)
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.read()
"""


class Env:
    pass


@pytest.fixture(scope="module")
def env(bpf_backend, tmp_path_factory):
    e = Env()
    e.lab = TwoPathLab("mzc", subnets=("10.241.1", "10.241.2"))
    e.lab.setup()
    os.makedirs(CGROUP, exist_ok=True)
    base = tmp_path_factory.mktemp("mzc-conn")
    os.chmod(base, 0o755)
    policy_dir = base / "policy.d"
    policy_dir.mkdir(mode=0o755)
    pol = policy_dir / "10-conn.toml"
    pol.write_text('[[allow]]\nname = "connections test"\ncgroup = "/mzc-conn"\n\n'
                   f'[netns]\nnames = ["{e.lab.cli}", "{e.lab.srv}"]\n')
    os.chmod(pol, 0o644)
    e.control = str(base / "run" / "control")
    e.environ = dict(os.environ, MPTCPIZE_CONTROL=e.control)
    e.log_path = base / "daemon.log"
    log = open(e.log_path, "w")
    e.procs = []
    proc = None
    try:
        proc = start_daemon(policy_dir, e.control, log, e.log_path)
        yield e
    finally:
        for p in e.procs:
            stop(p)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(scaled(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        e.lab.teardown()
        os.rmdir(CGROUP)


def start(e, ns, program, *args, selected=True):
    """PROGRAM in namespace NS, in the policy's cgroup when `selected`; returns (Popen, first line)."""
    argv = ["ip", "netns", "exec", ns, PYTHON, "-c", program, *map(str, args)]
    if selected:
        argv = ["sh", "-c", f'echo $$ > "{CGROUP}/cgroup.procs" && exec "$@"', "sh", *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    e.procs.append(p)
    line = p.stdout.readline()
    if not line:
        pytest.fail(f"{program[:40]!r} in {ns} exited: {p.communicate()[1]}")
    return p, json.loads(line)


def stop(p):
    if p.poll() is None:
        try:
            p.communicate("", timeout=scaled(30))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def cli_json(e, *args):
    proc = mptcpize(*args, env=e.environ)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def traffic(env):
    """An upgraded two-path connection (forking server), and an upgraded client whose peer is plain
    TCP; plus a process that made its own MPTCP listener. All held open for the module's tests."""
    lab, t = env.lab, Env()
    server, t.server = start(env, lab.srv, FORKING_SERVER, 5621, SIZE)
    _, t.client = start(env, lab.cli, CLIENT, lab.server_addr, 5621, SIZE)
    t.worker = json.loads(server.stdout.readline())          # the forked worker's report
    plain, t.plain_server = start(env, lab.srv, FORKING_SERVER, 5622, SIZE, selected=False)
    _, t.fb_client = start(env, lab.cli, CLIENT, lab.server_addr, 5622, SIZE)
    t.plain_worker = json.loads(plain.stdout.readline())
    _, t.own = start(env, lab.srv, OWN_MPTCP, 5623, selected=False)
    return t


def test_two_path_connection_shows_two_subflows(env, traffic):
    t = traffic
    assert t.client["protocol"] == 262 and t.worker["protocol"] == 262 and t.worker["bytes"] == SIZE

    def client_row():
        view = cli_json(env, "status", "--connections", "--json")
        row = next((c for c in view["connections"] if c["local"] == t.client["local"]), None)
        return (view, row) if row and row["subflows"] == 2 else None

    view, row = wait_for(client_row, "the client's connection to show 2 subflows", interval=0.5,
                         details=lambda: cli_json(env, "status", "--connections", "--json"))
    assert view["daemon"] is True
    assert row["netns"] == env.lab.cli and row["state"] == "ESTABLISHED"
    assert row["remote"] == f"{env.lab.server_addr}:5621"
    assert row["fallback"] is False and row["bytes_sent"] >= SIZE
    assert row["pid"] == row["process"] == t.client["pid"]
    assert row["rule"] == RULE


def test_forked_worker_is_attributed_to_the_upgraded_process(env, traffic):
    t = traffic
    view = cli_json(env, "status", "--connections", "--json")
    row = next(c for c in view["connections"] if c["remote"] == t.client["local"])
    assert row["netns"] == env.lab.srv
    assert row["pid"] == t.worker["pid"] and row["process"] == t.server["listening"] == t.worker["parent"]
    assert row["bytes_received"] == SIZE and row["fallback"] is False
    assert any(c["state"] == "LISTEN" and c["local"] == "0.0.0.0:5621" for c in view["connections"])
    # The daemon's own status knows the listener's process (it made the upgraded socket), not the worker.
    pids = {r["pid"] for r in cli_json(env, "status", "--json")["processes"]}
    assert t.server["listening"] in pids and t.worker["pid"] not in pids


def test_plain_tcp_peer_shows_fallback(env, traffic):
    t = traffic
    assert t.fb_client["protocol"] == 262 and t.plain_worker["protocol"] == 6
    view = cli_json(env, "status", "--connections", "--json")
    row = next(c for c in view["connections"] if c["local"] == t.fb_client["local"])
    assert row["fallback"] is True and row["subflows"] == 1 and row["bytes_sent"] >= SIZE
    text = mptcpize("status", "--connections", env=env.environ).stdout
    assert "fallback-TCP" in next(ln for ln in text.splitlines() if t.fb_client["local"] in ln)
    assert text.startswith("MPTCP connections of the processes the daemon")


def test_only_upgraded_processes(env, traffic):
    # The plain server (port 5622) has no MPTCP socket; the self-made MPTCP listener (5623) is not the
    # daemon's: neither is listed. Without a daemon the listener would be.
    view = cli_json(env, "status", "--connections", "--json")
    assert not [c for c in view["connections"] if c["local_port"] in (5622, 5623)]
    nodaemon = dict(env.environ, MPTCPIZE_CONTROL=env.control + ".none")
    proc = mptcpize("status", "--connections", "--json", "--netns", env.lab.srv, env=nodaemon)
    everything = json.loads(proc.stdout)
    assert [c["pid"] for c in everything["connections"] if c["local_port"] == 5623] == [traffic.own["pid"]]
    # --netns with a daemon: that namespace's processes only.
    cli_view = cli_json(env, "status", "--connections", "--json", "--netns", env.lab.cli)
    assert {c["netns"] for c in cli_view["connections"]} == {env.lab.cli}
    assert len(cli_view["connections"]) == 2


def test_metrics_match_status(env, traffic):
    from prometheus_client.parser import text_string_to_metric_families
    status = cli_json(env, "status", "--json")
    view = cli_json(env, "status", "--connections", "--json")
    proc = mptcpize("metrics", env=env.environ)
    assert proc.returncode == 0, proc.stderr
    fams = {f.name: f for f in text_string_to_metric_families(proc.stdout)}

    def samples(name, label=None):
        return {(s.labels.get(label) if label else None): s.value for s in fams[name].samples}

    def rule_series(name):
        return {(s.labels.get("file"), s.labels["rule"]): s.value for s in fams[name].samples}

    assert samples("mptcpize_daemon_up") == {None: 1}
    assert samples("mptcpize_upgraded_sockets") == {None: status["totals"]["upgraded"]}
    assert samples("mptcpize_events_dropped") == {None: status["events_dropped"]}
    # Per rule: the kernel's exact per-rule counters that status reports with each rule; here they
    # also equal what the rule's processes add up to (none was forgotten).
    per_rule = {r["description"]: r["upgraded"] for r in status["policy"]["rules"]}
    assert per_rule[RULE] == sum(r["upgraded"] for r in status["processes"] if r["rule"] == RULE) >= 3
    # The series is named by the rule's file and name (stable across edits), not its description with a
    # line number; with no reload yet, it counts what the kernel counted for the rule.
    assert rule_series("mptcpize_rule_upgraded_sockets") == {("10-conn.toml", "connections test"): per_rule[RULE]}
    assert {(r["file"], r["rule"]): r["upgraded"] for r in status["rule_upgrades"]} == \
        {("10-conn.toml", "connections test"): per_rule[RULE]}
    for ns in (env.lab.cli, env.lab.srv):
        conns = [c for c in view["connections"] if c["netns"] == ns and c["state"] != "LISTEN"]
        assert samples("mptcpize_mptcp_connections", "netns")[ns] == len(conns)
        assert samples("mptcpize_mptcp_subflows", "netns")[ns] == sum(c["subflows"] for c in conns)
        assert samples("mptcpize_fallback_connections", "netns")[ns] == \
            sum(1 for c in conns if c["fallback"])
    assert samples("mptcpize_mptcp_connections", "netns")[env.lab.cli] == 2
    assert samples("mptcpize_fallback_connections", "netns")[env.lab.cli] == 1
    assert samples("mptcpize_mptcp_subflows", "netns")[env.lab.cli] == 3
    assert sum(samples("mptcpize_mptcp_connections", "netns").values()) == view["totals"]["connections"]


def test_metrics_textfile(env, traffic, tmp_path):
    out = tmp_path / "mptcpize.prom"
    proc = mptcpize("metrics", "--output", str(out), env=env.environ)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert oct(os.stat(out).st_mode & 0o777) == "0o644"
    assert "mptcpize_daemon_up 1" in out.read_text().splitlines()
