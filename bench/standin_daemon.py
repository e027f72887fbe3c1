"""`mptcpize-py daemon` with a stand-in for its BPF program, so that `run`'s fast path (hello,
register, fork + exec, run_report over the control socket) can be timed on a kernel that refuses the
hook, such as this machine's. Everything but the program is the real daemon (service.Daemon, its
control server and handlers); register's one BPF map write (a few µs) is what the stand-in leaves out.
Used by native_bench.py's latency part:

    python bench/standin_daemon.py POLICY_DIR CONTROL_PATH
"""

import sys
import time

import common  # noqa: F401  (puts this checkout on sys.path)

from mptcpize_py import abi
from mptcpize_py.daemon import service


class StandInProgram:
    """A ProgramHandle that selects nothing and counts nothing."""

    reads_netns_from_kernel = True

    def set_selection(self, exe_rules, cgroup_rules, netns) -> None:
        pass

    def set_netns_mptcp(self, enabled) -> None:
        pass

    def add_run_root(self, pid: int, run_id: int = 1) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return dict.fromkeys(abi.COUNTERS, 0)

    def rule_stats(self) -> dict:
        return {}

    def proc_stats(self) -> list:
        return []

    def exe_name(self, tgid: int, start_ns: int) -> None:
        return None

    def open_events(self, callback) -> None:
        pass

    def poll_events(self, timeout_ms: int) -> None:
        time.sleep(timeout_ms / 1000)   # what the real poll does when nothing happens

    def drain_events(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> int:
    policy_dir, control = sys.argv[1:3]
    signals = service.ReloadSignals()
    signals.install()
    d = service.start(policy_dir, control, rewriter_factory=StandInProgram, signals=signals)
    try:
        d.run()
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
