"""Helpers shared by the benchmark scripts: progress lines, the machine's description, command latency
in alternating rounds, a process's RSS and CPU time. The scripts run as `python bench/NAME.py`, so this
directory is on sys.path; REPO is added for `mptcpize_py` and `tests.netlab`."""

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Every mptcpize-py the benchmarks start runs this checkout, not whatever the venv's install points at.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "mptcpize-py")
# What vm_bench prints on stdout before its JSON result (the VM's stdout also carries other lines).
JSON_MARK = "MZB-JSON "

_T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr, with the time since the script started."""
    print(f"[{time.monotonic() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """CPU model, CPU count, kernel, memory: what the doc says the numbers were taken on."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "mem_mb": mem_kb // 1024, "python": platform.python_version(), "loadavg": loadavg()}


def sysctls() -> dict:
    """The settings that shape a two-path transfer (congestion control, MPTCP scheduler, buffers)."""
    out = {}
    for k in ("net.ipv4.tcp_congestion_control", "net.mptcp.scheduler", "net.ipv4.tcp_wmem",
              "net.ipv4.tcp_rmem"):
        try:
            with open("/proc/sys/" + k.replace(".", "/")) as f:
                out[k] = " ".join(f.read().split())
        except OSError:
            pass
    return out


def wall(argv: list[str], env: dict | None = None, timeout: float = 600) -> float:
    """Seconds from spawning argv to its exit (it must exit 0)."""
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)
    t = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: exit {proc.returncode}: {proc.stderr.strip()}")
    return t


def latencies(cases: dict[str, list[str]], rounds: int, env: dict | None = None) -> dict[str, dict]:
    """Wall time of each command, every case once per round in alternating order. Returns
    {name: {"best_ms", "median_ms", "runs_ms"}}."""
    runs: dict[str, list[float]] = {n: [] for n in cases}
    names = list(cases)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else reversed(names)):
            runs[name].append(wall(cases[name], env=env) * 1000)
    return {n: {"best_ms": round(min(v), 2), "median_ms": round(statistics.median(v), 2),
                "runs_ms": [round(x, 2) for x in v]} for n, v in runs.items()}


