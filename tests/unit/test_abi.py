from mptcpize_py import abi


def test_parse_defines_reads_only_integer_mptcpize_defines():
    text = "#define MPTCPIZE_A 1\n#define MPTCPIZE_B 0x10\n#define OTHER 3\n#define MPTCPIZE_C foo\n"
    assert abi.parse_defines(text) == {"A": 1, "B": 16}


def test_header_constants_match_the_kernel_uapi():
    assert abi.IPPROTO_MPTCP == 262
    assert abi.ACTION_ALLOW != abi.ACTION_DENY
    # Counter indexes are distinct and fit the per-CPU array.
    defines = abi.parse_defines(abi.HEADER.read_text())
    assert len(set(abi.COUNTERS.values())) == len(abi.COUNTERS)
    assert max(abi.COUNTERS.values()) < defines["CNT_MAX"]


def test_map_sizes_are_the_headers():
    defines = abi.parse_defines(abi.HEADER.read_text())
    for name in ("MAX_EXE_RULES", "MAX_CGROUP_RULES", "MAX_NETNS", "CGROUP_MAX_DEPTH", "MAX_PROCS"):
        assert getattr(abi, name) == defines[name], name


def test_program_includes_the_shared_header():
    assert '#include "mptcpize.h"' in abi.PROGRAM.read_text()
