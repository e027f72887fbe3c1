"""The project's one handle on libc (ctypes), the syscall numbers it calls by number, and typed
wrappers that raise OSError with the kernel's errno."""

import ctypes
import errno
import os
import platform
import struct

from mptcpize_py.errors import Unavailable

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int
_socket = _libc.socket
_socket.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_setns = _libc.setns
_setns.argtypes = (ctypes.c_int, ctypes.c_int)
_mount = _libc.mount
_mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_vsnprintf = _libc.vsnprintf
_vsnprintf.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p)

# arch/x86/entry/syscalls/syscall_64.tbl: only what is called by number (no glibc wrapper, or one
# that does not do what we need).
_X86_64 = {"socket": 41, "execve": 59, "setgroups": 116, "setresuid": 117, "setresgid": 119,
           "setfsuid": 122, "setfsgid": 123, "capset": 126, "perf_event_open": 298, "seccomp": 317,
           "bpf": 321, "execveat": 322}
# Added after the syscall tables were unified (Linux 5.1): the same number everywhere.
_EVERY_ARCH = {"openat2": 437}
MACHINE = platform.machine()
_NUMBERS = _EVERY_ARCH | (_X86_64 if MACHINE == "x86_64" else {})

CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
PR_SET_PDEATHSIG, PR_SET_NAME, PR_SET_NO_NEW_PRIVS = 1, 15, 38


def syscall_number(name: str) -> int:
    """The number of syscall `name` on this machine; Unavailable where we do not know it."""
    try:
        return _NUMBERS[name]
    except KeyError:
        raise Unavailable(f"{name}() by syscall number needs x86_64 (this machine is {MACHINE})") \
            from None


def _check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def syscall(nr: int, *args) -> int:
    """A raw syscall: ints are passed as longs, ctypes objects (buffers, byref()) as they are."""
    return _check(_syscall(ctypes.c_long(nr),
                           *(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))


def setns(fd: int, nstype: int) -> None:
    """Moves the calling thread (only) into the namespace open at fd."""
    _check(_setns(fd, nstype))


def ioctl(fd: int, request: int, arg: int) -> int:
    """ioctl(2): arg is an address (ctypes.addressof) or, for requests that take one, a value."""
    return _check(_ioctl(fd, request, arg))


def socket(family: int, type_: int, proto: int) -> int:
    """socket(2): a bare fd, no Python socket object around it."""
    return _check(_socket(family, type_, proto))


def mount(source: bytes, target: bytes, fstype: bytes, flags: int = 0) -> None:
    _check(_mount(source, target, fstype, flags, None))


def seccomp(op: int, flags: int, arg) -> int:
    """seccomp(2); arg is a ctypes object (a buffer or byref())."""
    return syscall(syscall_number("seccomp"), op, flags, arg)


# include/uapi/linux/perf_event.h
PERF_TYPE_TRACEPOINT, PERF_SAMPLE_RAW, PERF_FLAG_FD_CLOEXEC = 2, 1 << 10, 8
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408


def attach_to_tracepoint(tp_id: int, prog_fd: int) -> int:
    """A perf event on tracepoint tp_id (every task; CPU 0's context) running BPF program prog_fd, as
    bcc attaches a TRACEPOINT_PROBE; returns its fd, whose close detaches the program."""
    # struct perf_event_attr, its first version (PERF_ATTR_SIZE_VER0, 64 bytes): type, size, config,
    # sample_period, sample_type, read_format, flags, wakeup_events, bp_type, config1.
    attr = ctypes.create_string_buffer(struct.pack("<IIQQQQQIIQ", PERF_TYPE_TRACEPOINT, 64, tp_id, 1,
                                                   PERF_SAMPLE_RAW, 0, 0, 1, 0, 0), 64)
    fd = syscall(syscall_number("perf_event_open"), attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    try:
        _check(_ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd))
        _check(_ioctl(fd, PERF_EVENT_IOC_ENABLE, 0))
    except OSError:
        os.close(fd)
        raise
    return fd


def vformat(fmt: bytes, va_list: int, size: int = 4096) -> str:
    """A C library's printf-style message (a format and its va_list, as a log callback gets them)."""
    buf = ctypes.create_string_buffer(size)
    _vsnprintf(buf, size, fmt, va_list)
    return buf.value.decode(errors="replace")


def trim_heap() -> None:
    """Gives freed heap memory back to the kernel (malloc_trim(0)): after a one-off burst of
    allocations, such as libbpf parsing the kernel's BTF to load a program."""
    _libc.malloc_trim(0)


def set_no_new_privs() -> None:
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def set_parent_death_signal(sig: int) -> None:
    """The signal this process gets when the thread that created it exits."""
    _check(_prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0))


def set_thread_name(name: bytes) -> None:
    """The calling thread's comm (what ps shows; the kernel keeps 15 bytes)."""
    buf = ctypes.create_string_buffer(name)
    _check(_prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0))


# Credentials, for the calling thread only. Raw syscalls, not glibc's wrappers: glibc applies set*id()
# to every thread of the process, the kernel only to the calling one (which we want).
def setresuid(ruid: int, euid: int, suid: int) -> None:
    """-1 keeps that id."""
    syscall(syscall_number("setresuid"), ruid, euid, suid)


def setresgid(rgid: int, egid: int, sgid: int) -> None:
    syscall(syscall_number("setresgid"), rgid, egid, sgid)


def setgroups(groups: tuple[int, ...]) -> None:
    arr = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    syscall(syscall_number("setgroups"), len(groups), ctypes.addressof(arr))


def _setfsid(nr: int, value: int) -> None:
    # setfsuid/setfsgid report failure only by not changing: read the value back (-1 is a no-op).
    _syscall(ctypes.c_long(nr), ctypes.c_long(value))
    if _syscall(ctypes.c_long(nr), ctypes.c_long(-1)) != value:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))


def setfsuid(fsuid: int) -> None:
    _setfsid(syscall_number("setfsuid"), fsuid)


def setfsgid(fsgid: int) -> None:
    _setfsid(syscall_number("setfsgid"), fsgid)


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for the calling thread (pid 0); each set is a 64-bit mask."""
    header = struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack("<6I", effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF,
                       inheritable & 0xFFFFFFFF, effective >> 32, permitted >> 32, inheritable >> 32)
    hbuf, dbuf = ctypes.create_string_buffer(header, 8), ctypes.create_string_buffer(data, 24)
    syscall(syscall_number("capset"), ctypes.addressof(hbuf), ctypes.addressof(dbuf))
