"""`daemon --dry-run` on this host, whose kernel refuses the fmod_ret hook: the same decision runs on the
socket() syscall tracepoint. It must report exactly the processes the policy selects, with exact counts,
and change no socket (SO_PROTOCOL stays 6). The VM tier runs this file too, on the kernel where the real
hook works (there net.mptcp.enabled is read from kernel memory instead of userspace's table)."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys

import pytest

from mptcpize_py.host.mounts import find_cgroup2_mount, read_mounts
from tests.conftest import CLI, cli_env, is_root, mptcpize, start_daemon
from tests.progs.driven import Driven
from tests.progs.samepid import NS_LAST_PID, popen_at
from tests.waiting import scaled, wait_exit, wait_for

pytestmark = pytest.mark.skipif(not is_root(), reason="the daemon needs root")

CG2 = find_cgroup2_mount(read_mounts())
CG_ROOT = CG2.mount_point if CG2 else "/sys/fs/cgroup"   # this host: /sys/fs/cgroup/unified (hybrid)
CG_NAME = "mzdry-allow"
PROGRAM_500 = """
import os, socket, sys
socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(500)]
protos = {s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) for s in socks}
print(os.getpid(), sorted(protos), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def dry(static_rawsock, tmp_path_factory):
    base = tmp_path_factory.mktemp("dryrun")
    os.chmod(base, 0o755)
    policy_dir = base / "policy.d"
    policy_dir.mkdir(mode=0o755)
    bins = {}
    for name in ("selected", "other", "denied"):
        bins[name] = str(base / f"rawsock-{name}")
        shutil.copy2(static_rawsock, bins[name])
    cgroup = os.path.join(CG_ROOT, CG_NAME)
    os.makedirs(cgroup, exist_ok=True)
    policy = policy_dir / "10-dry.toml"
    policy.write_text(f"""
[[allow]]
exe = "{bins['selected']}"

[[allow]]
cgroup = "/{CG_NAME}"

[[deny]]
exe = "{bins['denied']}"
""")
    policy.chmod(0o644)
    control = str(base / "run" / "control")
    environ = dict(os.environ, MPTCPIZE_CONTROL=control)
    log_path = base / "daemon.log"
    log = open(log_path, "w")
    proc = None
    try:
        metrics_dir = base / "textfile"
        metrics_dir.mkdir()
        proc = start_daemon(policy_dir, control, log, log_path, "--dry-run", "--metrics-dir", str(metrics_dir))
        yield {"bins": bins, "env": environ, "log": log_path, "cgroup": cgroup, "proc": proc,
               "policy_dir": policy_dir, "prom": metrics_dir / "mptcpize.prom"}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=scaled(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        try:
            os.rmdir(cgroup)
        except OSError:
            pass


def status(dry) -> dict:
    res = mptcpize("status", "--json", env=dry["env"])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def rows_by_pid(st) -> dict[int, dict]:
    return {r["pid"]: r for r in st["processes"]}


def run_probe(path) -> tuple[int, int]:
    """Starts the static probe, returns (its pid, the SO_PROTOCOL it saw)."""
    p = subprocess.Popen([path], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=scaled(30))
    assert p.returncode == 0
    return p.pid, int(out)


def wait_rows(dry, pids) -> dict[int, dict]:
    """status's rows by pid, once every pid in pids has one (upgrade events arrive asynchronously)."""
    def listed():
        rows = rows_by_pid(status(dry))
        return rows if all(p in rows for p in pids) else None

    return wait_for(listed, f"status to list pids {sorted(pids)}", interval=0.2,
                    details=lambda: sorted(rows_by_pid(status(dry))))


def test_status_says_dry_run(dry):
    st = status(dry)
    assert st["dry_run"] is True and st["backend"] == "dry-run"
    text = mptcpize("status", env=dry["env"])
    assert text.returncode == 0 and text.stdout.startswith("DRY RUN:")


def test_selected_exe_reported_and_socket_unchanged(dry):
    results = [run_probe(dry["bins"]["selected"]) for _ in range(3)]
    assert {proto for _, proto in results} == {6}, "a dry run must not change any socket"
    rows = wait_rows(dry, [pid for pid, _ in results])
    for pid, _ in results:
        assert rows[pid]["upgraded"] == 1 and rows[pid]["kind"] == "exe"
        assert rows[pid]["rule_id"] >= 16
    log = dry["log"].read_text()
    assert f"would upgrade pid={results[0][0]} " in log


def test_other_and_denied_not_reported(dry):
    before = status(dry)["totals"]["denied"]
    other_pid, other_proto = run_probe(dry["bins"]["other"])
    denied_pid, denied_proto = run_probe(dry["bins"]["denied"])
    sentinel, _ = run_probe(dry["bins"]["selected"])
    rows = wait_rows(dry, [sentinel])
    assert other_pid not in rows and denied_pid not in rows
    assert other_proto == denied_proto == 6
    # The denied probe is not in an allowed cgroup or exe rule, so deny only counts where it matched.
    assert status(dry)["totals"]["denied"] == before + 1


def test_cgroup_rule_counts_exactly_500(dry):
    cg_procs = os.path.join(dry["cgroup"], "cgroup.procs")

    def join_cgroup():
        with open(cg_procs, "w") as f:
            f.write(str(os.getpid()))

    p = subprocess.Popen([sys.executable, "-c", PROGRAM_500], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, preexec_fn=join_cgroup)
    try:
        pid_s, protos = p.stdout.readline().split(" ", 1)
        assert int(pid_s) == p.pid
        assert protos.strip() == "[6]"
        rows = wait_rows(dry, [p.pid])
        assert rows[p.pid]["upgraded"] == 500
        assert rows[p.pid]["kind"] == "cgroup" and rows[p.pid]["cgroup"] == f"/{CG_NAME}"
        assert rows[p.pid]["alive"] is True
    finally:
        p.stdin.close()
        wait_exit(p, "the 500-socket program to exit")


def test_run_does_not_use_a_dry_run_daemon(dry):
    """`run` must not hand its child to a daemon that upgrades nothing."""
    res = mptcpize("run", "-v", dry["bins"]["other"], env=dry["env"])
    assert res.returncode == 0, res.stderr
    assert "via the daemon" not in res.stderr


def test_a_recycled_pid_is_another_process(dry):
    """A pid the kernel hands out again names another process: its own row, count, exe and rule, and
    its own first-upgrade log line, however the previous owner of the pid was selected and reported."""
    if not os.path.exists(NS_LAST_PID):
        pytest.skip(f"no {NS_LAST_PID} (CONFIG_CHECKPOINT_RESTORE) to give a process a chosen pid")

    def start(argv, at=None, before_exec=None):
        kw = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        proc = popen_at(at, argv, before_exec, **kw) if at else subprocess.Popen(argv, **kw)
        assert proc.stdout.readline().strip() == "6"
        return proc

    def join_cgroup():
        with open(os.path.join(dry["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    first = start([dry["bins"]["selected"], "4", "wait"])       # the exe rule
    pid = first.pid
    try:
        wait_rows(dry, [pid])
        wait_for(lambda: f"would upgrade pid={pid} " in dry["log"].read_text(),
                 "the daemon to log the first process", details=lambda: dry["log"].read_text())
    finally:
        first.stdin.close()
        wait_exit(first, "the first process to exit")
    # The same pid, another executable, selected by another rule (the cgroup one).
    second = start([dry["bins"]["other"], "4", "wait"], at=pid, before_exec=join_cgroup)
    try:
        assert second.pid == pid
        # Its own first-upgrade line (the daemon's record of it comes with it)...
        wait_for(lambda: f"would upgrade pid={pid} exe={dry['bins']['other']} " in dry["log"].read_text(),
                 "the daemon to log the second process", details=lambda: dry["log"].read_text())
        # ... and its own row, beside the first process's.
        rows = [r for r in status(dry)["processes"] if r["pid"] == pid]
        assert len(rows) == 2, rows
        old, new = sorted(rows, key=lambda r: r["start_ns"])
        assert (old["exe"], old["kind"], old["upgraded"], old["alive"]) == \
            (dry["bins"]["selected"], "exe", 1, False)
        assert (new["exe"], new["kind"], new["upgraded"], new["alive"]) == \
            (dry["bins"]["other"], "cgroup", 1, True)
        assert new["cgroup"] == f"/{CG_NAME}" and new["rule"].startswith(f"allow cgroup=/{CG_NAME}")
    finally:
        second.stdin.close()
        wait_exit(second, "the second process to exit")


# Libraries of bcc's compiler side (libbcc.so.0 maps LLVM and clang); libbcc_bpf.so.0 is not one.
COMPILER_LIBS = ("libbcc.so", "libLLVM", "libclang")


def test_the_daemon_holds_the_program_not_the_compiler(dry):
    """A throwaway child compiled and attached the program: the daemon maps none of the compiler's
    libraries, has no child left, and holds the program's descriptors itself, close-on-exec (none
    may leak into a command and keep the program attached after the daemon dies). The other tests
    here show that what it holds still counts and reports."""
    pid = dry["proc"].pid
    with open(f"/proc/{pid}/maps") as f:
        mapped = {line.split()[-1] for line in f if len(line.split()) >= 6}
    assert not [lib for lib in mapped if any(c in lib for c in COMPILER_LIBS)]
    children = [c for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    assert children == []
    held = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = int(next(x for x in f if x.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        if target in ("anon_inode:bpf-map", "anon_inode:bpf-prog", "anon_inode:bpf_link",
                      "anon_inode:[perf_event]"):
            held.setdefault(target, []).append(bool(flags & os.O_CLOEXEC))
    # The socket() tracepoint (a perf event), the fork/exec/exit raw tracepoints (links), the maps.
    assert len(held.get("anon_inode:[perf_event]", [])) == 1
    assert len(held.get("anon_inode:bpf_link", [])) == 3
    assert len(held.get("anon_inode:bpf-map", [])) >= 10
    assert all(all(v) for v in held.values()), held


def counted(dry, pid) -> int:
    row = rows_by_pid(status(dry)).get(pid)
    return row["upgraded"] if row else 0


def test_a_socket_flood_drops_no_event(dry):
    """One event per process, at its first upgrade (not per socket): 4 processes x 50,000 sockets
    lose none, each process is logged once, and the counts stay exact: per process, in total and per
    rule (the kernel's per-rule counters: one per-CPU slot per rule id)."""
    first = status(dry)
    before = first["totals"]
    rules_before = {r["description"]: r["upgraded"] for r in first["policy"]["rules"]}
    procs = [Driven(dry["cgroup"]) for _ in range(4)]
    try:
        for p in procs:
            p.ask(50000)
        assert [p.answer() for p in procs] == ["6"] * 4
        rows = wait_rows(dry, [p.pid for p in procs])
        assert [rows[p.pid]["upgraded"] for p in procs] == [50000] * 4
        last = status(dry)
        after = last["totals"]
        assert after["upgraded"] - before["upgraded"] == 200000
        rules_added = {r["description"]: r["upgraded"] - rules_before.get(r["description"], 0)
                       for r in last["policy"]["rules"]}
        assert [(d, n) for d, n in rules_added.items() if n] == \
            [(d, 200000) for d in rules_added if d.startswith(f"allow cgroup=/{CG_NAME}")]
        assert after["events_dropped"] == before["events_dropped"]
        log = dry["log"].read_text()
        assert [log.count(f"would upgrade pid={p.pid} ") for p in procs] == [1] * 4
    finally:
        for p in procs:
            p.close()


def test_a_running_process_moved_into_a_selected_cgroup_counts_at_once(dry):
    # The kernel keeps each thread's last selection verdict: a move to another cgroup must not wait
    # for it to expire.
    p = Driven()
    try:
        assert p.sockets(3) == "6"
        p.move_to(dry["cgroup"])
        p.sockets(1)
        assert wait_rows(dry, [p.pid])[p.pid]["upgraded"] == 1
    finally:
        p.close()


def test_an_exec_is_judged_afresh(dry):
    # Not selected as python; its exec of the selected executable counts from that program's first
    # socket (the verdict made for python is dropped at exec).
    p = Driven()
    try:
        assert p.sockets(3) == "6"
        assert p.exec(dry["bins"]["selected"], "4", "wait") == "6"
        row = wait_rows(dry, [p.pid])[p.pid]
        assert (row["upgraded"], row["kind"], row["exe"]) == (1, "exe", dry["bins"]["selected"])
    finally:
        p.close()


def test_a_policy_change_reaches_a_running_process(dry):
    """A rule added while a process runs selects its next sockets, though it made sockets (and got a
    verdict) before: the verdict is made again within MPTCPIZE_VERDICT_TTL_JIFFIES."""
    late = os.path.join(CG_ROOT, "mzdry-late")
    os.makedirs(late, exist_ok=True)
    extra = dry["policy_dir"] / "20-late.toml"
    p = Driven(late)
    try:
        assert p.sockets(3) == "6"
        assert counted(dry, p.pid) == 0
        extra.write_text('[[allow]]\ncgroup = "/mzdry-late"\n')
        extra.chmod(0o644)
        dry["proc"].send_signal(signal.SIGHUP)
        wait_for(lambda: any(r["value"] == "/mzdry-late" and r["target"]
                             for r in status(dry)["policy"]["rules"]),
                 "the daemon to load the new rule", details=lambda: status(dry)["policy"])
        # Each probe makes one more socket: the first ones may still meet the old verdict.
        wait_for(lambda: p.sockets(1) and counted(dry, p.pid) > 0,
                 "the running process's sockets to be counted", interval=0.02)
    finally:
        p.close()
        extra.unlink(missing_ok=True)
        dry["proc"].send_signal(signal.SIGHUP)
        wait_for(lambda: not any(r["value"] == "/mzdry-late" for r in status(dry)["policy"]["rules"]),
                 "the daemon to drop the rule again")
        try:
            os.rmdir(late)
        except OSError:
            pass


def test_the_daemon_log_has_no_compiler_output(dry):
    """The loader child compiles with clang's output kept out of the daemon's stderr (the journal,
    under systemd): only a failed compile writes it."""
    log = dry["log"].read_text()
    assert "warnings generated" not in log and "In file included from" not in log, log
    assert not re.search(r"^\S+:\d+:\d+: (warning|note): ", log, re.M), log


def test_status_into_a_pipe_whose_reader_went_away_ends_quietly(dry):
    """`mptcpize-py status | head -1`: killed by SIGPIPE like ip and systemctl, no traceback. The
    reader is gone before status writes (as head is once it has its line), so the write must fail."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([*CLI, "status"], stdout=w, stderr=subprocess.PIPE, text=True,
                              env=cli_env(dry["env"]), timeout=scaled(60))
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (-signal.SIGPIPE, "")
    # And with head itself: whether status is still writing when head exits depends on timing;
    # either way nothing but head's line appears.
    shell = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" status | head -1', "sh", *CLI],
                           capture_output=True, text=True, env=cli_env(dry["env"]), timeout=scaled(60))
    assert shell.returncode in (0, 128 + signal.SIGPIPE) and shell.stderr == "", shell.stderr
    assert len(shell.stdout.splitlines()) == 1


def prom_samples(dry) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    return {(f.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(dry["prom"].read_text()) for s in f.samples}


def test_the_daemon_keeps_its_metrics_file_under_stable_labels(dry):
    """The daemon's own textfile: what `status` counts for the selected exe's rule, under labels that an
    edit of the policy (a line added above the rule: a reload, new line numbers) does not change."""
    from mptcpize_py import __version__
    series = ("mptcpize_rule_upgraded_sockets", frozenset({("file", "10-dry.toml"),
                                              ("rule", f"exe={dry['bins']['selected']}")}))
    pid, _ = run_probe(dry["bins"]["selected"])
    wait_rows(dry, [pid])

    def counted(at_least: float) -> dict | None:
        s = prom_samples(dry) if dry["prom"].exists() else {}
        return s if s.get(series, 0) >= at_least else None

    s = wait_for(lambda: counted(1), "the metrics file to count the selected exe's rule", interval=0.2,
                 details=lambda: dry["prom"].read_text() if dry["prom"].exists() else "no file")
    assert s[("mptcpize_build_info", frozenset({("version", __version__)}))] == 1
    assert s[("mptcpize_dry_run", frozenset())] == 1
    assert stat.S_IMODE(os.stat(dry["prom"]).st_mode) == 0o644
    before, reloads = s[series], s[("mptcpize_policy_reloads", frozenset({("result", "success")}))]
    policy = dry["policy_dir"] / "10-dry.toml"
    policy.write_text("# a comment: every rule moves down a line\n" + policy.read_text())
    wait_for(lambda: (prom_samples(dry).get(("mptcpize_policy_reloads",
                                              frozenset({("result", "success")}))) or 0) > reloads,
             "the daemon to reload the edited policy", interval=0.2)
    pid, _ = run_probe(dry["bins"]["selected"])
    wait_rows(dry, [pid])
    wait_for(lambda: counted(before + 1), "the same series to count one more socket", interval=0.2,
             details=lambda: dry["prom"].read_text())
