"""The status builder: one reading of the program's tables, the policy and the process records ->
the typed DaemonStatus that `status`, STATUS= and the metrics render."""

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mptcpize_py import __version__
from mptcpize_py.daemon.records import ProcRecord, alive
from mptcpize_py.daemon.tally import ProcessTally, RuleTally, Seen
from mptcpize_py.host import procfs
from mptcpize_py.policy import Policy
from mptcpize_py.program.handle import ProcStats, ProgramHandle
from mptcpize_py.resolve import Resolved
from mptcpize_py.status import DaemonStatus, PathsStatus, PolicyStatus, ProcessRow, RuleCount, RuleStatus


class Tallies:
    """Counts that outlive the kernel's tables: per rule series across reloads, per unit across the LRU."""

    def __init__(self, rw: ProgramHandle) -> None:
        self.rw = rw
        self._lock = threading.Lock()   # status() runs in the control thread too
        self._rules = RuleTally()
        self._procs = ProcessTally()

    def switch(self, policy: Policy) -> None:
        """The new policy's rule ids count from here (ids follow the rules' order: a reload renumbers)."""
        with self._lock:
            self._rules.switch({r.id: r.series for r in policy.allow}, self.rw.rule_stats())

    def read(self, procs: dict[tuple[int, int], ProcRecord],
             ) -> tuple[dict[int, int], list[ProcStats], list[RuleCount], dict[str, int]]:
        """One reading of the kernel's tables for the rows and the tallies."""
        with self._lock:
            per_rule = self.rw.rule_stats()
            stats = sorted(self.rw.proc_stats(), key=lambda s: (s.tgid, s.start_ns))
            by_series = self._rules.counts(per_rule)
            per_unit, run = self._procs.observe(
                ((s.tgid, s.start_ns), Seen(procs[(s.tgid, s.start_ns)].unit
                                            if (s.tgid, s.start_ns) in procs else None,
                                            s.kind == "run", s.upgraded)) for s in stats)
        rule_upgrades = [RuleCount(f, r, n) for (f, r), n in sorted(by_series.items())]
        if run or any(s.kind == "run" for s in stats):
            rule_upgrades.append(RuleCount(None, "run", run))
        return per_rule, stats, rule_upgrades, per_unit


@dataclass(frozen=True)
class Identity:
    """What does not change while the daemon runs."""
    backend: str
    dry_run: bool
    started: float
    policy_dir: str
    loader: str | None = None   # "libbpf" or "bcc": what loaded the program (None: a test's)


def build_status(me: Identity, policy: Policy, resolved: Resolved, procs: dict[tuple[int, int], ProcRecord],
                 tallies: Tallies, *, reloads: int, failed_reloads: int,
                 paths: list[PathsStatus], rule_desc: Callable[[int], str]) -> DaemonStatus:
    counters = tallies.rw.counters()
    per_rule, stats, rule_upgrades, per_unit = tallies.read(procs)
    rows = []
    for st in stats:
        rec = procs.get((st.tgid, st.start_ns))
        rows.append(ProcessRow(
            pid=st.tgid,
            start_ns=st.start_ns,
            exe=rec.exe if rec else procfs.exe_of_process(st.tgid, st.start_ns),
            rule=rec.rule if rec else rule_desc(st.rule_id),
            rule_id=st.rule_id,
            kind=st.kind,
            unit=rec.unit if rec else None,
            cgroup=rec.cgroup if rec else None,
            upgraded=st.upgraded,
            alive=alive(st.tgid, st.start_ns),
        ))
    return DaemonStatus(
        backend=me.backend,
        loader=me.loader,
        dry_run=me.dry_run,
        pid=os.getpid(),
        uptime_s=round(time.time() - me.started, 1),
        policy=PolicyStatus(
            dir=me.policy_dir,
            summary=policy.summary(),
            files=tuple(policy.files),
            rules=tuple(RuleStatus(id=r.id, description=r.description, action=r.action,
                                   kind=r.kind, value=r.value,
                                   target=resolved.targets.get(r.id),
                                   upgraded=per_rule.get(r.id, 0)) for r in policy.rules),
            pending=tuple(p.message for p in resolved.pending),
            problems=tuple(resolved.problems),
            reloads=reloads,
            failed_reloads=failed_reloads,
        ),
        totals=dict(counters),
        processes=tuple(rows),
        events_dropped=counters.get("events_dropped", 0),
        paths=tuple(paths),
        version=__version__,
        rule_upgrades=tuple(rule_upgrades),
        unit_upgrades=per_unit,
    )

