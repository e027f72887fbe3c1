"""Constants shared with the kernel side, read from bpf/mptcpize.h so both sides cannot disagree."""

import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
HEADER = BPF_DIR / "mptcpize.h"
PROGRAM = BPF_DIR / "mptcpize.bpf.c"

_DEFINE = re.compile(r"^#define\s+(MPTCPIZE_[A-Z0-9_]+)\s+(0x[0-9a-fA-F]+|\d+)\s*$")


def parse_defines(text: str) -> dict[str, int]:
    """Every `#define MPTCPIZE_NAME <integer>` line, without the prefix: {"IPPROTO_MPTCP": 262, ...}."""
    out = {}
    for line in text.splitlines():
        m = _DEFINE.match(line.strip())
        if m:
            out[m.group(1)[len("MPTCPIZE_"):]] = int(m.group(2), 0)
    return out


_C = parse_defines(HEADER.read_text())

IPPROTO_MPTCP = _C["IPPROTO_MPTCP"]
# Map sizes the policy and the daemon must stay within.
MAX_EXE_RULES = _C["MAX_EXE_RULES"]
MAX_CGROUP_RULES = _C["MAX_CGROUP_RULES"]   # cgroup and unit rules: a unit rule becomes a cgroup entry
MAX_NETNS = _C["MAX_NETNS"]   # netns_allow (the host's + [netns] names) and the dry run's netns_mptcp
CGROUP_MAX_DEPTH = _C["CGROUP_MAX_DEPTH"]
MAX_PROCS = _C["MAX_PROCS"]
ACTION_ALLOW = _C["ACTION_ALLOW"]
ACTION_DENY = _C["ACTION_DENY"]
KIND_NAMES = {_C["KIND_NONE"]: "none", _C["KIND_RUN"]: "run", _C["KIND_EXE"]: "exe",
              _C["KIND_CGROUP"]: "cgroup"}
KIND_RUN = _C["KIND_RUN"]
CFG_ALL_NETNS = _C["CFG_ALL_NETNS"]
CFG_HAS_EXE_RULES = _C["CFG_HAS_EXE_RULES"]
CFG_HAS_CGROUP_RULES = _C["CFG_HAS_CGROUP_RULES"]
COUNTERS = {name[len("CNT_"):].lower(): value for name, value in _C.items()
            if name.startswith("CNT_") and name != "CNT_MAX"}
