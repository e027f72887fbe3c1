"""The running kernel's BTF: the hook's type id, and the struct member offsets the program reads.

Pure parsing lives in functions that take bytes, so unit tests feed them real or built data.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

from mptcpize_py.errors import Unavailable

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

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

    def find(self, kind: int, name: str) -> int | None:
        """The id of the first type of `kind` named `name` (a struct with members, not a forward
        declaration); None when absent."""
        needle = b"\0" + name.encode() + b"\0"
        offs, at = set(), self.strings.find(needle)
        while at != -1:
            offs.add(at + 1)
            at = self.strings.find(needle, at + 1)
        for type_id in range(1, len(self.pos)):
            name_off, k, vlen, _, _ = self.header(type_id)
            if k == kind and name_off in offs and (vlen or kind != BTF_KIND_STRUCT):
                return type_id
        return None

    def find_struct(self, name: str) -> int | None:
        return self.find(BTF_KIND_STRUCT, name)

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
    ("OFF_TASK_GROUP_LEADER", "task_struct", "group_leader", 8),
    ("OFF_TASK_START_BOOTTIME", "task_struct", "start_boottime", 8),
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
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups", 8),
    ("OFF_CSS_SET_DFL_CGRP", "css_set", "dfl_cgrp", 8),
    ("OFF_CGROUP_KN", "cgroup", "kn", 8),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id", 8),
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
        return struct_offsets(_read(path))
    except BtfError as e:
        raise Unavailable(f"this kernel's structures are not what the program expects: {e}") from None


@dataclass(frozen=True)
class HookFacts:
    """What the BPF program needs from the kernel's BTF."""
    update_socket_protocol_id: int | None   # BTF id of the hook function, None when absent
    mptcp_enabled_offset: int | None        # offsetof(struct mptcp_pernet, mptcp_enabled)


def hook_facts(data: bytes) -> HookFacts:
    btf = BtfIndex(data)
    pernet = btf.find_struct("mptcp_pernet")
    enabled = btf.member(pernet, "mptcp_enabled") if pernet is not None else None
    return HookFacts(btf.find(BTF_KIND_FUNC, "update_socket_protocol"),
                     enabled[0] if enabled is not None else None)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise Unavailable(f"cannot read kernel BTF {path}: {e.strerror}",
                          hint="the kernel needs CONFIG_DEBUG_INFO_BTF=y") from None


def read_hook_facts(path: Path = VMLINUX_BTF) -> HookFacts:
    try:
        return hook_facts(_read(path))
    except BtfError as e:
        raise Unavailable(f"cannot parse kernel BTF {path}: {e}") from None
