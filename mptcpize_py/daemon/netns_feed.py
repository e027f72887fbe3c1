"""The dry run's netns feeder: on a kernel whose net.mptcp.enabled the program cannot read from kernel
memory, the daemon tells it the value of the namespaces it knows (the host's and /run/netns/*)."""

import logging
import os

from mptcpize_py import abi
from mptcpize_py.host.netns import HOST_NETNS, named_netns_dir, read_sysctl_in_netns
from mptcpize_py.program.handle import ProgramHandle

log = logging.getLogger("mptcpize_py.daemon")


class NetnsFeeder:
    def __init__(self, rw: ProgramHandle) -> None:
        self.rw = rw
        self._left_out = 0   # namespaces the netns_mptcp map has no room for

    def refresh(self, selected: frozenset[int]) -> None:
        """The netns_mptcp map holds abi.MAX_NETNS namespaces; /run/netns may name more. What fits goes
        in: the host's first, then those the policy selects (`selected`), then the others by name. The
        rest count as netns_unreadable (never upgraded), which one warning says each time their number
        changes."""
        netns_dir = named_netns_dir()
        try:
            names = sorted(os.listdir(netns_dir))
        except OSError:
            names = []
        found: dict[int, tuple[int, str]] = {}   # inum -> (rank, path): one entry per namespace
        for rank, p in enumerate([HOST_NETNS] + [os.path.join(netns_dir, n) for n in names]):
            try:
                inum = os.stat(p).st_ino
            except OSError:
                continue
            found.setdefault(inum, (rank, p))

        def priority(item: tuple[int, tuple[int, str]]) -> tuple[bool, bool, int]:
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
        if left_out != self._left_out:
            if left_out:
                log.warning("dry run: %d network namespaces left out of the netns_mptcp map (it holds %d: "
                            "the host's, the policy's, then %s by name); sockets there count as "
                            "netns_unreadable", left_out, abi.MAX_NETNS, netns_dir)
            else:
                log.info("dry run: every network namespace fits the netns_mptcp map again")
            self._left_out = left_out
