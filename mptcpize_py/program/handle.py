"""ProgramHandle: what the daemon and `run` call on the loaded BPF program (loader.Rewriter; tests
use a fake)."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mptcpize_py.program.loader import ProcStats, UpgradeEvent


class ProgramHandle(Protocol):
    # False: a dry run on a kernel whose net.mptcp.enabled the program cannot read from kernel
    # memory; userspace then tells it with set_netns_mptcp().
    reads_netns_from_kernel: bool

    def set_selection(self, exe_rules: dict[tuple[int, int], tuple[int, int]],
                      cgroup_rules: dict[int, tuple[int, int]], netns: set[int] | None) -> None: ...

    def set_netns_mptcp(self, enabled: dict[int, bool]) -> None: ...

    def add_run_root(self, pid: int, run_id: int = 1) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def rule_stats(self) -> dict[tuple[str, int], int]: ...

    def proc_stats(self) -> "list[ProcStats]": ...

    def exe_name(self, tgid: int, start_ns: int) -> str | None: ...

    def open_events(self, callback: "Callable[[UpgradeEvent], None]") -> None: ...

    def poll_events(self, timeout_ms: int) -> None: ...

    def drain_events(self) -> None: ...

    def close(self) -> None: ...
