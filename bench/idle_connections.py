"""How long `status` waits behind idle control-socket connections (issue 23 item 11), standalone.

Starts this checkout's daemon as a dry run (root; no fmod_ret needed) on a private control socket,
opens N connections from root that send nothing (half-open, as a misbehaving or hostile client leaves
them), then times the first `status` request and two more, and `mptcpize-py status`'s exit code (its
own limit: 10 s). --nofile runs the daemon with that RLIMIT_NOFILE soft limit (systemd's default:
1024), which caps the connections it keeps open.

    sudo /opt/mptcpize-py/venv/bin/python bench/idle_connections.py [--counts 0,500,2000] [--nofile 1024]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mptcpize_py.daemon import client  # noqa: E402
from mptcpize_py.errors import MptcpizeError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="0,500,2000", help="idle connections per case (comma-separated)")
    ap.add_argument("--nofile", type=int, help="the daemon's RLIMIT_NOFILE soft limit")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mzbench-idle-"))
    policy = base / "policy.d"
    policy.mkdir(mode=0o755)
    (policy / "10.toml").write_text('[[allow]]\nexe = "/bin/true"\n')
    (policy / "10.toml").chmod(0o644)
    control = base / "run" / "control"
    env = dict(os.environ, PYTHONPATH=str(REPO), MPTCPIZE_CONTROL=str(control))
    prefix = ["prlimit", f"--nofile={args.nofile}:{max(args.nofile, 4096)}"] if args.nofile else []
    cli = [sys.executable, "-P", "-m", "mptcpize_py"]
    with open(base / "daemon.log", "w") as log:
        daemon = subprocess.Popen([*prefix, *cli, "daemon", "--dry-run", "--no-metrics", "--policy-dir",
                                   str(policy)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120   # bcc compiles the tracepoint program first
        while True:
            try:
                client.request({"cmd": "status"}, control, timeout=5)
                break
            except MptcpizeError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print((base / "daemon.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.3)
        print(f"{'idle connections':>16}  {'first status':>12}  {'then':>14}  mptcpize-py status")
        for n in (int(x) for x in args.counts.split(",")):
            idle = [socket.socket(socket.AF_UNIX) for _ in range(n)]
            for s in idle:
                s.connect(str(control))
            times = []
            for _ in range(3):
                t = time.monotonic()
                try:
                    client.request({"cmd": "status"}, control, timeout=120)
                    times.append(f"{(time.monotonic() - t) * 1000:.0f} ms")
                except MptcpizeError as e:
                    times.append(f"failed: {e.message}")
            r = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
            print(f"{n:>16}  {times[0]:>12}  {', '.join(times[1:]):>14}  exit {r.returncode}", flush=True)
            for s in idle:
                s.close()
            time.sleep(3)   # the daemon closes its ends (a connection's budget: 2 s)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
