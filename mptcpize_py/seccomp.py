"""seccomp user-notification backend for `run`: works where BPF trampolines are refused (Linux >= 5.14).

The child installs, before exec, a classic-BPF seccomp filter that sends only
`socket(AF_INET|AF_INET6, SOCK_STREAM[|flags], 0|IPPROTO_TCP)` to a supervisor thread in this process.
The supervisor creates an MPTCP socket in the caller's network namespace, with the caller's
uid/gid/groups/effective capabilities, and installs it into the caller with
SECCOMP_IOCTL_NOTIF_ADDFD + SECCOMP_ADDFD_FLAG_SEND (Linux 5.14): the caller's socket() returns that
fd atomically. Anything unusual (MPTCP disabled in that netns, another cgroup or LSM label, any
error) is answered with SECCOMP_USER_NOTIF_FLAG_CONTINUE: the caller's own socket() runs and it gets
plain TCP (fail-open).

Filters are inherited across fork/clone/exec and cannot be removed, so the whole tree is covered,
static binaries included, and nothing outside the tree is touched. Pure ctypes: nothing compiled.
"""

import ctypes
import errno
import logging
import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass

from mptcpize_py import runner
from mptcpize_py.errors import Unavailable

log = logging.getLogger(__name__)

# --- kernel ABI: include/uapi/linux/seccomp.h, filter.h, audit.h (x86_64) --------------------------
_NR_SOCKET, _NR_EXECVE, _NR_EXECVEAT, _NR_SECCOMP, _NR_SETNS = 41, 59, 322, 317, 308
_NR_SETGROUPS, _NR_SETRESUID, _NR_SETRESGID, _NR_SETFSUID, _NR_SETFSGID = 116, 117, 119, 122, 123
_NR_CAPSET = 126
_X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E

SECCOMP_SET_MODE_FILTER, SECCOMP_GET_ACTION_AVAIL, SECCOMP_GET_NOTIF_SIZES = 1, 2, 3
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5   # Linux 5.19
SECCOMP_RET_ALLOW, SECCOMP_RET_USER_NOTIF = 0x7FFF0000, 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SEND = 1 << 1                   # Linux 5.14
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1             # Linux 6.6


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("!") << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (ord("!") << 8) | nr


NOTIF_SIZE, RESP_SIZE, ADDFD_SIZE = 80, 24, 24  # struct seccomp_notif, _resp, _addfd
SECCOMP_IOCTL_NOTIF_RECV = _iowr(0, NOTIF_SIZE)
SECCOMP_IOCTL_NOTIF_SEND = _iowr(1, RESP_SIZE)
SECCOMP_IOCTL_NOTIF_ID_VALID = _iow(2, 8)
SECCOMP_IOCTL_NOTIF_ADDFD = _iow(3, ADDFD_SIZE)
SECCOMP_IOCTL_NOTIF_SET_FLAGS = _iow(4, 8)

PR_SET_NO_NEW_PRIVS, PR_SET_NAME = 38, 15
CLONE_NEWNET = 0x40000000
IPPROTO_MPTCP = 262
CAP_SYS_ADMIN = 21
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000

# classic BPF opcodes
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _AND_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]. The socket
# syscall takes ints, and the kernel truncates its arguments to 32 bits: compare the low halves.
_OFF_NR, _OFF_ARCH = 0, 4


def _off_arg(i: int) -> int:
    return 16 + 8 * i