def vmrss_kb(pid: int) -> int:
    """VmRSS of a process (kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (seconds)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dump(result: dict, path: str | None) -> None:
    """The result as JSON: to `path`, or on stdout after JSON_MARK (the VM's stdout is shared)."""
    text = json.dumps(result, indent=1, sort_keys=True)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    else:
        print(JSON_MARK + json.dumps(result, sort_keys=True), flush=True)


# ---------------------------------------------------------------------------------------------------
# The daemon under test: a generated policy, start until ready, RSS, the 8-process event storm.

CG_BASE = "mzb-bench"   # /sys/fs/cgroup/mzb-bench/...: the cgroups of the generated policy


def write_policy(policy_dir: str, files: dict[str, str]) -> None:
    """Replaces the *.toml files of policy_dir with `files` {name: text} (root-owned, 0644)."""
    for name in os.listdir(policy_dir):
        if name.endswith(".toml"):
            os.unlink(os.path.join(policy_dir, name))
    for name, text in files.items():
        path = os.path.join(policy_dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)


def bulk_policy(work: str, selected_exe: str, rules: int = 1000, cgroups: int = 200,
                cg_root: str = "/sys/fs/cgroup") -> dict[str, str]:
    """A policy of `rules` allow rules: the selected executable, `cgroups` cgroup rules (half of them
    existing cgroups made here, half pending: not created yet) and executable rules for copies of a
    small script (each copy its own inode, so each rule its own map entry). Returns {file: text}."""
    n_exe = rules - 1 - cgroups
    fill = os.path.join(work, "fill")
    os.makedirs(fill, exist_ok=True)
    exe_lines, cg_lines = [], []
    for i in range(n_exe):
        path = os.path.join(fill, f"tool-{i:04d}")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write("#!/bin/sh\nexit 0\n")
            os.chmod(path, 0o755)
        exe_lines.append(f'[[allow]]\nexe = "{path}"\n')
    for i in range(cgroups):
        cg = f"/{CG_BASE}/cg-{i:04d}"
        if i % 2 == 0:
            os.makedirs(cg_root + cg, exist_ok=True)
        cg_lines.append(f'[[allow]]\ncgroup = "{cg}"\n')
    return {"10-selected.toml": f'[[allow]]\nname = "bench loop"\nexe = "{selected_exe}"\n',
            "20-exe.toml": "\n".join(exe_lines), "30-cgroups.toml": "\n".join(cg_lines)}


def remove_bench_cgroups(cg_root: str = "/sys/fs/cgroup") -> None:
    base = os.path.join(cg_root, CG_BASE)
    if not os.path.isdir(base):
        return
    for name in sorted(os.listdir(base)):
        p = os.path.join(base, name)
        if os.path.isdir(p):
            try:
                os.rmdir(p)
            except OSError:
                pass
    try:
        os.rmdir(base)
    except OSError:
        pass


def rss_breakdown(pid: int) -> dict:
    """VmRSS and its parts (kB): RssAnon is the process's own memory; RssFile is mapped files (libLLVM,
    libbcc, Python's modules), clean pages shared with other processes mapping them."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


class DaemonUnderTest:
    """`mptcpize-py daemon` as a subprocess with a private control socket (MPTCPIZE_CONTROL)."""

    def __init__(self, policy_dir: str, work: str, dry_run: bool = False, tag: str = "daemon"):
        self.control = os.path.join(work, f"{tag}.control")
        self.env = dict(os.environ, MPTCPIZE_CONTROL=self.control)
        self.log_path = os.path.join(work, f"{tag}.log")
        argv = [CLI, "daemon", "--policy-dir", policy_dir] + (["--dry-run"] if dry_run else [])
        self.argv = argv
        self.log = open(self.log_path, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        self.ready_s: float | None = None

    def request(self, cmd: dict, timeout: float = 30) -> dict:
        from mptcpize_py.daemon import client
        return client.request(cmd, self.control, timeout=timeout)

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds from spawn until the control socket answers (the program is attached by then)."""
        from mptcpize_py.errors import MptcpizeError
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.read_log()}")
            if time.monotonic() - self.t0 > timeout:
                raise RuntimeError(f"daemon not ready after {timeout} s: {self.read_log()}")
            try:
                self.request({"cmd": "hello"}, timeout=10)
                self.ready_s = time.monotonic() - self.t0
                return self.ready_s
            except MptcpizeError as e:
                if e.exit_code != 3:
                    raise
            time.sleep(0.5)

    def status_cli(self) -> dict:
        """`mptcpize-py status --json`, the user-facing report."""
        out = subprocess.run([CLI, "status", "--json"], env=self.env, capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"status --json failed ({out.returncode}): {out.stderr.strip()}")
        return json.loads(out.stdout)

    def read_log(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def steady_rss(self, settle_s: float = 10.0) -> dict:
        """RSS after settle_s seconds of idling, and the CPU the daemon used meanwhile (its periodic
        re-resolve of the policy every 2 s is the idle cost)."""
        c0, t0 = cpu_seconds(self.proc.pid), time.monotonic()
        time.sleep(settle_s)
        cpu = cpu_seconds(self.proc.pid) - c0
        out = rss_breakdown(self.proc.pid)
        out["idle_cpu_percent"] = round(100 * cpu / (time.monotonic() - t0), 1)
        return out

    def stop(self) -> int:
        """SIGTERM; returns the exit status (0 expected: it detaches and exits)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class StandInDaemon:
    """bench/standin_daemon.py (the real daemon, its BPF program replaced by a stand-in) on a private
    control socket with an empty policy: what `run`'s fast path talks to, on a kernel that refuses
    the hook. env is the environment that makes `mptcpize-py run` use it."""

    def __init__(self, work: str):
        self.policy_dir = os.path.join(work, "standin-policy.d")
        os.makedirs(self.policy_dir, mode=0o755, exist_ok=True)
        self.control = os.path.join(work, "standin.control")
        self.env = dict(os.environ, MPTCPIZE_CONTROL=self.control)
        self.log = open(os.path.join(work, "standin.log"), "w")
        self.proc = subprocess.Popen([PYTHON, str(BENCH / "standin_daemon.py"), self.policy_dir,
                                      self.control], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        from mptcpize_py.daemon import client
        from mptcpize_py.errors import MptcpizeError
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stand-in daemon exited with {self.proc.returncode}")
            try:
                client.request({"cmd": "hello"}, self.control, timeout=10)
                return
            except MptcpizeError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def event_storm(daemon: DaemonUnderTest, loop: str, procs: int = 8, secs: float = 10.0) -> dict:
    """`procs` processes of the selected loop create and close sockets as fast as they can for `secs`
    seconds, each counting its own. Compares with `status --json`: per-process rows and the total
    must be exact; events dropped (ring buffer full) are reported, not hidden."""
    before = daemon.status_cli()
    ps = [subprocess.Popen([loop, "-t", str(secs), "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for _ in range(procs)]
    counts = {}
    for p in ps:
        out, err = p.communicate(timeout=secs * 20 + 120)
        if p.returncode != 0:
            raise RuntimeError(f"socket loop failed ({p.returncode}): {err.strip()}")
        pid, n, _proto, _wrong = out.split()
        counts[int(pid)] = int(n)
    after = daemon.status_cli()
    rows = {r["pid"]: r["upgraded"] for r in after["processes"]}
    per_proc = [{"pid": pid, "made": n, "reported": rows.get(pid)} for pid, n in sorted(counts.items())]
    made = sum(counts.values())
    counted = after["totals"]["upgraded"] - before["totals"]["upgraded"]
    dropped = after["totals"]["events_dropped"] - before["totals"]["events_dropped"]
    log = daemon.read_log()
    logged = sum(1 for pid in counts if f"pid={pid} " in log)
    return {"procs": procs, "seconds": secs, "made": made, "counted": counted,
            "per_process_exact": all(r["made"] == r["reported"] for r in per_proc),
            "total_exact": counted == made, "per_process": per_proc,
            "events_dropped": dropped, "events_delivered": counted - dropped,
            "rate_per_s": round(made / secs), "first_upgrade_logged": logged}


class EventReader:
    """Reads a loaded rewriter.Rewriter's ring buffer in a thread, as the daemon's loop does, counting
    events (one per process, at its first upgrade). pause() stops reading."""

    def __init__(self, rw):
        import threading
        self.rw = rw
        self.events = 0
        self._stop = threading.Event()
        self._reading = threading.Event()
        self._reading.set()
        rw.open_events(self._on_event)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _on_event(self, _ev) -> None:
        self.events += 1

    def _poll(self) -> None:
        while not self._stop.is_set():
            if self._reading.wait(0.2):
                self.rw.poll_events(200)

    def pause(self) -> None:
        self._reading.clear()
        time.sleep(0.3)   # let a poll in progress return

    def resume(self) -> None:
        self._reading.set()

    def close(self) -> None:
        self._stop.set()
        self._reading.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------------
# The program's own time per call, as the kernel measures it (BPF_ENABLE_STATS).

class ProgramTime:
    """Run time of one loaded BPF program per call, from the kernel's own accounting: while an fd
    from bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME) is open (Linux >= 5.8), every program's entry
    and exit read sched_clock(), and /proc/self/fdinfo/PROG_FD shows run_time_ns and run_cnt. It
    excludes the syscall and the hook's entry, which wall-clock socket() loops include, and it is
    not moved by a neighbour's load the way a wall clock is: the selection work alone, to the ns.
    The two clock reads themselves add a constant (the `mptcp` case, which returns at the protocol
    check, shows it). Enabled only while measuring (it costs every BPF program on the machine)."""

    BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 32, 0

    def __init__(self, prog_fd: int):
        self.prog_fd = prog_fd

    def __enter__(self) -> "ProgramTime":
        from mptcpize_py.host import libc
        attr = (ctypes.c_uint32 * 4)(self.BPF_STATS_RUN_TIME)
        self._stats_fd = libc.syscall(libc.syscall_number("bpf"), self.BPF_ENABLE_STATS,
                                      ctypes.byref(attr), ctypes.sizeof(attr))
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._stats_fd)

    def _read(self) -> tuple[int, int]:
        fields = {}
        with open(f"/proc/self/fdinfo/{self.prog_fd}") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        return int(fields["run_time_ns"]), int(fields["run_cnt"])

    def per_call(self, argv: list[str], before=None) -> dict:
        """Runs argv (after before()); returns the program's ns per call over that run, and calls."""
        if before is not None:
            before()
        t0, n0 = self._read()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        t1, n1 = self._read()
        calls = n1 - n0
        return {"ns_per_call": round((t1 - t0) / calls, 1) if calls else None, "calls": calls}


def program_time(prog_fd: int, cases: dict[str, tuple[list[str], object]], rounds: int = 5) -> dict:
    """{case: {"best_ns", "median_ns", "runs_ns", "calls"}}: the program's time per call for each
    case {name: (argv, before)}, rounds alternating as in socket_cost.measure."""
    runs: dict[str, list[float]] = {n: [] for n in cases}
    calls: dict[str, int] = {n: 0 for n in cases}
    names = list(cases)
    with ProgramTime(prog_fd) as pt:
        for r in range(rounds):
            for name in (names if r % 2 == 0 else reversed(names)):
                argv, before = cases[name]
                got = pt.per_call(argv, before)
                if got["ns_per_call"] is not None:
                    runs[name].append(got["ns_per_call"])
                calls[name] += got["calls"]
    return {n: {"best_ns": min(v) if v else None,
                "median_ns": round(statistics.median(v), 1) if v else None,
                "runs_ns": v, "calls": calls[n]} for n, v in runs.items()}
