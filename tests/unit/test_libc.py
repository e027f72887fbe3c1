"""host.libc: syscall numbers known per architecture, errors carry the kernel's errno."""

import errno
import os
import platform

import pytest

from mptcpize_py.errors import Unavailable
from mptcpize_py.host import libc

x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers known for x86_64")


def test_unknown_architecture_is_unavailable_at_call_time(monkeypatch):
    monkeypatch.setattr(libc, "MACHINE", "riscv64")
    monkeypatch.setattr(libc, "_NUMBERS", dict(libc._EVERY_ARCH))
    with pytest.raises(Unavailable) as e:
        libc.seccomp(0, 0, None)
    assert "needs x86_64" in e.value.message and "riscv64" in e.value.message
    assert libc.syscall_number("openat2") == 437   # the same everywhere


@x86_64
def test_syscall_raises_oserror_with_errno():
    with pytest.raises(OSError) as e:
        libc.syscall(libc.syscall_number("socket"), 12345, 1, 0)   # no such address family
    assert e.value.errno == errno.EAFNOSUPPORT


def test_socket_returns_a_bare_fd():
    import socket
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0)
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
    finally:
        os.close(fd)


@x86_64
def test_setfsuid_to_the_current_value_succeeds():
    libc.setfsuid(os.geteuid())   # fsuid follows euid: a no-op that must not report failure