# socket() accepts only SOCK_NONBLOCK|SOCK_CLOEXEC beside the type in its low 4 bits (net/socket.c).
_SOCK_TYPE_MASK = 0xF
_SOCK_VALID_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def filter_program(notify_exec: bool) -> bytes:
    """The filter, as struct sock_filter[]. Only x86_64 syscalls are looked at: i386 (int 0x80) and
    x32 (nr | __X32_SYSCALL_BIT) calls are allowed untouched, so such programs keep plain TCP."""
    prog: list[tuple] = []  # (code, jt label|int, jf label|int, k)

    def op(code, k=0, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    op(_LD_W_ABS, _OFF_ARCH)
    op(_JEQ_K, AUDIT_ARCH_X86_64, 0, "allow")
    op(_LD_W_ABS, _OFF_NR)
    op(_JGE_K, _X32_SYSCALL_BIT, "allow", 0)
    if notify_exec:
        op(_JEQ_K, _NR_EXECVE, "notify", 0)
        op(_JEQ_K, _NR_EXECVEAT, "notify", 0)
    op(_JEQ_K, _NR_SOCKET, 0, "allow")
    op(_LD_W_ABS, _off_arg(0))
    op(_JEQ_K, socket.AF_INET, "type", 0)
    op(_JEQ_K, socket.AF_INET6, 0, "allow")
    prog.append(("label", "type"))
    op(_LD_W_ABS, _off_arg(1))
    # Invalid flag bits: let the kernel return its own EINVAL.
    op(_JSET_K, 0xFFFFFFFF & ~(_SOCK_TYPE_MASK | _SOCK_VALID_FLAGS), "allow", 0)
    op(_AND_K, _SOCK_TYPE_MASK)
    op(_JEQ_K, socket.SOCK_STREAM, 0, "allow")
    op(_LD_W_ABS, _off_arg(2))
    op(_JEQ_K, 0, "notify", 0)
    op(_JEQ_K, socket.IPPROTO_TCP, "notify", "allow")
    prog.append(("label", "notify"))
    op(_RET_K, SECCOMP_RET_USER_NOTIF)
    prog.append(("label", "allow"))
    op(_RET_K, SECCOMP_RET_ALLOW)

    labels, insns = {}, []
    for item in prog:
        if item[0] == "label":
            labels[item[1]] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(insns):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("<HBBI", code, jt, jf, k)
    return bytes(out)


# --- libc --------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int
_csocket = _libc.socket
_csocket.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _errcheck(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _sys(nr: int, *args) -> int:
    """A raw syscall. Credential syscalls go through here, not through glibc's wrappers: glibc applies
    set*id() to every thread of the process, the kernel only to the calling one (which we want)."""
    return _errcheck(_syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)))


def _seccomp(op: int, flags: int, arg) -> int:
    return _errcheck(_syscall(ctypes.c_long(_NR_SECCOMP), ctypes.c_long(op), ctypes.c_long(flags), arg))


def _setns(fd: int) -> None:
    _sys(_NR_SETNS, fd, CLONE_NEWNET)


def _notif_sizes() -> tuple[int, int, int]:
    sizes = (ctypes.c_uint16 * 3)()
    _seccomp(SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes))
    return tuple(sizes)


def _has_cap(cap: int) -> bool:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


@dataclass(frozen=True)
class _Creds:
    """What a new socket's file records of its creator (f_cred) and its owner (sk_uid = fsuid)."""
    tgid: int
    euid: int
    fsuid: int
    egid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_eff: int
    cap_prm: int
    cap_inh: int

    def same_as(self, other: "_Creds") -> bool:
        return (self.euid, self.fsuid, self.egid, self.fsgid, self.groups, self.cap_eff) == \
            (other.euid, other.fsuid, other.egid, other.fsgid, other.groups, other.cap_eff)


def _read_creds(pid: int | str) -> _Creds:
    """Tgid and credentials of a thread, from /proc/PID/status (ids as this pid/user namespace sees
    them, which is what the raw set*id syscalls take)."""
    fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 8192)
    finally:
        os.close(fd)

    def field(name: bytes) -> list[bytes]:
        start = data.index(name) + len(name)
        return data[start:data.index(b"\n", start)].split()

    uid, gid = field(b"\nUid:"), field(b"\nGid:")
    return _Creds(int(field(b"\nTgid:")[0]), int(uid[1]), int(uid[3]), int(gid[1]), int(gid[3]),
                  tuple(sorted(int(g) for g in field(b"\nGroups:"))),
                  *(int(field(k)[0], 16) for k in (b"\nCapEff:", b"\nCapPrm:", b"\nCapInh:")))


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


# --- the listener ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notification:
    id: int
    tid: int       # the calling thread, as this process's pid namespace sees it
    nr: int
    args: tuple[int, ...]


