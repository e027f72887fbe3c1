"""Renders docs/BENCHMARKS.md from one run's results (run_all.py's meta, native_bench.py's and
vm_bench.py's JSON). Pure: numbers in, Markdown out. Each figure gets its goal, the measured value, a
verdict (met, or missed by how much) and, for a miss, why and what would close it.

    /opt/mptcpize-py/venv/bin/python bench/render.py RESULTS_DIR > docs/BENCHMARKS.md
"""

import json
import os
import statistics
import sys


def _best(case: dict) -> float:
    return case["best_ns"]


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[1], q[2]


def ratio(cases: dict, a: str, b: str) -> tuple[float, float, float, float] | None:
    """(best A / best B, and the quartiles Q1, median, Q3 of the per-round ratios A/B), or None when a
    case is missing. A and B of one round ran next to each other, so a per-round ratio cancels slow
    drift; its spread shows how much the machine's load moved the numbers."""
    if a not in cases or b not in cases:
        return None
    per_round = [x / y for x, y in zip(cases[a]["runs_ns"], cases[b]["runs_ns"], strict=False)]
    q1, med, q3 = _quartiles(per_round)
    return cases[a]["best_ns"] / cases[b]["best_ns"], med, q1, q3


def verdict_max(value: float | None, goal: float, unit: str = "", fmt: str = "{:.2f}") -> str:
    """'met' when value <= goal, else 'missed by ...' (absolute, and relative to the goal)."""
    if value is None:
        return "not measured"
    if value <= goal:
        return "**met**"
    over = value - goal
    return f"**missed** by {fmt.format(over)}{unit} (+{100 * over / goal:.0f} % of the goal)"


def verdict_min(value: float | None, goal: float) -> str:
    if value is None:
        return "not measured"
    if value >= goal:
        return "**met**"
    return f"**missed** by {goal - value:.2f} (−{100 * (goal - value) / goal:.0f} % of the goal)"


def _agg(rows: list[dict], rates: list[str], name: str) -> dict | None:
    """Throughput ratio name / tcp for one rate pair (transfers of equal size): best / best, and the
    median of the per-round ratios."""
    for row in rows:
        if row["rates"] == rates and name in row["runs"]:
            tcp = [r["mbit_s"] for r in row["runs"]["tcp"]]
            mp = [r["mbit_s"] for r in row["runs"][name]]
            return {"tcp": tcp, "mptcp": mp, "best": max(mp) / max(tcp),
                    "tcp_paths": [_path_rates(r) for r in row["runs"]["tcp"]],
                    "rates": [float(x.replace("mbit", "")) for x in rates],
                    "median": statistics.median(m / t for m, t in zip(mp, tcp, strict=False)),
                    "joins": [r["mp_join_ack_rx"] for r in row["runs"][name]],
                    "paths": [_path_rates(r) for r in row["runs"][name]],
                    "size_mib": row["size"] >> 20}
    return None


def _path_rates(run: dict) -> dict | None:
    """Per path: Mbit/s on the wire over the transfer (the tbf's byte count / the timed interval) and
    packets its queue dropped."""
    p = run.get("paths")
    if not p or not run.get("seconds"):
        return None
    return {dev: {"mbit_s": st["bytes"] * 8 / run["seconds"] / 1e6, "drops": st["drops"]}
            for dev, st in p.items()}


def _mb(kb: int | None) -> str:
    return "–" if kb is None else f"{kb / 1024:.0f} MB"


def _paths_cell(p: dict | None) -> str:
    if not p:
        return "–"
    return " / ".join(f"{p[d]['mbit_s']:.1f} ({p[d]['drops']})" for d in ("mzc1", "mzc2") if d in p)


