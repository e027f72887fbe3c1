"""The path manager: MPTCP endpoints and limits of the namespaces a [paths] table names, kept in line
with their addresses by rtnetlink events (not by polling), by the daemon or by `paths --apply`.

- apply(policy) at start and at each reload: the table's namespaces are set up, namespaces it no
  longer names get ours removed; no table: ours removed everywhere, the lock released.
- an event thread waits on one rtnetlink socket per managed namespace (links, addresses, routes): a
  message makes it read that namespace again and apply the difference (settle time: SETTLE s, so a
  burst is one pass). Every RESCAN_INTERVAL s it also looks for namespaces that appeared or went
  (/run/netns) and for mptcpd or NetworkManager starting or stopping (their processes). It waits
  with poll/epoll (selectors), not select(): `[netns] all = true` may mean more than FD_SETSIZE
  (1,024) sockets.
- every RECHECK_INTERVAL s it reads the endpoints of each namespace where it has some: no netlink
  event says that endpoints changed (see RECHECK_INTERVAL), so a flush of ours (`ip mptcp endpoint
  flush`) is noticed this way, and ours are added again.
- close(release=True) at stop: ours removed, the limits we set given back (if nobody changed them
  since), the lock released. close(release=False) (`paths --apply` without --follow) leaves them,
  recorded as ours for the next manager.

Everything a pass changes is logged at INFO, one line per change; standing back for another manager
is one line when it starts; problems (an address the kernel refuses, no room left) once until they
change.

watch.py keeps the set of watched namespaces; passes.py is one pass (plan.py computes its changes).
"""

import logging
import os
import resource
import selectors
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host.netns import named_netns_dir
from mptcpize_py.paths import netlink, others
from mptcpize_py.paths.passes import PassResult, run_pass
from mptcpize_py.paths.state import PathsState
from mptcpize_py.paths.state import read as read_state
from mptcpize_py.paths.watch import NamespaceWatch, Netns
from mptcpize_py.policy import PathsSettings, Policy, PolicyError
from mptcpize_py.policysync import PolicyWatch, ReloadSignals
from mptcpize_py.status import PathsStatus

RESCAN_INTERVAL = 2.0
SETTLE = 0.05
# Endpoint changes are announced by no netlink message, in any kernel up to 6.18 at least: the
# "mptcp_pm" generic netlink family multicasts only on its "mptcp_pm_events" group, and only
# connection events (MPTCP_EVENT_CREATED ... SUB_PRIORITY since 5.12, LISTENER_CREATED/CLOSED since
# 6.2; net/mptcp/pm_netlink.c mptcp_nl_mcast_send()); its "mptcp_pm_cmds" group (since 5.7) is
# registered but nothing is ever sent on it; MPTCP_PM_CMD_ADD_ADDR/DEL_ADDR/FLUSH_ADDRS change
# endpoints silently (checked on 6.18: neither group delivers anything for `ip mptcp endpoint
# add/delete/flush`; tests/host/test_paths_hostile.py checks it). Listening to the events group would
# also cost a message per connection and subflow, and tells the kernel that a userspace path manager
# listens (mptcp_userspace_pm_active(), 5.19+, consulted for connections under the userspace path
# manager). So: a slow timer. Only namespaces where we have endpoints are read, and only their endpoint
# list (one generic netlink dump): a flush of ours is noticed within this many seconds.
RECHECK_INTERVAL = 10.0

log = logging.getLogger("mptcpize_py.paths")


