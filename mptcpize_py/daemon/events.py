"""Upgrade events -> process records: the first upgrade of each process (tgid, start time) is
logged at INFO and remembered for `status`; per-socket volume stays in the kernel's counters."""

import logging
import threading
from collections.abc import Callable

from mptcpize_py import abi
from mptcpize_py.daemon.records import ProcRecord, alive, learn
from mptcpize_py.display import escaped
from mptcpize_py.host import systemd
from mptcpize_py.program.handle import ProcStats, UpgradeEvent

MAX_PROC_RECORDS = abi.MAX_PROCS   # the kernel's proc_stats holds as many

log = logging.getLogger("mptcpize_py.daemon")


class ProcessLog:
    def __init__(self, dry_run: bool, rule_desc: Callable[[int], str],
                 on_change: Callable[[], None]) -> None:
        self.dry_run = dry_run
        self.verb = "would upgrade" if dry_run else "upgraded"
        self.rule_desc = rule_desc
        self.on_change = on_change
        self.records: dict[tuple[int, int], ProcRecord] = {}   # by (tgid, start_ns): a process
        self._lock = threading.Lock()   # records vs. the control thread

    def __len__(self) -> int:
        with self._lock:
            return len(self.records)

    def copy(self) -> dict[tuple[int, int], ProcRecord]:
        with self._lock:
            return dict(self.records)

    def on_event(self, ev: UpgradeEvent) -> None:
        with self._lock:
            if (ev.tgid, ev.start_ns) in self.records:
                return
        rec = learn(ev, self.rule_desc(ev.rule_id))
        with self._lock:
            self.records[rec.key] = rec
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
        self.on_change()

    def prune(self, proc_stats: Callable[[], list[ProcStats]]) -> None:
        """Forgets records of dead processes when there are many: those the kernel's LRU forgot
        (status has no row for them any more), and live ones never."""
        with self._lock:
            if len(self.records) <= MAX_PROC_RECORDS:
                return
        counted = {(s.tgid, s.start_ns) for s in proc_stats()}
        with self._lock:
            dead = [key for key in self.records if key not in counted and not alive(*key)]
            for key in dead:
                del self.records[key]
