"""Two-path aggregation: a fixed amount of data from client to server over tests/netlab.py's TwoPathLab
(path 1 and path 2 each a tbf bottleneck client -> server), plain TCP vs. the same programs under a
wrapper (`mptcpize-py run`, `mptcpize run`). Bytes are compared (server received == client sent, CRC32
equal) and throughput is what the server saw from its first to its last byte, so program start-up (slow
under TCG) does not count.

As a program (run inside the namespaces, under the wrapper): `xfer.py server PORT` / `xfer.py client
HOST PORT BYTES`. Plain `socket.socket()` code: the wrapper decides whether it is MPTCP.
"""

import json
import os
import socket
import subprocess
import sys
import time
import zlib

BLOCK = 1 << 20   # the client sends one random MiB over and over: no RNG cost while timing


def run_server(port: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    print("listening", flush=True)
    ls.settimeout(300)   # the client's wrapper may compile for a while under TCG
    conn, _ = ls.accept()
    conn.settimeout(60)
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    n, crc, first, last = 0, 0, None, None
    while True:
        got = conn.recv_into(buf)
        if not got:
            break
        last = time.monotonic()
        if first is None:
            first = last
        crc = zlib.crc32(view[:got], crc)
        n += got
    report = {"bytes": n, "crc32": crc, "seconds": (last - first) if n else 0.0,
              "protocol": conn.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}
    conn.close()
    ls.close()
    print(json.dumps(report), flush=True)


def run_client(host: str, port: int, size: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mptcpize_py.diag import mptcpinfo
    block = os.urandom(BLOCK)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect((host, port))
    left, crc, subflows_seen = size, 0, 0
    while left:
        chunk = block[:min(left, BLOCK)]
        s.sendall(chunk)
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
        try:   # the highest number of extra subflows seen while sending (MPTCP sockets only)
            subflows_seen = max(subflows_seen, mptcpinfo.of_socket(s).subflows)
        except OSError:
            pass
    try:
        info = mptcpinfo.of_socket(s)
        mi = {"subflows": info.subflows, "fallback": info.fallback, "subflows_seen": subflows_seen,
              "bytes_retrans": info.bytes_retrans}
    except OSError:
        mi = None   # plain TCP
    proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)   # the server's close: everything was delivered
    s.close()
    print(json.dumps({"bytes": size, "crc32": crc, "protocol": proto, "mptcp_info": mi}), flush=True)


def path_stats(lab) -> dict[str, dict]:
    """Bytes sent and packets dropped so far by each path's bottleneck (the client's tbf qdiscs)."""
    out = {}
    for dev in ("mzc1", "mzc2"):
        text = subprocess.run(["ip", "netns", "exec", lab.cli, "tc", "-s", "-j", "qdisc", "show", "dev",
                               dev], capture_output=True, text=True).stdout
        for q in json.loads(text or "[]"):
            if q.get("kind") == "tbf":
                out[dev] = {"bytes": q.get("bytes", 0), "drops": q.get("drops", 0)}
    return out


def transfer(lab, wrapper: list[str], size: int, port: int, python: str = sys.executable,
             env: dict | None = None, timeout: float = 300) -> dict:
    """One transfer in `lab` (a set-up tests.netlab.TwoPathLab) with both ends under `wrapper` ([] =
    plain). Returns the measurement; raises RuntimeError when bytes differ or a side failed."""
    me = os.path.abspath(__file__)
    before_srv, before_cli = lab.counters(lab.srv), lab.counters(lab.cli)
    before_paths = path_stats(lab)
    server = subprocess.Popen([*wrapper, "ip", "netns", "exec", lab.srv, python, me, "server", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if not server.stdout.readline().startswith("listening"):
            server.wait(timeout)
            raise RuntimeError(f"server did not start: {server.stderr.read()}")
        client = subprocess.run([*wrapper, "ip", "netns", "exec", lab.cli, python, me, "client",
                                 lab.server_addr, str(port), str(size)],
                                capture_output=True, text=True, timeout=timeout, env=env)
        s_out, s_err = server.communicate(timeout=timeout)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if client.returncode != 0 or server.returncode != 0:
        raise RuntimeError(f"transfer failed: client {client.returncode} {client.stderr.strip()!r}, "
                           f"server {server.returncode} {s_err.strip()!r}")
    c = json.loads(client.stdout.strip().splitlines()[-1])
    s = json.loads(s_out.strip().splitlines()[-1])
    if s["bytes"] != c["bytes"] or s["crc32"] != c["crc32"]:
        raise RuntimeError(f"bytes differ: sent {c['bytes']} (crc {c['crc32']:#x}), "
                           f"received {s['bytes']} (crc {s['crc32']:#x})")
    after_srv, after_cli = lab.counters(lab.srv), lab.counters(lab.cli)
    after_paths = path_stats(lab)
    paths = {dev: {k: v - before_paths.get(dev, {}).get(k, 0) for k, v in st.items()}
             for dev, st in after_paths.items()}
    joins = after_srv.get("MPTcpExtMPJoinAckRx", 0) - before_srv.get("MPTcpExtMPJoinAckRx", 0)
    return {"bytes": s["bytes"], "seconds": round(s["seconds"], 3),
            "mbit_s": round(s["bytes"] * 8 / s["seconds"] / 1e6, 2),
            "protocol_client": c["protocol"], "protocol_server": s["protocol"],
            "mptcp_info": c["mptcp_info"], "mp_join_ack_rx": joins, "paths": paths,
            "mp_join_synack_rx_client": after_cli.get("MPTcpExtMPJoinSynAckRx", 0)
            - before_cli.get("MPTcpExtMPJoinSynAckRx", 0)}


def set_path2_rate(lab, rate: str) -> None:
    """Path 2's bottleneck (the client's mzc2 tbf) becomes `rate`, path 1 keeps the lab's."""
    subprocess.run(["ip", "netns", "exec", lab.cli, "tc", "qdisc", "replace", "dev", "mzc2", "root",
                    "tbf", "rate", rate, "burst", "32kbit", "latency", "100ms"],
                   check=True, capture_output=True)


def aggregation(wrappers: dict[str, tuple[list[str], int]], rates: list[tuple[str, str]],
                rounds: int, size: int, prefix: str = "mzb", subnets=("10.251.1", "10.251.2"),
                env: dict | None = None, progress=None) -> list[dict]:
    """For each (rate1, rate2): plain TCP and every wrapper {name: (argv prefix, expected protocol)},
    interleaved over `rounds`. Returns one row per rate pair with every transfer."""
    from tests.netlab import TwoPathLab
    rows = []
    port = 5700
    for rate1, rate2 in rates:
        lab = TwoPathLab(prefix, subnets=subnets, rate=rate1)
        lab.setup()
        try:
            if rate2 != rate1:
                set_path2_rate(lab, rate2)
            cases = {"tcp": ([], 6), **wrappers}
            runs: dict[str, list[dict]] = {n: [] for n in cases}
            names = list(cases)
            for r in range(rounds):
                for name in (names if r % 2 == 0 else reversed(names)):
                    wrapper, proto = cases[name]
                    port += 1
                    res = transfer(lab, wrapper, size, port, env=env)
                    if res["protocol_client"] != proto or res["protocol_server"] != proto:
                        raise RuntimeError(f"{name}: protocol {res['protocol_client']}/"
                                           f"{res['protocol_server']}, expected {proto}")
                    runs[name].append(res)
                    if progress:
                        progress(f"aggregation {rate1}+{rate2} {name}: {res['mbit_s']} Mbit/s "
                                 f"({res['seconds']} s, MP_JOIN acked {res['mp_join_ack_rx']})")
            rows.append({"rates": [rate1, rate2], "size": size, "runs": runs})
        finally:
            lab.teardown()
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "server":
        run_server(int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "client":
        run_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"usage: {sys.argv[0]} server PORT | client HOST PORT BYTES")
