"""A real fmod_ret load + attach on update_socket_protocol, without bcc or headers: "hook present" is
not "hook usable" (some kernels refuse trampolines even to root), so the only proof is to try."""

import ctypes
import os
import struct

from mptcpize_py.host import libc

_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 5, 17
_BPF_PROG_TYPE_TRACING, _BPF_MODIFY_RETURN = 26, 26
# r0 = 0; exit — an fmod_ret program that returning 0 leaves update_socket_protocol's result as is.
_NOOP_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _bpf_syscall(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    return libc.syscall(libc.syscall_number("bpf"), cmd, buf, len(attr))


def probe_trampoline(btf_id: int) -> None:
    """Loads and attaches a no-op fmod_ret program on update_socket_protocol, then detaches it.

    Raises OSError with the kernel's errno (EPERM where trampolines are refused, even to root).
    """
    insns = ctypes.create_string_buffer(_NOOP_INSNS, len(_NOOP_INSNS))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_TRACING, 2,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    attr[48:48 + 15] = b"mptcpize_probe".ljust(15, b"\0")
    struct.pack_into("<I", attr, 68, _BPF_MODIFY_RETURN)
    struct.pack_into("<I", attr, 108, btf_id)
    prog_fd = _bpf_syscall(_BPF_PROG_LOAD, bytes(attr))
    try:
        link_fd = _bpf_syscall(_BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI4x", 0, prog_fd))
        os.close(link_fd)
    finally:
        os.close(prog_fd)
