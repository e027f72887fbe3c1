"""btf.struct_offsets against an independent reader of the same BTF: bpftool's raw dump."""

import re
import shutil
import subprocess

import pytest

from mptcpize_py.program import btf

pytestmark = pytest.mark.skipif(shutil.which("bpftool") is None or not btf.VMLINUX_BTF.exists(),
                                reason="needs bpftool and /sys/kernel/btf/vmlinux")


@pytest.fixture(scope="module")
def raw_dump() -> str:
    return subprocess.run(["bpftool", "btf", "dump", "file", str(btf.VMLINUX_BTF), "format", "raw"],
                          capture_output=True, text=True, check=True).stdout


def _find_in_block(dump: str, block: str, member: str) -> tuple[int, int] | None:
    mm = re.search(rf"^\t'{re.escape(member)}' type_id=(\d+) bits_offset=(\d+)", block, re.M)
    if mm:
        return int(mm.group(2)) // 8, int(mm.group(1))
    for anon in re.finditer(r"^\t'\(anon\)' type_id=(\d+) bits_offset=(\d+)", block, re.M):
        inner = re.search(rf"^\[{anon.group(1)}\] (?:STRUCT|UNION) '\(anon\)' size=\d+ vlen=\d+\n"
                          rf"((?:\t.*\n)*)", dump, re.M)
        found = inner and _find_in_block(dump, inner.group(1), member)
        if found:
            return int(anon.group(2)) // 8 + found[0], found[1]
    return None


def bpftool_member(dump: str, kind_name: str, member: str) -> tuple[int, int]:
    """(byte offset, type id) of `member` (also inside anonymous struct/union members) in the first
    "[id] STRUCT 'name'" that has it."""
    pattern = re.compile(rf"^\[\d+\] {kind_name} size=\d+ vlen=\d+\n((?:\t.*\n)*)", re.M)
    for m in pattern.finditer(dump):
        found = _find_in_block(dump, m.group(1), member)
        if found:
            return found
    raise AssertionError(f"{kind_name}.{member} not in bpftool's dump")


def type_name(dump: str, type_id: int) -> str:
    """The STRUCT/TYPEDEF line of a type id, e.g. "STRUCT 'ns_common'"."""
    m = re.search(rf"^\[{type_id}\] (\w+ '[^']*')", dump, re.M)
    return m.group(1)


@pytest.mark.parametrize("macro,struct,path,_size", btf.STRUCT_FIELDS)
def test_offsets_match_bpftool(raw_dump, macro, struct, path, _size):
    ours = btf.read_struct_offsets()[macro]
    parts = path.split(".")
    if path == "ptr":   # net_generic.ptr sits in an anonymous union at offset 0
        assert ours == 0
        return
    off, tid = bpftool_member(raw_dump, f"STRUCT '{struct}'", parts[0])
    for part in parts[1:]:   # nested: net.ns.inum, signal_struct.live.counter
        inner = type_name(raw_dump, tid)
        if inner.startswith("TYPEDEF"):   # atomic_t -> its anonymous struct
            tid = int(re.search(rf"^\[{tid}\] TYPEDEF '[^']*' type_id=(\d+)", raw_dump, re.M).group(1))
            block = re.search(rf"^\[{tid}\] STRUCT '\(anon\)' size=\d+ vlen=\d+\n((?:\t.*\n)*)",
                              raw_dump, re.M).group(1)
            add = int(re.search(rf"^\t'{part}' type_id=\d+ bits_offset=(\d+)", block, re.M).group(1))
            off += add // 8
        else:
            add, tid = bpftool_member(raw_dump, inner, part)
            off += add
    assert ours == off, f"{struct}.{path}: ours {ours}, bpftool {off}"
