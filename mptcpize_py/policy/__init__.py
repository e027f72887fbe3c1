"""Allowlist policy files -> a validated, immutable Policy.

Turning selectors into kernel keys (exe -> dev/ino, unit -> cgroup id, netns name -> inum) is resolve.py's
job; here we only read the files safely and check that each selector is well formed.

- model.py: Rule, NetnsSelection, Policy, PolicyFile, PolicyError, the default directory, the example.
- load.py: the directory and its files as hostile input (owner, mode, no symlinks, size) -> load_policy().
- validate.py: text -> rules: the format, every value check, the kernel map limits (from abi.py).
- paths_table.py: the [paths] table's keys, values and conflicts, and MPTCP's limit (MPTCP_PM_ADDR_MAX).
- names.py: the file-name grammar of `enable`'s records (unit-UNIT.toml).
- positions.py: the one TOML tokeniser: the budget guard's counts before tomllib, and where each
  table, key and array element starts, for file:line errors.
"""

from mptcpize_py.abi import CGROUP_MAX_DEPTH, MAX_CGROUP_RULES, MAX_EXE_RULES
from mptcpize_py.policy.load import MAX_FILE_BYTES, load_policy
from mptcpize_py.policy.model import (
    DEFAULT_POLICY_DIR,
    EXAMPLE_POLICY,
    HOST_NETNS_NAME,
    NetnsSelection,
    PathsSettings,
    PathsTable,
    Policy,
    PolicyError,
    Rule,
)
from mptcpize_py.policy.paths_table import MPTCP_PM_ADDR_MAX, PATHS_KEYS, PATHS_ROLES, PATHS_SETTING_KEYS
from mptcpize_py.policy.validate import (
    ACTIONS,
    NETNS_KEYS,
    RULE_KEYS,
    UNIT_TYPES_WITH_PROCESSES,
    UNIT_TYPES_WITHOUT_PROCESSES,
    check_unit_name,
    parse_policy_text,
)
from mptcpize_py.policy.values import NAME_MAX

__all__ = [
    "ACTIONS", "CGROUP_MAX_DEPTH", "DEFAULT_POLICY_DIR", "EXAMPLE_POLICY", "HOST_NETNS_NAME",
    "MAX_CGROUP_RULES",
    "MAX_EXE_RULES", "MAX_FILE_BYTES", "MPTCP_PM_ADDR_MAX", "NAME_MAX", "NETNS_KEYS", "PATHS_KEYS",
    "PATHS_ROLES", "PATHS_SETTING_KEYS", "RULE_KEYS", "UNIT_TYPES_WITHOUT_PROCESSES",
    "UNIT_TYPES_WITH_PROCESSES", "NetnsSelection", "PathsSettings", "PathsTable", "Policy", "PolicyError",
    "Rule", "check_unit_name", "load_policy", "parse_policy_text",
]
