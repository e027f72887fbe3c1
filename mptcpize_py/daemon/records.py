"""What the daemon learns about a process at its first upgrade event."""

from dataclasses import dataclass

from mptcpize_py.host import procfs


@dataclass(frozen=True)
class ProcRecord:
    tgid: int
    exe: str | None
    cgroup: str | None
    unit: str | None
    rule_id: int
    rule: str          # the rule's description when the event arrived (ids are renumbered on reload)
    kind: str
    starttime: str | None   # /proc/PID/stat field 22: tells a recycled pid from the same process


def alive(rec: ProcRecord | None, tgid: int) -> bool:
    st = procfs.starttime(tgid)
    if st is None:
        return False
    return rec is None or rec.starttime is None or rec.starttime == st