def _g(d: dict | None, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def render(meta: dict, native: dict, vm: dict, loaders_native: dict | None = None,
           loaders_vm: dict | None = None) -> str:
    L: list[str] = []
    add = L.append
    nm, vmm = native.get("machine", {}), vm.get("machine", {})
    tog = vm.get("toggle", {}).get("cases", {})
    dm = _g(vm, "daemon", "rules_1000", default={})
    d1 = _g(vm, "daemon", "rules_1", default={})
    nsock = _g(native, "socket", "cases", default={})
    nlat = _g(native, "latency", "cases", default={})
    vlat = dm.get("latency", {})
    cold = vm.get("cold", {})
    comp = _g(native, "compile", "runs", default=[])
    misses: list[tuple[str, str]] = []

    # --- the figures ------------------------------------------------------------------------------
    r_notsel = ratio(tog, "notsel_attached", "notsel_detached")
    r_mptcp_att = ratio(tog, "mptcp_attached", "mptcp_detached")
    r_bpf = ratio(tog, "upgraded", "mptcp_detached")
    r_bpf_d = ratio(dm.get("socket", {}), "upgraded", "mptcp")
    r_bpf_att = ratio(tog, "upgraded", "mptcp_attached")
    sel = _g(native, "selection", "cases", default={})
    pt_vm = _g(vm, "toggle", "program_time", default={})
    pt_n = _g(native, "selection", "program_time", default={})
    r_vm_mptcpize = ratio(tog, "mptcpize_detached", "mptcp_detached")
    r_sec = ratio(nsock, "seccomp", "native-mptcp")
    r_mz = ratio(nsock, "mptcpize", "native-mptcp")
    r_tcp = ratio(nsock, "native-tcp", "native-mptcp")

    def lat(d, k):
        return _g(d, k, "best_ms")

    vm_added = None if lat(vlat, "run_true_daemon") is None else lat(vlat, "run_true_daemon") - lat(vlat, "true")
    native_added = None if lat(nlat, "run_true_daemon") is None else \
        lat(nlat, "run_true_daemon") - lat(nlat, "true")
    native_floor = None if lat(nlat, "python_pass") is None else lat(nlat, "python_pass") - lat(nlat, "true")
    phases = _g(native, "latency", "fast_path_phases", default={})
    cold_vm = min(cold["cold_run_true_ms"]) / 1000 if cold.get("cold_run_true_ms") else None
    cold_native = min(r["process_wall_s"] for r in comp) if comp else None
    agg_n = _g(native, "aggregation", "rows", default=[])
    agg_v = _g(dm, "aggregation", "rows", default=[])
    a20_bpf = _agg(agg_v, ["20mbit", "20mbit"], "bpf_daemon")
    a20_sec = _agg(agg_n, ["20mbit", "20mbit"], "seccomp")
    a20_mz = _agg(agg_n, ["20mbit", "20mbit"], "mptcpize")
    a6_bpf = _agg(agg_v, ["20mbit", "6mbit"], "bpf_daemon")
    a6_sec = _agg(agg_n, ["20mbit", "6mbit"], "seccomp")
    a6_mz = _agg(agg_n, ["20mbit", "6mbit"], "mptcpize")
    rss1000 = _g(dm, "rss_kb", "VmRSS")
    rss1 = _g(d1, "rss_kb", "VmRSS")
    nrss1000 = _g(native, "dryrun", "1000", "rss_kb", "VmRSS")
    storm = dm.get("storm")
    nstorm = _g(native, "dryrun", "1000", "storm")

    add("# Benchmarks")
    add("")
    add(f"Generated by `make bench` (`bench/run_all.py`) on {meta['date']} from commit "
        f"`{meta['commit']}`{' (with uncommitted changes)' if meta.get('dirty') else ''}; one run, "
        f"{meta['wall_min']:.0f} min of wall time including any wait for the VM lock. Do not edit by hand: "
        f"rerun `make bench`.")
    add("")
    add("## Machine")
    add("")
    add(f"- Host: {nm.get('cpu', '?')}, {nm.get('cpus', '?')} cores, {nm.get('mem_mb', 0) // 1024} GiB, "
        f"kernel {nm.get('kernel', '?')} (refuses BPF trampolines: the BPF backend cannot run here; "
        f"`run` uses seccomp). Python {nm.get('python', '?')}.")
    add(f"- VM: Debian kernel {vmm.get('kernel', '?')}, {vmm.get('cpus', '?')} vCPUs, "
        f"{vmm.get('mem_mb', 0)} MB, {meta.get('qemu', 'qemu')} **TCG** (software emulation: KVM fails "
        f"on this machine), booted by `scripts/vm.sh`. BPF figures are measured here.")
    add(f"- Load: the machine is shared with other workers running tests and VMs. Load average "
        f"(1/5/15 min) at start {meta['loadavg_start']}, before the VM part {meta.get('loadavg_vm_start')}, "
        f"at the end {meta['loadavg_end']}; other qemu VMs running during the native part: "
        f"{meta.get('other_vms_native', '?')}. The VM part held `/tmp/mptcpize-vm.lock` (no other "
        f"test VM at the same time), but other workers' native tests may have run.")
    add("")
    add("How to read the numbers:")
    add("")
    add("- **Ratios are measured within one run**: the cases of a comparison run in rounds, every case "
        "once per round, every other round in reverse order (A B C, C B A, …), so drift and a "
        "neighbour's load hit all cases alike. The ratio of the best (least disturbed) runs is the "
        "figure; beside it, the median and interquartile range (IQR) of the per-round ratios (A and B of "
        "one round ran next to each other). A wide IQR means the machine's load moved the numbers "
        "more than the effect being measured: read such a figure as a range, not to two decimals.")
    add("- **Absolute times in the VM are TCG times**: every instruction is emulated, so a syscall, an "
        "interpreter start or a bcc compile takes many times longer than on the host. A VM ratio compares "
        "two things emulated alike; a VM duration is not a real-hardware duration. Where a goal is a "
        "duration, the table gives the TCG measurement and a native measurement or estimate, named as such.")
    add("- `socket()+close()` is `bench/socketloop.c` (C, built with gcc at bench time, dynamically "
        "linked): N × `socket(AF_INET, SOCK_STREAM, PROTO)` + `close()`, ns per iteration measured in "
        "the loop; SO_PROTOCOL of the first and last socket is checked, so a case that silently did not "
        "upgrade fails instead of being measured.")
    add("")

    # --- table ------------------------------------------------------------------------------------
    def fr(r, digits=3):
        if r is None:
            return "–"
        return (f"**{r[0]:.{digits}f}** (per round: median {r[1]:.{digits}f}, IQR "
                f"{r[2]:.{digits}f}–{r[3]:.{digits}f})")

    add("## Results")
    add("")
    add("| figure | goal | measured | verdict |")
    add("|---|---|---|---|")
    # Issue 21's goals: the ratios, and the program's own time per call under TCG.
    t_notsel, t_upg = _g(pt_vm, "notsel", "best_ns"), _g(pt_vm, "upgraded", "best_ns")
    v = (f"ratio {verdict_max(r_notsel[0] if r_notsel else None, 1.06)}; own time "
         f"{verdict_max(t_notsel, 250, ' ns', '{:.0f}')}")
    add(f"| socket()+close() of a process NOT selected: program attached / not attached (VM, BPF, "
        f"1,000-rule policy); the program's own time under TCG | ≤ 1.06; ≤ 250 ns | {fr(r_notsel)}; an "
        f"IPPROTO_MPTCP socket, for which the program returns at its first check (the hook's own cost): "
        f"{fr(r_mptcp_att)}{_pt_cell(pt_vm, 'notsel')} | {v} |")
    if (r_notsel and r_notsel[0] > 1.06) or (t_notsel is not None and t_notsel > 250):
        misses.append(("not-selected overhead", _why_notsel(tog, r_notsel, r_mptcp_att, pt_vm, pt_n)))
    v = (f"ratio {verdict_max(r_bpf_att[0] if r_bpf_att else None, 1.05)}; own time "
         f"{verdict_max(t_upg, 400, ' ns', '{:.0f}')}")
    add(f"| upgraded socket()+close() / native `socket(…, IPPROTO_MPTCP)`+close(), the program attached "
        f"(the hook's entry and exit on both sides): **BPF** (VM); the program's own time under TCG "
        f"| ≤ 1.05; ≤ 400 ns | {fr(r_bpf_att)}; against native MPTCP with the program not attached: "
        f"{fr(r_bpf)}; with the real daemon running: {fr(r_bpf_d)}{_pt_cell(pt_vm, 'upgraded')} | {v} |")
    if (r_bpf_att and r_bpf_att[0] > 1.05) or (t_upg is not None and t_upg > 400):
        misses.append(("upgraded socket, BPF", _why_bpf(r_bpf, r_bpf_att, r_mptcp_att, pt_vm, pt_n,
                                                        vm.get("toggle", {}))))
    v = verdict_max(r_sec[0] if r_sec else None, 1.5)
    add(f"| the same: **seccomp**, a dynamically linked loop (libc's socket(): the preloaded shim; native) "
        f"| ≤ 1.5 | {fr(r_sec)} | {v} |")
    if r_sec and r_sec[0] > 1.5:
        misses.append(("upgraded socket, seccomp (dynamic)", _why_seccomp(nsock, r_sec)))
    r_static = ratio(nsock, "seccomp-static", "native-mptcp")
    v = verdict_max(r_static[0] if r_static else None, 8, fmt="{:.1f}")
    add(f"| the same: **seccomp**, a static loop calling syscall(SYS_socket) (the supervisor; native) "
        f"| ≤ 8 | {fr(r_static, 1)} | {v} |")
    if r_static and r_static[0] > 8:
        misses.append(("upgraded socket, seccomp (static)", _why_seccomp(nsock, r_static, "seccomp-static")))
    ab = _g(native, "ab", "cases", default={})
    if ab.get("seccomp") and ab.get("mptcpize"):
        r_ab = max(ab["seccomp"]) / max(ab["mptcpize"])
        add(f"| `ab -n 5000 -c 10` against nginx on loopback, both under the wrapper: requests/s of seccomp "
            f"`run` / `mptcpize run` (best of {len(ab['seccomp'])}; plain TCP {max(ab.get('plain-tcp', [0])):,.0f}) "
            f"| ≥ 0.95 | {r_ab:.2f} ({max(ab['seccomp']):,.0f} / {max(ab['mptcpize']):,.0f} req/s) "
            f"| {verdict_min(r_ab, 0.95)} |")
    add(f"| the same: **mptcpize** (mptcpd's LD_PRELOAD, native; in the VM) | report | {fr(r_mz)}; VM "
        f"{fr(r_vm_mptcpize)} | reported |")
    if native_added is not None or vm_added is not None:
        nat = f"native **{native_added:.0f} ms** (the whole `mptcpize-py run true` against the daemon " \
              f"with a stand-in for its BPF program: see below)" if native_added is not None else "native –"
        floor = f"; of which the interpreter's own start (`python -c pass` − `true`) is {native_floor:.0f} ms" \
            if native_floor is not None else ""
        tcg = f"; TCG {vm_added:.0f} ms" if vm_added is not None else ""
        v = verdict_max(native_added, 50, " ms", "{:.0f}")
        add(f"| `run true` added latency **via the daemon** | ≤ 50 ms | {nat}{floor}{tcg} | native: {v} |")
        if native_added is not None and native_added > 50:
            misses.append(("`run` via the daemon", _why_fast(nlat, native_added, native_floor, phases)))
    else:
        add("| `run true` added latency via the daemon | ≤ 50 ms | not measured | – |")
    if cold_vm is not None or cold_native is not None:
        cv = f"TCG {cold_vm:.1f} s" if cold_vm is not None else "TCG –"
        cn = f"; native (the same program loaded as `run` loads it, the default loader, in a whole " \
             f"process; dry-run build) " \
             f"**{cold_native:.2f} s**" if cold_native is not None else ""
        v = verdict_max(cold_native, 1.5, " s", "{:.2f}")
        add(f"| `run true` added latency **cold** (`run --backend bpf`, no daemon) | ≤ 1.5 s "
            f"| {cv}{cn} | native: {v} |")
        if cold_native is not None and cold_native > 1.5:
            misses.append(("cold `run`", "the program's load at every start (see \"Loaders\")."))
    mzn, mzv = lat(nlat, "mptcpize_run_true"), lat(vlat, "mptcpize_run_true")
    if mzn is not None:
        add(f"| `run true` added latency: **mptcpize** | report | native {mzn - lat(nlat, 'true'):.1f} ms"
            + (f"; TCG {mzv - lat(vlat, 'true'):.0f} ms" if mzv is not None else "")
            + f"; (seccomp `run`, native: {lat(nlat, 'seccomp_run_true') - lat(nlat, 'true'):.0f} ms) "
              "| reported |")

    def agg_cell(a, label):
        if a is None:
            return f"{label} –"
        return f"{label} **{a['best']:.2f}** (per-round median {a['median']:.2f})"

    bpf20 = a20_bpf["best"] if a20_bpf else None
    add(f"| two-path aggregation 2 × 20 Mbit/s: MPTCP / single-path TCP throughput, bytes compared "
        f"| ≥ 1.9 | {agg_cell(a20_bpf, 'BPF (VM)')}; {agg_cell(a20_sec, 'seccomp')}; "
        f"{agg_cell(a20_mz, 'mptcpize')} | BPF {verdict_min(bpf20, 1.9)}; seccomp "
        f"{verdict_min(a20_sec['best'] if a20_sec else None, 1.9)} |")
    for name, a in (("BPF", a20_bpf), ("seccomp", a20_sec)):
        if a is not None and a["best"] < 1.9:
            others = [(n, o) for n, o in (("BPF (VM)", a20_bpf), ("seccomp", a20_sec), ("mptcpize", a20_mz))
                      if o is not None and o is not a]
            misses.append((f"2 × 20 Mbit/s aggregation, {name}", _why_agg20(a, others)))
    add(f"| two-path aggregation 20 + 6 Mbit/s | report vs 26/20 = 1.30 | {agg_cell(a6_bpf, 'BPF (VM)')}; "
        f"{agg_cell(a6_sec, 'seccomp')}; {agg_cell(a6_mz, 'mptcpize')} | reported (see below) |")
    worst = max((x for x in (rss1000, nrss1000) if x), default=None)
    v = verdict_max(worst / 1024 if worst else None, 40, " MB", "{:.0f}")
    add(f"| daemon steady-state RSS with 1,000 rules (VM; native dry run) | ≤ 40 MB | VM **{_mb(rss1000)}** "
        f"(1 rule: {_mb(rss1)}); native dry run **{_mb(nrss1000)}** "
        f"(1 rule: {_mb(_g(native, 'dryrun', '1', 'rss_kb', 'VmRSS'))}) | {v} |")
    if worst and worst / 1024 > 40:
        misses.append(("daemon RSS", _why_rss(dm, d1, comp, native)))
    rv, rn = _g(dm, "ready_s"), _g(native, "dryrun", "1000", "ready_s")
    if rv is not None or rn is not None:
        add(f"| daemon start to READY, 1,000 rules (spawn to the control socket's first answer; the "
            f"program is attached and the policy loaded by then) | report | VM (TCG) "
            f"{'–' if rv is None else f'{rv:.1f} s'} (1 rule: {_g(d1, 'ready_s', default='–')} s); native "
            f"dry run {'–' if rn is None else f'{rn:.2f} s'} (1 rule: "
            f"{_g(native, 'dryrun', '1', 'ready_s', default='–')} s) | reported |")
    for where, s_ in (("VM, BPF", storm), ("native dry run", nstorm)):
        if not s_:
            continue
        exact = s_["total_exact"] and s_["per_process_exact"]
        ok = exact and s_["events_dropped"] == 0
        add(f"| upgrade events in a flood: 8 processes making sockets as fast as they can for "
            f"{s_['seconds']:g} s ({where}) | 0 dropped, counts exact | {s_['made']:,} sockets, "
            f"`status --json` {s_['counted']:,} ({'exact' if exact else 'NOT exact'}, per process "
            f"{'exact' if s_['per_process_exact'] else 'NOT exact'}); **{s_['events_dropped']:,}** events "
            f"dropped; first upgrade of {s_['first_upgrade_logged']} of {s_['procs']} processes logged; "
            f"{s_['rate_per_s']:,}/s | {'**met**' if ok else '**missed**'} |")
        if not ok:
            misses.append((f"events in a flood ({where})", "events dropped or counts not exact: see "
                           "Upgrade events below."))
    add("")

    # --- details ----------------------------------------------------------------------------------
    add("## Details")
    add("")
    add("### socket()+close() (VM, BPF)")
    add("")
    t = vm.get("toggle", {})
    if not tog:
        add("Not measured in this run (see the VM part's error below).")
        add("")
    else:
        add(f"One Python process loads the program exactly as the daemon does (`loader.Rewriter`, the 1,000-rule "
            f"policy: 799 executable rules, 200 cgroup rules, the loop's own executable; loaded in "
            f"{t.get('load_s', '?')} s under TCG) and closes / re-creates its fmod_ret link between runs, "
            f"so \"attached\" and \"not attached\" alternate run by run. Its ring buffer is read by a thread, "
            f"as in the daemon ({t.get('events_received', '?'):,} events read for "
            f"{t.get('counters', {}).get('upgraded', 0):,} upgraded sockets: one per process). The loop runs in cgroup "
            f"`/mzb-bench/runner` (depth 2, like a systemd service), so each verdict the program makes "
            f"again (at most every 25 jiffies per thread) walks three cgroup levels. {t.get('iterations', '?'):,} iterations per run, {t.get('rounds', '?')} "
            f"rounds.")
        add("")
        add("| case | best ns | median ns | best / native MPTCP (not attached) |")
        add("|---|---|---|---|")
        base = tog.get("mptcp_detached", {}).get("best_ns")
        labels = {"notsel_detached": "TCP, not selected, program not attached",
                  "notsel_attached": "TCP, not selected, program attached",
                  "mptcp_detached": "native IPPROTO_MPTCP, program not attached",
                  "mptcp_attached": "native IPPROTO_MPTCP, program attached",
                  "upgraded": "TCP asked, upgraded by the program (exe rule)",
                  "mptcpize_detached": "TCP asked, upgraded by mptcpize (LD_PRELOAD)"}
        for k, lab in labels.items():
            if k in tog:
                add(f"| {lab} | {tog[k]['best_ns']:,} | {tog[k]['median_ns']:,} | "
                    f"{tog[k]['best_ns'] / base:.3f} |")
        add("")
        if r_mptcp_att:
            add(f"An application that asks for MPTCP itself pays {100 * (r_mptcp_att[0] - 1):+.1f} % with the "
                f"program attached (the program returns at its protocol check).")
            add("")
    if pt_vm or pt_n:
        add("### The program's own time per call")
        add("")
        add("Measured by the kernel while the loops run (`bpf(BPF_ENABLE_STATS)`: run_time_ns / run_cnt of "
            "the program, read from /proc/self/fdinfo), in extra runs after the timed rounds. It excludes the "
            "syscall and the hook's entry and exit, and a neighbour's load hardly moves it; it includes two "
            "sched_clock() reads per call, which the IPPROTO_MPTCP case (the program returns at its first "
            "check) shows.")
        add("")
        add("| case | VM (TCG, fmod_ret) best ns | median | native (dry-run build, tracepoint) best ns | median |")
        add("|---|---|---|---|---|")
        for lab, kv, kn in (("not selected (1,000-rule policy; in the VM from cgroup depth 2)", "notsel", "notsel"),
                            ("selected: upgraded (VM) / counted (dry run)", "upgraded", "selected"),
                            ("IPPROTO_MPTCP asked: returns at once", "mptcp", "mptcp")):
            def c(d, k, f):
                x = _g(d, k, f)
                return "–" if x is None else f"{x:,.1f}"
            add(f"| {lab} | {c(pt_vm, kv, 'best_ns')} | {c(pt_vm, kv, 'median_ns')} | "
                f"{c(pt_n, kn, 'best_ns')} | {c(pt_n, kn, 'median_ns')} |")
        add("")
    ds = dm.get("socket")
    if ds:
        add(f"With the real daemon running (1,000 rules, its Python loop reading the ring buffer on the "
            f"other vCPU): not selected {ds['notsel']['best_ns']:,} ns, native MPTCP "
            f"{ds['mptcp']['best_ns']:,} ns, upgraded {ds['upgraded']['best_ns']:,} ns (best of "
            f"{len(ds['mptcp']['runs_ns'])}).")
        add("")
    if sel:
        sp = native.get("selection", {})
        add("### The program's cost on real hardware (native, dry-run build)")
        add("")
        add(f"This host refuses fmod_ret, but the dry-run build of the same program (`loader.Rewriter"
            f"(dry_run=True)`: the same decide(), with counters, per-process stats and the first-upgrade "
            f"event, on the "
            f"`syscalls:sys_enter_socket` tracepoint; it changes no socket) loads here. With the 1,000-rule "
            f"policy, its tracepoint detached / re-attached between runs, {sp.get('iterations', 0):,} "
            f"iterations, {sp.get('rounds', '?')} rounds (counters: {sp.get('counters', {}).get('upgraded', 0):,} "
            f"selected sockets counted, {sp.get('counters', {}).get('events_dropped', 0):,} events dropped):")
        add("")
        add("| case | best ns | median ns | best / not attached |")
        add("|---|---|---|---|")
        slabels = {"tcp_detached": ("TCP, program not attached", "tcp_detached"),
                   "notsel_attached": ("TCP, not selected, attached", "tcp_detached"),
                   "selected_attached": ("TCP, selected (would be upgraded), attached", "tcp_detached"),
                   "mptcp_detached": ("native IPPROTO_MPTCP, not attached", "mptcp_detached"),
                   "mptcp_attached": ("native IPPROTO_MPTCP, attached", "mptcp_detached")}
        for k, (lab, b) in slabels.items():
            if k in sel:
                add(f"| {lab} | {sel[k]['best_ns']:,} | {sel[k]['median_ns']:,} | "
                    f"{sel[k]['best_ns'] / sel[b]['best_ns']:.3f} |")
        add("")
        add("The tracepoint is not the fmod_ret hook: it puts every syscall of every task on the "
            "syscall-tracing slow path while attached, so these are upper bounds for the hook's own cost; "
            "the selection and event work is the same code.")
        add("")
    add("### socket()+close() (native: seccomp, mptcpize)")
    add("")
    ns = native.get("socket", {})
    add(f"{ns.get('iterations', '?'):,} iterations per run, {ns.get('rounds', '?')} rounds, host kernel.")
    add("")
    add("| case | best ns | median ns | best / native MPTCP |")
    add("|---|---|---|---|")
    for k in ("native-tcp", "native-mptcp", "seccomp", "mptcpize", "static-mptcp", "seccomp-static"):
        if k in nsock:
            add(f"| {k} | {nsock[k]['best_ns']:,} | {nsock[k]['median_ns']:,} | "
                f"{nsock[k]['best_ns'] / nsock['native-mptcp']['best_ns']:.2f} |")
    add("")
    if r_tcp:
        add(f"(Native TCP / native MPTCP on this host: {r_tcp[0]:.2f}.)")
        add("")

    add("### `run true` latency")
    add("")
    add("Wall time from spawning the command to its exit, best of the rounds (ms); \"added\" = minus "
        "`true` alone.")
    add("")
    add("| command | native best | native median | VM (TCG) best | VM (TCG) median |")
    add("|---|---|---|---|---|")
    rows = [("`true`", "true", "true"), ("`python -c pass`", "python_pass", None),
            ("`python -S -c pass` (no site)", "python_nosite", None),
            ("`mptcpize-py --version` (interpreter + CLI import)", "cli_version", "cli_version"),
            ("`mptcpize-py run true` via the daemon (native: a stand-in for its BPF program)",
             "run_true_daemon", "run_true_daemon"),
            ("`mptcpize-py run --backend seccomp true`", "seccomp_run_true", None),
            ("`mptcpize run true` (mptcpd)", "mptcpize_run_true", "mptcpize_run_true")]
    for lab, nk, vk in rows:
        def cell(d, k, what):
            x = _g(d, k, what) if k else None
            return "–" if x is None else f"{x:.1f}"
        add(f"| {lab} | {cell(nlat, nk, 'best_ms')} | {cell(nlat, nk, 'median_ms')} | "
            f"{cell(vlat, vk, 'best_ms')} | {cell(vlat, vk, 'median_ms')} |")
    if cold.get("cold_run_true_ms"):
        add(f"| `mptcpize-py run --backend bpf true`, no daemon (cold) | – | – | "
            f"{min(cold['cold_run_true_ms']):.0f} | {max(cold['cold_run_true_ms']):.0f} (worst of "
            f"{len(cold['cold_run_true_ms'])}) |")
    add("")
    if lat(nlat, "run_true_daemon") is not None:
        add("`run` via the daemon natively: this host's kernel refuses the hook, so the daemon is "
            "`bench/standin_daemon.py`: the real daemon (service.Daemon, its control server and handlers) "
            "with a stand-in for the BPF program, so `register` skips one BPF map write (microseconds). "
            "The command is the real `mptcpize-py run true` (console script, bytecode compiled as an "
            "installed package has it): interpreter start, imports, `hello`, fork, the child's `register`, "
            "exec, wait, `run_report`.")
        if phases:
            add("")
            add(f"Its client side, timed inside one such process (best of the rounds): imports "
                f"{phases.get('imports_ms', 0):.1f} ms (beyond what the interpreter's own start-up loaded), "
                f"`hello` {phases.get('hello_ms', 0):.1f} ms, fork + `register` + exec + wait + `run_report` "
                f"{phases.get('run_ms', 0):.1f} ms; the rest is the interpreter's start and exit "
                f"(`python -c pass`: {lat(nlat, 'python_pass') or 0:.1f} ms here, {lat(nlat, 'python_nosite') or 0:.1f} ms "
                f"without `site`, whose .pth files on this machine import certifi and pathlib).")
        add("")
    if comp:
        c0 = comp[0]
        add(f"Cold start natively: a process that imports mptcpize_py ({c0['import_ours_s']:.2f} s) and "
            f"loads the program with the default loader (`Rewriter(dry_run=True)`: the prebuilt object "
            f"by libbpf where `make bpf` built it; the socket() tracepoint instead of the fmod_ret hook, "
            f"which this host refuses; {c0['load_s']:.2f} s) took "
            + ", ".join(f"{r['process_wall_s']:.2f} s" for r in comp)
            + f" in total, of which {c0['import_s']:.2f} s imports bcc after the load (for the RSS "
              "figures under \"Daemon memory\"; `run` itself does not). A cold `run` adds an fmod_ret "
              "attach (milliseconds) and the fork + exec of CMD. Under TCG the same load takes "
            + (f"{t.get('load_s', 0):.1f}" if t else "?") + " s (\"Loaders\" has the whole commands).")
        add("")

    add("### Two-path aggregation")
    add("")
    add("`tests/netlab.py` TwoPathLab (namespaces mzb-cli / mzb-srv, 10.251.1.0/24 and 10.251.2.0/24), a "
        "tbf bottleneck client → server on each path (path 2 changed to 6 Mbit/s for the second case). "
        "Client and server are `bench/xfer.py` (plain `socket.socket()` Python), both under the wrapper; "
        "the client sends a fixed amount, the server counts bytes and CRC32 (compared with the client's) "
        "and times first to last byte. Single-path TCP = the same programs without a wrapper (path 1). "
        "BPF = `mptcpize-py run` in the VM with the daemon running (the fast path); seccomp and mptcpize "
        "natively.")
    add("")
    add("| paths | where | case | Mbit/s, each round | MPTCP / TCP: best; per-round median | MP_JOIN acked | "
        "path 1 / path 2 on the wire, Mbit/s (drops) |")
    add("|---|---|---|---|---|---|---|")
    for where, groups in (("VM", ((["20mbit", "20mbit"], (("BPF", a20_bpf),)),
                                  (["20mbit", "6mbit"], (("BPF", a6_bpf),)))),
                          ("native", ((["20mbit", "20mbit"], (("seccomp", a20_sec), ("mptcpize", a20_mz))),
                                      (["20mbit", "6mbit"], (("seccomp", a6_sec), ("mptcpize", a6_mz)))))):
        for rates, cases in groups:
            cases = [(n, a) for n, a in cases if a is not None]
            if not cases:
                continue
            p = " + ".join(r.replace("mbit", "") for r in rates)
            add(f"| {p} | {where} | TCP | {', '.join(f'{x:.1f}' for x in cases[0][1]['tcp'])} | | | "
                f"{'; '.join(_paths_cell(x) for x in cases[0][1]['tcp_paths'])} |")
            for label, a in cases:
                add(f"| {p} | {where} | {label} | {', '.join(f'{x:.1f}' for x in a['mptcp'])} | "
                    f"{a['best']:.2f}; {a['median']:.2f} | {', '.join(str(j) for j in a['joins'])} | "
                    f"{'; '.join(_paths_cell(x) for x in a['paths'])} |")
    add("")
    size = (a20_sec or a20_bpf or {}).get("size_mib", "?")
    add(f"{size} MiB per transfer. Congestion control: host "
        f"`{_g(native, 'aggregation', 'sysctl', 'net.ipv4.tcp_congestion_control', default='?')}`, VM "
        f"`{_g(dm, 'aggregation', 'sysctl', 'net.ipv4.tcp_congestion_control', default='?')}`; MPTCP "
        f"scheduler `default` in both.")
    add("")
    add(_why_agg6(a6_bpf, a6_sec, a6_mz,
                  _g(native, "aggregation", "sysctl", "net.ipv4.tcp_congestion_control", default="?"),
                  _g(dm, "aggregation", "sysctl", "net.ipv4.tcp_congestion_control", default="?")))
    add("")

    add("### Daemon memory")
    add("")
    add("| daemon | ready after | VmRSS | RssAnon | RssFile | idle CPU |")
    add("|---|---|---|---|---|---|")
    for lab, row in (("VM, 1 rule", d1), ("VM, 1,000 rules", dm),
                     ("native dry run, 1 rule", _g(native, "dryrun", "1", default={})),
                     ("native dry run, 1,000 rules", _g(native, "dryrun", "1000", default={}))):
        r = row.get("rss_kb") if row else None
        if not r:
            continue
        add(f"| {lab} | {row.get('ready_s', '?')} s | {_mb(r.get('VmRSS'))} | {_mb(r.get('RssAnon'))} | "
            f"{_mb(r.get('RssFile'))} | {r.get('idle_cpu_percent', '?')} % |")
    if dm.get("rss_end_kb"):
        add(f"| VM, 1,000 rules, after all VM benchmarks | | {_mb(dm['rss_end_kb'].get('VmRSS'))} | "
            f"{_mb(dm['rss_end_kb'].get('RssAnon'))} | {_mb(dm['rss_end_kb'].get('RssFile'))} | |")
    add("")
    add("RSS is read from `/proc/PID/status` after 10 s of idling once the control socket answers; idle "
        "CPU is the daemon's own over those 10 s (its policy is re-resolved every 2 s). \"Ready after\" "
        "is from spawn to the first control-socket answer (the program is attached by then). The "
        "native dry run is the same daemon with the program on the socket() tracepoint (no upgrades): "
        "the same Python and loader.")
    dn1000 = _g(native, "dryrun", "1000", "rss_kb", "idle_cpu_percent")
    dv1000 = _g(dm, "rss_kb", "idle_cpu_percent")
    if dn1000 is not None:
        add("")
        add(f"Idle CPU with 1,000 rules (re-resolving the policy every 2 s: 799 executables opened and "
            f"looked up, 200 cgroups): {dn1000} % of a core natively"
            + (f", {dv1000} % under TCG" if dv1000 is not None else "") + ".")
    if comp:
        c0 = comp[0]
        add("")
        add(f"Where it goes (native, one process): Python with mptcpize_py's daemon modules "
            f"{_mb(c0['rss_python_kb']['VmRSS'])}; after loading the program with the default loader "
            f"{_mb(c0['rss_kb']['VmRSS'])} (anon {_mb(c0['rss_kb']['RssAnon'])}, file "
            f"{_mb(c0['rss_kb']['RssFile'])}); importing bcc as well (libbcc with LLVM and clang linked "
            f"in: what `--loader bcc`'s throwaway child pays) takes it to "
            f"{_mb(c0['rss_bcc_imported_kb']['VmRSS'])}.")
    add("")

    add("### Upgrade events")
    add("")
    for lab, s in (("VM (BPF, fmod_ret)", storm), ("native dry run (socket() tracepoint)", nstorm)):
        if not s:
            continue
        add(f"- {lab}: 8 × `socketloop -t {s['seconds']:g} 0` (selected by an exe rule of the 1,000-rule "
            f"policy): {s['made']:,} sockets made ({s['rate_per_s']:,}/s), `status --json` counted "
            f"{s['counted']:,} in total and per process {'exactly' if s['per_process_exact'] else 'NOT exactly'}; "
            f"{s['events_dropped']:,} events dropped by the ring buffer "
            f"({100 * s['events_dropped'] / max(s['made'], 1):.1f} %), counted in `events_dropped`; the "
            f"first upgrade of {s['first_upgrade_logged']} of 8 processes logged.")
    add("")
    add("The per-process and total counts are kernel maps updated in the hook (exact by construction). "
        "The ring buffer carries one event per process, at its first upgrade (the program's insert into "
        "the per-process map), which is all the daemon and `run -v` use events for: the first-upgrade log "
        "line and the process's exe and cgroup. A flood of sockets sends as many events as it has "
        "processes; a dropped event would cost a log line, never a count.")
    add("")

    # --- misses -----------------------------------------------------------------------------------
    add("## Misses, and what would close them")
    add("")
    if not misses:
        add("Every goal was met in this run.")
    for title, text in misses:
        add(f"- **{title}**: {text}")
    add("")
    if vm.get("error"):
        add(f"The VM part stopped early: `{vm['error']}`.")
        add("")

    add("## Commands")
    add("")
    add("```sh")
    for c in meta["commands"]:
        add(c)
    add("```")
    add("")
    add(f"Raw results of this run: `{meta['results_dir']}/{{native,vm,meta}}.json` (not kept in the repo). "
        "`python bench/render.py DIR` re-renders this file from them.")
    if loaders_native or loaders_vm:
        add("")
        L.extend(render_loaders(loaders_native or {}, loaders_vm or {}))
    return "\n".join(L) + "\n"


# --- the "why" texts: computed from the run's numbers ----------------------------------------------
def _pt_cell(pt: dict, case: str) -> str:
    """'; program time per call: X ns (returning at once: Y ns)' for the table, or ''."""
    x, m = _g(pt, case, "best_ns"), _g(pt, "mptcp", "best_ns")
    if x is None:
        return ""
    return f"; the program's own time per call (kernel-measured): {x:,.0f} ns (returning at once: {m:,.0f} ns)"


def _why_notsel(tog, r, r_hook, pt_vm, pt_n) -> str:
    d = tog["notsel_attached"]["best_ns"] - tog["notsel_detached"]["best_ns"]
    text = (f"under TCG the attached program adds {d:+,} ns (best against best) to each TCP socket() of a "
            f"process it does not select (per-round median ratio {r[1]:.3f}, IQR {r[2]:.3f}–{r[3]:.3f}). ")
    if r_hook:
        text += (f"An IPPROTO_MPTCP socket(), for which the program returns at its first check, pays "
                 f"{r_hook[0]:.3f} (median {r_hook[1]:.3f}): the fmod_ret trampoline's entry and exit, "
                 f"paid by every socket() on the machine whatever the program does. ")
    pn, pm = _g(pt_vm, "notsel", "best_ns"), _g(pt_vm, "mptcp", "best_ns")
    if pn is not None and pm is not None:
        text += (f"The program's own time for a not-selected socket() is {pn:,.0f} ns under TCG, "
                 f"{pm:,.0f} ns when it returns at once (clock reads included): the selection, now a "
                 f"cached per-thread verdict (one task-storage lookup, the cgroup id and jiffies, the run "
                 f"tree's and the exe and cgroup rules' lookups only when it is made again), is "
                 f"{pn - pm:,.0f} ns of the {d:,} ns. ")
    nn, nm = _g(pt_n, "notsel", "best_ns"), _g(pt_n, "mptcp", "best_ns")
    if nn is not None and nm is not None:
        text += (f"On real hardware (this host, dry-run build) the same is {nn:.0f} ns against {nm:.0f} ns "
                 f"returning at once. ")
    if pn is not None and pm is not None and pn - pm > d / 2:
        return text + ("Most of it is the selection work: what would close it is fewer verdicts made "
                       "again (a longer lifetime, with userspace telling the program when the policy "
                       "changed) or cheaper ones.")
    return text + ("A program that returns at once already costs the figure above under TCG; what a "
                   "not-selected socket adds to it is bpf_get_current_task_btf() and the verdict's "
                   "task-storage lookup (~12 ns natively). Dropping the lookup would need a verdict cached "
                   "elsewhere (e.g. per CPU, keyed by process), which could apply a stale verdict across an "
                   "exec: not done. TCG's cost for the hook is not real hardware's; what would settle it: "
                   "the same measurement with fmod_ret on real hardware (this host refuses trampolines), "
                   "where the trampoline is a few ns of a ~2 µs socket()+close().")


def _why_bpf(r_bpf, r_att, r_hook, pt_vm, pt_n, tog_part) -> str:
    text = ("an upgraded socket() pays the hook's entry and exit")
    if r_hook:
        text += (f" (an application asking for MPTCP itself pays them too: {r_hook[0]:.3f}, median "
                 f"{r_hook[1]:.3f})")
    text += ", then the program's work: the cached verdict, the namespace's net.mptcp.enabled read from " \
            "kernel memory (three bpf_probe_read_kernel() calls: mptcp_pernet_id, net->gen->ptr[id], the " \
            "flag), and three exact counters (the per-CPU totals, the per-CPU per-rule array: an index, " \
            "no hash, no atomic; the process's LRU entry and its atomic add). "
    pu, pm = _g(pt_vm, "upgraded", "best_ns"), _g(pt_vm, "mptcp", "best_ns")
    if pu is not None and pm is not None:
        text += f"Under TCG the program takes {pu:,.0f} ns per upgraded socket ({pm:,.0f} ns returning at once). "
    if r_att:
        text += (f"Against native MPTCP with the program attached (the hook on both sides) the ratio is "
                 f"{r_att[0]:.3f} (median {r_att[1]:.3f}). ")
    ev, up = tog_part.get("events_received"), _g(tog_part, "counters", "upgraded")
    if ev is not None and up:
        text += (f"The ring-buffer event is no longer part of it: {ev:,} events for {up:,} upgraded sockets "
                 f"(one per process). ")
    return text + ("Natively (dry-run build, cut at points) the upgraded path is ~38 ns to the task and "
                   "tgid, +8 the verdict's task-storage lookup, +15 the netns guard's three reads, +3 the "
                   "counters, +12 to +17 the per-process LRU lookup and atomic add; under TCG each "
                   "nanosecond is roughly 12-16. What would close the rest: the per-process count out "
                   "of the hot path, as per-thread counts in task storage; not done, because `status` "
                   "must count a live, idle process exactly, and user space can read task storage only "
                   "from Linux 6.9 (the hook is 6.6); and fewer guard reads (net_generic's array index "
                   "needs a probe read: the verifier refuses a variable offset into a BTF pointer). A "
                   "measurement on real hardware, where the hook's entry and exit are not emulated, "
                   "would settle how much of the ratio is TCG's.")


def _why_seccomp(nsock, r, case: str = "seccomp") -> str:
    per = nsock[case]["best_ns"] - nsock["native-mptcp"]["best_ns"]
    return (f"a socket() the preloaded shim cannot reach (static binaries, raw syscalls, Go, setuid programs) is "
            f"a round trip to the supervisor, a Python thread (~{per / 1000:.0f} µs more than a native MPTCP "
            f"socket() here): the caller stops, the supervisor wakes (RECV), reads the caller's facts through "
            f"/proc files it keeps open per thread (status: credentials; ns/net and ns/user; cgroup; the LSM "
            f"label where there is one), checks the notification is still valid, creates the socket and "
            f"installs it with SECCOMP_IOCTL_NOTIF_ADDFD, and the caller resumes. Measured per call "
            f"(\"seccomp supervisor: where a call's µs go\" below): the /proc reads are ~7 µs (status alone ~3 µs: the kernel "
            f"generates the whole file), ADDFD with the wake-up ~5 µs, RECV ~2.5 µs, the rest the "
            f"interpreter. What would close it: a supervisor without an interpreter in the loop (C or Rust), "
            f"and credentials revalidated without reading status (e.g. notified set*id/capset/exec calls, "
            f"which the filter would also have to catch for the i386 and x32 ABIs it lets through today). "
            f"On this 2-vCPU VM each round trip also waits for an idle vCPU to wake up: measured by hand "
            f"(2026-12-08, quiet machine), the static loop under `run --backend seccomp` costs ~87 µs per "
            f"call free and ~25 µs pinned to one CPU (`taskset -c 0`), and ~22 µs with a busy loop "
            f"keeping the other vCPU awake; the 14× of the previous run was measured while other work "
            f"kept both vCPUs busy. The kernel's synchronous wake-ups (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, "
            f"Linux 6.6) are now really set (the flag went by pointer and was refused) but did not move "
            f"this figure. It is paid once per socket(), not per byte (the aggregation rows are unaffected).")


def _why_fast(nlat, added, floor, phases) -> str:
    text = (f"`run true` via the daemon took {added:.0f} ms more than `true` natively: interpreter start-up "
            f"and exit")
    if floor is not None:
        text += f" ({floor:.0f} ms for `python -c pass`)"
    if phases:
        text += (f", imports {phases.get('imports_ms', 0):.1f} ms, `hello` {phases.get('hello_ms', 0):.1f} ms, "
                 f"fork + `register` + exec + wait + `run_report` {phases.get('run_ms', 0):.1f} ms")
    nosite = _g(nlat, "python_nosite", "best_ms")
    if nosite is not None:
        text += f"; without `site` the interpreter starts in {nosite:.0f} ms"
    return text + (". What would close it: an interpreter start without `site` (`python -I -S` in the "
                   "console script; this machine's site .pth files import certifi), or a small compiled "
                   "client for the fast path (connect, register, exec).")


def _why_rss(dm, d1, comp, native) -> str:
    text = "bcc links LLVM and clang into the daemon"
    if comp:
        c0 = comp[0]
        py, imp, ld = c0["rss_python_kb"], c0["rss_bcc_imported_kb"], c0["rss_kb"]
        text += (f": natively, Python and our modules are {py['VmRSS'] / 1024:.0f} MB; `import bcc` adds "
                 f"{(imp['VmRSS'] - py['VmRSS']) / 1024:.0f} MB (libbcc's LLVM and clang: "
                 f"{(imp['RssFile'] - py['RssFile']) / 1024:.0f} MB of mapped library pages, "
                 f"{(imp['RssAnon'] - py['RssAnon']) / 1024:.0f} MB anonymous); compiling the "
                 f"program adds {(ld['VmRSS'] - imp['VmRSS']) / 1024:.0f} MB more "
                 f"({(ld['RssAnon'] - imp['RssAnon']) / 1024:.0f} MB of heap kept after the compile, "
                 f"{(ld['RssFile'] - imp['RssFile']) / 1024:.0f} MB more library pages touched)")
    r1, r1000 = _g(d1, "rss_kb", "VmRSS"), _g(dm, "rss_kb", "VmRSS")
    if r1 and r1000:
        text += f"; in the VM, 1,000 rules cost {(r1000 - r1) / 1024:+.0f} MB over 1 rule"
    anon = _g(dm, "rss_kb", "RssAnon")
    if anon:
        text += (f". Counting only anonymous memory (RssAnon; RssFile is clean library pages shared with any "
                 f"other process mapping them, which the kernel can drop) the VM daemon holds "
                 f"{anon / 1024:.0f} MB")
    return (text + ". What would close it: ship the program as a CO-RE object compiled at build time "
            "(clang -target bpf against a vmlinux.h) and load it with libbpf, so the daemon never maps "
            "LLVM; or compile in a short-lived child that hands the loaded program's link and map file "
            "descriptors to the daemon over a Unix socket (the daemon then needs map access without bcc). "
            "Either leaves roughly the Python-only figure above.")


def _why_agg20(a, others) -> str:
    text = (f"throughputs {', '.join(f'{x:.1f}' for x in a['mptcp'])} vs single-path TCP "
            f"{', '.join(f'{x:.1f}' for x in a['tcp'])} Mbit/s ({a['size_mib']} MiB each). ")
    wire = [p[d]["mbit_s"] for p in a["paths"] if p for d in ("mzc1", "mzc2") if d in p]
    tcp_wire = [p["mzc1"]["mbit_s"] for p in a["tcp_paths"] if p and "mzc1" in p]
    if wire and tcp_wire:
        text += (f"On the wire each MPTCP path carried {min(wire):.1f}–{max(wire):.1f} Mbit/s of its "
                 f"{a['rates'][0]:g}, less than plain TCP got from one path in the same place "
                 f"({max(tcp_wire):.1f}): the paths were not the limit. ")
        if max(wire) < 0.95 * a["rates"][0]:
            text += ("What limited it is most likely the emulated CPU: in the VM every instruction is "
                     "emulated (TCG), and filling two paths (Python sender and receiver, the emulated "
                     "kernel's TCP/MPTCP stack, 2 vCPUs) is twice the work of filling one. ")
    if others:
        text += ("The same kernel socket made another way reached " + ", ".join(
            f"{n} {o['best']:.2f}" for n, o in others) + " in the same run"
            + (" (natively, both paths full). " if any(o["best"] >= 1.9 for _n, o in others) else ". "))
    return text + ("How the socket became MPTCP does not touch the data path (the hook runs once per "
                   "socket()). What would close it: the same measurement on a VM with KVM or on real "
                   "hardware with the hook (neither available here).")


def _why_agg6(a_bpf, a_sec, a_mz, cc_host: str, cc_vm: str) -> str:
    vals = [f"{n} {a['best']:.2f}" for n, a in (("BPF (VM)", a_bpf), ("seccomp", a_sec), ("mptcpize", a_mz)) if a]
    text = "20 + 6 Mbit/s against the ideal 26/20 = 1.30: " + ", ".join(vals) + ". Where the bytes went "
    text += "(per round, wire rates include headers and retransmissions; drops at path 2's queue): "
    rows = []
    for n, a, cc in (("VM", a_bpf, cc_vm), ("host, seccomp", a_sec, cc_host), ("host, mptcpize", a_mz, cc_host)):
        if a and any(a["paths"]):
            p1 = [p["mzc1"]["mbit_s"] for p in a["paths"] if p]
            t1 = [p["mzc1"]["mbit_s"] for p in a["tcp_paths"] if p]
            drops = [p["mzc2"]["drops"] for p in a["paths"] if p]
            rows.append(f"{n} ({cc}): path 1 {min(p1):.1f}–{max(p1):.1f} Mbit/s (plain TCP there: "
                        f"{min(t1):.1f}–{max(t1):.1f}), path 2 drops {', '.join(str(d) for d in drops)}")
    text += "; ".join(rows) + ". "
    return text + (
        "Path 2 is full in every case. Where its queue drops hundreds of packets (on the host, whose "
        "congestion control is BBR, probing past the 6 Mbit/s tbf's queue), path 1 runs well below what "
        "plain TCP gets from it: data lost on the slow path must be retransmitted there before the "
        "receiver can deliver, in order, what the fast path already carried, and the connection-level "
        "window then stalls the fast subflow (head-of-line blocking). Where it barely drops (the VM, "
        "CUBIC), path 1 stays close to the plain-TCP rate and the ratio comes close to the ideal. None of this depends on how the socket became MPTCP: BPF, "
        "seccomp and mptcpize give the same kernel socket. It is the kernel's congestion control and "
        "MPTCP scheduling on unequal paths (these kernels offer one scheduler, `net.mptcp.scheduler` = "
        "`default`; this host's namespaces may use only reno or bbr, so the host could not be measured "
        "with CUBIC, and the VM runs another kernel, 6.12).")


# The start-time goals (issue 19): the daemon to READY and `run --backend bpf true` cold.
LOADER_GOALS_S = {"native": 0.3, "vm": 3.0}
LIBBPF = "libbpf (prebuilt CO-RE object)"


def _loader_table(res: dict, where: str) -> list[str]:
    """One loader_bench.py result (its JSON) as a table, the libbpf row judged against the goal."""
    goal = LOADER_GOALS_S[where]
    run = "run cold (load stand-in)" if res.get("dry_run") else "`run --backend bpf -- true` cold"
    out = [f"| loader | daemon start to READY | {run} | daemon VmRSS (RssAnon + RssFile) |",
           "|---|---|---|---|"]
    for name, c in res.get("configs", {}).items():
        raw, rss = c.get("raw", {}), c["rss_kb"]
        spread = {k: f" ({min(xs):.2f}–{max(xs):.2f})" if len(xs) > 1 else ""
                  for k in ("ready_s", "run_s") for xs in [raw.get(k, [])]}

        bold = "**" if name == LIBBPF else ""
        out.append(f"| {bold}{name}{bold} | {bold}{c['ready_s']:.2f} s{bold}{spread['ready_s']} | "
                   f"{bold}{c['run_s']:.2f} s{bold}{spread['run_s']} | {rss['VmRSS'] / 1024:.1f} MB "
                   f"({rss['RssAnon'] / 1024:.1f} + {rss['RssFile'] / 1024:.1f}) |")
    lib = res.get("configs", {}).get(LIBBPF)
    if lib:
        out += ["", f"Goal ≤ {goal:g} s for libbpf: READY {verdict_max(lib['ready_s'], goal, ' s')}; "
                    f"run {verdict_max(lib['run_s'], goal, ' s')}."]
    return out


def render_loaders(native: dict, vm: dict) -> list[str]:
    """The "Loaders" section from bench/loader_bench.py's JSON, natively (dry run) and in the VM."""
    L = ["## Loaders: the prebuilt CO-RE object (libbpf) and bcc (issue 19)", "",
         "`bench/loader_bench.py`, configurations in alternating rounds, medians (the spread of the rounds "
         "in brackets): **libbpf**, the default where `make bpf` built the objects (loaded in-process, no "
         "compiler, no child; the netns guard's kernel facts found by the program itself at load); "
         "**bcc**, `--loader bcc` (compiled in a throwaway child; the kernel facts read from BTF and "
         "`/proc/kallsyms` in Python); and, when it was given `--before DIR`, that checkout as it is.", "",
         "- *daemon start to READY*: from spawning `mptcpize-py daemon` (one-rule policy) to its `READY=1` "
         "on `$NOTIFY_SOCKET` (a socket of the benchmark's: exact, not polled).",
         "- *run cold*: `mptcpize-py run --backend bpf -- true` with no daemon to join, the whole command. "
         "On a kernel that refuses fmod_ret (the dry run), a process that loads the dry-run program as "
         "`run` would (`Rewriter(all_netns=True, dry_run=True)`) and exits stands in for it.",
         "- *RSS*: the daemon's VmRSS (RssAnon + RssFile) from `/proc/PID/status` 2 s after READY.", ""]
    for res, where, what in ((native, "native", "Host"), (vm, "vm", "VM (qemu TCG, the real fmod_ret program)")):
        if not res:
            continue
        L += [f"{what}: kernel {res.get('kernel', '?')}{', dry run' if res.get('dry_run') else ''}, "
              f"{res.get('rounds', '?')} rounds; `python -P -c pass` {res.get('python_start_s', 0):.2f} s and "
              f"`mptcpize-py --version` {res.get('cli_version_s', 0):.2f} s (the floor of any command):", ""]
        L += _loader_table(res, where) + [""]
    L += ["Commands:", "", "```sh",
          "/opt/mptcpize-py/venv/bin/python bench/loader_bench.py --dry-run --rounds 5 [--before DIR]",
          "bash scripts/vm.sh --timeout 2400 -- /opt/mptcpize-py/venv/bin/python bench/loader_bench.py "
          "--rounds 2 [--before DIR]", "```", ""]
    return L


def _load(d: str, name: str) -> dict:
    try:
        with open(os.path.join(d, f"{name}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def main() -> int:
    if sys.argv[1] == "--loaders":   # the Loaders section alone: render.py --loaders NATIVE.json [VM.json]
        parts = []
        for path in sys.argv[2:4]:
            with open(path) as f:
                parts.append(json.load(f))
        sys.stdout.write("\n".join(render_loaders(*(parts + [{}] * (2 - len(parts))))))
        return 0
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    sys.stdout.write(render(meta, _load(d, "native"), _load(d, "vm"),
                            _load(d, "loaders-native"), _load(d, "loaders-vm")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
