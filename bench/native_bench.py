"""The native half of `make bench`: figures measured on this machine's own kernel, where the BPF hook is
refused (fmod_ret: EPERM) and `run` uses the seccomp backend. Writes one JSON object (--json FILE, or
stdout after common.JSON_MARK); bench/render.py turns it into docs/BENCHMARKS.md.

  socket     socket()+close(): native TCP, native MPTCP, seccomp `run`, mptcpd's `mptcpize run`; a static
             raw syscall(SYS_socket) loop natively and under seccomp `run` (the supervisor's path)
  ab         `ab -n 5000 -c 10` against nginx on loopback: plain TCP, seccomp `run`, `mptcpize run`
  selection  the program's own cost on real hardware: the dry-run build (same decide() code, on the
             socket() syscall tracepoint) loaded with the 1,000-rule policy, attached / not attached in
             alternating runs: a process not selected, and a selected one (counted as an upgrade would
             be, but its socket stays TCP); then the program's own time per call (BPF_ENABLE_STATS)
  latency    `run true` added latency: via the daemon (bench/standin_daemon.py: the real daemon with a
             stand-in for its BPF program, which this kernel refuses), seccomp, mptcpize;
             `mptcpize-py --version` and `python -c pass` (interpreter start)
  compile    the BPF program compiled and loaded natively (rewriter.Rewriter(dry_run=True): the same C source,
             attached to the socket() tracepoint, which this kernel allows): a cold BPF start on real
             hardware, without the fmod_ret attach
  dryrun     `daemon --dry-run` (the same daemon, counting instead of upgrading): RSS with 1 and 1,000
             rules, and 8 processes making sockets for 10 s against its exact counters
  aggregation  two-path transfers (20+20, 20+6 Mbit/s): plain TCP, seccomp `run`, `mptcpize run`

    /opt/mptcpize-py/venv/bin/python bench/native_bench.py [--json FILE] [--only socket,latency,...]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ab_nginx
import common
import socket_cost
import xfer
from common import CLI, PYTHON, progress

PARTS = ("socket", "ab", "selection", "latency", "compile", "dryrun", "aggregation")

COMPILE_PROBE = r"""
import json, os, sys, time
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmRSS", "RssAnon", "RssFile"))}
t0 = time.monotonic()
from mptcpize_py.program import rewriter
from mptcpize_py.daemon import service
rss_python = rss()
t1 = time.monotonic()
rw = rewriter.Rewriter(all_netns=False, dry_run=True)   # a loader child imports bcc and compiles
t_loaded = time.monotonic()
rss_loaded = rss()
rw.close()
import bcc   # what the loader child pays (and lets go of when it exits); this process never needs it
rss_bcc = rss()
t_import = time.monotonic()
print(json.dumps({"import_ours_s": t1 - t0, "import_s": t_import - t_loaded, "load_s": t_loaded - t1,
                  "rss_kb": rss_loaded, "rss_python_kb": rss_python, "rss_bcc_imported_kb": rss_bcc}))