class Listener:
    """The notification fd returned by seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER) and its ioctls."""

    def __init__(self, fd: int):
        self.fd = fd
        notif_size, resp_size, _data = _notif_sizes()
        # RECV writes the kernel's sizeof(struct seccomp_notif): size the buffer by what it says.
        self._notif = ctypes.create_string_buffer(max(notif_size, NOTIF_SIZE))
        self._resp = ctypes.create_string_buffer(max(resp_size, RESP_SIZE))
        self._addfd = ctypes.create_string_buffer(ADDFD_SIZE)
        self._id = ctypes.c_uint64()
        try:  # Wake the supervisor on the caller's CPU: halves the round trip (Linux 6.6).
            flags = ctypes.c_uint64(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            _errcheck(_ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, ctypes.addressof(flags)))
        except OSError:
            pass

    def recv(self) -> Notification | None:
        """The next notification; None when its caller went away meanwhile (ENOENT) or on EINTR."""
        ctypes.memset(self._notif, 0, len(self._notif))  # the kernel insists on a zeroed buffer
        if _ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, ctypes.addressof(self._notif)) < 0:
            e = ctypes.get_errno()
            if e in (errno.ENOENT, errno.EINTR):
                return None
            raise OSError(e, os.strerror(e))
        nid, pid, _flags, nr, _arch, _ip, *args = struct.unpack_from("<QIIiIQ6Q", self._notif.raw)
        return Notification(nid, pid, nr, tuple(args))

    def id_valid(self, nid: int) -> bool:
        self._id.value = nid
        return _ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.addressof(self._id)) == 0

    def send_continue(self, nid: int) -> None:
        """Lets the caller's own syscall run. ENOENT (caller gone or interrupted) is not an error."""
        struct.pack_into("<QqiI", self._resp, 0, nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        if _ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, ctypes.addressof(self._resp)) < 0:
            e = ctypes.get_errno()
            if e != errno.ENOENT:
                raise OSError(e, os.strerror(e))

    def send_fd(self, nid: int, fd: int, cloexec: bool) -> int:
        """Installs fd in the caller and completes its syscall with that fd number, atomically."""
        struct.pack_into("<QIIII", self._addfd, 0, nid, SECCOMP_ADDFD_FLAG_SEND, fd, 0,
                         os.O_CLOEXEC if cloexec else 0)
        return _errcheck(_ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ADDFD, ctypes.addressof(self._addfd)))


