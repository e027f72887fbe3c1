"""Cold start of the BPF program, per loader: the prebuilt CO-RE object loaded with libbpf, bcc's
compile of the same source, and (optionally) another checkout as a baseline (`--before DIR`, e.g. a
copy of main before the libbpf loader, which always compiled with bcc).

    python bench/loader_bench.py [--dry-run] [--rounds N] [--before DIR] [--json FILE]

Per configuration, in alternating rounds:
  ready   `mptcpize-py daemon` from spawn to its READY=1 on $NOTIFY_SOCKET (a socket of ours), with a
          one-rule policy; then its RSS (VmRSS, RssAnon, RssFile) 2 s later, and SIGTERM.
  run     `mptcpize-py run --backend bpf -- true`, wall time of the whole command, cold (no daemon to
          join). With --dry-run (a kernel that refuses fmod_ret): a process that loads the dry-run
          program as `run` would (Rewriter(dry_run=True)) and exits, instead.
  python  `python -P -c pass` and `mptcpize-py --version`: the interpreter's and the CLI's own start.
Medians are printed as a table and as JSON. Root needed."""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LOAD_ONLY = ("import sys; from mptcpize_py.program.rewriter import Rewriter; "
             "Rewriter(all_netns=True, dry_run=True).close()")


def env_for(checkout: Path, loader: str | None, control: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MPTCPIZE_PY_LOADER")}
    env.update(PYTHONPATH=str(checkout), MPTCPIZE_CONTROL=control)
    if loader:
        env["MPTCPIZE_PY_LOADER"] = loader
    return env


def rss(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1])
    return out


def daemon_ready(checkout: Path, loader: str | None, dry_run: bool, work: Path) -> tuple[float, dict]:
    policy = work / "policy.d"
    policy.mkdir(exist_ok=True)
    (policy / "10.toml").write_text('[[allow]]\nexe = "/usr/bin/true"\n')
    notify = work / "notify"
    notify.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(900)
        env = env_for(checkout, loader, str(work / "control"))
        env["NOTIFY_SOCKET"] = str(notify)
        argv = [PYTHON, "-P", "-m", "mptcpize_py", "daemon", "--no-metrics", "--policy-dir", str(policy)]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv + (["--dry-run"] if dry_run else []), env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(work / "daemon.log", "w"))
        try:
            while True:
                msg = sock.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    ready = time.monotonic() - t0
                    break
            time.sleep(2)
            mem = rss(proc.pid)
        except (TimeoutError, OSError) as e:
            raise RuntimeError(f"daemon not ready: {e}: {(work / 'daemon.log').read_text()}") from None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    return ready, mem


def run_cold(checkout: Path, loader: str | None, dry_run: bool, work: Path) -> float:
    env = env_for(checkout, loader, str(work / "no-daemon"))
    argv = [PYTHON, "-P", "-c", LOAD_ONLY] if dry_run else \
        [PYTHON, "-P", "-m", "mptcpize_py", "run", "--backend", "bpf", "--", "true"]
    t0 = time.monotonic()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed ({out.returncode}): {out.stderr[-2000:]}")
    return took


def wall(argv: list[str], env: dict) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the dry-run program (no fmod_ret here)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=Path, help="another checkout, measured as it is (its own loader)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    configs = [("libbpf (prebuilt CO-RE object)", REPO, "libbpf"), ("bcc (compiled at start)", REPO, "bcc")]
    if args.before:
        configs.insert(0, (f"before ({args.before.name})", args.before.resolve(), None))
    results: dict[str, dict[str, list]] = {name: {"ready_s": [], "run_s": [], "rss": []}
                                           for name, _, _ in configs}
    with tempfile.TemporaryDirectory(prefix="mzb-loader-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        for rnd in range(args.rounds):
            for name, checkout, loader in configs:
                ready, mem = daemon_ready(checkout, loader, args.dry_run, work)
                run_s = run_cold(checkout, loader, args.dry_run, work)
                r = results[name]
                r["ready_s"].append(round(ready, 3))
                r["run_s"].append(round(run_s, 3))
                r["rss"].append(mem)
                print(f"round {rnd + 1}: {name}: ready {ready:.2f} s, run {run_s:.2f} s, "
                      f"RSS {mem['VmRSS'] // 1024} MB", file=sys.stderr, flush=True)
        env = env_for(REPO, None, str(work / "no-daemon"))
        python_s = statistics.median(wall([PYTHON, "-P", "-c", "pass"], env) for _ in range(5))
        cli_s = statistics.median(wall([PYTHON, "-P", "-m", "mptcpize_py", "--version"], env)
                                  for _ in range(5))
    summary = {"kernel": os.uname().release, "dry_run": args.dry_run, "rounds": args.rounds,
               "python_start_s": round(python_s, 3), "cli_version_s": round(cli_s, 3), "configs": {}}
    print(f"\nkernel {os.uname().release}{' (dry run)' if args.dry_run else ''}; medians of {args.rounds}; "
          f"python -c pass {python_s:.3f} s, mptcpize-py --version {cli_s:.3f} s")
    print("| loader | daemon start to READY | run --backend bpf true (cold) | daemon VmRSS (RssAnon + RssFile) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        med = {k: statistics.median(m[k] for m in r["rss"]) for k in ("VmRSS", "RssAnon", "RssFile")}
        s = {"ready_s": statistics.median(r["ready_s"]), "run_s": statistics.median(r["run_s"]),
             "rss_kb": med, "raw": r}
        summary["configs"][name] = s
        print(f"| {name} | {s['ready_s']:.2f} s | {s['run_s']:.2f} s | {med['VmRSS'] / 1024:.1f} MB "
              f"({med['RssAnon'] / 1024:.1f} + {med['RssFile'] / 1024:.1f}) |")
    print("MZB-JSON " + json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
