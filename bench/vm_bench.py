"""The VM half of `make bench`: the BPF figures, measured inside the 6.12 guest (the only kernel here that
lets root attach fmod_ret). The guest is qemu TCG: absolute times are emulated-CPU times, many times
slower than this machine's own; the ratios (A and B measured in alternating rounds in the same guest)
are what the figures compare. Run as root in the guest, via bench/run_all.py:

    flock /tmp/mptcpize-vm.lock scripts/vm.sh --timeout 1800 -- \
        /opt/mptcpize-py/venv/bin/python bench/vm_bench.py

Prints progress on stderr and the result as one JSON line on stdout (after common.JSON_MARK).

  cold       `run --backend bpf true` with no daemon: interpreter + bcc compile + attach
  toggle     one loaded program (rewriter.Rewriter, the daemon's policy of 1,000 rules), its fmod_ret link
             closed and re-made between runs: socket()+close() of a process NOT selected with the
             program attached / not attached; an upgraded socket() / a native IPPROTO_MPTCP one
  daemon     `mptcpize-py daemon`: RSS with 1 rule and with 1,000 rules; with 1,000 rules: socket cost
             while it runs, 8 processes x 10 s against `status --json`, `run true` via the daemon,
             two-path aggregation with `run` (BPF via the daemon)
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import common
import socket_cost
import xfer
from common import CLI, progress
from socket_cost import IPPROTO_MPTCP, IPPROTO_TCP, Case

WORK = "/tmp/mzb-vm"
CG_RUNNER = f"/sys/fs/cgroup/{common.CG_BASE}/runner"   # depth 2, like /system.slice/x.service


def move_self_to(cgroup_dir: str) -> None:
    os.makedirs(cgroup_dir, exist_ok=True)
    with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def compile_bytecode() -> None:
    """Installed packages have their bytecode compiled (pip and dpkg do it); this checkout may not, and
    compiling every module at every start is what a TCG latency would then mostly measure."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(common.REPO, "mptcpize_py")],
                   check=True)


def part_cold(runs: int, latency_rounds: int) -> dict:
    env = dict(os.environ, MPTCPIZE_CONTROL=os.path.join(WORK, "no-daemon.control"))
    compile_bytecode()
    progress(f"reference latencies (true, mptcpize-py --version), {latency_rounds} rounds")
    ref = common.latencies({"true": ["true"], "cli_version": [CLI, "--version"]}, latency_rounds, env=env)
    out = {"reference": ref, "cold_run_true_ms": []}
    for i in range(runs):
        progress(f"cold `run --backend bpf true` (no daemon: compiles), run {i + 1}/{runs}")
        ms = common.wall([CLI, "run", "--backend", "bpf", "true"], env=env, timeout=900) * 1000
        out["cold_run_true_ms"].append(round(ms, 1))
        progress(f"  {ms / 1000:.1f} s")
    return out


class Toggle:
    """A loaded program whose fmod_ret link can be closed and made again in milliseconds, so that
    "attached" and "not attached" alternate run by run instead of daemon start by daemon start (each a
    ~40 s compile under TCG): Rewriter.detach_hook / attach_hook."""

    def __init__(self, policy_dir: str):
        from mptcpize_py import policysync
        from mptcpize_py.program import rewriter
        _policy, resolved = policysync.load_and_resolve(policy_dir)
        t0 = time.monotonic()
        self.rw = rewriter.Rewriter(all_netns=False)          # what the daemon loads
        self.load_s = time.monotonic() - t0
        self.rw.set_selection(*resolved.selection())
        self.reader = common.EventReader(self.rw)       # consumed like the daemon does

    def attach(self) -> None:
        self.reader.resume()
        self.rw.attach_hook()

    def detach(self) -> None:
        self.reader.resume()
        self.rw.detach_hook()

    def close(self) -> None:
        self.reader.close()
        self.rw.close()


