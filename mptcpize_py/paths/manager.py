"""The path manager: MPTCP endpoints and limits of the namespaces a [paths] table names, kept in line
with their addresses by rtnetlink events (not by polling), by the daemon or by `paths --apply`.

- apply(policy) at start and at each reload: the table's namespaces are set up, namespaces it no
  longer names get ours removed; no table: ours removed everywhere, the lock released.
- an event thread waits on one rtnetlink socket per managed namespace (links, addresses, routes): a
  message makes it read that namespace again and apply the difference (settle time: SETTLE s, so a
  burst is one pass). Every RESCAN_INTERVAL s it also looks for namespaces that appeared or went
  (/run/netns) and for mptcpd or NetworkManager starting or stopping (their processes).
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
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mptcpize_py.display import escaped
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host.netns import HOST_NETNS, in_netns, named_netns_dir, netns_names, read_sysctl
from mptcpize_py.paths import netlink, others, plan
from mptcpize_py.paths.state import NetnsRecord, PathsState, netns_key
from mptcpize_py.paths.state import read as read_state
from mptcpize_py.policy import HOST_NETNS_NAME, PathsSettings, Policy
from mptcpize_py.status import PathsStatus

RESCAN_INTERVAL = 2.0
SETTLE = 0.05

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
    sock: object = None              # netlink event socket, when managed
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
    def _wanted_namespaces(self) -> dict[str, str | None]:
        """{name: path} of the namespaces the policy selects (host: path None)."""
        out: dict[str, str | None] = {HOST_NETNS_NAME: None}
        sel = self._policy.netns
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
        wanted = self._wanted_namespaces() if self._policy is not None else {}
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
            settings = self._policy.paths.for_netns(name)
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
        try:
            in_netns(ns.path, lambda: self._pass_here(ns, record, res, why))
        except MptcpizeError as e:
            res.problems.append(e.message)
        except Exception as e:  # a bug or an odd namespace: the daemon's upgrades must go on
            log.exception("paths: netns %s: pass failed", escaped(ns.name))
            res.problems.append(f"pass failed: {e!r}")
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
        ours = []   # (id, address, ifindex, flags) after this pass
        p = plan.plan(view, None if other else settings, frozenset(record.endpoints),
                      record.limits_set, record.limits_before)
        for e in p.remove:
            try:
                netlink.delete_endpoint(e.id, e.address)
            except OSError as err:
                res.problems.append(f"cannot remove endpoint {e.address} id {e.id}: {err.strerror}")
                continue
            record.endpoints.discard((e.id, e.address))
            self._change(ns, res, f"removed endpoint {e.address} id {e.id} dev "
                         f"{view.ifname(e.ifindex) or '-'} {' '.join(plan.flag_names(e.flags))} ({why})")
        for w in p.add:
            try:
                ep_id = netlink.add_endpoint(w.address, w.ifindex, w.flags)
            except OSError as err:
                what = ("no room: the namespace holds 8 endpoints" if err.errno == errno.ERANGE
                        else err.strerror)
                res.problems.append(f"cannot add endpoint {w.describe()}: {what}")
                continue
            record.endpoints.add((ep_id, w.address))
            ours.append((ep_id, w.address, w.ifindex, w.flags))
            self._change(ns, res, f"added endpoint {w.address} id {ep_id} dev {w.ifname} "
                         f"{' '.join(plan.flag_names(w.flags))} ({why})")
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
            endpoints=tuple(f"{a} id {i} dev {view.ifname(ix) or '-'} {' '.join(plan.flag_names(f))}"
                            for i, a, ix, f in sorted([(e.id, e.address, e.ifindex, e.flags)
                                                       for e in p.keep] + ours)),
            limits=f"subflows={limits.subflows} add_addr_accepted={limits.add_addr_accepted}",
            problems=tuple(res.problems))

    @staticmethod
    def _change(ns: _Netns, res: PassResult, text: str) -> None:
        res.changes.append(text)
        log.info("paths: netns %s: %s", escaped(ns.name), text)

    # --- the event thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        next_rescan = time.monotonic() + RESCAN_INTERVAL
        while not self._stop:
            with self._lock:
                socks = {ns.sock.fileno(): ns.name for ns in self._watch.values() if ns.sock is not None}
            try:
                ready, _, _ = select.select([self._wake_r, *socks], [], [],
                                            max(0.0, next_rescan - time.monotonic()))
            except (OSError, ValueError):   # a socket closed by a rescan meanwhile
                ready = []
            if self._stop:
                break
            try:
                self._handle(ready, socks, time.monotonic() >= next_rescan)
            except Exception:  # a bug or an odd namespace must not end the thread: log, go on
                log.exception("paths: pass failed")
            if time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + RESCAN_INTERVAL

    def _handle(self, ready: list[int], socks: dict[int, str], rescan: bool) -> None:
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
            for name in sorted(dirty):
                ns = self._watch.get(name)
                if ns is not None:
                    self._pass(ns, "address change" if name in events else "rescan")


def _inum(path: str | None) -> int | None:
    try:
        return os.stat(path if path is not None else HOST_NETNS).st_ino
    except (OSError, TypeError):
        return None


def follow(manager: PathManager, policy_dir: Path, load) -> None:
    """`paths --apply --follow`: the manager kept in sync until SIGTERM or SIGINT; SIGHUP, or a
    change in the policy directory (checked every RESCAN_INTERVAL s, as the daemon does), reloads
    (`load()` -> Policy; a policy that does not validate keeps the last good one)."""
    import signal

    from mptcpize_py.daemon.service import dir_fingerprint
    from mptcpize_py.policy import PolicyError
    flags = {"stop": False, "reload": False}

    def on_term(_sig, _frm):
        flags["stop"] = True

    def on_hup(_sig, _frm):
        flags["reload"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    fingerprint = dir_fingerprint(policy_dir)
    next_check = time.monotonic() + RESCAN_INTERVAL
    while not flags["stop"]:
        time.sleep(0.1)   # signals interrupt it; the handlers only set flags
        if not flags["reload"] and time.monotonic() < next_check:
            continue
        next_check = time.monotonic() + RESCAN_INTERVAL
        now = dir_fingerprint(policy_dir)
        if flags["reload"] or now != fingerprint:
            flags["reload"], fingerprint = False, now
            try:
                manager.apply(load())
                log.info("paths: reloaded")
            except PolicyError as e:
                for line in e.errors:
                    log.error("reload refused: %s", line)
            except MptcpizeError as e:
                log.error("paths: %s", e.message)