# --- making a socket in another context --------------------------------------------------------------
class _ContextThread:
    """A thread that may enter the caller's network namespace and take its credentials (both are
    per-thread in the kernel) to create one socket, then returns home. The supervisor thread itself
    never changes namespace or credentials. A thread that cannot return home retires itself."""

    def __init__(self, home_netns_fd: int, home: _Creds):
        self._home_netns_fd = home_netns_fd
        self._home = home
        self._cv = threading.Condition()
        self._request = None
        self._result = None
        self.alive = True
        self._thread = threading.Thread(target=self._loop, name="mptcpize-seccomp-ctx", daemon=True)
        self._thread.start()

    def make(self, netns_fd: int | None, creds: _Creds | None, family: int, type_: int,
             timeout: float = 5.0):
        """Returns the new fd, or raises OSError. netns_fd/creds None mean 'as the supervisor'."""
        with self._cv:
            self._request, self._result = (netns_fd, creds, family, type_), None
            self._cv.notify()
            if not self._cv.wait_for(lambda: self._result is not None, timeout):
                self.alive = False  # wedged: never reuse it
                raise OSError(errno.ETIMEDOUT, "socket helper thread did not answer")
            result = self._result
        if isinstance(result, OSError):
            raise result
        return result

    def stop(self) -> None:
        with self._cv:
            self.alive = False
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._request is not None or not self.alive)
                if self._request is None:
                    return
                request, self._request = self._request, None
            try:
                result = self._make(*request)
            except OSError as e:
                result = e
            with self._cv:
                self._result = result
                self._cv.notify_all()
            if not self.alive:
                return

    def _make(self, netns_fd, creds, family, type_) -> int:
        home, undo = self._home, []
        try:
            if netns_fd is not None:
                _setns(netns_fd)  # needs CAP_SYS_ADMIN: before giving up our credentials
                undo.append(lambda: _setns(self._home_netns_fd))
            if creds is not None:
                # gids first, while we still have CAP_SETGID; an euid other than 0 clears the
                # effective capabilities, and restoring euid 0 (allowed: ruid stays 0) brings them back.
                _setgroups(creds.groups)
                undo.append(lambda: _setgroups(home.groups))
                _sys(_NR_SETRESGID, -1, creds.egid, -1)
                _setfsid(_NR_SETFSGID, creds.fsgid)
                undo.append(lambda: (_sys(_NR_SETRESGID, -1, home.egid, -1),
                                     _setfsid(_NR_SETFSGID, home.fsgid)))
                _sys(_NR_SETRESUID, -1, creds.euid, -1)
                undo.append(lambda: (_sys(_NR_SETRESUID, -1, home.euid, -1),
                                     _setfsid(_NR_SETFSUID, home.fsuid)))
                _setfsid(_NR_SETFSUID, creds.fsuid)
                # The caller's effective capabilities, no more (ours stay permitted: ruid is still
                # ours, so the way back is open). No less either: sk_net_capable() checks both the
                # socket opener's and the current task's capabilities.
                _capset(creds.cap_eff & home.cap_prm, home.cap_prm, home.cap_inh)
                undo.append(lambda: _capset(home.cap_eff, home.cap_prm, home.cap_inh))
            return _errcheck(_csocket(family, type_, IPPROTO_MPTCP))
        finally:
            try:
                for step in reversed(undo):
                    step()
            except OSError:
                log.warning("socket helper thread could not restore its context: retiring it")
                self.alive = False


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for the calling thread only (pid 0), _LINUX_CAPABILITY_VERSION_3."""
    header = struct.pack("<Ii", 0x20080522, 0)
    data = struct.pack("<6I", effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF,
                       inheritable & 0xFFFFFFFF, effective >> 32, permitted >> 32, inheritable >> 32)
    hbuf, dbuf = ctypes.create_string_buffer(header, 8), ctypes.create_string_buffer(data, 24)
    _sys(_NR_CAPSET, ctypes.addressof(hbuf), ctypes.addressof(dbuf))


def _setgroups(groups: tuple[int, ...]) -> None:
    arr = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    _sys(_NR_SETGROUPS, len(groups), ctypes.addressof(arr))


def _setfsid(nr: int, value: int) -> None:
    """setfsuid/setfsgid report failure only by not changing: read the value back (-1 is a no-op)."""
    _syscall(ctypes.c_long(nr), ctypes.c_long(value))
    if _syscall(ctypes.c_long(nr), ctypes.c_long(-1)) != value:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))


# --- the supervisor ----------------------------------------------------------------------------------
class Supervisor:
    """Answers the notifications of one listener until every task using the filter is gone."""

    def __init__(self, listener: Listener):
        self.listener = listener
        self.upgraded: dict[int, int] = {}   # tgid -> sockets
        self.exe: dict[int, str] = {}
        self.counters = {"upgraded": 0, "mptcp_disabled": 0, "other_cgroup": 0,
                         "other_lsm_label": 0, "fallback_continue": 0}
        self._warned_paths: set[str] = set()
        self._home_netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._home_netns = os.fstat(self._home_netns_fd)
        self._home = _read_creds("thread-self")
        self._home_cgroup = _read_small("/proc/thread-self/cgroup")
        self._home_label = _read_small("/proc/thread-self/attr/current")  # None: no LSM labels
        self._ctx: _ContextThread | None = None
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
            if n.nr == _NR_SOCKET:
                self._socket(n)
            else:
                self._exec(n)
        except Exception:  # never leave a caller blocked: whatever happened, let its syscall run
            log.debug("notification %#x failed", n.id, exc_info=True)
            if n.nr == _NR_SOCKET:
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
            creds = _read_creds(tid)
            cgroup = _read_small(f"/proc/{tid}/cgroup")
            label = _read_small(f"/proc/{tid}/attr/current") if self._home_label is not None else None
            # All of the above described `tid` only if it is still our caller (blocked in socket(),
            # it cannot change its own netns or credentials), not a task that reused the tid of a
            # caller killed meanwhile (TOCTOU).
            if not self.listener.id_valid(n.id):
                return
            reason = self._foreign_context(cgroup, label)
            if reason:
                self.counters[reason] += 1
                self._continue(n.id)
                return
            if netns_fd >= 0 and os.fstat(netns_fd).st_ino != st.st_ino:
                raise OSError(errno.ESRCH, "the caller's netns changed under us")
            same_creds = creds.same_as(self._home)
            type_ |= socket.SOCK_CLOEXEC  # ours is private; the caller's flag goes to ADDFD below
            try:
                if same_netns and same_creds:
                    fd = _errcheck(_csocket(family, type_, IPPROTO_MPTCP))
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
        tgid = creds.tgid
        if tgid not in self.upgraded:
            self.upgraded[tgid] = 0
            try:
                self.exe[tgid] = os.readlink(f"/proc/{tgid}/exe")
            except OSError:
                self.exe[tgid] = "?"
            log.info("upgraded pid=%d exe=%s rule=run", tgid, self.exe[tgid])
        self.upgraded[tgid] += 1

    def _foreign_context(self, cgroup: bytes | None, label: bytes | None) -> str | None:
        """Why a socket made here would be attributed differently from the caller's own, if it would:
        cgroup BPF (bind/connect/skb hooks read the socket's cgroup, e.g. systemd IPAddressDeny=, `ip
        vrf exec`), memcg charging, net_cls, and LSM socket labels come from the creating task."""
        if cgroup != self._home_cgroup:
            self._home_cgroup = _read_small("/proc/thread-self/cgroup")  # we may have moved
            if cgroup != self._home_cgroup:
                return "other_cgroup"
        if label is not None and label != self._home_label:
            return "other_lsm_label"
        return None

    def _context(self) -> _ContextThread:
        if self._ctx is None or not self._ctx.alive:
            self._ctx = _ContextThread(self._home_netns_fd, self._home)
        return self._ctx

    def _exec(self, n: Notification) -> None:
        """Under no_new_privs, exec ignores setuid/setgid bits and file capabilities. The exec runs
        (the program runs without that privilege, as under `setpriv --no-new-privs`); say so once
        per file, so that its EPERMs have an explanation."""
        try:
            path = self._exec_target(n)
            if path is not None:
                what = _privilege_gain(path, _read_creds(n.tid))
                shown = os.path.realpath(path)
                if what and shown not in self._warned_paths and self.listener.id_valid(n.id):
                    self._warned_paths.add(shown)
                    log.warning("%s: %s ignored: under the seccomp backend without CAP_SYS_ADMIN "
                                "(no_new_privs) it runs without that privilege; run mptcpize-py as "
                                "root or use --backend bpf", shown, what)
        finally:
            self._continue(n.id)

    def _exec_target(self, n: Notification) -> str | None:
        tid = n.tid
        if n.nr == _NR_EXECVE:
            dirfd, ptr, flags = AT_FDCWD, n.args[0], 0
        else:
            dirfd, ptr, flags = ctypes.c_int(n.args[0] & 0xFFFFFFFF).value, n.args[1], n.args[4]
        name = _read_cstring(tid, ptr) if ptr else b""
        if not name:
            return f"/proc/{tid}/fd/{dirfd}" if flags & AT_EMPTY_PATH and dirfd >= 0 else None
        name = os.fsdecode(name)
        if name.startswith("/"):
            return f"/proc/{tid}/root{name}"
        return f"/proc/{tid}/{'cwd' if dirfd == AT_FDCWD else f'fd/{dirfd}'}/{name}"

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.stop()
            self._ctx = None
        if self._home_netns_fd >= 0:
            os.close(self._home_netns_fd)
            self._home_netns_fd = -1


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


def _privilege_gain(path: str, creds: _Creds) -> str | None:
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


# --- the child side ----------------------------------------------------------------------------------
class _ChildInstaller:
    """Everything the child needs between fork and exec, prepared in the parent (no imports or
    allocations of note after fork)."""

    def __init__(self, no_new_privs: bool, notify_exec: bool, killable: bool = True):
        insns = filter_program(notify_exec)
        self._filter = ctypes.create_string_buffer(insns, len(insns))
        self._prog = struct.pack("<H6xQ", len(insns) // 8, ctypes.addressof(self._filter))
        self._prog_buf = ctypes.create_string_buffer(self._prog, len(self._prog))
        self.no_new_privs = no_new_privs
        self.flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | \
            (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV if killable else 0)

    def install(self) -> int:
        """Installs the filter in the calling process; returns the listener fd."""
        if self.no_new_privs:
            _errcheck(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        try:
            return _seccomp(SECCOMP_SET_MODE_FILTER, self.flags, self._prog_buf)
        except OSError as e:
            if e.errno != errno.EINVAL or not self.flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
                raise
            # Linux < 5.19: no WAIT_KILLABLE_RECV.
            self.flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            return _seccomp(SECCOMP_SET_MODE_FILTER, self.flags, self._prog_buf)


def _send_fd(sock: socket.socket, fd: int) -> None:
    sock.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])


def _recv_fd(sock: socket.socket) -> int | None:
    fds = []
    msg, anc, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4]))
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if msg and fds else None


def _start_thread(target, name: str) -> threading.Thread:
    """Starts a thread that blocks every signal: process-directed ones (SIGTERM to forward, SIGCHLD)
    must reach runner's sigwaitinfo() in the main thread, and a thread inherits its creator's mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK,
                                 signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
    try:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return t


def probe() -> None:
    """Really tries the mechanism in a forked child: filter, listener, and a socket() answered with
    ADDFD+SEND. Raises Unavailable with the reason when something is missing."""
    try:
        _seccomp(SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(ctypes.c_uint32(SECCOMP_RET_USER_NOTIF)))
        _notif_sizes()
    except OSError as e:
        raise Unavailable(f"seccomp user notification unavailable: {e.strerror}",
                          hint="needs Linux >= 5.14 with CONFIG_SECCOMP_FILTER=y") from None
    # MPTCP disabled in *this* netns (ENOPROTOOPT) does not matter: CMD may use others. No MPTCP in
    # the kernel at all does.
    fd = _csocket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, IPPROTO_MPTCP)
    if fd < 0:
        err = ctypes.get_errno()
        if err != errno.ENOPROTOOPT:
            raise Unavailable(f"this kernel cannot create MPTCP sockets: {os.strerror(err)}",
                              hint="needs a kernel with CONFIG_MPTCP=y")
        fd = _errcheck(_csocket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0))
    try:
        expected = socket.socket(fileno=os.dup(fd))
        proto = expected.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        expected.close()
        reason = _probe_addfd(fd, proto)
    finally:
        os.close(fd)
    if reason:
        raise Unavailable(f"seccomp user notification: {reason}",
                          hint="needs Linux >= 5.14 (SECCOMP_ADDFD_FLAG_SEND)")


def _probe_addfd(fd: int, proto: int) -> str | None:
    installer = _ChildInstaller(no_new_privs=True, notify_exec=False)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            parent.close()
            lfd = installer.install()
            _send_fd(child, lfd)
            os.close(lfd)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            code = 0 if s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == proto else 3
        except OSError:
            code = 2
        finally:
            os._exit(code)
    child.close()
    listener_fd, reason = None, None
    try:
        parent.settimeout(5)
        try:
            listener_fd = _recv_fd(parent)
        except OSError:
            pass
        if listener_fd is None:
            return "cannot install a seccomp filter with a notification listener"
        lst = Listener(listener_fd)
        n = lst.recv() if select.select([listener_fd], [], [], 5)[0] else None
        if n is None:
            return "no notification arrived"
        try:
            lst.send_fd(n.id, fd, cloexec=True)
        except OSError as e:
            lst.send_continue(n.id)
            return f"SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND refused: {e.strerror}"
    finally:
        if listener_fd is not None:
            os.close(listener_fd)
        parent.close()
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if reason is None and listener_fd is not None and status != 0:
            reason = f"the probe process did not get the socket (status {status})"
    return reason


# --- the backend -------------------------------------------------------------------------------------
class SeccompRunBackend:
    """runner's backend interface over a seccomp user-notification supervisor."""

    name = "seccomp"

    # After CMD exits, how long to wait for its remaining descendants before handing them over.
    LINGER_S = 0.2

    def __init__(self):
        probe()
        # The kernel lets a task install a filter without no_new_privs only with CAP_SYS_ADMIN. We
        # avoid no_new_privs when we can: it would make every setuid/setgid/file-capability program
        # in the tree (sudo, ping, su) run without its privilege, an EPERM the program would not get
        # otherwise. Without CAP_SYS_ADMIN it is mandatory, and exec of such programs is reported.
        self.no_new_privs = not _has_cap(CAP_SYS_ADMIN)
        self._installer = _ChildInstaller(self.no_new_privs, notify_exec=self.no_new_privs)
        self._parent_sock, self._child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._supervisor: Supervisor | None = None
        self._settled = threading.Event()  # the listener arrived, or never will
        self._handed_off = None
        # Running before the fork: under no_new_privs CMD's own execve is already a notification.
        self._thread = _start_thread(self._run, "mptcpize-seccomp")

    # child side
    def child_setup(self) -> None:
        try:
            fd = self._installer.install()
            _send_fd(self._child_sock, fd)
            os.close(fd)  # the listener lives in the parent only: CMD cannot answer for itself
            self._child_sock.close()
        except OSError as e:
            os.write(2, f"mptcpize-py: error: cannot install the seccomp filter: {e.strerror}\n".encode())
            os._exit(126)

    # parent side
    def started(self, pid: int) -> None:
        self._child_sock.close()  # so that the supervisor sees EOF if the child never sent anything

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._parent_sock.fileno(), select.POLLIN)
            poller.register(self._stop_r, select.POLLIN)
            if any(fd == self._stop_r for fd, _ev in poller.poll()):
                return
            try:
                listener_fd = _recv_fd(self._parent_sock)  # None: EOF, CMD never got that far
            except OSError:
                listener_fd = None
            if listener_fd is None:
                return
            self._supervisor = Supervisor(Listener(listener_fd))
        finally:
            self._settled.set()
        self._supervisor.serve(self._stop_r)

    def finish(self) -> list[runner.ProcessReport]:
        # CMD ran, so it sent the listener before its exec (or died trying, and then started()
        # closed our copy of its end: EOF). Either way the thread settles promptly.
        self._settled.wait(5)
        sup = self._supervisor
        if sup is not None and not sup.hung_up.wait(self.LINGER_S):
            # Descendants outlive CMD (a daemon, `cmd &`). If the listener closed now, their next TCP
            # socket() would fail with ENOSYS (kernel/seccomp.c: no listener): keep answering for them
            # from a detached process until the last one exits.
            self._stop_thread()
            if not sup.hung_up.is_set():
                self._handed_off = _hand_off(sup)
        self._stop_thread()
        if sup is None:
            return []
        return sorted((runner.ProcessReport(tgid, sup.exe.get(tgid, "?"), count)
                       for tgid, count in sup.upgraded.items()), key=lambda r: r.pid)

    def counters(self) -> dict[str, int]:
        return dict(self._supervisor.counters) if self._supervisor else {}

    @property
    def handed_off_pid(self) -> int | None:
        """Pid of the detached supervisor serving descendants that outlived CMD, if one was needed."""
        return self._handed_off

    def _stop_thread(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join()

    def close(self) -> None:
        self._stop_thread()
        if self._supervisor is not None:
            self._supervisor.close()
            os.close(self._supervisor.listener.fd)
            self._supervisor = None
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stop_r = self._stop_w = -1
        self._parent_sock.close()
        self._child_sock.close()


def _hand_off(sup: Supervisor) -> int | None:
    """Forks a detached process (double fork, own session, stdio on /dev/null) that keeps answering
    `sup`'s listener until POLLHUP. Returns its pid; None if it could not be started."""
    sup.close()  # no helper thread across fork
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # pragma: no cover (runs in the forked child)
        try:
            os.close(r)
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(w, str(grandchild).encode())
                os._exit(0)
            os.close(w)
            _detach_from(sup.listener.fd)
            name = ctypes.create_string_buffer(b"mptcpize-seccomp")  # comm: 15 chars kept
            _prctl(PR_SET_NAME, ctypes.addressof(name), 0, 0, 0)
            fresh = Supervisor(sup.listener)
            never_r, _never_w = os.pipe()
            fresh.serve(never_r)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return int(data) if data else None


def _detach_from(keep_fd: int) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)
    logging.disable(logging.CRITICAL)
