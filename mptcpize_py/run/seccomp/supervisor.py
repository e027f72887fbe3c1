"""The supervisor: answers each notification of one listener, with an MPTCP socket made in the
caller's context, or by letting the caller's own syscall run."""

import ctypes
import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from mptcpize_py.abi import IPPROTO_MPTCP
from mptcpize_py.display import escaped
from mptcpize_py.host import libc, procfs
from mptcpize_py.run.backend import ProcessReport, ProcessSummary
from mptcpize_py.run.seccomp.caller import CallerContextThread, Creds, overflow_ids, read_creds
from mptcpize_py.run.seccomp.notify import Listener, Notification
from mptcpize_py.run.seccomp.shim import SHIM_GO, SHIM_REGISTER, SHIM_STAND_ASIDE, Counters
from mptcpize_py.run.seccomp.threads import ThreadFacts

log = logging.getLogger(__name__)

AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000   # execveat()'s dirfd and flags


def foreign_proc() -> str | None:
    """Why /proc cannot name our callers, or None when it can. A notification's pid is in our pid
    namespace; /proc/PID names a process of the pid namespace /proc was mounted for (`unshare -pf`
    without --mount-proc keeps the parent's): another process, whose context a socket would take.
    /proc/self's NSpid lists our pid from /proc's namespace down to ours: one entry, ours, when they
    are the same namespace (NSpid: Linux 4.1)."""
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = os.read(fd, 8192)
        finally:
            os.close(fd)
    except OSError as e:
        return f"/proc/self/status cannot be read: {e.strerror}"
    line = next((ln for ln in status.split(b"\n") if ln.startswith(b"NSpid:")), None)
    nspid = line.split()[1:] if line else [b"?"]
    if nspid == [str(os.getpid()).encode()]:
        return None
    return (f"/proc belongs to another pid namespace than mptcpize-py's (/proc/self is pid "
            f"{nspid[0].decode()}, mptcpize-py is pid {os.getpid()})")


class _Process:
    """What `run -v` keeps of a live process that got upgraded sockets: those the supervisor made,
    and the shim's counter slots (one per exec image that registered)."""
    __slots__ = ("exe", "upgraded", "row", "slots")

    def __init__(self, exe: str, row: bool):
        self.exe, self.upgraded, self.row = exe, 0, row
        self.slots: list[int] = []


class _Summary(NamedTuple):
    processes: int
    upgraded: int