"""


def part_socket(loop: str, static_loop: str, n: int, rounds: int) -> dict:
    progress(f"socket()+close() x {n}: native TCP / native MPTCP / seccomp / static / mptcpize, {rounds} rounds")
    res = socket_cost.measure(socket_cost.native_cases(loop, n, static_loop), rounds, progress=progress)
    return {"iterations": n, "rounds": rounds,
            "cases": {k: {"best_ns": round(r.best), "median_ns": round(r.median),
                          "runs_ns": [round(x) for x in r.runs]} for k, r in res.items()}}


class DryToggle:
    """The dry-run program (rewriter.Rewriter(dry_run=True)) with its socket() tracepoint detached and
    re-attached between runs (Rewriter.detach_hook / attach_hook)."""

    def __init__(self, policy_dir: str):
        from mptcpize_py import policysync
        from mptcpize_py.program import rewriter
        _policy, resolved = policysync.load_and_resolve(policy_dir)
        self.rw = rewriter.Rewriter(all_netns=False, dry_run=True)
        self.rw.set_selection(*resolved.selection())
        # As the dry-run daemon does where kernel memory cannot tell net.mptcp.enabled: say it for ours.
        self.rw.set_netns_mptcp({os.stat("/proc/self/ns/net").st_ino: True})
        self.reader = common.EventReader(self.rw)
        self.attached = True

    def attach(self) -> None:
        self.reader.resume()
        if not self.attached:
            self.rw.attach_hook()
            self.attached = True

    def detach(self) -> None:
        self.reader.resume()
        if self.attached:
            self.rw.detach_hook()
            self.attached = False

    @property
    def prog_fd(self) -> int:
        return self.rw.hook_program_fd()

    def close(self) -> None:
        self.reader.close()
        self.rw.close()


def part_selection(work: str, loop: str, selected: str, n: int, rounds: int) -> dict:
    from socket_cost import IPPROTO_MPTCP, IPPROTO_TCP, Case
    pdir = os.path.join(work, "policy-selection")
    os.makedirs(pdir, mode=0o755, exist_ok=True)
    try:
        common.write_policy(pdir, common.bulk_policy(work, selected, rules=1000))
        progress("selection cost natively: dry-run program, 1,000 rules, attached / not attached")
        t = DryToggle(pdir)
        try:
            cases = {
                "tcp_detached": Case([loop, str(n), "0"], IPPROTO_TCP, before=t.detach),
                "notsel_attached": Case([loop, str(n), "0"], IPPROTO_TCP, before=t.attach),
                "selected_attached": Case([selected, str(n), "0"], IPPROTO_TCP, before=t.attach),
                "mptcp_detached": Case([loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP, before=t.detach),
                "mptcp_attached": Case([loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP, before=t.attach),
            }
            res = socket_cost.measure(cases, rounds, progress=progress)
            progress("the program's own time per call (BPF_ENABLE_STATS)")
            ptime = common.program_time(t.prog_fd, {
                "notsel": ([loop, str(n), "0"], t.attach),
                "selected": ([selected, str(n), "0"], t.attach),
                "mptcp": ([loop, str(n), str(IPPROTO_MPTCP)], t.attach)})
            progress("  " + ", ".join(f"{k} {v['best_ns']} ns" for k, v in ptime.items()))
            counters = t.rw.counters()
        finally:
            t.close()
    finally:
        common.remove_bench_cgroups()
    if counters.get("upgraded", 0) < n * rounds:   # the selected runs must have been counted
        raise socket_cost.BenchError(f"dry run counted {counters} for {n * rounds} selected sockets")
    return {"iterations": n, "rounds": rounds, "counters": counters, "events_received": t.reader.events,
            "program_time": ptime,
            "cases": {k: {"best_ns": round(r.best), "median_ns": round(r.median),
                          "runs_ns": [round(x) for x in r.runs]} for k, r in res.items()}}


# The fast path's phases, timed inside one `run`-like process: what its imports cost, the hello round
# trip, and fork + register + exec + wait + run_report.
FAST_PATH_PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
from mptcpize_py import cli
from mptcpize_py.run import daemon_fast_path
from mptcpize_py.run.spawn import run_command
t1 = time.perf_counter()
backend = daemon_fast_path("auto")
t2 = time.perf_counter()
status, _ = run_command(["true"], backend)
t3 = time.perf_counter()
backend.close()
assert status == 0 and "via the daemon" in backend.name
print(json.dumps({"imports_ms": (t1 - t0) * 1000, "hello_ms": (t2 - t1) * 1000,
                  "run_ms": (t3 - t2) * 1000}))
"""


