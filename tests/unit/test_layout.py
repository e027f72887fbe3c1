"""program/layout.py against the C compiler: bpf/mptcpize.h compiled with gcc prints sizeof and
offsetof of every struct and member the Python side parsed; each must be equal. The parse itself is
strict (a member it cannot read is an error), so a member cannot go missing unnoticed in padding."""

import ctypes
import re
import shutil
import subprocess

import pytest

from mptcpize_py import abi
from mptcpize_py.program import layout

# The kernel's types as bcc's compile sees them (include/uapi/asm-generic/int-ll64.h).
PRELUDE = """#include <stddef.h>
#include <stdio.h>
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64; typedef signed char s8; typedef short s16; typedef int s32;
typedef long long s64;
"""


def c_layout(tmp_path) -> dict[str, tuple[int, dict[str, int]]]:
    lines = [PRELUDE, f'#include "{abi.HEADER}"', "int main(void) {"]
    for name, struct in layout.structs().items():
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for member, _t in struct._fields_:
            lines.append(f'printf("{name}.{member} %zu\\n", offsetof(struct {name}, {member}));')
    lines.append("return 0; }")
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text("\n".join(lines))
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out: dict[str, tuple[int, dict[str, int]]] = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        what, value = line.split()
        if "." in what:
            s, m = what.split(".")
            out[s][1][m] = int(value)
        else:
            out[what] = (int(value), {})
    return out


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_every_size_and_offset_matches_the_c_compiler(tmp_path):
    c = c_layout(tmp_path)
    py = {name: (ctypes.sizeof(s), {m: getattr(s, m).offset for m, _t in s._fields_})
          for name, s in layout.structs().items()}
    assert py == c


def test_every_struct_of_the_header_is_parsed():
    text = abi.HEADER.read_text()
    declared = set(re.findall(r"^struct\s+(\w+)\s*\{", text, flags=re.M))
    assert declared and set(layout.structs()) == declared


def test_every_map_of_the_program_is_known_with_its_types():
    text = abi.PROGRAM.read_text()
    declared = re.findall(r"^BPF_[A-Z_]+\((?:\"\w+\",[^,]*,[^,]*,\s*)?(\w+)", text, flags=re.M)
    m = layout.maps()
    assert set(m) == set(declared) and len(declared) == len(set(declared))
    assert m["exe_rules"].key is layout.structs()["mptcpize_exe_key"]
    assert m["proc_stats"].value is layout.structs()["mptcpize_proc_stats"]
    assert m["counters"].percpu and m["counters"].max_entries == abi.parse_defines(
        abi.HEADER.read_text())["CNT_MAX"]
    assert m["events"].kind == "ringbuf" and m["events"].key is None


def test_every_policy_rule_id_has_a_slot_in_the_per_rule_counters():
    # The program counts per rule id in an array: the highest id a valid policy gives (one per exe and
    # per cgroup or unit rule, from FIRST_RULE_ID) must be an index of it, or its sockets go uncounted.
    from mptcpize_py.policy.validate import FIRST_RULE_ID
    rule_stats = layout.maps()["rule_stats"]
    assert rule_stats.kind == "percpu_array"
    assert FIRST_RULE_ID + abi.MAX_EXE_RULES + abi.MAX_CGROUP_RULES <= rule_stats.max_entries


@pytest.mark.parametrize("body, why", [
    ("u32 a; u32 b:3;", "cannot parse member"),
    ("u32 a; float b;", "unknown type"),
    ("char name[MPTCPIZE_NOPE];", "cannot evaluate"),
    ("struct other inner;", "not defined before"),
])
def test_a_member_it_cannot_read_is_an_error(body, why):
    with pytest.raises(layout.LayoutError, match=why):
        layout.parse_structs(f"struct x {{ {body} }};", {})


def test_packed_structs_are_refused():
    with pytest.raises(layout.LayoutError, match="packed"):
        layout.parse_structs("struct x { u32 a; } __attribute__((packed));", {})


def test_array_sizes_come_from_the_defines():
    s = layout.parse_structs("#define MPTCPIZE_LEN 12 /* bytes */\nstruct x { u16 a; char n[MPTCPIZE_LEN]; };")
    assert ctypes.sizeof(s["x"]) == 14 and s["x"].n.offset == 2
