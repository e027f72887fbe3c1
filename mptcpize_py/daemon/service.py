"""`mptcpize-py daemon`: policy -> BPF maps, kept in sync; upgrade reports; `status` over the control socket.

Lifecycle: load + validate the policy (PolicyError -> exit 78), resolve it to kernel keys (a rule that
resolves to nothing, e.g. a missing executable, is a bad policy at start too), load and attach the
program (program.rewriter.Rewriter: a throwaway child compiles and attaches it, this process holds
only its descriptors; fail-open: the link dies with this process), fill the maps, serve
the control socket, then loop:

- ring-buffer events: the first upgrade of each process is logged at INFO
  (`upgraded pid=… exe=… rule=… unit=…`); per-socket volume stays in the kernel's counters. A process
  is (tgid, start time), as in the kernel's proc_stats: a recycled pid is another process, with its own
  log line, status row and count.
- SIGHUP, or a change in the policy directory (names, sizes, mtimes, inodes of its *.toml files,
  checked every RESYNC_INTERVAL seconds; polling, not inotify: one stat per file every 2 s is cheap and
  needs no extra dependency), reloads: load + resolve + set_selection. A reload that fails validation
  or leaves a rule unresolvable keeps the last good policy and logs each `file:line: reason`.
- every RESYNC_INTERVAL seconds the current policy is re-resolved: a unit that (re)started gets a new
  cgroup id, a pending cgroup/netns may have appeared, a package upgrade replaced an executable (new
  inode). The maps are rewritten only when the selection changed. Problems found here (e.g. an
  executable briefly missing during an upgrade) are logged once; the rules that still resolve apply.
- SIGTERM/SIGINT: stop serving, detach (close the link), exit 0.

Under systemd (Type=notify): READY=1 with a STATUS= summary once the program is attached and the
policy loaded, STATUS= updates, watchdog pings from the main loop (a wedged loop gets restarted), and log
records as journald entries with MPTCPIZE_* fields (host/systemd.py).

Control requests besides `status`: `register` (a `run` process puts itself, before exec, into the run
tree: the fast path that spares `run` compiling its own program), `run_report` (that run's per-process
counts, for `run -v`), `resync` (re-resolve now; a unit's ExecStartPre uses it so the unit's new cgroup
is selected before its main process starts).

The control socket path is protocol.DEFAULT_PATH, or $MPTCPIZE_CONTROL (tests).
"""

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mptcpize_py import __version__, abi, metrics
from mptcpize_py.daemon import client, control
from mptcpize_py.daemon.records import ProcRecord, alive, learn
from mptcpize_py.daemon.tally import ProcessTally, RuleTally, Seen
from mptcpize_py.daemon.textfile import TextFile
from mptcpize_py.display import escaped
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs, systemd
from mptcpize_py.host.netns import HOST_NETNS, NETNS_DIR, read_sysctl_in_netns
from mptcpize_py.paths.manager import PathManager
from mptcpize_py.policy import (
    DEFAULT_POLICY_DIR,
    Policy,
    PolicyError,
    check_unit_name,
    load_policy,
)
from mptcpize_py.program.handle import ProgramHandle
from mptcpize_py.resolve import Resolved, resolve_policy
from mptcpize_py.status import DaemonStatus, PolicyStatus, ProcessRow, RuleCount, RuleStatus

RESYNC_INTERVAL = 2.0
POLL_MS = 200
MAX_PROC_RECORDS = abi.MAX_PROCS   # the kernel's proc_stats holds as many
MAX_RUN_RECORDS = 4096     # registered runs waiting for their run_report

log = logging.getLogger("mptcpize_py.daemon")


# ---------------------------------------------------------------------------------------------------
# Pure helpers


def check_resolved(resolved: Resolved) -> None:
    """Rules that resolve to nothing are a bad policy (at start, --check, reload)."""
    if resolved.problems:
        raise PolicyError(list(resolved.problems),
                          hint="fix or remove these rules; `mptcpize-py daemon --check` validates")


def load_and_resolve(policy_dir: Path, owner_uid: int = 0) -> tuple[Policy, Resolved]:
    policy = load_policy(policy_dir, owner_uid=owner_uid)
    resolved = resolve_policy(policy)
    check_resolved(resolved)
    return policy, resolved


