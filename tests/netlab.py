"""Two network namespaces joined by two veth paths, and a checked bulk transfer between them.

Reusable by every tier: the backend is a parameter, and nothing here assumes this host's kernel.

    lab = TwoPathLab("mzs")                 # namespaces mzs-cli / mzs-srv
    lab.setup()
    try:
        result = lab.transfer(mptcpize=[*CLI, "run", "--backend", "seccomp"], python=PYTHON,
                              env=cli_env())
    finally:
        lab.teardown()

The server and client are this file run as a program (`python netlab.py server|client ...`): plain
`socket.socket()` TCP code that the wrapper upgrades. The client reports MPTCP_INFO of its socket
(mptcpize_py.diag.mptcpinfo) after waiting, bounded, for the extra subflow.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class TransferResult:
    client: dict                       # what the client printed (sha256, bytes, protocol, mptcp_info)
    server: dict                       # what the server printed (sha256, bytes, protocol)
    client_counters: dict[str, int] = field(default_factory=dict)   # MPTcpExt* in the client netns
    server_counters: dict[str, int] = field(default_factory=dict)
    client_stderr: str = ""
    server_stderr: str = ""
    client_status: int = 0
    server_status: int = 0


class TwoPathLab:
    """PREFIX-cli and PREFIX-srv joined by path 1 (SUBNET1.1 <-> SUBNET1.2) and path 2 (SUBNET2.x).
    MPTCP limits allow 2 subflows on both sides; the client has a `subflow` endpoint on path 2, so
    an MPTCP connection made over path 1 opens a second subflow over path 2 (MP_JOIN).
    endpoints=False: no limits and no endpoint by hand (mptcpize-py's path manager sets them up)."""

    def __init__(self, prefix: str = "mzs", subnets: tuple[str, str] = ("10.231.1", "10.231.2"),
                 rate: str | None = None, endpoints: bool = True):
        self.cli, self.srv = f"{prefix}-cli", f"{prefix}-srv"
        self.subnets = subnets
        self.rate = rate  # e.g. "20mbit": a tbf bottleneck on each client->server path
        self.server_addr = f"{subnets[0]}.2"
        self.endpoints = endpoints

    def setup(self) -> None:
        self.teardown()
        _ip("netns", "add", self.cli)
        _ip("netns", "add", self.srv)
        for i, net in enumerate(self.subnets, 1):
            c, s = f"mzc{i}", f"mzs{i}"
            _ip("-n", self.cli, "link", "add", c, "type", "veth", "peer", "name", s, "netns", self.srv)
            _ip("-n", self.cli, "addr", "add", f"{net}.1/24", "dev", c)
            _ip("-n", self.srv, "addr", "add", f"{net}.2/24", "dev", s)
            _ip("-n", self.cli, "link", "set", c, "up")
            _ip("-n", self.srv, "link", "set", s, "up")
            if self.rate:
                subprocess.run(["ip", "netns", "exec", self.cli, "tc", "qdisc", "add", "dev", c, "root",
                                "tbf", "rate", self.rate, "burst", "32kbit", "latency", "100ms"],
                               check=True, capture_output=True)
        for ns in (self.cli, self.srv):
            _ip("-n", ns, "link", "set", "lo", "up")
        if not self.endpoints:
            return
        for ns in (self.cli, self.srv):
            _ip("-n", ns, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
        # Bound to the path-2 device, the extra subflow leaves through it even towards the server's
        # path-1 address (no route there: the kernel then treats the destination as on-link).
        _ip("-n", self.cli, "mptcp", "endpoint", "add", f"{self.subnets[1]}.1", "dev", "mzc2",
            "subflow")

    def teardown(self) -> None:
        for ns in (self.cli, self.srv):
            _ip("netns", "del", ns, check=False)

    def counters(self, ns: str) -> dict[str, int]:
        """MPTcpExt* counters of a namespace (absolute values; nstat history left alone)."""
        out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-asz"], capture_output=True,
                             text=True, check=True).stdout
        counters = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("MPTcpExt"):
                counters[parts[0]] = int(parts[1])
        return counters

    def transfer(self, mptcpize: list[str], python: str = sys.executable, size: int = 8 << 20,
                 port: int = 5599, timeout: float = 60,
                 env: dict[str, str] | None = None) -> TransferResult:
        """Runs the server in PREFIX-srv and the client in PREFIX-cli, each as
        `MPTCPIZE... ip netns exec NS python netlab.py ROLE` with environment `env`, and returns both
        sides' reports. `mptcpize` is the wrapper prefix, e.g. [*CLI, "run", "--backend", "bpf"];
        [] runs plain. `timeout` is a safety limit, scaled like tests.waiting's."""
        from tests.waiting import scaled
        timeout = scaled(timeout)
        server = subprocess.Popen(
            [*mptcpize, "ip", "netns", "exec", self.srv, python, str(HERE), "server", str(port),
             str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            ready = server.stdout.readline()  # "listening" once bound, or EOF if it failed
            if not ready.startswith("listening"):
                server.wait(timeout)
                raise RuntimeError(f"server did not start: {server.stderr.read()}")
            client = subprocess.run(
                [*mptcpize, "ip", "netns", "exec", self.cli, python, str(HERE), "client",
                 self.server_addr, str(port), str(size)],
                capture_output=True, text=True, timeout=timeout, env=env)
            s_out, s_err = server.communicate(timeout=timeout)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        return TransferResult(
            client=_last_json(client.stdout), server=_last_json(s_out),
            client_counters=self.counters(self.cli), server_counters=self.counters(self.srv),
            client_stderr=client.stderr, server_stderr=s_err,
            client_status=client.returncode, server_status=server.returncode)


def assert_multipath(res: TransferResult, size: int = 8 << 20) -> None:
    """Both ends were MPTCP, the connection did not fall back, a second subflow joined (MP_JOIN
    counters on both sides), and every byte arrived intact."""
    assert res.server_status == 0 and res.client_status == 0, (res.server_stderr, res.client_stderr)
    assert res.client["protocol"] == 262 and res.server["protocol"] == 262
    info = res.client["mptcp_info"]
    assert info is not None and not info["fallback"], info
    assert info["subflows"] >= 1, info
    assert res.client_counters["MPTcpExtMPJoinSynAckRx"] > 0
    assert res.server_counters["MPTcpExtMPJoinAckRx"] > 0
    assert res.server["bytes"] == res.client["bytes"] == size
    assert res.server["sha256"] == res.client["sha256"]


def _last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


# --- the programs (run inside the namespaces, under the wrapper) --------------------------------------
def _serve(port: int, accept_timeout: float) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    print("listening", flush=True)
    ls.settimeout(accept_timeout)  # the client's wrapper may take a while to start (bcc compiles)
    conn, _ = ls.accept()
    conn.settimeout(30)
    h, n = hashlib.sha256(), 0
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        h.update(data)
        n += len(data)
    report = {"sha256": h.hexdigest(), "bytes": n,
              "protocol": ls.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}
    conn.close()
    ls.close()
    print(json.dumps(report), flush=True)


def _client(host: str, port: int, size: int) -> None:
    sys.path.insert(0, str(REPO))
    from mptcpize_py.diag import mptcpinfo
    from tests.waiting import scaled

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect((host, port))
    h = hashlib.sha256()
    left = size
    while left:
        chunk = os.urandom(min(left, 1 << 16))
        s.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    # The extra subflow comes up asynchronously; the report says whether it did in time.
    info, deadline = None, time.monotonic() + scaled(10)
    while True:
        try:
            info = mptcpinfo.of_socket(s)
        except OSError:
            info = None  # plain TCP: no MPTCP_INFO
            break
        if info.subflows >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    report = {"sha256": h.hexdigest(), "bytes": size,
              "protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
              "mptcp_info": None if info is None else
              {"subflows": info.subflows, "flags": info.flags, "fallback": info.fallback,
               "bytes_sent": info.bytes_sent}}
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    s.recv(1)  # wait for the server's close: all data delivered
    s.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "server":
        _serve(int(sys.argv[2]), float(sys.argv[3]))
    elif role == "client":
        _client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"usage: {sys.argv[0]} server PORT ACCEPT_TIMEOUT | client HOST PORT SIZE")
