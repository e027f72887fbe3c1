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

from mptcpize_py.abi import IPPROTO_MPTCP
from mptcpize_py.display import escaped
from mptcpize_py.host import libc, procfs
from mptcpize_py.run.seccomp.caller import CallerContextThread, Creds, overflow_ids, read_creds
from mptcpize_py.run.seccomp.notify import Listener, Notification

log = logging.getLogger(__name__)

AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000   # execveat()'s dirfd and flags


class Supervisor:
    """Answers the notifications of one listener until every task using the filter is gone."""

    def __init__(self, listener: Listener):
        self.listener = listener
        self.upgraded: dict[int, int] = {}   # tgid -> sockets
        self.exe: dict[int, str] = {}
        self.counters = {"upgraded": 0, "mptcp_disabled": 0, "other_cgroup": 0,
                         "other_lsm_label": 0, "other_userns": 0, "unmapped_id": 0,
                         "fallback_continue": 0}
        self._nr_socket = libc.syscall_number("socket")
        self._nr_execve = libc.syscall_number("execve")
        self._warned_paths: set[str] = set()
        self._home_netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._home_netns = os.fstat(self._home_netns_fd)
        self._home = read_creds("thread-self")
        self._home_userns = _ns_id("/proc/thread-self/ns/user")
        self._overflow = overflow_ids()
        self._home_cgroup = _read_small("/proc/thread-self/cgroup")
        self._home_label = _read_small("/proc/thread-self/attr/current")  # None: no LSM labels
        self._ctx: CallerContextThread | None = None
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

    def _socket(self, n: Notification) -> None:
        family, type_ = n.args[0] & 0xFFFFFFFF, n.args[1] & 0xFFFFFFFF
        tid = n.tid
        netns_fd = -1
        try:
            st = os.stat(f"/proc/{tid}/ns/net")
            same_netns = (st.st_dev, st.st_ino) == (self._home_netns.st_dev, self._home_netns.st_ino)
            if not same_netns:
                netns_fd = os.open(f"/proc/{tid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            creds = read_creds(tid)
            userns = _ns_id(f"/proc/{tid}/ns/user")
            cgroup = _read_small(f"/proc/{tid}/cgroup")
            label = _read_small(f"/proc/{tid}/attr/current") if self._home_label is not None else None
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
            if netns_fd >= 0 and os.fstat(netns_fd).st_ino != st.st_ino:
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
                key = "mptcp_disabled" if e.errno in (errno.ENOPROTOOPT, errno.EPROTONOSUPPORT) \
                    else "fallback_continue"
                self.counters[key] += 1
                self._continue(n.id)
                return
        finally:
            if netns_fd >= 0:
                os.close(netns_fd)
        tgid = creds.tgid
        # Read while the caller still waits in socket(): once it has its fd it may exit at once.
        first_exe = (procfs.exe(tgid) or "?") if tgid not in self.upgraded else None
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
        if first_exe is not None:
            self.upgraded[tgid] = 0
            self.exe[tgid] = first_exe
            log.info("upgraded pid=%d exe=%s rule=run", tgid, escaped(self.exe[tgid]))
        self.upgraded[tgid] += 1

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
        per file, so that its EPERMs have an explanation."""
        try:
            path = self._exec_target(n)
            if path is not None:
                what = _privilege_gain(path, read_creds(n.tid))
                shown = os.path.realpath(path)
                if what and shown not in self._warned_paths and self.listener.id_valid(n.id):
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
        if self._ctx is not None:
            self._ctx.stop()
            self._ctx = None
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


def _privilege_gain(path: str, creds: Creds) -> str | None:
    """What exec of `path` would grant without no_new_privs: 'setuid'/'setgid'/'file capabilities'."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or os.statvfs(path).f_flag & os.ST_NOSUID:
            return None
    except OSError:
        return None
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"#!":  # Linux ignores set-id bits on scripts
                return None
    except OSError:
        pass  # execute-only (e.g. mode 4711): not a script we could read, so a binary
    if st.st_mode & stat.S_ISUID and st.st_uid != creds.euid:
        return "setuid bit"
    if st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IXGRP and st.st_gid != creds.egid:
        return "setgid bit"
    try:
        if os.getxattr(path, "security.capability"):
            return "file capabilities"
    except OSError:
        pass
    return None