class Supervisor:
    """Answers the notifications of one listener until every task using the filter is gone.

    track=True (`run`): keeps per process (pid plus its pidfd's inode, or its start time: a recycled
    pid is another process) what report() gives `run -v`. Only live processes are kept in full:
    exited ones become a row (the first REPORT_ROWS processes) or add to a per-executable summary, so
    memory stays bounded however many processes come and go, and the totals stay exact.
    track=False (the detached supervisor, whose report nobody reads): nothing per process."""

    REPORT_ROWS = 1000       # processes with a row of their own in report()
    SUMMARY_EXES = 64        # executables summarized by name; the rest are summed under OTHERS
    OTHERS = "[other executables]"
    PRUNE_MIN = 64           # look for exited processes once this many are tracked (amortized)
    EXEC_CHECKERS = 2        # threads looking at exec targets (see _exec)

    def __init__(self, listener: Listener, track: bool = True, shim: Counters | None = None):
        self.listener = listener
        log.debug("seccomp notifications: synchronous wake-ups %s", listener.sync_wake_ups)
        self.shim = shim   # where the preloaded shim counts; None: it registers nobody
        self.track = track
        self._live: dict[tuple[int, int], _Process] = {}   # (tgid, start ticks) -> process
        self._rows: list[tuple[int, int, str, int]] = []    # exited: (tgid, start, exe, sockets)
        self._rows_given = 0
        self._summary: dict[str, _Summary] = {}
        self._prune_at = self.PRUNE_MIN
        self.peak_live = 0
        self.counters = {"upgraded": 0, "mptcp_disabled": 0, "other_cgroup": 0,
                         "other_lsm_label": 0, "other_userns": 0, "unmapped_id": 0,
                         "foreign_proc": 0, "fallback_continue": 0}
        self._nr_socket = libc.syscall_number("socket")
        self._nr_execve = libc.syscall_number("execve")
        self._warned_paths: set[str] = set()
        self._warned_lock = threading.Lock()
        self._checkers: list[_ExecChecker] = []
        self.foreign_proc = foreign_proc()
        self._process_id: Callable[[int], int] = \
            _pidfs_inode if _pidfs_inodes_differ() else _start_ticks
        self._home_netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._home_netns = os.fstat(self._home_netns_fd)
        self._home = read_creds("thread-self")
        self._home_userns = _ns_id("/proc/thread-self/ns/user")
        self._overflow = overflow_ids()
        self._home_cgroup = _read_small("/proc/thread-self/cgroup")
        self._home_label = _read_small("/proc/thread-self/attr/current")  # None: no LSM labels
        self._ctx: CallerContextThread | None = None
        # Per-thread open /proc files (run/seccomp/threads.py): one pread per fact and call.
        self._threads = ThreadFacts(self._home_label is not None, self._process_id)
        self.hung_up = threading.Event()

    def serve(self, stop_fd: int) -> None:
        """Loops until POLLHUP (no task uses the filter any more) or stop_fd becomes readable."""
        poller = select.poll()
        poller.register(self.listener.fd, select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        while True:
            for fd, ev in poller.poll():
                if fd == stop_fd:
                    return
                if ev & select.POLLIN:
                    try:
                        self.handle_one()
                    except OSError as e:  # RECV itself failed: unexpected; retry, never spin hot
                        log.warning("seccomp listener: %s", e.strerror)
                        time.sleep(0.01)
                elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    self.hung_up.set()
                    return

    def handle_one(self) -> None:
        n = self.listener.recv()
        if n is None:
            return
        try:
            if n.nr == self._nr_socket:
                if n.args[3] == SHIM_REGISTER:
                    self._register(n)
                else:
                    self._socket(n)
            else:
                self._exec(n)
        except Exception:  # never leave a caller blocked: whatever happened, let its syscall run
            log.debug("notification %#x failed", n.id, exc_info=True)
            if n.nr == self._nr_socket:
                self.counters["fallback_continue"] += 1
            self._continue(n.id)

    def _continue(self, nid: int) -> None:
        try:
            self.listener.send_continue(nid)
        except OSError:
            log.debug("cannot answer notification %#x", nid, exc_info=True)

    def _register(self, n: Notification) -> None:
        """The shim asks, at a process's first candidate socket(), whether it may make MPTCP sockets
        itself. Yes (SHIM_GO), unless today's checks would refuse the supervisor's socket for reasons
        of context (another user namespace, cgroup or LSM label: those callers keep their TCP, and
        the supervisor keeps deciding each call), ids our user namespace does not map, or /proc cannot
        name the caller. Decided once per process image: the shim's later sockets are the caller's
        own whatever it changes meanwhile. The process is
        recorded as at its first upgrade, with its counter slot."""
        if self.foreign_proc is not None or (self.track and self.shim is None):
            self.listener.send_error(n.id, SHIM_STAND_ASIDE)
            return
        tid = n.tid
        userns = _ns_id(f"/proc/{tid}/ns/user")
        cgroup = _read_small(f"/proc/{tid}/cgroup")
        label = _read_small(f"/proc/{tid}/attr/current") if self._home_label is not None else None
        creds = read_creds(tid)
        tgid = creds.tgid
        key, exe = None, None
        if self.track:
            key = (tgid, self._process_id(tgid))
            if key not in self._live:
                exe = procfs.exe(tgid) or "?"
        if not self.listener.id_valid(n.id):   # all of the above described our caller
            return
        # The shim's sockets would be the caller's own; declining where the supervisor would decline
        # keeps what such a caller gets exactly as without the shim (its TCP socket, counted).
        if self._foreign_context(userns, cgroup, label) or \
                (not creds.same_as(self._home) and self._unmapped(creds)):
            self.listener.send_error(n.id, SHIM_STAND_ASIDE)
            return
        if key is not None:
            self._tracked(key, tgid, exe).slots.append(n.args[4] & 0xFFFFFFFF)
        self.listener.send_error(n.id, SHIM_GO)

    def _tracked(self, key: tuple[int, int], tgid: int, exe: str | None) -> _Process:
        proc = self._live.get(key)
        if proc is None:
            log.info("upgraded pid=%d exe=%s rule=run", tgid, escaped(exe or "?"))
            if len(self._live) >= self._prune_at:
                self._prune()
            proc = self._live[key] = _Process(exe or "?", self._rows_given < self.REPORT_ROWS)
            self._rows_given += proc.row
            self.peak_live = max(self.peak_live, len(self._live))
        return proc

    def _socket(self, n: Notification) -> None:
        if self.foreign_proc is not None:   # /proc/TID would be another process: act on nothing
            self.counters["foreign_proc"] += 1
            self._continue(n.id)
            return
        family, type_ = n.args[0] & 0xFFFFFFFF, n.args[1] & 0xFFFFFFFF
        netns_fd = -1
        try:
            facts = self._threads.read(n.tid)
            creds, userns, cgroup, label = facts.creds, facts.userns, facts.cgroup, facts.label
            same_netns = facts.netns == (self._home_netns.st_dev, self._home_netns.st_ino)
            if not same_netns:
                netns_fd = os.open("net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=facts.ns_dir)
            # All of the above described `tid` only if it is still our caller (blocked in socket(),
            # it cannot change its own netns or credentials), not a task that reused the tid of a
            # caller killed meanwhile (TOCTOU).
            if not self.listener.id_valid(n.id):
                return
            same_creds = creds.same_as(self._home)
            reason = self._foreign_context(userns, cgroup, label) or \
                (None if same_creds else self._unmapped(creds))
            if reason:
                self.counters[reason] += 1
                self._continue(n.id)
                return
            if netns_fd >= 0 and os.fstat(netns_fd).st_ino != facts.netns[1]:
                raise OSError(errno.ESRCH, "the caller's netns changed under us")
            type_ |= socket.SOCK_CLOEXEC  # ours is private; the caller's flag goes to ADDFD below
            try:
                if same_netns and same_creds:
                    fd = libc.socket(family, type_, IPPROTO_MPTCP)
                else:
                    fd = self._context().make(None if same_netns else netns_fd,
                                              None if same_creds else creds, family, type_)
            except OSError as e:
                # ENOPROTOOPT: net.mptcp.enabled=0 in that netns (EPROTONOSUPPORT: no MPTCP at all).
                reason = "mptcp_disabled" if e.errno in (errno.ENOPROTOOPT, errno.EPROTONOSUPPORT) \
                    else "fallback_continue"
                self.counters[reason] += 1
                self._continue(n.id)
                return
        finally:
            if netns_fd >= 0:
                os.close(netns_fd)
        tgid = creds.tgid
        # Read while the caller still waits in socket(): once it has its fd it may exit at once.
        key: tuple[int, int] | None = None
        first_exe: str | None = None
        if self.track:
            key = facts.process
            if key not in self._live:
                first_exe = procfs.exe(tgid) or "?"
        try:
            self.listener.send_fd(n.id, fd, cloexec=bool(n.args[1] & socket.SOCK_CLOEXEC))
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the caller is gone, nothing to answer
                # e.g. EMFILE: the caller's own socket() reports what it would have anyway.
                self.counters["fallback_continue"] += 1
                self._continue(n.id)
            return
        finally:
            os.close(fd)
        self.counters["upgraded"] += 1
        if key is None:
            return
        self._tracked(key, tgid, first_exe).upgraded += 1

    def _prune(self) -> None:
        """Retires the processes that exited (their pid is gone or another process's now)."""
        for key in [k for k in self._live if self._process_id(k[0]) != k[1]]:
            self._retire(key, self._live.pop(key))
        self._prune_at = max(self.PRUNE_MIN, 2 * len(self._live))

    def _retire(self, key: tuple[int, int], proc: _Process) -> None:
        if self.shim is not None:   # the process is gone: its slots are final
            for slot in proc.slots:
                upgraded, fallback = self.shim.read(slot)
                proc.upgraded += upgraded
                self.counters["upgraded"] += upgraded
                self.counters["mptcp_disabled"] += fallback
            proc.slots = []
        if proc.upgraded == 0:   # registered, but every socket it made stayed TCP
            return
        if proc.row:
            self._rows.append((*key, proc.exe, proc.upgraded))
            return
        exe = proc.exe if proc.exe in self._summary or len(self._summary) < self.SUMMARY_EXES \
            else self.OTHERS
        old = self._summary.get(exe, _Summary(0, 0))
        self._summary[exe] = _Summary(old.processes + 1, old.upgraded + proc.upgraded)

    def report(self) -> tuple[list[ProcessReport], list[ProcessSummary]]:
        """Rows by (pid, start), then the processes beyond REPORT_ROWS by executable. Call it once
        no notification is being answered any more."""
        for key, proc in self._live.items():
            self._retire(key, proc)
        self._live.clear()
        rows = [ProcessReport(tgid, exe, n) for tgid, _start, exe, n in sorted(self._rows)]
        more = [ProcessSummary(exe, s.processes, s.upgraded)
                for exe, s in sorted(self._summary.items())]
        return rows, more

    def _foreign_context(self, userns: tuple[int, int], cgroup: bytes | None,
                         label: bytes | None) -> str | None:
        """Why a socket made here would be attributed differently from the caller's own, if it would:
        the caller's capabilities are relative to its user namespace, and a socket's file records the
        creator's (a caller in a child one, e.g. `unshare -Ur`, has every capability there and none
        in ours: taken here they would count in ours); cgroup BPF (bind/connect/skb hooks read the
        socket's cgroup, e.g. systemd IPAddressDeny=, `ip vrf exec`), memcg charging, net_cls, and
        LSM socket labels come from the creating task."""
        if userns != self._home_userns:
            return "other_userns"
        if cgroup != self._home_cgroup:
            self._home_cgroup = _read_small("/proc/thread-self/cgroup")  # we may have moved
            if cgroup != self._home_cgroup:
                return "other_cgroup"
        if label is not None and label != self._home_label:
            return "other_lsm_label"
        return None

    def _unmapped(self, creds: Creds) -> str | None:
        """Where our user namespace does not map every id, an id read as the overflow id is either
        that id or one we cannot name: taking it could give the socket an owner or a group the caller
        does not have. Credentials equal to ours are not taken but kept (set*id() and setgroups()
        accept mapped ids only, so an unmapped id a caller holds is one it inherited from us)."""
        if self._overflow is not None and creds.holds(*self._overflow):
            return "unmapped_id"
        return None

    def _context(self) -> CallerContextThread:
        if self._ctx is None or not self._ctx.alive:
            restorable = self._overflow is None or not self._home.holds(*self._overflow)
            self._ctx = CallerContextThread(self._home_netns_fd, self._home, restorable)
        return self._ctx

    def _exec(self, n: Notification) -> None:
        """Under no_new_privs, exec ignores setuid/setgid bits and file capabilities. The exec runs
        (the program runs without that privilege, as under `setpriv --no-new-privs`); say so once
        per file, so that its EPERMs have an explanation. Looking at the file may block (a FUSE
        server that never answers, a file swapped for something else): an _ExecChecker thread does
        it, and when none is idle the exec runs unchecked, so that one caller never stalls the
        others. The warning is advice; the exec is never refused."""
        if self.foreign_proc is None:
            for checker in self._checkers:
                if checker.take(n):
                    return
            if len(self._checkers) < self.EXEC_CHECKERS:
                self._checkers.append(_ExecChecker(self))
                if self._checkers[-1].take(n):
                    return
        self._continue(n.id)

    def check_exec(self, n: Notification) -> None:
        """An _ExecChecker's job, while the caller waits in execve()."""
        try:
            path = self._exec_target(n)
            if path is not None:
                found = _privilege_gain(path, read_creds(n.tid))
                if found is not None:
                    shown, what = found
                    with self._warned_lock:
                        if shown in self._warned_paths or not self.listener.id_valid(n.id):
                            return
                        if len(self._warned_paths) < 1024:   # bounded; a repeat costs one line
                            self._warned_paths.add(shown)
                    log.warning("%s: %s ignored: under the seccomp backend without CAP_SYS_ADMIN "
                                "(no_new_privs) it runs without that privilege; run mptcpize-py as "
                                "root or use --backend bpf", escaped(shown), what)
        finally:
            self._continue(n.id)

    def _exec_target(self, n: Notification) -> str | None:
        tid = n.tid
        if n.nr == self._nr_execve:
            dirfd, ptr, flags = AT_FDCWD, n.args[0], 0
        else:
            dirfd, ptr, flags = ctypes.c_int(n.args[0] & 0xFFFFFFFF).value, n.args[1], n.args[4]
        name = _read_cstring(tid, ptr) if ptr else b""
        if not name:
            return f"/proc/{tid}/fd/{dirfd}" if flags & AT_EMPTY_PATH and dirfd >= 0 else None
        path = os.fsdecode(name)
        if path.startswith("/"):
            return f"/proc/{tid}/root{path}"
        return f"/proc/{tid}/{'cwd' if dirfd == AT_FDCWD else f'fd/{dirfd}'}/{path}"

    def close(self) -> None:
        """Stops the helper threads. Execs still being looked at run unchecked: a checker that hangs
        must not keep its caller waiting after us (nor in a detached supervisor, which could not
        answer a notification it never received)."""
        for checker in self._checkers:
            checker.abandon()
        self._checkers = []
        if self._ctx is not None:
            self._ctx.stop()
            self._ctx = None
        self._threads.close()
        if self._home_netns_fd >= 0:
            os.close(self._home_netns_fd)
            self._home_netns_fd = -1


def _ns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _read_small(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def _pidfs_inodes_differ() -> bool:
    """Whether pidfds carry an inode number of their own (pidfs, Linux 6.9: one per struct pid, a
    64-bit counter never reused); before, every pidfd is the same anonymous inode."""
    others = [p for p in (os.getppid(), 1) if p not in (0, os.getpid())]
    try:
        fds = [os.pidfd_open(p) for p in (os.getpid(), *others[:1])]
    except OSError:
        return False
    try:
        return len(fds) == 2 and os.fstat(fds[0]).st_ino != os.fstat(fds[1]).st_ino
    finally:
        for fd in fds:
            os.close(fd)


def _pidfs_inode(pid: int) -> int:
    """Who process `pid` is, exactly: its pidfd's inode number (0 if gone). A pid used again is
    another struct pid, with another number, however soon."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return 0
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _start_ticks(pid: int) -> int:
    """When process `pid` started (/proc/PID/stat field 22, clock ticks after boot; 0 if gone): with
    the pid, who it is, where pidfds cannot tell (Linux < 6.9), except for two processes given the
    same pid within one tick. Bytes and no decoding: it runs once per upgraded socket."""
    data = _read_small(f"/proc/{pid}/stat")
    try:
        return int(data[data.rindex(b")") + 2:].split(b" ", 20)[19]) if data else 0
    except (ValueError, IndexError):
        return 0


def _read_cstring(tid: int, addr: int, limit: int = 4096) -> bytes:
    out = b""
    fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        while len(out) < limit:
            chunk = os.pread(fd, 4096 - (addr + len(out)) % 4096, addr + len(out))  # page by page
            if not chunk:
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                return out + chunk[:nul]
            out += chunk
    finally:
        os.close(fd)
    return out


class _ExecChecker:
    """A thread that runs Supervisor.check_exec() for one notification at a time."""

    def __init__(self, sup: Supervisor):
        self._sup = sup
        self._cv = threading.Condition()
        self._job: Notification | None = None
        self._stopped = False
        threading.Thread(target=self._loop, name="mptcpize-seccomp-exec", daemon=True).start()

    def take(self, n: Notification) -> bool:
        """Gives it `n` if it is idle; False if it is busy (perhaps for good)."""
        with self._cv:
            if self._job is not None or self._stopped:
                return False
            self._job = n
            self._cv.notify()
        return True

    def abandon(self) -> None:
        """Lets the exec it is looking at run now, and ends the thread once it is done."""
        with self._cv:
            self._stopped = True
            job = self._job
            self._cv.notify()
        if job is not None:
            self._sup._continue(job.id)   # the checker's own answer, if it ever comes, gets ENOENT

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None or self._stopped)
                job = self._job
            if job is None:
                return
            try:
                self._sup.check_exec(job)
            except Exception:
                log.debug("exec check of notification %#x failed", job.id, exc_info=True)
            with self._cv:
                self._job = None
                if self._stopped:
                    return


def _privilege_gain(path: str, creds: Creds) -> tuple[str, str] | None:
    """What exec of `path` would grant without no_new_privs ('setuid bit', 'setgid bit', 'file
    capabilities'), with the file's name to show; None when nothing. Everything is read from one
    O_PATH descriptor: opening it never blocks (a FIFO is not opened), its type is checked on it,
    and the file cannot be swapped between the checks. Symlinks are followed, as exec does."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or os.statvfs(fd).f_flag & os.ST_NOSUID:
            return None
        by_fd = f"/proc/self/fd/{fd}"   # the very file fd holds, whatever its path is now
        try:
            # A regular file: reading it never waits; O_NONBLOCK all the same, should that change.
            data_fd = os.open(by_fd, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                if os.read(data_fd, 2) == b"#!":  # Linux ignores set-id bits on scripts
                    return None
            finally:
                os.close(data_fd)
        except OSError:
            pass  # execute-only (e.g. mode 4711): not a script we could read, so a binary
        what = None
        if st.st_mode & stat.S_ISUID and st.st_uid != creds.euid:
            what = "setuid bit"
        elif st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IXGRP and st.st_gid != creds.egid:
            what = "setgid bit"
        else:
            try:
                if os.getxattr(by_fd, "security.capability"):
                    what = "file capabilities"
            except OSError:
                pass
        return (os.readlink(by_fd), what) if what else None
    finally:
        os.close(fd)
