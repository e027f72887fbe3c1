"""Facts read from the running kernel's own files: BTF, kallsyms, sysctl, dev_t encoding.

Pure parsing lives in functions that take bytes/text, so unit tests feed them real or built data.
"""

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import Unavailable

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
KALLSYMS = Path("/proc/kallsyms")

BTF_MAGIC = 0xEB9F
BTF_KIND_INT, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 3, 4, 5
BTF_KIND_ENUM, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_VAR = 6, 12, 13, 14
BTF_KIND_DATASEC, BTF_KIND_DECL_TAG, BTF_KIND_ENUM64 = 15, 17, 19

# Bytes that follow the 12-byte struct btf_type, per kind: (fixed, per vlen entry).
_BTF_EXTRA = {
    BTF_KIND_INT: (4, 0), BTF_KIND_ARRAY: (12, 0), BTF_KIND_STRUCT: (0, 12), BTF_KIND_UNION: (0, 12),
    BTF_KIND_ENUM: (0, 8), BTF_KIND_FUNC_PROTO: (0, 8), BTF_KIND_VAR: (4, 0),
    BTF_KIND_DATASEC: (0, 12), BTF_KIND_DECL_TAG: (4, 0), BTF_KIND_ENUM64: (0, 12),
}


class BtfError(ValueError):
    pass


@dataclass(frozen=True)
class BtfType:
    type_id: int
    kind: int
    members: dict[str, int]  # struct/union member name -> bit offset (empty for other kinds)


def btf_find(data: bytes, wanted: set[tuple[int, str]]) -> dict[tuple[int, str], BtfType]:
    """Finds the types named in `wanted` ((kind, name) pairs) in raw BTF, in one pass."""
    if len(data) < 24:
        raise BtfError("BTF too short")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BtfError(f"bad BTF magic {magic:#x}")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = data[hdr_len + str_off: hdr_len + str_off + str_len]

    def name_at(off: int) -> str:
        end = strings.index(b"\0", off)
        return strings[off:end].decode()

    # Compare string offsets while walking, decode names only for candidates.
    by_name = {}
    for kind, name in wanted:
        needle = b"\0" + name.encode() + b"\0"
        pos = strings.find(needle)
        while pos != -1:
            by_name.setdefault(pos + 1, set()).add(kind)
            pos = strings.find(needle, pos + 1)

    found = {}
    pos, end, type_id = types, types + type_len, 1
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        fixed, per = _BTF_EXTRA.get(kind, (0, 0))
        body = pos + 12
        if kind in by_name.get(name_off, ()):
            members = {}
            if kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                bitfield = info >> 31
                for i in range(vlen):
                    m_name, _m_type, m_off = struct.unpack_from("<III", data, body + 12 * i)
                    members[name_at(m_name)] = (m_off & 0xFFFFFF) if bitfield else m_off
            found.setdefault((kind, name_at(name_off)), BtfType(type_id, kind, members))
        pos = body + fixed + per * vlen
        type_id += 1
    return found


@dataclass(frozen=True)
class HookFacts:
    """What the BPF program needs from the kernel's BTF."""
    update_socket_protocol_id: int | None   # BTF id of the hook function, None when absent
    mptcp_enabled_offset: int | None        # offsetof(struct mptcp_pernet, mptcp_enabled)


def hook_facts(data: bytes) -> HookFacts:
    found = btf_find(data, {(BTF_KIND_FUNC, "update_socket_protocol"),
                            (BTF_KIND_STRUCT, "mptcp_pernet")})
    func = found.get((BTF_KIND_FUNC, "update_socket_protocol"))
    pernet = found.get((BTF_KIND_STRUCT, "mptcp_pernet"))
    bit_off = pernet.members.get("mptcp_enabled") if pernet else None
    return HookFacts(func.type_id if func else None,
                     bit_off // 8 if bit_off is not None and bit_off % 8 == 0 else None)


def read_hook_facts(path: Path = VMLINUX_BTF) -> HookFacts:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Unavailable(f"cannot read kernel BTF {path}: {e.strerror}",
                          hint="the kernel needs CONFIG_DEBUG_INFO_BTF=y") from None
    try:
        return hook_facts(data)
    except BtfError as e:
        raise Unavailable(f"cannot parse kernel BTF {path}: {e}") from None


def kallsyms_address(text: str, symbol: str) -> int | None:
    """Address of `symbol` in /proc/kallsyms text; None when absent or hidden (kptr_restrict: zeros)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == symbol:
            addr = int(parts[0], 16)
            return addr or None
    return None


def read_kallsyms_address(symbol: str) -> int | None:
    try:
        return kallsyms_address(KALLSYMS.read_text(), symbol)
    except OSError:
        return None


def mkdev(major: int, minor: int) -> int:
    """The kernel's internal dev_t encoding (include/linux/kdev_t.h MKDEV: major << 20 | minor)."""
    return (major << 20) | minor


def kernel_dev(st_dev: int) -> int:
    """The kernel's internal dev_t for a userspace st_dev."""
    return mkdev(os.major(st_dev), os.minor(st_dev))


def read_sysctl(name: str, proc: Path = Path("/proc/sys")) -> str | None:
    try:
        return (proc / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


# --- a real fmod_ret load + attach, without bcc or headers -----------------------------------------
_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 5, 17
_BPF_PROG_TYPE_TRACING, _BPF_MODIFY_RETURN = 26, 26
# r0 = 0; exit — an fmod_ret program that returning 0 leaves update_socket_protocol's result as is.
_NOOP_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _bpf_syscall(cmd: int, attr: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def probe_trampoline(btf_id: int) -> None:
    """Loads and attaches a no-op fmod_ret program on update_socket_protocol, then detaches it.

    Raises OSError with the kernel's errno (EPERM here: the host refuses trampolines even to root).
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
