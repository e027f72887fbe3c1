"""The filter's listener: the fd seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER) returns, its notifications
and the ioctls that answer them; and how the listener fd travels from the child to the supervisor."""

import ctypes
import errno
import os
import socket
import struct
from typing import NamedTuple

from mptcpize_py.host import libc

# include/uapi/linux/seccomp.h
SECCOMP_GET_NOTIF_SIZES = 3
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


def notif_sizes() -> tuple[int, int, int]:
    """The kernel's sizeof(struct seccomp_notif, seccomp_notif_resp, seccomp_data)."""
    sizes = (ctypes.c_uint16 * 3)()
    libc.seccomp(SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes))
    return tuple(sizes)


class Notification(NamedTuple):
    """One notification (a NamedTuple: made once per call, cheaper than a frozen dataclass)."""
    id: int
    tid: int       # the calling thread, as this process's pid namespace sees it
    nr: int
    args: tuple[int, ...]


class Listener:
    """The notification fd and its ioctls."""

    def __init__(self, fd: int):
        self.fd = fd
        notif_size, resp_size, _data = notif_sizes()
        # RECV writes the kernel's sizeof(struct seccomp_notif): size the buffer by what it says.
        self._notif = ctypes.create_string_buffer(max(notif_size, NOTIF_SIZE))
        self._resp = ctypes.create_string_buffer(max(resp_size, RESP_SIZE))
        self._addfd = ctypes.create_string_buffer(ADDFD_SIZE)
        self._id = ctypes.c_uint64()
        # The caller and the supervisor wake each other on the current CPU (Linux 6.6, 48a1084a8b74),
        # not on an idle one that must wake up first. The flags go by value, not by pointer.
        try:
            libc.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            self.sync_wake_ups = "on"
        except OSError as e:   # EINVAL before 6.6
            self.sync_wake_ups = f"off ({e.strerror})"

    def recv(self) -> Notification | None:
        """The next notification; None when its caller went away meanwhile (ENOENT) or on EINTR."""
        ctypes.memset(self._notif, 0, len(self._notif))  # the kernel insists on a zeroed buffer
        try:
            libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, ctypes.addressof(self._notif))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                return None
            raise
        nid, pid, _flags, nr, _arch, _ip, *args = struct.unpack_from("<QIIiIQ6Q", self._notif.raw)
        return Notification(nid, pid, nr, tuple(args))

    def id_valid(self, nid: int) -> bool:
        self._id.value = nid
        try:
            libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.addressof(self._id))
        except OSError:
            return False
        return True

    def send_continue(self, nid: int) -> None:
        """Lets the caller's own syscall run. ENOENT (caller gone or interrupted) is not an error."""
        struct.pack_into("<QqiI", self._resp, 0, nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        try:
            libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, ctypes.addressof(self._resp))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def send_error(self, nid: int, err: int) -> None:
        """Completes the caller's syscall with -1 and errno `err`. ENOENT (caller gone) is not an error."""
        struct.pack_into("<QqiI", self._resp, 0, nid, 0, -err, 0)
        try:
            libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, ctypes.addressof(self._resp))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def send_fd(self, nid: int, fd: int, cloexec: bool) -> int:
        """Installs fd in the caller and completes its syscall with that fd number, atomically."""
        struct.pack_into("<QIIII", self._addfd, 0, nid, SECCOMP_ADDFD_FLAG_SEND, fd, 0,
                         os.O_CLOEXEC if cloexec else 0)
        return libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ADDFD, ctypes.addressof(self._addfd))


# The child installs the filter, so the listener fd is born there; it crosses to the supervisor over
# a socketpair (SCM_RIGHTS) before the child execs.
def send_listener(sock: socket.socket, fd: int) -> None:
    sock.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])


def recv_listener(sock: socket.socket) -> int | None:
    """The fd send_listener() sent; None at EOF (the child never got that far)."""
    fds: list[int] = []
    msg, anc, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4]))
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if msg and fds else None
