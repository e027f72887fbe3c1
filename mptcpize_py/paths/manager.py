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
"""

import errno
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from mptcpize_py.display import escaped
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host.netns import HOST_NETNS, in_netns, named_netns_dir, netns_names, read_sysctl
from mptcpize_py.paths import netlink, others, plan
from mptcpize_py.paths.state import NetnsRecord, PathsState, netns_key
from mptcpize_py.paths.state import read as read_state
from mptcpize_py.policy import HOST_NETNS_NAME, PathsSettings, PathsTable, Policy, PolicyError
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


def read_path_manager() -> str | None:
    """net.mptcp.path_manager (Linux >= 6.15: "kernel"/"userspace"), else net.mptcp.pm_type
    (5.19+: 0 in-kernel, 1 userspace); None before 5.19 (in-kernel only). The calling thread's
    namespace."""
    pm = read_sysctl("net.mptcp.path_manager")
    if pm:
        return pm
    return {"0": "kernel", "1": "userspace"}.get(read_sysctl("net.mptcp.pm_type") or "", None)


@dataclass
class _Netns:
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


@dataclass
class PassResult:
    """What one pass over a namespace saw and did (for `paths --apply`'s output)."""
    netns: str
    changes: list[str] = field(default_factory=list)
    other: str | None = None
    problems: list[str] = field(default_factory=list)


class PathManager:
    def __init__(self, state_dir: Path, what: str = "daemon", follow: bool = True,
                 netns_dir: str | None = None):
        self.state = PathsState(state_dir, what)
        self.follow = follow
        self.netns_dir = netns_dir or named_netns_dir()
        self._policy: Policy | None = None
        self._watch: dict[str, _Netns] = {}     # by name
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._procs: list = []
        self._warned: dict[str, str] = {}       # namespace -> the problem last logged for it
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
            self._rescan()
            for ns in list(self._watch.values()):
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
            for ns in self._watch.values():
                self._close_socket(ns)
            self._watch.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def statuses(self) -> list[PathsStatus]:
        with self._lock:
            return [ns.status for ns in self._watch.values() if ns.status is not None]

    # --- namespaces --------------------------------------------------------------------------------
    def _wanted_namespaces(self, policy: Policy) -> dict[str, str | None]:
        """{name: path} of the namespaces the policy selects (host: path None)."""
        out: dict[str, str | None] = {HOST_NETNS_NAME: None}
        sel = policy.netns
        if sel.mode == "host":
            return out
        present = set(netns_names(self.netns_dir).values())
        names = present if sel.mode == "all" else [n for n in sel.names if n in present]
        for name in sorted(names):
            out.setdefault(name, os.path.join(self.netns_dir, name))
        return out

    def _rescan(self) -> bool:
        """Brings the watched set in line with the policy and /run/netns; True when it changed."""
        changed = False
        wanted = self._wanted_namespaces(self._policy) if self._policy is not None else {}
        for name in list(self._watch):
            ns = self._watch[name]
            now = _inum(wanted[name]) if name in wanted else _inum(ns.path)
            if name in wanted and now == ns.inum:
                continue
            # No longer selected (_release_unwatched() removes ours there), gone (its endpoints went
            # with it), or another namespace under that name now.
            self._close_socket(ns)
            del self._watch[name]
            if now != ns.inum:
                self.state.records.pop(ns.key, None)
                self.state.save()
            changed = True
        for name, path in wanted.items():
            # wanted is {} without a policy with a [paths] table
            settings = cast(PathsTable, cast(Policy, self._policy).paths).for_netns(name)
            if name in self._watch:
                self._watch[name].settings = settings
                continue
            inum = _inum(path)
            if inum is None:
                continue
            try:
                cookie = in_netns(path, netlink.netns_cookie)
            except MptcpizeError as e:
                self._warn(name, e.message)
                continue
            self._watch[name] = _Netns(name, path, inum, cookie, settings)
            changed = True
        for ns in self._watch.values():
            if ns.settings.manages and ns.sock is None:
                try:
                    ns.sock = in_netns(ns.path, netlink.event_socket)
                except (MptcpizeError, OSError) as e:
                    self._warn(ns.name, f"no address events: {e}")
            elif not ns.settings.manages and ns.sock is not None:
                self._close_socket(ns)
        return changed

    def _warn(self, name: str, problem: str) -> None:
        """Logs a namespace's problem once, not at every rescan."""
        if self._warned.get(name) != problem:
            self._warned[name] = problem
            log.warning("paths: netns %s: %s", escaped(name), escaped(problem))

    @staticmethod
    def _close_socket(ns: _Netns) -> None:
        if ns.sock is not None:
            ns.sock.close()
            ns.sock = None

    def _release_unwatched(self) -> None:
        """Records of namespaces that are no longer watched (the table dropped them, or a crashed
        predecessor managed others): ours removed where the namespace still exists, forgotten where
        it does not."""
        watched = {ns.key for ns in self._watch.values()}
        orphans = [k for k in self.state.records if k not in watched]
        if not orphans:
            return
        complete = True   # every namespace looked at: records found nowhere belong to gone ones
        for name, path in self._all_namespaces().items():
            inum = _inum(path)
            if inum is None:
                continue
            try:
                cookie = in_netns(path, netlink.netns_cookie)
            except MptcpizeError:
                complete = False
                continue
            key = netns_key(cookie, inum)
            if key in orphans:
                ns = _Netns(name, path, inum, cookie, PathsSettings())
                self._pass(ns, "not in the [paths] table")
                orphans.remove(key)
        if complete:
            for key in orphans:   # their namespace is gone, and their endpoints with it
                self.state.records.pop(key, None)
        self.state.save()

    def _all_namespaces(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {HOST_NETNS_NAME: None}
        for name in sorted(netns_names(self.netns_dir).values()):
            out.setdefault(name, os.path.join(self.netns_dir, name))
        return out

    def _release_all(self) -> None:
        for ns in list(self._watch.values()):
            ns.settings = PathsSettings()
            self._pass(ns, "stop")
            self._close_socket(ns)
        self._watch.clear()
        self._release_unwatched()

    # --- one pass over one namespace ----------------------------------------------------------------
    def _pass(self, ns: _Netns, why: str) -> PassResult:
        record = self.state.records.setdefault(ns.key, NetnsRecord(ns.name))
        record.name = ns.name
        res = PassResult(ns.name)
        if not ns.settings.manages and record.empty:   # role none, nothing of ours there: not even a look
            ns.status = PathsStatus(ns.name, ns.settings.role, "nobody (role none)", (), None)
            return res
        failed = None
        try:
            in_netns(ns.path, lambda: self._pass_here(ns, record, res, why))
        except MptcpizeError as e:
            failed = e.message
        except Exception as e:  # a bug or an odd namespace: the daemon's upgrades must go on
            failed = f"pass failed: {e!r}"
            if failed not in ns.problems:   # the traceback once, not at every event
                log.exception("paths: netns %s: pass failed", escaped(ns.name))
        if failed is not None:
            res.problems.append(failed)
            # status says so, beside what the last good pass left (not that list as if all were well)
            old = ns.status or PathsStatus(ns.name, ns.settings.role, "mptcpize-py", (), None)
            ns.status = PathsStatus(old.netns, ns.settings.role, old.managed_by, old.endpoints, old.limits,
                                    (failed,))
        self.state.save()
        problems = tuple(res.problems)
        if problems != ns.problems:
            for p in problems:
                log.warning("paths: netns %s: %s", escaped(ns.name), escaped(p))
            ns.problems = problems
        return res

    def _pass_here(self, ns: _Netns, record: NetnsRecord, res: PassResult, why: str) -> None:
        """In the namespace: look, plan, change, record."""
        settings = ns.settings if ns.settings.manages else None
        other, note = (None, None)
        if settings is not None:
            other, note = others.other_manager(ns.inum, self._procs, read_path_manager())
        if (other.line() if other else None) != ns.other:
            if other is not None:
                log.info("paths: netns %s: %s", escaped(ns.name), other.line())
            elif ns.other is not None:
                log.info("paths: netns %s: no other manager any more: managing endpoints", escaped(ns.name))
            ns.other = other.line() if other else None
        res.other = ns.other
        view = netlink.read_view()
        # Ours are those we added that were there, exactly so, at every look since: one that is
        # missing or different now was removed or changed by someone else, and is forgotten.
        record.endpoints = plan.still_ours(view, record.endpoints)
        ours: list[plan.KernelEndpoint] = []   # added by this pass
        p = plan.plan(view, None if other else settings, frozenset(record.endpoints),
                      record.limits_set, record.limits_before)
        for e in p.remove:
            try:
                netlink.delete_endpoint(e.id, e.address)
            except OSError as err:
                res.problems.append(f"cannot remove endpoint {e.address} id {e.id}: {err.strerror}")
                continue
            record.endpoints.discard(e.key)
            self._change(ns, res, f"removed endpoint {e.address} id {e.id} dev "
                         f"{view.ifname_text(e.ifindex)} {' '.join(plan.flag_names(e.flags))} ({why})")
        for w in p.add:
            try:
                added = netlink.add_endpoint(w.address, w.ifindex, w.flags)
            except OSError as err:
                what = ("no room: the namespace holds 8 endpoints" if err.errno == errno.ERANGE
                        else err.strerror)
                res.problems.append(f"cannot add endpoint {w.describe()}: {what}")
                continue
            record.endpoints.add(added.key)
            ours.append(added)
            self._change(ns, res, f"added endpoint {w.address} id {added.id} dev "
                         f"{plan.ifname_text(w.ifname)} {' '.join(plan.flag_names(w.flags))} ({why})")
        if p.limits is not None:
            try:
                netlink.set_limits(p.limits)
            except OSError as err:
                res.problems.append(f"cannot set limits subflows={p.limits.subflows} add_addr_accepted="
                                    f"{p.limits.add_addr_accepted}: {err.strerror}")
            else:
                if settings is not None and not other:
                    if record.limits_before is None:
                        record.limits_before = view.limits
                    record.limits_set = p.limits
                else:
                    record.limits_before = record.limits_set = None
                self._change(ns, res, f"limits subflows={p.limits.subflows} add_addr_accepted="
                             f"{p.limits.add_addr_accepted} (were subflows={view.limits.subflows} "
                             f"add_addr_accepted={view.limits.add_addr_accepted})")
        if settings is None or other:
            if record.limits_set is not None and p.limits is None:
                record.limits_before = record.limits_set = None   # changed by someone else: theirs now
        res.problems.extend(p.left_undone())
        for pattern in p.unmatched:
            res.problems.append(f"interfaces pattern {pattern!r} matches no interface (yet)")
        if note:
            res.problems.append(note)
        limits = p.limits or view.limits
        ns.status = PathsStatus(
            netns=ns.name, role=ns.settings.role,
            managed_by=ns.other or ("mptcpize-py" if settings else "nobody (role none)"),
            endpoints=tuple(f"{e.address} id {e.id} dev {view.ifname_text(e.ifindex)} "
                            f"{' '.join(plan.flag_names(e.flags))}"
                            for e in sorted([*p.keep, *ours], key=lambda e: (e.id, e.address))),
            limits=f"subflows={limits.subflows} add_addr_accepted={limits.add_addr_accepted}",
            problems=tuple(res.problems))

    @staticmethod
    def _change(ns: _Netns, res: PassResult, text: str) -> None:
        """`text` carries interface names as plan.ifname_text() gives them: escaped for the log here,
        by the renderer for `paths --apply`'s output."""
        res.changes.append(text)
        log.info("paths: netns %s: %s", escaped(ns.name), escaped(text))

    # --- the event thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        next_rescan = time.monotonic() + RESCAN_INTERVAL
        next_recheck = time.monotonic() + RECHECK_INTERVAL
        while not self._stop:
            with self._lock:
                socks = {ns.sock.fileno(): ns.name for ns in self._watch.values() if ns.sock is not None}
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

    def _changed_outside(self) -> set[str]:
        """The namespaces where an endpoint of ours is no longer listed exactly as we added it."""
        out = set()
        for ns in list(self._watch.values()):
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
                ns = self._watch.get(name)
                if ns is not None and ns.sock is not None:
                    netlink.drain(ns.sock)
            if rescan:
                procs = others.processes()
                if self._rescan() or procs != self._procs:
                    self._procs = procs
                    dirty = set(self._watch)
            events = {socks[fd] for fd in ready if fd in socks}
            rechecked = self._changed_outside() - dirty if recheck else set()
            for name in sorted(dirty | rechecked):
                ns = self._watch.get(name)
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


def _inum(path: str | None) -> int | None:
    try:
        return os.stat(path if path is not None else HOST_NETNS).st_ino
    except (OSError, TypeError):
        return None


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
