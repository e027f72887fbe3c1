"""`status --connections` with no daemon, natively: real transfers between two namespaces under
`mptcpize-py run` (whichever backend run picks here: seccomp on this host), looked at from outside with
the real CLI while the connections are open. Plus sock_diag itself against this kernel."""

import json
import os
import socket
import subprocess

import pytest

from mptcpize_py.diag import sockdiag
from mptcpize_py.host import netns, procfs
from tests.conftest import CLI, PYTHON, cli_env, mptcpize
from tests.netlab import TwoPathLab
from tests.progs.sender import PROGRAM as CLIENT
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, other processes' fds)")

SIZE = 4 << 20
# The server reads SIZE bytes, says so, and keeps the connection open until its stdin closes.
SERVER = """
import json, os, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port))
ls.listen(1)
print(json.dumps({"listening": os.getpid()}), flush=True)
ls.settimeout(120)
conn, _ = ls.accept()
n = 0
while n < size:
    data = conn.recv(1 << 16)
    if not data:
        break
    n += len(data)
print(json.dumps({"pid": os.getpid(), "bytes": n,
                  "protocol": conn.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def lab():
    lab = TwoPathLab("mzc", subnets=("10.241.1", "10.241.2"))
    lab.setup()
    try:
        yield lab
    finally:
        lab.teardown()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # No daemon here, whatever else runs on this machine: a control socket path nobody listens on.
    base = tmp_path_factory.mktemp("mzc-nodaemon")
    return cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(base / "control")))


def start(argv, env):
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    line = p.stdout.readline()
    if not line:
        p.kill()
        pytest.fail(f"{argv[:6]}... exited: {p.communicate()[1]}")
    return p, json.loads(line)


def stop(*procs):
    for p in procs:
        if p.poll() is None:
            try:
                p.communicate("", timeout=scaled(30))
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def connections(env, netns):
    proc = mptcpize("status", "--connections", "--json", "--netns", netns, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_two_path_transfer_shows_two_subflows(lab, env):
    run = [*CLI, "run"]
    server, _ = start([*run, "ip", "netns", "exec", lab.srv, PYTHON, "-c", SERVER, "5611", str(SIZE)],
                      env)
    client = None
    try:
        client, hello = start([*run, "ip", "netns", "exec", lab.cli, PYTHON, "-c", CLIENT,
                               lab.server_addr, "5611", str(SIZE)], env)
        assert hello["protocol"] == 262
        got = json.loads(server.stdout.readline())
        assert got["bytes"] == SIZE and got["protocol"] == 262

        def client_conn():
            view = connections(env, lab.cli)
            row = next((c for c in view["connections"] if c["local"] == hello["local"]), None)
            return (view, row) if row and row["subflows"] == 2 else None

        # The second subflow joins asynchronously.
        view, row = wait_for(client_conn, "the client's connection to show 2 subflows", interval=0.2,
                             details=lambda: connections(env, lab.cli))
        assert view["daemon"] is False
        assert view["scope"].startswith("no daemon is running")
        assert row["state"] == "ESTABLISHED"
        assert row["remote"] == f"{lab.server_addr}:5611"
        assert row["fallback"] is False
        assert row["subflows"] == 2
        assert row["bytes_sent"] >= SIZE
        assert row["pid"] == hello["pid"]
        assert row["exe"] == os.path.realpath(PYTHON)
        assert view["totals"]["connections"] >= 1 and view["totals"]["subflows"] >= 2

        # The server's end, seen in its own namespace: the same connection, every byte received, and
        # its listener.
        sview = connections(env, lab.srv)
        srow = next(c for c in sview["connections"] if c["remote"] == hello["local"])
        assert srow["pid"] == got["pid"] and srow["bytes_received"] == SIZE
        assert srow["fallback"] is False
        assert any(c["state"] == "LISTEN" and c["local"] == "0.0.0.0:5611" for c in sview["connections"])

        # The text view says the same, one line per socket under its process.
        text = mptcpize("status", "--connections", "--netns", lab.cli, env=env)
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith("no daemon is running")
        line = next(ln for ln in text.stdout.splitlines() if hello["local"] in ln)
        assert line.split()[3:5] == ["2", "mptcp"], line
        assert f"pid {hello['pid']} " in text.stdout
    finally:
        stop(*(p for p in (client, server) if p))


def test_peer_without_mptcp_shows_fallback(lab, env):
    # The server is plain TCP (not under run): the client's MPTCP connection falls back.
    server, _ = start(["ip", "netns", "exec", lab.srv, PYTHON, "-c", SERVER, "5612", str(SIZE)], env)
    client = None
    try:
        client, hello = start([*CLI, "run", "ip", "netns", "exec", lab.cli, PYTHON, "-c", CLIENT,
                               lab.server_addr, "5612", str(SIZE)], env)
        assert hello["protocol"] == 262
        assert json.loads(server.stdout.readline())["protocol"] == 6
        view = connections(env, lab.cli)
        row = next(c for c in view["connections"] if c["local"] == hello["local"])
        assert row["fallback"] is True
        assert row["subflows"] == 1
        assert row["bytes_sent"] >= SIZE
        assert view["totals"]["fallback"] >= 1
        # The plain TCP server has no MPTCP socket at all.
        assert not [c for c in connections(env, lab.srv)["connections"] if c["local_port"] == 5612]
        text = mptcpize("status", "--connections", "--netns", lab.cli, env=env).stdout
        line = next(ln for ln in text.splitlines() if hello["local"] in ln)
        assert "fallback-TCP" in line, line
    finally:
        stop(*(p for p in (client, server) if p))


def test_without_netns_it_is_the_callers_namespace(lab, env):
    # `ip netns exec NS mptcpize-py status --connections` == `--netns NS`.
    server, _ = start([*CLI, "run", "ip", "netns", "exec", lab.srv, PYTHON, "-c", SERVER, "5613",
                       "0"], env)
    try:
        proc = subprocess.run(["ip", "netns", "exec", lab.srv, *CLI, "status", "--connections",
                               "--json"], capture_output=True, text=True, env=env, timeout=scaled(60))
        assert proc.returncode == 0, proc.stderr
        view = json.loads(proc.stdout)
        assert view["namespaces"][0]["name"] == lab.srv
        assert [c["local"] for c in view["connections"] if c["state"] == "LISTEN"] == ["0.0.0.0:5613"]
    finally:
        server.terminate()   # it waits in accept(); run forwards SIGTERM
        server.communicate(timeout=scaled(30))


def test_metrics_without_daemon(env):
    from prometheus_client.parser import text_string_to_metric_families
    proc = mptcpize("metrics", env=env)
    assert proc.returncode == 0, proc.stderr
    fams = {f.name: f for f in text_string_to_metric_families(proc.stdout)}
    assert fams["mptcpize_daemon_up"].samples[0].value == 0


# --- sock_diag against this kernel, in-process --------------------------------------------------------


def _mptcp_pair(port: int):
    try:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, sockdiag.IPPROTO_MPTCP)
    except OSError as e:
        pytest.skip(f"no MPTCP sockets here: {e}")
    ls.bind(("127.0.0.1", port))
    ls.listen()
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, sockdiag.IPPROTO_MPTCP)
    c.connect(("127.0.0.1", port))
    a, _ = ls.accept()
    return ls, c, a


def test_dump_finds_our_sockets_with_owner_and_bytes():
    # In a fresh namespace of our own, so nothing else shows up (in_netns: only the helper thread).
    subprocess.run(["ip", "netns", "add", "mzc-diag"], check=True)
    try:
        subprocess.run(["ip", "-n", "mzc-diag", "link", "set", "lo", "up"], check=True)
        before = os.stat("/proc/thread-self/ns/net").st_ino

        def scenario():
            ls, c, a = _mptcp_pair(5614)
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)       # a TCP-only server
            t.bind(("127.0.0.1", 5615))
            t.listen()
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM, sockdiag.IPPROTO_MPTCP)
            f.connect(("127.0.0.1", 5615))
            fa, _ = t.accept()
            c.sendall(b"x" * 100000)
            got = 0
            while got < 100000:
                got += len(a.recv(1 << 16))
            f.sendall(b"y" * 5000)
            got = 0
            while got < 5000:
                got += len(fa.recv(10000))
            inodes = {name: os.fstat(s.fileno()).st_ino for name, s in
                      (("ls", ls), ("c", c), ("a", a), ("f", f))}

            def counted():
                conns = sockdiag.dump()
                by_ino = {c.inode: c for c in conns}
                sent, received, fb_sent = (by_ino.get(inodes[n]) for n in ("c", "a", "f"))
                return conns if sent and received and fb_sent and sent.field("bytes_sent") == 100000 \
                    and received.field("bytes_received") == 100000 \
                    and fb_sent.field("bytes_sent") == 5000 else None

            conns = wait_for(counted, "MPTCP_INFO byte counters of both transfers",
                             details=lambda: [c.as_dict() for c in sockdiag.dump()])
            owners = procfs.socket_owners(inodes.values())
            for s in (ls, c, a, t, f, fa):
                s.close()
            return conns, inodes, owners

        conns, inodes, owners = netns.in_netns("/run/netns/mzc-diag", scenario)
        assert os.stat("/proc/thread-self/ns/net").st_ino == before   # this thread never moved
        by_ino = {c.inode: c for c in conns}
        assert set(inodes.values()) <= set(by_ino)
        assert len(conns) == 4            # listener, both ends of the MPTCP pair, the fallback client
        assert by_ino[inodes["ls"]].listening and by_ino[inodes["ls"]].fallback is None
        client, server, fb = by_ino[inodes["c"]], by_ino[inodes["a"]], by_ino[inodes["f"]]
        assert (client.local_address, client.remote_port) == ("127.0.0.1", 5614)
        assert client.fallback is False and server.fallback is False and fb.fallback is True
        assert client.field("bytes_sent") == 100000 and server.field("bytes_received") == 100000
        assert fb.field("bytes_sent") == 5000
        assert client.subflows == 1 and fb.subflows == 1
        assert all(owners[i] == [os.getpid()] for i in inodes.values())
        # The caller's namespace does not have them.
        assert not {c.inode for c in sockdiag.dump()} & set(inodes.values())
    finally:
        subprocess.run(["ip", "netns", "del", "mzc-diag"], check=False)


def test_in_netns_errors():
    from mptcpize_py.errors import MptcpizeError
    with pytest.raises(MptcpizeError, match="no network namespace"):
        netns.in_netns("/run/netns/mzc-does-not-exist", sockdiag.dump)
    with pytest.raises(MptcpizeError, match="not a network namespace"):
        netns.in_netns("/proc/self/ns/uts", sockdiag.dump)
    with pytest.raises(ZeroDivisionError):          # fn's own exception reaches the caller
        netns.in_netns("/proc/self/ns/net", lambda: 1 / 0)