def part_latency(work: str, rounds: int) -> dict:
    # Installed packages have their bytecode compiled (pip and dpkg do it); this checkout may not.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(common.REPO / "mptcpize_py")], check=True)
    daemon = common.StandInDaemon(work)
    try:
        progress(f"`run true` latency: true / python / mptcpize-py --version / run via a stand-in daemon / "
                 f"run --backend seccomp / mptcpize run, {rounds} rounds")
        cases = {"true": ["true"], "python_pass": [PYTHON, "-c", "pass"],
                 "python_nosite": [PYTHON, "-S", "-c", "pass"], "cli_version": [CLI, "--version"],
                 "run_true_daemon": [CLI, "run", "true"],
                 "seccomp_run_true": [CLI, "run", "--backend", "seccomp", "true"]}
        if shutil.which("mptcpize"):
            cases["mptcpize_run_true"] = ["mptcpize", "run", "true"]
        out = {"rounds": rounds, "cases": common.latencies(cases, rounds, env=daemon.env)}
        phases = []
        for _ in range(rounds):
            p = subprocess.run([PYTHON, "-c", FAST_PATH_PHASES], env=daemon.env, capture_output=True,
                               text=True, check=True)
            phases.append(json.loads(p.stdout))
        out["fast_path_phases"] = {k: round(min(ph[k] for ph in phases), 2) for k in phases[0]}
        out["fast_path_phases_median"] = {k: round(sorted(ph[k] for ph in phases)[len(phases) // 2], 2)
                                          for k in phases[0]}
        progress("  " + ", ".join(f"{k} {v['best_ms']:.1f} ms" for k, v in out["cases"].items()))
        progress("  fast path (best): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                    out["fast_path_phases"].items()))
        return out
    finally:
        daemon.stop()


def part_compile(runs: int) -> dict:
    progress(f"BPF compile + load natively (dry-run program), {runs} runs")
    out = []
    for _ in range(runs):
        t0 = time.monotonic()
        p = subprocess.run([PYTHON, "-c", COMPILE_PROBE], capture_output=True, text=True, cwd=common.REPO)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else str(p.returncode)}
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["process_wall_s"] = round(wall, 3)
        for k in ("import_ours_s", "import_s", "load_s"):
            r[k] = round(r[k], 3)
        out.append(r)
        progress(f"  process {wall:.2f} s (import bcc {r['import_s']:.2f} s, compile+load "
                 f"{r['load_s']:.2f} s; RSS: our modules {r['rss_python_kb']['VmRSS'] // 1024} MB, + bcc "
                 f"{r['rss_bcc_imported_kb']['VmRSS'] // 1024} MB, loaded {r['rss_kb']['VmRSS'] // 1024} MB)")
    return {"runs": out}


def part_dryrun(work: str, selected: str, storm_procs: int, storm_secs: float) -> dict:
    pdir = os.path.join(work, "policy-native")
    os.makedirs(pdir, mode=0o755, exist_ok=True)
    out = {}
    try:
        for rules in (1, 1000):
            if rules == 1:
                files = {"10-selected.toml": f'[[allow]]\nname = "bench loop"\nexe = "{selected}"\n'}
            else:
                files = common.bulk_policy(work, selected, rules=rules)
            common.write_policy(pdir, files)
            progress(f"dry-run daemon, {rules} rule(s): start")
            d = common.DaemonUnderTest(pdir, work, dry_run=True, tag=f"dryrun-{rules}")
            try:
                ready = d.wait_ready()
                summary = d.request({"cmd": "status"})["policy"]["summary"]
                rss = d.steady_rss()
                progress(f"  ready in {ready:.1f} s ({summary}); RSS {rss['VmRSS'] // 1024} MB "
                         f"(anon {rss['RssAnon'] // 1024}, file {rss['RssFile'] // 1024}); idle CPU "
                         f"{rss['idle_cpu_percent']} %")
                row = {"ready_s": round(ready, 2), "policy": summary, "rss_kb": rss}
                if rules == 1000:
                    progress(f"  {storm_procs} processes x {storm_secs:g} s of socket()+close()")
                    row["storm"] = common.event_storm(d, selected, storm_procs, storm_secs)
                    row["rss_after_storm_kb"] = common.rss_breakdown(d.proc.pid)
                    s = row["storm"]
                    progress(f"  made {s['made']}, counted {s['counted']} (exact: total "
                             f"{s['total_exact']}, per process {s['per_process_exact']}), events dropped "
                             f"{s['events_dropped']}, {s['rate_per_s']}/s")
            finally:
                row["exit_status"] = d.stop()
            out[str(rules)] = row
    finally:
        common.remove_bench_cgroups()
    return out


def part_aggregation(rounds: int, size: int) -> dict:
    wrappers = {"seccomp": ([CLI, "run", "--backend", "seccomp"], 262)}
    if shutil.which("mptcpize"):
        wrappers["mptcpize"] = (["mptcpize", "run"], 262)
    progress(f"two-path aggregation, {size >> 20} MiB per transfer, {rounds} rounds")
    rows = xfer.aggregation(wrappers, [("20mbit", "20mbit"), ("20mbit", "6mbit")], rounds, size,
                            progress=progress)
    return {"rows": rows, "sysctl": common.sysctls()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("-n", "--iterations", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=15, help="socket()+close() rounds")
    ap.add_argument("--latency-rounds", type=int, default=10)
    ap.add_argument("--xfer-rounds", type=int, default=3)
    ap.add_argument("--xfer-mib", type=int, default=16)
    ap.add_argument("--storm-secs", type=float, default=10.0)
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {', '.join(bad)}")
    if os.geteuid() != 0:
        sys.exit("native_bench: run as root (seccomp run in other namespaces, the dry-run daemon, netns)")

    result = {"machine": common.machine(), "argv": sys.argv}
    with tempfile.TemporaryDirectory(prefix="mzb-native-") as work:
        os.chmod(work, 0o755)
        loop = socket_cost.build_loop(work)
        selected = os.path.join(work, "socketloop-selected")   # its own inode: the exe rule's target
        shutil.copy2(loop, selected)
        if "socket" in parts:
            result["socket"] = part_socket(loop, socket_cost.build_static_loop(work), args.iterations,
                                           args.rounds)
        if "ab" in parts:
            progress("ab -n 5000 -c 10 against nginx: plain TCP / seccomp / mptcpize, 3 rounds")
            result["ab"] = {"requests": 5000, "rounds": 3,
                            "cases": ab_nginx.measure(5000, 3, progress=progress)}
        if "selection" in parts:
            result["selection"] = part_selection(work, loop, selected, args.iterations, args.rounds)
        if "latency" in parts:
            result["latency"] = part_latency(work, args.latency_rounds)
        if "compile" in parts:
            result["compile"] = part_compile(3)
        if "dryrun" in parts:
            result["dryrun"] = part_dryrun(work, selected, 8, args.storm_secs)
        if "aggregation" in parts:
            result["aggregation"] = part_aggregation(args.xfer_rounds, args.xfer_mib << 20)
    result["loadavg_end"] = common.loadavg()
    common.dump(result, args.json)
    progress("native part done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
