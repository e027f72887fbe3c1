"""Whether the seccomp backend works here: tried for real in a throwaway child."""

import ctypes
import errno
import os
import select
import socket

from mptcpize_py.abi import IPPROTO_MPTCP
from mptcpize_py.errors import Unavailable
from mptcpize_py.host import libc
from mptcpize_py.run.seccomp.filter import SECCOMP_RET_USER_NOTIF, FilterInstaller
from mptcpize_py.run.seccomp.notify import Listener, notif_sizes, recv_listener, send_listener

SECCOMP_GET_ACTION_AVAIL = 2


def probe() -> None:
    """Really tries the mechanism in a forked child: filter, listener, and a socket() answered with
    ADDFD+SEND. Raises Unavailable with the reason when something is missing."""
    try:
        libc.seccomp(SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(ctypes.c_uint32(SECCOMP_RET_USER_NOTIF)))
        notif_sizes()
    except OSError as e:
        raise Unavailable(f"seccomp user notification unavailable: {e.strerror}",
                          hint="needs Linux >= 5.14 with CONFIG_SECCOMP_FILTER=y") from None
    # MPTCP disabled in *this* netns (ENOPROTOOPT) does not matter: CMD may use others. No MPTCP in
    # the kernel at all does.
    try:
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, IPPROTO_MPTCP)
    except OSError as e:
        if e.errno != errno.ENOPROTOOPT:
            raise Unavailable(f"this kernel cannot create MPTCP sockets: {e.strerror}",
                              hint="needs a kernel with CONFIG_MPTCP=y") from None
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0)
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
    installer = FilterInstaller(no_new_privs=True, notify_exec=False)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 1
        try:
            parent.close()
            lfd = installer.install()
            send_listener(child, lfd)
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
            listener_fd = recv_listener(parent)
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