def part_toggle(policy_dir: str, loop: str, selected: str, n: int, rounds: int) -> dict:
    progress("loading the program with the 1,000-rule policy (compiles)")
    t = Toggle(policy_dir)
    try:
        progress(f"  loaded in {t.load_s:.1f} s")
        # The switch must really switch: the selected loop gets MPTCP only while attached.
        t.detach()
        socket_cost.run_loop("selected, detached", Case([selected, "2", "0"], IPPROTO_TCP))
        t.attach()
        socket_cost.run_loop("selected, attached", Case([selected, "2", "0"], IPPROTO_MPTCP))
        cases = {
            "notsel_detached": Case([loop, str(n), "0"], IPPROTO_TCP, before=t.detach),
            "notsel_attached": Case([loop, str(n), "0"], IPPROTO_TCP, before=t.attach),
            "mptcp_detached": Case([loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP, before=t.detach),
            "mptcp_attached": Case([loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP, before=t.attach),
            "upgraded": Case([selected, str(n), "0"], IPPROTO_MPTCP, before=t.attach),
        }
        if shutil.which("mptcpize"):
            cases["mptcpize_detached"] = Case(["mptcpize", "run", loop, str(n), "0"], IPPROTO_MPTCP,
                                              before=t.detach)
        progress(f"socket()+close() x {n}, {len(cases)} cases, {rounds} alternating rounds")
        res = socket_cost.measure(cases, rounds, progress=progress)
        progress("the program's own time per call (BPF_ENABLE_STATS)")
        ptime = common.program_time(t.rw.hook_program_fd(), {
            "notsel": ([loop, str(n), "0"], t.attach),
            "upgraded": ([selected, str(n), "0"], t.attach),
            "mptcp": ([loop, str(n), str(IPPROTO_MPTCP)], t.attach)})
        progress("  " + ", ".join(f"{k} {v['best_ns']} ns" for k, v in ptime.items()))
        t.attach()
        counters = t.rw.counters()
    finally:
        t.close()
    return {"iterations": n, "rounds": rounds, "load_s": round(t.load_s, 1),
            "events_received": t.reader.events, "counters": counters, "program_time": ptime,
            "cases": {k: {"best_ns": round(r.best), "median_ns": round(r.median),
                          "runs_ns": [round(x) for x in r.runs]} for k, r in res.items()}}


def part_daemon(out: dict, pdir: str, loop: str, selected: str, n: int, rounds: int,
                latency_rounds: int, storm_secs: float, xfer_rounds: int, xfer_mib: int) -> None:
    """Fills `out` as it goes, so that a failure keeps what was measured before it."""
    # 1 rule: the fixed cost.
    common.write_policy(pdir, {"10-selected.toml": f'[[allow]]\nname = "bench loop"\nexe = "{selected}"\n'})
    progress("daemon with 1 rule: start (compiles)")
    d = common.DaemonUnderTest(pdir, WORK, tag="daemon-1")
    try:
        ready = d.wait_ready()
        progress(f"  ready in {ready:.1f} s; idling 10 s")
        rss = d.steady_rss()
        out["rules_1"] = {"ready_s": round(ready, 1), "rss_kb": rss}
        progress(f"  RSS {rss['VmRSS'] // 1024} MB (anon {rss['RssAnon'] // 1024}, file "
                 f"{rss['RssFile'] // 1024}), idle CPU {rss['idle_cpu_percent']} %")
    finally:
        out.setdefault("rules_1", {})["exit_status"] = d.stop()

    # 1,000 rules: everything else runs against this daemon.
    common.write_policy(pdir, common.bulk_policy(WORK, selected, rules=1000))
    progress("daemon with 1,000 rules: start (compiles)")
    d = common.DaemonUnderTest(pdir, WORK, tag="daemon-1000")
    row: dict = {}
    out["rules_1000"] = row
    try:
        ready = d.wait_ready()
        row["ready_s"] = round(ready, 1)
        row["policy"] = d.request({"cmd": "status"})["policy"]["summary"]
        progress(f"  ready in {ready:.1f} s ({row['policy']}); idling 10 s")
        row["rss_kb"] = d.steady_rss()
        rss = row["rss_kb"]
        progress(f"  RSS {rss['VmRSS'] // 1024} MB (anon {rss['RssAnon'] // 1024}, file "
                 f"{rss['RssFile'] // 1024}), idle CPU {rss['idle_cpu_percent']} %")

        cases = {"notsel": Case([loop, str(n), "0"], IPPROTO_TCP),
                 "mptcp": Case([loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP),
                 "upgraded": Case([selected, str(n), "0"], IPPROTO_MPTCP)}
        progress(f"socket()+close() while the daemon runs, {rounds} rounds")
        res = socket_cost.measure(cases, rounds, progress=progress)
        row["socket"] = {k: {"best_ns": round(r.best), "median_ns": round(r.median),
                             "runs_ns": [round(x) for x in r.runs]} for k, r in res.items()}

        progress(f"event storm: 8 processes x {storm_secs:g} s")
        s = common.event_storm(d, selected, 8, storm_secs)
        row["storm"] = s
        progress(f"  made {s['made']}, counted {s['counted']} (exact: total {s['total_exact']}, per "
                 f"process {s['per_process_exact']}), events dropped {s['events_dropped']}, "
                 f"{s['rate_per_s']}/s")

        progress("`run` via the daemon: check, then latency")
        chk = subprocess.run([CLI, "run", "-v", selected, "1", "0"], env=d.env, capture_output=True,
                             text=True, timeout=300)
        row["run_check"] = {"status": chk.returncode, "stdout": chk.stdout.strip(),
                            "stderr": chk.stderr.strip()}
        if chk.returncode != 0 or "via the daemon" not in chk.stderr or chk.stdout.split()[1] != "262":
            raise RuntimeError(f"run did not use the daemon: {row['run_check']}")
        compile_bytecode()
        lat = {"true": ["true"], "cli_version": [CLI, "--version"], "run_true_daemon": [CLI, "run", "true"]}
        if shutil.which("mptcpize"):
            lat["mptcpize_run_true"] = ["mptcpize", "run", "true"]
        row["latency"] = common.latencies(lat, latency_rounds, env=d.env)
        progress("  " + ", ".join(f"{k} {v['best_ms']:.0f} ms" for k, v in row["latency"].items()))

        progress(f"two-path aggregation with `run` (BPF via the daemon), {xfer_mib} MiB, "
                 f"{xfer_rounds} round(s)")
        row["aggregation"] = {
            "rows": xfer.aggregation({"bpf_daemon": ([CLI, "run"], IPPROTO_MPTCP)},
                                     [("20mbit", "20mbit"), ("20mbit", "6mbit")], xfer_rounds,
                                     xfer_mib << 20, env=d.env, progress=progress),
            "sysctl": common.sysctls()}
        row["rss_end_kb"] = common.rss_breakdown(d.proc.pid)
        st = d.status_cli()
        row["totals_end"] = st["totals"]
    finally:
        row["exit_status"] = d.stop()
        row["log_tail"] = d.read_log().splitlines()[-5:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="cold,toggle,daemon")
    ap.add_argument("-n", "--iterations", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=25, help="rounds of the attached/not attached runs")
    ap.add_argument("--daemon-rounds", type=int, default=7, help="socket() rounds with the daemon")
    ap.add_argument("--cold-runs", type=int, default=2)
    ap.add_argument("--latency-rounds", type=int, default=5)
    ap.add_argument("--storm-secs", type=float, default=10.0)
    ap.add_argument("--xfer-rounds", type=int, default=2)
    ap.add_argument("--xfer-mib", type=int, default=16)
    args = ap.parse_args()
    parts = args.only.split(",")
    result = {"machine": common.machine(), "argv": sys.argv}
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK, mode=0o755)
    pdir = os.path.join(WORK, "policy.d")
    os.makedirs(pdir, mode=0o755)
    loop = socket_cost.build_loop(WORK)
    selected = os.path.join(WORK, "socketloop-selected")
    shutil.copy2(loop, selected)
    move_self_to(CG_RUNNER)
    try:
        if "cold" in parts:
            result["cold"] = part_cold(args.cold_runs, args.latency_rounds)
        if "toggle" in parts:
            common.write_policy(pdir, common.bulk_policy(WORK, selected, rules=1000))
            result["toggle"] = part_toggle(pdir, loop, selected, args.iterations, args.rounds)
        if "daemon" in parts:
            result["daemon"] = {}
            part_daemon(result["daemon"], pdir, loop, selected, args.iterations, args.daemon_rounds,
                        args.latency_rounds, args.storm_secs, args.xfer_rounds, args.xfer_mib)
    except Exception as e:   # report what was measured so far, and the failure
        result["error"] = f"{type(e).__name__}: {e}"
        progress(f"FAILED: {result['error']}")
    finally:
        move_self_to("/sys/fs/cgroup")
        common.remove_bench_cgroups()
    result["loadavg_end"] = common.loadavg()
    common.dump(result, None)
    progress("VM part done")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
