"""What a user sees: `ab -n N -c 10` (a new connection per request) against nginx on loopback, nginx
and ab both under the same wrapper, so that every connection is MPTCP end to end: plain TCP (no
wrapper), `mptcpize-py run --backend seccomp`, mptcpd's `mptcpize run`. Alternating rounds; the best
requests/s of each counts. The wrapped nginx's listener must show in `ss -M` (MPTCP), else the row is
refused. Loopback only; nginx gets a private prefix, config and port.

    /opt/mptcpize-py/venv/bin/python bench/ab_nginx.py [-n 5000] [-r 3]
"""

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CLI
from socket_cost import BenchError

CONF = """worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{ listen 127.0.0.1:{port}; root {d}/www; }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrappers() -> dict[str, list[str]]:
    out = {"plain-tcp": [], "seccomp": [CLI, "run", "--backend", "seccomp", "--"]}
    if shutil.which("mptcpize"):
        out["mptcpize"] = ["mptcpize", "run"]
    return out


def one(work: str, wrap: list[str], n: int, mptcp: bool) -> float:
    """nginx and then ab, both under `wrap`; returns ab's requests/s."""
    port = free_port()
    Path(work, "nginx.conf").write_text(CONF.format(d=work, port=port))
    nginx = subprocess.Popen([*wrap, "nginx", "-p", work, "-c", f"{work}/nginx.conf"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:   # wait until the listener exists (bounded: nginx may fail to start)
            ss = subprocess.run(["ss", "-Hltn" + ("M" if mptcp else ""), f"sport = :{port}"],
                                capture_output=True, text=True).stdout
            if ss.strip():
                break
            if nginx.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"nginx under {wrap or 'nothing'} did not listen on :{port} "
                                 f"{'as MPTCP ' if mptcp else ''}({nginx.stderr.read().decode()[-300:]})")
            time.sleep(0.05)
        ab = subprocess.run([*wrap, "ab", "-q", "-n", str(n), "-c", "10", f"http://127.0.0.1:{port}/"],
                            capture_output=True, text=True, timeout=300)
        m = re.search(r"Requests per second:\s+([\d.]+)", ab.stdout)
        failed = re.search(r"Failed requests:\s+(\d+)", ab.stdout)
        if ab.returncode != 0 or not m or not failed or int(failed[1]):
            raise BenchError(f"ab under {wrap or 'nothing'} failed: {ab.stderr.strip()[-300:]}")
        return float(m[1])
    finally:
        nginx.terminate()
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()


def measure(n: int, rounds: int, progress=None) -> dict[str, list[float]]:
    if not (shutil.which("nginx") and shutil.which("ab")):
        raise BenchError("nginx and ab are needed (apt-get install nginx-light apache2-utils)")
    cases = wrappers()
    res: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    with tempfile.TemporaryDirectory(prefix="mzb-nginx-") as work:
        Path(work, "www").mkdir()
        Path(work, "www", "index.html").write_text("hello\n")
        for r in range(rounds):
            for name in (names if r % 2 == 0 else reversed(names)):
                res[name].append(one(work, cases[name], n, mptcp=name != "plain-tcp"))
            if progress:
                progress(f"ab round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in res.items())
                         + " req/s")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--requests", type=int, default=5000)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    args = ap.parse_args()
    res = measure(args.requests, args.rounds, progress=lambda m: print(m, file=sys.stderr))
    anchor = max(res["mptcpize"]) if "mptcpize" in res else None
    print(f"ab -n {args.requests} -c 10 against nginx (loopback), best of {args.rounds} alternating rounds")
    print(f"{'case':<10} {'best req/s':>11} {'median':>8} {'best / mptcpize run':>20}")
    for name, v in res.items():
        ratio = f"{max(v) / anchor:.2f}x" if anchor else "-"
        print(f"{name:<10} {max(v):>11.0f} {sorted(v)[len(v) // 2]:>8.0f} {ratio:>20}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"ab_nginx: {e}")
