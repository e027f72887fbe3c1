"""The program's data layouts as ctypes types, read at run time from the C sources both sides share:
every `struct` of bpf/mptcpize.h, and every map declared in bpf/mptcpize.bpf.c with its key and value
type. Nothing here is written twice: a field added to the header, or a map added to the program, is
known to Python without an edit (tests/unit/test_layout.py compiles the header with gcc and compares
every size and offset).

The parser is strict on purpose: a line in a struct body it does not understand is an error, not a
skipped member (a skipped trailing member could hide in the padding and go unnoticed)."""

import ctypes
import functools
import mmap
import re
from dataclasses import dataclass
from typing import Any

from mptcpize_py import abi
from mptcpize_py.errors import MptcpizeError

# The kernel's fixed-width types (include/uapi/asm-generic/int-ll64.h) and the C ones the sources use.
SCALARS: dict[str, type] = {
    "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32, "u64": ctypes.c_uint64,
    "s8": ctypes.c_int8, "s16": ctypes.c_int16, "s32": ctypes.c_int32, "s64": ctypes.c_int64,
    "__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32, "__u64": ctypes.c_uint64,
    "char": ctypes.c_char, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
}

# bcc's map macros (src/cc/export/helpers.h), and bpf/loaders.h's BPF_LRU_HASH: argument order, and
# the key type where it is implied.
_MAP_MACROS = {
    "BPF_ARRAY": ("array", ("name", "value", "size"), "int"),
    "BPF_PERCPU_ARRAY": ("percpu_array", ("name", "value", "size"), "int"),
    "BPF_HASH": ("hash", ("name", "key", "value", "size"), None),
    "BPF_PERCPU_HASH": ("percpu_hash", ("name", "key", "value", "size"), None),
    "BPF_TABLE": (None, ("type", "key", "value", "name", "size"), None),
    "BPF_LRU_HASH": ("lru_hash", ("name", "key", "value", "size"), None),
    "BPF_RINGBUF_OUTPUT": ("ringbuf", ("name", "pages"), None),
    "BPF_TASK_STORAGE": ("task_storage", ("name", "value"), "int"),   # keyed by a pidfd; no size
}
_PERCPU = {"percpu_array", "percpu_hash", "lru_percpu_hash"}


class LayoutError(MptcpizeError):
    """The C sources say something this parser does not understand: a bug, not a user error."""


@dataclass(frozen=True)
class MapLayout:
    name: str
    kind: str               # bcc's table type: "hash", "lru_hash", "array", "percpu_array", "ringbuf"...
    key: type | None        # ctypes type (None: a ring buffer has no key or value)
    value: type | None
    max_entries: int        # as the kernel counts it: a ring buffer's size in bytes

    @property
    def percpu(self) -> bool:
        return self.kind in _PERCPU


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _number(token: str, defines: dict[str, int]) -> int:
    token = token.strip()
    if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", token):
        return int(token, 0)
    if token.startswith("MPTCPIZE_") and token[len("MPTCPIZE_"):] in defines:
        return defines[token[len("MPTCPIZE_"):]]
    raise LayoutError(f"{abi.HEADER.name}: cannot evaluate {token!r} (a number or a MPTCPIZE_* define)")


_FIELD = re.compile(r"^(struct\s+\w+|unsigned\s+int|\w+)\s+(\w+)\s*(?:\[\s*([^\]]+?)\s*\])?$")


def parse_structs(header: str, defines: dict[str, int] | None = None) -> dict[str, type]:
    """{struct name: ctypes.Structure} for every `struct NAME { ... };` of the header, in order (a
    struct may use those before it). C's natural alignment, which ctypes follows on this ABI."""
    text = _strip_comments(header)
    defines = abi.parse_defines(text) if defines is None else defines
    out: dict[str, type] = {}
    for m in re.finditer(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*([^;]*);", text, flags=re.S):
        name, body, trailer = m.group(1), m.group(2), m.group(3).strip()
        if trailer:
            raise LayoutError(f"struct {name}: {trailer!r} after the body is not understood "
                              f"(packed or aligned structs are not supported)")
        fields = []
        for decl in body.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            f = _FIELD.match(decl)
            if f is None:
                raise LayoutError(f"struct {name}: cannot parse member {decl!r}")
            ctype, member, count = f.group(1), f.group(2), f.group(3)
            t: Any   # a ctypes type: a scalar, a struct, an array of either
            if ctype.startswith("struct "):
                inner = ctype.split()[1]
                if inner not in out:
                    raise LayoutError(f"struct {name}.{member}: struct {inner} is not defined before it")
                t = out[inner]
            elif ctype in SCALARS:
                t = SCALARS[ctype]
            else:
                raise LayoutError(f"struct {name}.{member}: unknown type {ctype!r}")
            if count is not None:
                t = t * _number(count, defines)
            fields.append((member, t))
        if not fields:
            raise LayoutError(f"struct {name} has no members")
        out[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return out


def _ctype(spec: str, structs: dict[str, type]) -> type:
    spec = " ".join(spec.split())
    if spec.startswith("struct "):
        name = spec.split()[1]
        if name not in structs:
            raise LayoutError(f"{abi.PROGRAM.name}: struct {name} is not in {abi.HEADER.name}")
        return structs[name]
    if spec in SCALARS:
        return SCALARS[spec]
    raise LayoutError(f"{abi.PROGRAM.name}: map type {spec!r} is neither a scalar nor a header struct")


def parse_maps(program: str, structs: dict[str, type], defines: dict[str, int]) -> dict[str, MapLayout]:
    """{map name: MapLayout} for every bcc map macro of the program source."""
    text = _strip_comments(program)
    out: dict[str, MapLayout] = {}
    for m in re.finditer(r"^\s*(BPF_[A-Z_]+)\s*\((.*?)\)\s*;", text, flags=re.S | re.M):
        macro, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if macro not in _MAP_MACROS:
            continue
        kind, names, implied_key = _MAP_MACROS[macro]
        if len(args) != len(names):
            raise LayoutError(f"{abi.PROGRAM.name}: {macro}({', '.join(args)}): expected "
                              f"{len(names)} arguments ({', '.join(names)})")
        a = dict(zip(names, args, strict=True))
        kind = kind or a["type"].strip('"')
        name = a["name"]
        if kind == "ringbuf":
            out[name] = MapLayout(name, kind, None, None, _number(a["pages"], defines) * mmap.PAGESIZE)
            continue
        key = _ctype(a.get("key") or implied_key or "", structs)
        size = _number(a["size"], defines) if "size" in a else 0
        out[name] = MapLayout(name, kind, key, _ctype(a["value"], structs), size)
    if not out:
        raise LayoutError(f"{abi.PROGRAM.name}: no map declarations found")
    return out


@functools.cache
def structs() -> dict[str, type]:
    """The header's structs, parsed once per process."""
    return parse_structs(abi.HEADER.read_text())


@functools.cache
def maps() -> dict[str, MapLayout]:
    """The program's maps, parsed once per process."""
    # Comments out first: abi.parse_defines() skips a define with a comment after its value.
    defines = abi.parse_defines(_strip_comments(abi.HEADER.read_text()))
    return parse_maps(abi.PROGRAM.read_text(), structs(), defines)
