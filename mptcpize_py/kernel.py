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
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 2, 3, 4, 5
BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT = 8, 9, 10, 11
BTF_KIND_TYPE_TAG = 18
_BTF_MODIFIERS = (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT,
                  BTF_KIND_TYPE_TAG)
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


class BtfIndex:
    """Random access to every type of a raw BTF blob: enough to compute member offsets."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BtfError("BTF too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self.data = data
        self.strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.pos = [0]   # type id -> offset of its struct btf_type (id 0 is void)
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            self.pos.append(pos)
            info = struct.unpack_from("<I", data, pos + 4)[0]
            fixed, per = _BTF_EXTRA.get((info >> 24) & 0x1F, (0, 0))
            pos += 12 + fixed + per * (info & 0xFFFF)

    def name(self, off: int) -> str:
        return self.strings[off:self.strings.index(b"\0", off)].decode()

    def header(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of a type."""
        name_off, info, size_type = struct.unpack_from("<III", self.data, self.pos[type_id])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_type

    def find_struct(self, name: str) -> int | None:
        needle = b"\0" + name.encode() + b"\0"
        offs, at = set(), self.strings.find(needle)
        while at != -1:
            offs.add(at + 1)
            at = self.strings.find(needle, at + 1)
        for type_id in range(1, len(self.pos)):
            name_off, kind, vlen, _, _ = self.header(type_id)
            if kind == BTF_KIND_STRUCT and name_off in offs and vlen:
                return type_id
        return None

    def strip(self, type_id: int) -> int:
        """Follows typedef/const/volatile/restrict/type_tag to the underlying type."""
        while type_id:
            _, kind, _, _, ref = self.header(type_id)
            if kind not in _BTF_MODIFIERS:
                break
            type_id = ref
        return type_id

    def size(self, type_id: int) -> int | None:
        type_id = self.strip(type_id)
        _, kind, _, _, size = self.header(type_id)
        if kind == BTF_KIND_PTR:
            return 8
        return size if kind in (BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM) else None

    def member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(byte offset, member type id) of `name` in struct/union `type_id`, looking inside
        anonymous struct/union members too; None when absent or a bit-field."""
        type_id = self.strip(type_id)
        _, kind, vlen, kind_flag, _ = self.header(type_id)
        if kind not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            return None
        body = self.pos[type_id] + 12
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", self.data, body + 12 * i)
            bits = (m_off & 0xFFFFFF) if kind_flag else m_off
            if kind_flag and m_off >> 24:
                continue   # a bit-field
            if m_name and self.name(m_name) == name:
                return (bits // 8, m_type) if bits % 8 == 0 else None
            if not m_name:
                inner = self.member(m_type, name)
                if inner is not None:
                    return bits // 8 + inner[0], inner[1]
        return None

    def offset(self, struct_name: str, path: str) -> tuple[int, int | None]:
        """offsetof(struct struct_name, a.b.c) and the size of that member; BtfError if absent."""
        type_id = self.find_struct(struct_name)
        if type_id is None:
            raise BtfError(f"no struct {struct_name} in BTF")
        total = 0
        for part in path.split("."):
            found = self.member(type_id, part)
            if found is None:
                raise BtfError(f"no member {path} in struct {struct_name}")
            total += found[0]
            type_id = found[1]
        return total, self.size(type_id)


# The kernel struct members the BPF program reads, as (macro, struct, member path, size). The program
# gets their offsets from the running kernel's BTF (-D macros), not from a headers tree, so the same
# source reads the right bytes on every kernel (and compiles against any headers bcc finds).
STRUCT_FIELDS = (
    ("OFF_TASK_MM", "task_struct", "mm", 8),
    ("OFF_TASK_NSPROXY", "task_struct", "nsproxy", 8),
    ("OFF_TASK_SIGNAL", "task_struct", "signal", 8),
    ("OFF_TASK_PID", "task_struct", "pid", 4),
    ("OFF_TASK_TGID", "task_struct", "tgid", 4),
    ("OFF_MM_EXE_FILE", "mm_struct", "exe_file", 8),
    ("OFF_FILE_INODE", "file", "f_inode", 8),
    ("OFF_INODE_INO", "inode", "i_ino", 8),
    ("OFF_INODE_SB", "inode", "i_sb", 8),
    ("OFF_SB_DEV", "super_block", "s_dev", 4),
    ("OFF_NSPROXY_NET", "nsproxy", "net_ns", 8),
    ("OFF_NET_INUM", "net", "ns.inum", 4),
    ("OFF_NET_GEN", "net", "gen", 8),
    ("OFF_NET_GENERIC_PTR", "net_generic", "ptr", None),
    ("OFF_SIGNAL_LIVE", "signal_struct", "live.counter", 4),
    ("OFF_BPRM_FILENAME", "linux_binprm", "filename", 8),
)


def struct_offsets(data: bytes) -> dict[str, int]:
    """{macro: offset} for STRUCT_FIELDS; BtfError when a member is missing or has another size."""
    btf = BtfIndex(data)
    out = {}
    for macro, struct_name, path, size in STRUCT_FIELDS:
        off, got = btf.offset(struct_name, path)
        if size is not None and got != size:
            raise BtfError(f"struct {struct_name}.{path} is {got} bytes here, not {size}")
        out[macro] = off
    return out


def read_struct_offsets(path: Path = VMLINUX_BTF) -> dict[str, int]:
    try:
        return struct_offsets(path.read_bytes())
    except OSError as e:
        raise Unavailable(f"cannot read kernel BTF {path}: {e.strerror}",
                          hint="the kernel needs CONFIG_DEBUG_INFO_BTF=y") from None
    except BtfError as e:
        raise Unavailable(f"this kernel's structures are not what the program expects: {e}") from None


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


CAPABILITY_BITS = {"CAP_SYS_ADMIN": 21, "CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39}


def missing_capabilities(names, status_text: str | None = None) -> list[str]:
    """Those of `names` not in this process's effective capability set (/proc/self/status CapEff)."""
    if status_text is None:
        try:
            status_text = Path("/proc/self/status").read_text()
        except OSError:
            return []
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            eff = int(line.split()[1], 16)
            return [n for n in names if not eff >> CAPABILITY_BITS[n] & 1]
    return []


_CLONE_NEWNET = 0x40000000


def read_sysctl_in_netns(ns_path: str, name: str) -> str | None:
    """A net.* sysctl as seen in the network namespace `ns_path` (/run/netns/NAME, /proc/PID/ns/net):
    /proc/sys/net shows the namespace of the reading thread, so a short-lived thread enters it
    (setns of a netns is per thread; the thread's namespace dies with it). None when unreadable."""
    import threading
    result: list[str | None] = [None]

    def reader():
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                return
        finally:
            os.close(fd)
        result[0] = read_sysctl(name)

    t = threading.Thread(target=reader, name="mptcpize-netns-sysctl")
    t.start()
    t.join()
    return result[0]


TRACEFS = "/sys/kernel/tracing"


def ensure_tracefs() -> None:
    """Mounts tracefs at /sys/kernel/tracing when it is not (systemd does at boot; minimal systems
    and containers may not): bcc reads tracepoint formats there."""
    if os.path.isdir(f"{TRACEFS}/events"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise Unavailable(f"tracefs is not mounted at {TRACEFS} and mounting it failed: "
                          f"{os.strerror(err)}", hint=f"mount -t tracefs tracefs {TRACEFS}")


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