def dir_fingerprint(policy_dir: Path) -> tuple | None:
    """What changes when a policy file is added, removed, replaced or edited (None: unreadable)."""
    try:
        out = []
        with os.scandir(policy_dir) as it:
            for e in it:
                if e.name.endswith(".toml") and not e.name.startswith("."):
                    st = e.stat(follow_symlinks=False)
                    out.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid))
        return tuple(sorted(out))
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------
# Process records (what we learn at a process's first upgrade event)


# ---------------------------------------------------------------------------------------------------
# The daemon


class Daemon:
    def __init__(self, policy_dir: Path = DEFAULT_POLICY_DIR, path: Path | None = None,
                 resync_interval: float = RESYNC_INTERVAL, *, owner_uid: int = 0,
                 rewriter_factory: Callable[[], ProgramHandle] | None = None, serve: bool = True,
                 dry_run: bool = False, metrics_dir: Path | None = None):
        """owner_uid, rewriter_factory (() -> a rewriter.Rewriter look-alike) and serve=False are for tests
        that drive the daemon's logic without BPF or a control socket. metrics_dir: where to keep
        the textfile collector's mptcpize.prom (None: nowhere)."""
        self.policy_dir = Path(policy_dir)
        self.owner_uid = owner_uid
        self.rewriter_factory = rewriter_factory
        self.serve = serve
        self.dry_run = dry_run
        self.verb = "would upgrade" if dry_run else "upgraded"
        self.path = Path(path) if path else client.control_path()
        self.resync_interval = resync_interval
        self.policy: Policy | None = None
        self.resolved: Resolved | None = None
        self.rw: ProgramHandle | None = None
        self.server = None
        self._procs: dict[tuple[int, int], ProcRecord] = {}   # by (tgid, start_ns): a process
        self._lock = threading.Lock()   # _procs, policy/resolved snapshot vs. the control thread
        self._reload = False
        self._stop = False
        self._fingerprint = None
        self._logged_problems: tuple[str, ...] = ()
        self._netns_left_out = 0   # namespaces the dry run's netns_mptcp map has no room for
        self.started = time.time()
        self.reloads = 0
        self.failed_reloads = 0
        self.notifier = systemd.Notifier()
        self._sync_lock = threading.Lock()   # reload/resync from the main loop vs. a `resync` request
        self._next_run_id = 1
        self._runs: dict[int, int] = {}      # run id -> registered pid
        self.paths = PathManager(self.path.parent)   # [paths]: endpoints, beside the control socket
        self.textfile = TextFile(metrics_dir)
        self._tally_lock = threading.Lock()   # the tallies: status() runs in the control thread too
        self._rule_tally = RuleTally()
        self._proc_tally = ProcessTally()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._fingerprint = dir_fingerprint(self.policy_dir)
        policy, resolved = load_and_resolve(self.policy_dir, self.owner_uid)
        log.info("policy ok (%s); loading the BPF program", policy.summary())
        t0 = time.monotonic()
        if self.rewriter_factory is None:
            from mptcpize_py.program.rewriter import Rewriter
            self.rw = Rewriter(all_netns=False, dry_run=self.dry_run)
        else:
            self.rw = self.rewriter_factory()
        try:
            self.rw.set_selection(*resolved.selection())
            self.policy, self.resolved = policy, resolved
            self._switch_rule_tally(policy)
            self._refresh_netns_mptcp()
            self.rw.open_events(self._on_event)
            if self.serve:
                handlers = {"hello": self.hello, "status": self.status_request, "register": self.register,
                            "run_report": self.run_report, "resync": self.resync_request}
                self.server = control.ControlServer(handlers, self.path).start()
            self._apply_paths(policy)
        except BaseException:
            self.close()
            raise
        log.info("program loaded by %s (%s)", getattr(self.rw, "loader", "?"),
                 getattr(self.rw, "detail", "a test's program"))
        log.info("started in %.1f s%s: %s; control socket %s", time.monotonic() - t0,
                 " as a DRY RUN (syscalls:sys_enter_socket tracepoint: reports what would be "
                 "upgraded, changes no socket)" if self.dry_run else "", policy.summary(), self.path)
        self._log_resolution(resolved)
        self.write_metrics(time.monotonic())
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        """One line for systemd's STATUS=: the policy and the volume so far."""
        c = self.rw.counters() if self.rw is not None else {}
        with self._lock:
            procs = len(self._procs)
        return (f"{'DRY RUN: ' if self.dry_run else ''}{self.policy.summary()}; "
                f"{c.get('upgraded', 0)} sockets {self.verb} in {procs} processes; "
                f"{c.get('events_dropped', 0)} events dropped")

    def close(self) -> None:
        self.paths.close()   # removes the endpoints it added
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.rw is not None:
            self.rw.close()   # detaches: new sockets are plain TCP again
            self.rw = None

    def install_signals(self) -> None:
        """SIGHUP: reload; SIGTERM/SIGINT: stop. Installed before start() so that a signal during the
        (slow) compile does not kill the process with the default action; it is acted on after."""
        def on_hup(_sig, _frm):
            self._reload = True

        def on_term(_sig, _frm):
            self._stop = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def run(self) -> None:
        next_sync = time.monotonic() + self.resync_interval
        wd = self.notifier.watchdog_interval
        next_ping = time.monotonic()
        while not self._stop:
            self.rw.poll_events(POLL_MS)
            if self._stop:
                break
            try:
                if self._reload:
                    self._reload = False
                    self.notifier.reloading()
                    self.reload("SIGHUP")
                    self.notifier.ready(self.status_line())
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + self.resync_interval
                    if dir_fingerprint(self.policy_dir) != self._fingerprint:
                        self.reload("policy directory changed")
                    else:
                        self.resync()
                    self._refresh_netns_mptcp()
                    self._prune()
                    self.notifier.status(self.status_line())
            except Exception:  # a bug or an odd filesystem must not stop the upgrades: log, go on
                log.exception("policy sync failed; keeping the current selection")
            now = time.monotonic()
            if self.textfile.due(now):
                try:
                    self.write_metrics(now)
                except Exception:   # neither may a metrics bug
                    log.exception("metrics: writing the textfile failed")
            # The watchdog vouches for this loop: events read, policy kept in sync.
            if wd and time.monotonic() >= next_ping:
                self.notifier.watchdog()
                next_ping = time.monotonic() + wd
        self.notifier.stopping()
        self.rw.drain_events()
        log.info("stopping: detaching the program (new sockets are plain TCP)")
        # A stopped daemon says so, rather than leaving its last counts to look current.
        self.textfile.write(time.monotonic(), lambda: metrics.render(None))

    def write_metrics(self, now: float) -> None:
        self.textfile.write(now, lambda: metrics.render(self.status()))

    # --- policy ----------------------------------------------------------------------------------
    def reload(self, why: str) -> bool:
        with self._sync_lock:
            return self._reload_locked(why)

    def _reload_locked(self, why: str) -> bool:
        self._fingerprint = dir_fingerprint(self.policy_dir)
        try:
            if not os.path.lexists(self.policy_dir):
                # Removed on purpose (e.g. `disable` of the last enabled unit removes the directory
                # it created): no rules, rather than the last policy forever. At start it is an error.
                log.warning("policy directory %s is gone: no rules until it is back", self.policy_dir)
                policy = Policy()
                resolved = resolve_policy(policy)
            else:
                policy, resolved = load_and_resolve(self.policy_dir, self.owner_uid)
        except PolicyError as e:
            self.failed_reloads += 1
            self.textfile.changed()
            for line in e.errors:
                log.error("reload (%s) refused: %s", why, line)
            log.error("reload refused: keeping the last good policy (%s)", self.policy.summary())
            return False
        self.rw.set_selection(*resolved.selection())
        with self._lock:
            self.policy, self.resolved = policy, resolved
        self._switch_rule_tally(policy)
        self.reloads += 1
        self.textfile.changed()
        log.info("reloaded (%s): %s", why, policy.summary())
        self._log_resolution(resolved)
        self._apply_paths(policy)
        return True

    def _rule_stats_by_id(self) -> dict[int, int]:
        per_rule: dict[int, int] = {}
        for (_kind, rule_id), n in self.rw.rule_stats().items():
            per_rule[rule_id] = per_rule.get(rule_id, 0) + n
        return per_rule

    def _switch_rule_tally(self, policy: Policy) -> None:
        """The new policy's rule ids count from here (ids follow the rules' order: a reload renumbers)."""
        with self._tally_lock:
            self._rule_tally.switch({r.id: r.series for r in policy.allow}, self._rule_stats_by_id())

    def _apply_paths(self, policy: Policy) -> None:
        """The [paths] table: netlink only, so it works whatever the program could attach to."""
        try:
            self.paths.apply(policy)
        except MptcpizeError as e:
            log.error("paths: %s: the [paths] table is not applied", e.message)

    def resync(self) -> None:
        """Re-resolves the current policy: new cgroup ids, pending things that appeared, new inodes."""
        with self._sync_lock:
            self._resync_locked()

    def _resync_locked(self) -> None:
        resolved = resolve_policy(self.policy)
        if resolved.problems != self._logged_problems:
            for line in resolved.problems:
                log.warning("%s (the rule matches nothing until this is fixed)", escaped(line))
            self._logged_problems = resolved.problems
        old = self.resolved
        if resolved.selection() == old.selection():
            return
        self.rw.set_selection(*resolved.selection())
        with self._lock:
            self.resolved = resolved
        for rid, target in resolved.targets.items():
            if old.targets.get(rid) != target:
                log.info("rule %s now resolves to %s", escaped(self._rule_desc(rid)), escaped(target))

    def _refresh_netns_mptcp(self) -> None:
        """Dry run on a kernel whose net.mptcp.enabled we cannot read from kernel memory: tell the
        program the value of the namespaces we know (the host's and /run/netns/*), every resync.

        The netns_mptcp map holds abi.MAX_NETNS namespaces; /run/netns may name more. What fits goes
        in: the host's first, then those the policy selects, then the others by name. The rest count
        as netns_unreadable (never upgraded), which one warning says each time their number changes."""
        if not self.dry_run or self.rw.reads_netns_from_kernel:
            return
        try:
            names = sorted(os.listdir(NETNS_DIR))
        except OSError:
            names = []
        selected = self.resolved.netns if self.resolved is not None else frozenset()
        found: dict[int, tuple[int, str]] = {}   # inum -> (rank, path): one entry per namespace
        for rank, p in enumerate([HOST_NETNS] + [os.path.join(NETNS_DIR, n) for n in names]):
            try:
                inum = os.stat(p).st_ino
            except OSError:
                continue
            found.setdefault(inum, (rank, p))
        def priority(item):
            inum, (rank, _path) = item
            return rank > 0, inum not in selected, rank   # the host's (rank 0), the policy's, by name

        known: dict[int, bool] = {}
        left_out = 0
        for inum, (_rank, p) in sorted(found.items(), key=priority):
            if len(known) >= abi.MAX_NETNS:
                left_out += 1   # not even read: a read costs a thread and a setns()
                continue
            value = read_sysctl_in_netns(p, "net.mptcp.enabled")
            if value is not None:
                known[inum] = value == "1"
        self.rw.set_netns_mptcp(known)
        if left_out != self._netns_left_out:
            if left_out:
                log.warning("dry run: %d network namespaces left out of the netns_mptcp map (it holds %d: "
                            "the host's, the policy's, then %s by name); sockets there count as "
                            "netns_unreadable", left_out, abi.MAX_NETNS, NETNS_DIR)
            else:
                log.info("dry run: every network namespace fits the netns_mptcp map again")
            self._netns_left_out = left_out

    def _log_resolution(self, resolved: Resolved) -> None:
        self._logged_problems = resolved.problems
        for p in resolved.pending:   # messages quoting paths found on the filesystem: escaped
            log.info("%s", escaped(p.message))
        for n in resolved.notes:
            log.info("%s", escaped(n))

    def _rule_desc(self, rule_id: int) -> str:
        pol = self.policy
        for r in pol.rules if pol else ():
            if r.id == rule_id:
                return r.description
        return f"rule {rule_id}" if rule_id else "none"

    # --- events ----------------------------------------------------------------------------------
    def _on_event(self, ev) -> None:
        with self._lock:
            if (ev.tgid, ev.start_ns) in self._procs:
                return
        rec = learn(ev, self._rule_desc(ev.rule_id))
        with self._lock:
            self._procs[rec.key] = rec
        # The names are other users' choice: escaped in the line (a line feed would forge a line of
        # its own, ESC would reach the terminal of whoever reads the log), exact in journald's fields.
        where = f"unit={escaped(rec.unit)}" if rec.unit else f"cgroup={escaped(rec.cgroup or '?')}"
        fields = systemd.fields(pid=ev.tgid, exe=rec.exe, comm=ev.comm, rule=rec.rule,
                                rule_id=ev.rule_id, kind=ev.kind, unit=rec.unit, cgroup=rec.cgroup,
                                netns=ev.netns, about_pid=ev.tgid,
                                message_id=(systemd.MESSAGE_ID_WOULD_UPGRADE if self.dry_run
                                            else systemd.MESSAGE_ID_UPGRADED))
        log.info("%s pid=%d exe=%s rule=%s %s", self.verb, ev.tgid,
                 escaped(rec.exe) if rec.exe else f"?({escaped(ev.comm)})", escaped(rec.rule), where,
                 extra=fields)
        self.textfile.changed()

    def _prune(self) -> None:
        """Forgets records of dead processes when there are many: those the kernel's LRU forgot
        (status has no row for them any more), and live ones never."""
        with self._lock:
            if len(self._procs) <= MAX_PROC_RECORDS:
                return
        counted = {(s.tgid, s.start_ns) for s in self.rw.proc_stats()}
        with self._lock:
            dead = [key for key in self._procs if key not in counted and not alive(*key)]
            for key in dead:
                del self._procs[key]

    # --- control requests other than status -----------------------------------------------------
    def hello(self, _req=None, _peer=None) -> dict:
        return {"ok": True, "pid": os.getpid(), "backend": self.backend}

    @property
    def backend(self) -> str:
        return "dry-run" if self.dry_run else "bpf"

    def register(self, req: dict, peer) -> dict:
        """`run`'s fast path: the process `pid` (the peer itself, before it execs CMD, or a child of the
        peer that has not been reaped) and everything it forks from now on is upgraded."""
        if self.dry_run:
            raise MptcpizeError("register: this daemon is a dry run and upgrades nothing")
        pid = req.get("pid")
        if pid != peer.pid:
            control.check_registrant(pid, peer)
        elif type(pid) is not int:
            raise MptcpizeError(f"register: pid must be an integer, not {pid!r}")
        with self._lock:
            run_id = self._next_run_id
            self._next_run_id = run_id + 1 if run_id < 0xFFFFFFFF else 1
            self._runs[run_id] = pid
            while len(self._runs) > MAX_RUN_RECORDS:   # runs killed before asking for their report
                del self._runs[next(iter(self._runs))]
        self.rw.add_run_root(pid, run_id)
        log.debug("run %d: registered pid %d (peer pid %d)", run_id, pid, peer.pid)
        return {"ok": True, "run_id": run_id}

    def run_report(self, req: dict, _peer=None) -> dict:
        """Per-process counts of one registered run (for `run -v`)."""
        run_id = req.get("run_id")
        if type(run_id) is not int or run_id not in self._runs:
            raise MptcpizeError(f"run_report: unknown run id {run_id!r}")
        rows = [{"pid": s.tgid, "start_ns": s.start_ns, "upgraded": s.upgraded,
                 "exe": (procfs.exe_of_process(s.tgid, s.start_ns)
                         or self.rw.exe_name(s.tgid, s.start_ns))}
                for s in self.rw.proc_stats() if s.kind == "run" and s.rule_id == run_id]
        with self._lock:
            self._runs.pop(run_id, None)
        return {"ok": True, "processes": sorted(rows, key=lambda r: (r["pid"], r["start_ns"]))}

    def resync_request(self, req: dict, _peer=None) -> dict:
        """Re-resolves now. With "unit": answers once the unit's current cgroup is in the maps, or
        says why it cannot be (not in the policy; no cgroup: the unit is not running)."""
        unit = req.get("unit")
        if unit is not None:
            problem = check_unit_name(unit)
            if problem:
                raise MptcpizeError(f"resync: {problem}")
        # `enable --now` writes the unit's policy record and restarts the unit at once: its
        # ExecStartPre asks here before the 2 s poll has seen the new file, so look at the directory.
        with self._sync_lock:
            if dir_fingerprint(self.policy_dir) != self._fingerprint:
                self._reload_locked("resync request: policy directory changed")
            else:
                self._resync_locked()
        if unit is None:
            return {"ok": True}
        with self._lock:
            policy, resolved = self.policy, self.resolved
        rules = [r for r in policy.rules if r.kind == "unit" and r.value == unit]
        if not rules:
            raise MptcpizeError(f"resync: {unit} is not in the policy ({self.policy_dir})",
                                hint=f"mptcpize-py enable {unit}")
        selected = [r for r in rules if any(rr.id == r.id for rr in resolved.cgroups.values())]
        if not selected:
            raise MptcpizeError(f"resync: {unit} has no cgroup now ({resolved.targets.get(rules[0].id)})",
                                hint="it is selected as soon as it runs")
        return {"ok": True, "unit": unit, "rules": [{"id": r.id, "action": r.action,
                                                     "target": resolved.targets.get(r.id)}
                                                    for r in selected]}

    # --- status ----------------------------------------------------------------------------------
    def status(self) -> DaemonStatus:
        with self._lock:
            policy, resolved, procs = self.policy, self.resolved, dict(self._procs)
        counters = self.rw.counters()
        rows = []
        with self._tally_lock:   # one reading of the kernel's tables for the rows and the tallies
            per_rule = self._rule_stats_by_id()
            stats = sorted(self.rw.proc_stats(), key=lambda s: (s.tgid, s.start_ns))
            by_series = self._rule_tally.counts(per_rule)
            per_unit, run = self._proc_tally.observe(
                ((s.tgid, s.start_ns), Seen(procs[(s.tgid, s.start_ns)].unit
                                            if (s.tgid, s.start_ns) in procs else None,
                                            s.kind == "run", s.upgraded)) for s in stats)
        rule_upgrades = [RuleCount(f, r, n) for (f, r), n in sorted(by_series.items())]
        if run or any(s.kind == "run" for s in stats):
            rule_upgrades.append(RuleCount(None, "run", run))
        for st in stats:
            rec = procs.get((st.tgid, st.start_ns))
            rows.append(ProcessRow(
                pid=st.tgid,
                start_ns=st.start_ns,
                exe=rec.exe if rec else procfs.exe_of_process(st.tgid, st.start_ns),
                rule=rec.rule if rec else self._rule_desc(st.rule_id),
                rule_id=st.rule_id,
                kind=st.kind,
                unit=rec.unit if rec else None,
                cgroup=rec.cgroup if rec else None,
                upgraded=st.upgraded,
                alive=alive(st.tgid, st.start_ns),
            ))
        return DaemonStatus(
            backend=self.backend,
            loader=getattr(self.rw, "loader", None),
            dry_run=self.dry_run,
            pid=os.getpid(),
            uptime_s=round(time.time() - self.started, 1),
            policy=PolicyStatus(
                dir=str(self.policy_dir),
                summary=policy.summary(),
                files=tuple(policy.files),
                rules=tuple(RuleStatus(id=r.id, description=r.description, action=r.action,
                                       kind=r.kind, value=r.value,
                                       target=resolved.targets.get(r.id),
                                       upgraded=per_rule.get(r.id, 0)) for r in policy.rules),
                pending=tuple(p.message for p in resolved.pending),
                problems=tuple(resolved.problems),
                reloads=self.reloads,
                failed_reloads=self.failed_reloads,
            ),
            totals=dict(counters),
            processes=tuple(rows),
            events_dropped=counters.get("events_dropped", 0),
            paths=tuple(self.paths.statuses()),
            version=__version__,
            rule_upgrades=tuple(rule_upgrades),
            unit_upgrades=per_unit,
        )

    def status_request(self, _req=None, _peer=None) -> dict:
        """The control socket's `status`: the typed status in its wire format."""
        return self.status().to_json_dict()


def check(policy_dir: Path) -> tuple[Policy, Resolved]:
    """`daemon --check`: validates and resolves without loading BPF; raises PolicyError."""
    return load_and_resolve(Path(policy_dir))


def run_daemon(policy_dir: Path = DEFAULT_POLICY_DIR, dry_run: bool = False,
               metrics_dir: Path | None = None) -> int:
    systemd.use_journal_if_under_systemd()
    d = Daemon(policy_dir, dry_run=dry_run, metrics_dir=metrics_dir)
    d.install_signals()
    d.start()
    try:
        d.run()
    finally:
        d.close()
    return 0