class PathManager:
    def __init__(self, state_dir: Path, what: str = "daemon", follow: bool = True,
                 netns_dir: str | None = None):
        self.state = PathsState(state_dir, what)
        self.follow = follow
        self.netns_dir = netns_dir or named_netns_dir()
        self._policy: Policy | None = None
        self._watch = NamespaceWatch(self.state, self.netns_dir)
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._procs: list = []
        self.results: list[PassResult] = []     # of the last apply()
        if follow:
            _raise_nofile_limit()

    # --- the daemon's hooks ------------------------------------------------------------------------
    def apply(self, policy: Policy | None, clean: bool = False) -> None:
        """At start and reload. Raises MptcpizeError when another manager holds the lock. Without a
        [paths] table nothing happens, unless we managed until now, or `clean` (`paths --apply`) and
        a predecessor left endpoints recorded as ours: then ours are removed."""
        with self._lock:
            self.results = []
            if policy is None or policy.paths is None:
                if clean and not self.state.locked and read_state(self.state.directory)[1]:
                    self.state.lock()
                if self.state.locked:
                    log.info("paths: no [paths] table any more: removing the endpoints mptcpize-py added")
                    self._policy = None
                    self._release_all()
                    self.state.unlock()
                return
            first = not self.state.locked
            self.state.lock()
            self._policy = policy
            if first:
                log.info("paths: managing MPTCP endpoints (%s)", policy.paths.describe())
            self._procs = others.processes()
            self._watch.rescan(policy)
            for ns in list(self._watch.by_name.values()):
                self.results.append(self._pass(ns, "policy"))
            self._release_unwatched()
        if self.follow and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mptcpize-paths", daemon=True)
            self._thread.start()

    def close(self, release: bool = True) -> None:
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self.state.locked:
                if release:
                    log.info("paths: stopping: removing the endpoints mptcpize-py added")
                    self._policy = None
                    self._release_all()
                self.state.unlock()
            self._watch.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def statuses(self) -> list[PathsStatus]:
        with self._lock:
            return [ns.status for ns in self._watch.by_name.values() if ns.status is not None]

    # --- passes --------------------------------------------------------------------------------------
    def _pass(self, ns: Netns, why: str) -> PassResult:
        return run_pass(ns, self.state, self._procs, why)

    def _release_unwatched(self) -> None:
        """Records of namespaces that are no longer watched: ours removed where the namespace still
        exists, forgotten where it does not."""
        orphans = self._watch.orphans()
        if orphans is None:
            return
        found, gone = orphans
        for ns in found:
            self._pass(ns, "not in the [paths] table")
        for key in gone:   # their namespace is gone, and their endpoints with it
            self.state.records.pop(key, None)
        self.state.save()

    def _release_all(self) -> None:
        for ns in list(self._watch.by_name.values()):
            ns.settings = PathsSettings()
            self._pass(ns, "stop")
            ns.close_socket()
        self._watch.by_name.clear()
        self._release_unwatched()

    # --- the event thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        next_rescan = time.monotonic() + RESCAN_INTERVAL
        next_recheck = time.monotonic() + RECHECK_INTERVAL
        while not self._stop:
            with self._lock:
                socks = self._watch.sockets()
            timeout = max(0.0, min(next_rescan, next_recheck) - time.monotonic())
            ready = self._wait([self._wake_r, *socks], timeout)
            if self._stop:
                break
            now = time.monotonic()
            try:
                self._handle(ready, socks, now >= next_rescan, now >= next_recheck)
            except Exception:  # a bug or an odd namespace must not end the thread: log, go on
                log.exception("paths: pass failed")
            if now >= next_rescan:
                next_rescan = time.monotonic() + RESCAN_INTERVAL
            if now >= next_recheck:
                next_recheck = time.monotonic() + RECHECK_INTERVAL

    @staticmethod
    def _wait(fds: list[int], timeout: float) -> list[int]:
        """The descriptors of `fds` ready to read within `timeout` s. poll/epoll: any number of them
        (select() refuses descriptors >= FD_SETSIZE, 1,024)."""
        with selectors.DefaultSelector() as sel:
            for fd in fds:
                try:
                    sel.register(fd, selectors.EVENT_READ)
                except (OSError, ValueError):   # closed by a rescan meanwhile: its namespace is gone
                    continue
            try:
                return [key.fd for key, _ in sel.select(timeout)]
            except OSError:
                time.sleep(min(timeout, 0.1))   # never spin
                return []

    def _handle(self, ready: list[int], socks: dict[int, str], rescan: bool, recheck: bool = False) -> None:
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except OSError:
                pass
        dirty = {socks[fd] for fd in ready if fd in socks}
        if dirty:
            time.sleep(SETTLE)   # a burst (an interface with several addresses going down) is one pass
        with self._lock:
            if self._policy is None or self._stop:
                return
            for name in list(dirty):
                ns = self._watch.by_name.get(name)
                if ns is not None and ns.sock is not None:
                    netlink.drain(ns.sock)
            if rescan:
                procs = others.processes()
                if self._watch.rescan(self._policy) or procs != self._procs:
                    self._procs = procs
                    dirty = set(self._watch.by_name)
            events = {socks[fd] for fd in ready if fd in socks}
            rechecked = self._watch.changed_outside() - dirty if recheck else set()
            for name in sorted(dirty | rechecked):
                ns = self._watch.by_name.get(name)
                if ns is not None:
                    self._pass(ns, "address change" if name in events else
                               "re-check" if name in rechecked else "rescan")


def _raise_nofile_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one: one event socket per managed namespace may mean
    more than 1,024 descriptors, systemd's soft limit for services (kept low for select()'s sake;
    systemd.exec(5), LimitNOFILE=, asks programs that do not use select() to raise it themselves)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            log.warning("paths: cannot raise the open files limit from %d: %s", soft, e)


def follow(manager: PathManager, policy_dir: Path, load: Callable[[], Policy | None]) -> None:
    """`paths --apply --follow`: the manager kept in sync until SIGTERM or SIGINT; SIGHUP, or a
    change in the policy directory (checked every RESCAN_INTERVAL s, as the daemon does), reloads
    (`load()` -> Policy; a policy that does not validate keeps the last good one)."""
    signals = ReloadSignals()
    signals.install()
    watch = PolicyWatch(policy_dir, RESCAN_INTERVAL)
    while not signals.stop:
        time.sleep(0.1)   # signals interrupt it; the handlers only set flags
        if not watch.due() and not signals.reload:
            continue
        if signals.reload or watch.changed():
            signals.reload = False
            watch.mark()
            try:
                manager.apply(load())
                log.info("paths: reloaded")
            except PolicyError as e:
                for line in e.errors:
                    log.error("reload refused: %s", line)
            except MptcpizeError as e:
                log.error("paths: %s", e.message)
