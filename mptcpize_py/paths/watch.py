"""Which network namespaces the path manager watches: those a [paths] table selects, each with its
identity (inode and cookie), its settings and its rtnetlink event socket, kept in line with /run/netns
by rescan(). manager.py runs the passes and the event thread; passes.py is one pass."""

import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from mptcpize_py.display import escaped
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host.netns import HOST_NETNS, in_netns, netns_names
from mptcpize_py.paths import netlink
from mptcpize_py.paths.state import PathsState, netns_key
from mptcpize_py.policy import HOST_NETNS_NAME, PathsSettings, PathsTable, Policy
from mptcpize_py.status import PathsStatus

log = logging.getLogger("mptcpize_py.paths")


@dataclass
class Netns:
    name: str
    path: str | None                 # None: the host's (this process's own)
    inum: int
    cookie: int | None
    settings: PathsSettings
    sock: socket.socket | None = None   # netlink event socket, when managed
    other: str | None = None         # the other manager's line, when standing back
    problems: tuple[str, ...] = ()
    status: PathsStatus | None = None

    @property
    def key(self) -> str:
        return netns_key(self.cookie, self.inum)

    def close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def inum(path: str | None) -> int | None:
    """The namespace's inode (path None: our own), None when it is gone."""
    try:
        return os.stat(path if path is not None else HOST_NETNS).st_ino
    except (OSError, TypeError):
        return None


def wanted_namespaces(policy: Policy, present: Iterable[str], netns_dir: str) -> dict[str, str | None]:
    """{name: path} of the namespaces the policy selects among the named ones `present` (host: path
    None, always)."""
    out: dict[str, str | None] = {HOST_NETNS_NAME: None}
    sel = policy.netns
    if sel.mode == "host":
        return out
    present = set(present)
    names = present if sel.mode == "all" else [n for n in sel.names if n in present]
    for name in sorted(names):
        out.setdefault(name, os.path.join(netns_dir, name))
    return out


class NamespaceWatch:
    """The watched namespaces by name. Not thread-safe: the manager holds its lock around every call."""

    def __init__(self, state: PathsState, netns_dir: str):
        self.state = state
        self.netns_dir = netns_dir
        self.by_name: dict[str, Netns] = {}
        self._warned: dict[str, str] = {}       # namespace -> the problem last logged for it

    def sockets(self) -> dict[int, str]:
        """{event socket descriptor: namespace name}."""
        return {ns.sock.fileno(): ns.name for ns in self.by_name.values() if ns.sock is not None}

    def clear(self) -> None:
        for ns in self.by_name.values():
            ns.close_socket()
        self.by_name.clear()

    def rescan(self, policy: Policy | None) -> bool:
        """Brings the watched set in line with the policy and /run/netns; True when it changed."""
        changed = False
        wanted = (wanted_namespaces(policy, netns_names(self.netns_dir).values(), self.netns_dir)
                  if policy is not None else {})
        for name in list(self.by_name):
            ns = self.by_name[name]
            now = inum(wanted[name]) if name in wanted else inum(ns.path)
            if name in wanted and now == ns.inum:
                continue
            # No longer selected (the manager removes ours there), gone (its endpoints went with it),
            # or another namespace under that name now.
            ns.close_socket()
            del self.by_name[name]
            if now != ns.inum:
                self.state.records.pop(ns.key, None)
                self.state.save()
            changed = True
        for name, path in wanted.items():
            # wanted is {} without a policy with a [paths] table
            settings = cast(PathsTable, cast(Policy, policy).paths).for_netns(name)
            if name in self.by_name:
                self.by_name[name].settings = settings
                continue
            found = inum(path)
            if found is None:
                continue
            try:
                cookie = in_netns(path, netlink.netns_cookie)
            except MptcpizeError as e:
                self.warn(name, e.message)
                continue
            self.by_name[name] = Netns(name, path, found, cookie, settings)
            changed = True
        for ns in self.by_name.values():
            if ns.settings.manages and ns.sock is None:
                try:
                    ns.sock = in_netns(ns.path, netlink.event_socket)
                except (MptcpizeError, OSError) as e:
                    self.warn(ns.name, f"no address events: {e}")
            elif not ns.settings.manages and ns.sock is not None:
                ns.close_socket()
        return changed

    def warn(self, name: str, problem: str) -> None:
        """Logs a namespace's problem once, not at every rescan."""
        if self._warned.get(name) != problem:
            self._warned[name] = problem
            log.warning("paths: netns %s: %s", escaped(name), escaped(problem))

    def orphans(self) -> tuple[list[Netns], set[str]] | None:
        """Records of namespaces that are not watched (the table dropped them, or a crashed predecessor
        managed others): (the namespaces that still exist and hold such a record, to be given a pass
        with no settings; the record keys found in no namespace, which belong to gone ones, or an empty
        set when some namespace could not be looked at); None when every record is watched."""
        watched = {ns.key for ns in self.by_name.values()}
        orphans = {k for k in self.state.records if k not in watched}
        if not orphans:
            return None
        found: list[Netns] = []
        complete = True   # every namespace looked at: records found nowhere belong to gone ones
        everywhere: dict[str, str | None] = {HOST_NETNS_NAME: None}
        for name in sorted(netns_names(self.netns_dir).values()):
            everywhere.setdefault(name, os.path.join(self.netns_dir, name))
        for name, path in everywhere.items():
            found_inum = inum(path)
            if found_inum is None:
                continue
            try:
                cookie = in_netns(path, netlink.netns_cookie)
            except MptcpizeError:
                complete = False
                continue
            key = netns_key(cookie, found_inum)
            if key in orphans:
                found.append(Netns(name, path, found_inum, cookie, PathsSettings()))
                orphans.discard(key)
        return found, orphans if complete else set()

    def changed_outside(self) -> set[str]:
        """The namespaces where an endpoint of ours is no longer listed exactly as we added it."""
        out = set()
        for ns in list(self.by_name.values()):
            record = self.state.records.get(ns.key)
            if not ns.settings.manages or ns.other is not None or record is None or not record.endpoints:
                continue
            try:
                listed = {e.key for e in in_netns(ns.path, netlink.read_endpoints_and_limits)[0]}
            except MptcpizeError:
                continue   # the pass this namespace gets at its next event says why
            if not record.endpoints <= listed:
                log.info("paths: netns %s: endpoints of mptcpize-py removed or changed by someone else "
                         "(re-check)", escaped(ns.name))
                out.add(ns.name)
        return out
