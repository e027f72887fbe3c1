"""ProgramHandle: what the daemon and `run` call on the loaded BPF program (program.rewriter.Rewriter;
tests use a fake), and the reports it gives."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class UpgradeEvent:
    """One ring-buffer record (struct mptcpize_event), its fields by name; kind as a name."""
    pid: int
    tgid: int
    uid: int
    comm: str
    cgroup_id: int
    netns: int
    family: int
    kind: str
    rule_id: int
    start_ns: int   # with tgid, the process: when it started (ns after boot; see ProcStats)


@dataclass(frozen=True)
class ProcStats:
    """One process's exact count. A process is (tgid, start_ns): start_ns is its leader's
    start_boottime, ns after boot (host.procfs.is_process compares it with /proc), so a recycled pid
    is another entry."""
    tgid: int
    upgraded: int
    kind: str
    rule_id: int
    start_ns: int


class ProgramHandle(Protocol):
    # False: a dry run on a kernel whose net.mptcp.enabled the program cannot read from kernel
    # memory; userspace then tells it with set_netns_mptcp().
    reads_netns_from_kernel: bool

    def set_selection(self, exe_rules: dict[tuple[int, int], tuple[int, int]],
                      cgroup_rules: dict[int, tuple[int, int]], netns: set[int] | None) -> None: ...

    def set_netns_mptcp(self, enabled: dict[int, bool]) -> None: ...

    def add_run_root(self, pid: int, run_id: int = 1) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def rule_stats(self) -> dict[int, int]: ...

    def proc_stats(self) -> list[ProcStats]: ...

    def exe_name(self, tgid: int, start_ns: int) -> str | None: ...

    def open_events(self, callback: Callable[[UpgradeEvent], None]) -> None: ...

    def poll_events(self, timeout_ms: int) -> None: ...

    def drain_events(self) -> None: ...

    def close(self) -> None: ...
