"""What the daemon learns about a process at its first upgrade event.

A process is (tgid, start_ns), as the kernel's proc_stats keys it: a pid names another process once
its owner is gone, its start does not (start_ns: the leader's start_boottime, ns after boot)."""

from dataclasses import dataclass

from mptcpize_py.host import procfs, systemd


@dataclass(frozen=True)
class ProcRecord:
    tgid: int
    start_ns: int
    exe: str | None
    cgroup: str | None
    unit: str | None
    rule_id: int
    rule: str          # the rule's description when the event arrived (ids are renumbered on reload)
    kind: str

    @property
    def key(self) -> tuple[int, int]:
        return self.tgid, self.start_ns


def learn(ev, rule: str) -> ProcRecord:
    """The record of an UpgradeEvent's process, read from /proc now; exe and cgroup are None when the
    process is gone (its pid may already name another process, whose /proc entries these are not)."""
    exe, cgroup = procfs.exe(ev.tgid), procfs.cgroup(ev.tgid)
    if not procfs.is_process(ev.tgid, ev.start_ns):   # read, then check: still it, so it was before
        exe = cgroup = None
    return ProcRecord(ev.tgid, ev.start_ns, exe, cgroup, systemd.unit_of_cgroup(cgroup), ev.rule_id,
                      rule, ev.kind)


def alive(tgid: int, start_ns: int) -> bool:
    return procfs.is_process(tgid, start_ns)
