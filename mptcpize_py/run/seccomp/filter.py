"""The seccomp filter (a classic BPF program) and its installation in the child, before exec."""

import ctypes
import errno
import socket
import struct

from mptcpize_py.host import libc
from mptcpize_py.run.seccomp.shim import SHIM_PASS

# include/uapi/linux/seccomp.h, filter.h, audit.h; arch/x86/include/uapi/asm/unistd.h
_X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5   # Linux 5.19
SECCOMP_RET_ALLOW, SECCOMP_RET_USER_NOTIF = 0x7FFF0000, 0x7FC00000

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
    x32 (nr | __X32_SYSCALL_BIT) calls are allowed untouched, so such programs keep plain TCP.
    Unavailable on another architecture."""
    nr_socket = libc.syscall_number("socket")
    prog: list[tuple] = []  # (code, jt label|int, jf label|int, k)

    def op(code, k=0, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    op(_LD_W_ABS, _OFF_ARCH)
    op(_JEQ_K, AUDIT_ARCH_X86_64, 0, "allow")
    op(_LD_W_ABS, _OFF_NR)
    op(_JGE_K, _X32_SYSCALL_BIT, "allow", 0)
    if notify_exec:
        op(_JEQ_K, libc.syscall_number("execve"), "notify", 0)
        op(_JEQ_K, libc.syscall_number("execveat"), "notify", 0)
    op(_JEQ_K, nr_socket, 0, "allow")
    op(_LD_W_ABS, _off_arg(0))
    op(_JEQ_K, socket.AF_INET, "type", 0)
    op(_JEQ_K, socket.AF_INET6, 0, "allow")
    prog.append(("label", "type"))
    op(_LD_W_ABS, _off_arg(1))
    # Invalid flag bits: let the kernel return its own EINVAL.
    op(_JSET_K, 0xFFFFFFFF & ~(_SOCK_TYPE_MASK | _SOCK_VALID_FLAGS), "allow", 0)
    op(_AND_K, _SOCK_TYPE_MASK)
    op(_JEQ_K, socket.SOCK_STREAM, 0, "allow")
    # The shim's fallback where the namespace refuses MPTCP: the caller's own TCP socket, made by the
    # caller (a program that sets this gets what it asked for: no more than without us).
    op(_LD_W_ABS, _off_arg(3))
    op(_JEQ_K, SHIM_PASS, "allow", 0)
    # IPPROTO_MPTCP (the shim's own sockets) and every other protocol: allowed below.
    op(_LD_W_ABS, _off_arg(2))
    op(_JEQ_K, 0, "notify", 0)
    op(_JEQ_K, socket.IPPROTO_TCP, "notify", "allow")
    prog.append(("label", "notify"))
    op(_RET_K, SECCOMP_RET_USER_NOTIF)
    prog.append(("label", "allow"))
    op(_RET_K, SECCOMP_RET_ALLOW)

    labels: dict[str, int] = {}
    insns: list[tuple] = []
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


class FilterInstaller:
    """Everything the child needs between fork and exec, prepared in the parent (no imports or
    allocations of note after fork)."""

    def __init__(self, no_new_privs: bool, notify_exec: bool, killable: bool = True):
        insns = filter_program(notify_exec)
        self._filter = ctypes.create_string_buffer(insns, len(insns))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        self._prog = struct.pack("<H6xQ", len(insns) // 8, ctypes.addressof(self._filter))
        self._prog_buf = ctypes.create_string_buffer(self._prog, len(self._prog))
        self.no_new_privs = no_new_privs
        self.flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | \
            (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV if killable else 0)

    def install(self) -> int:
        """Installs the filter in the calling process; returns the listener fd."""
        if self.no_new_privs:
            libc.set_no_new_privs()
        try:
            return libc.seccomp(SECCOMP_SET_MODE_FILTER, self.flags, self._prog_buf)
        except OSError as e:
            if e.errno != errno.EINVAL or not self.flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
                raise
            # Linux < 5.19: no WAIT_KILLABLE_RECV.
            self.flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            return libc.seccomp(SECCOMP_SET_MODE_FILTER, self.flags, self._prog_buf)
