"""The policy file-name grammar of `enable`'s records: unit-UNIT.toml for a service UNIT. Shared by
`enable` (which writes them) and `status` (which names the enabled units among the policy files)."""

import os

from mptcpize_py.policy.validate import check_unit_name
from mptcpize_py.policy.values import NAME_MAX

POLICY_PREFIX, POLICY_SUFFIX = "unit-", ".toml"


def check_service_name(unit) -> str | None:
    """Why `unit` cannot be enabled, or None: systemd's grammar (instances included), a .service."""
    problem = check_unit_name(unit)
    if problem:
        return problem
    if not unit.endswith(".service"):
        return (f"{unit!r} is not a service: enable works on .service units (the sockets of a .socket "
                f"unit are created by systemd itself; enable the service it activates)")
    if len(unit) + len(".d") > NAME_MAX or len(policy_file_name(unit)) > NAME_MAX:
        return f"{unit!r} is too long for a drop-in directory or policy file name ({NAME_MAX} bytes)"
    return None


def policy_file_name(unit: str) -> str:
    """unit-UNIT.toml. A valid unit name is a safe file name as it is (letters, digits, ':-_.\\@'; no
    '/', never '.' or '..'; the prefix keeps it from being hidden), so no escaping is needed and the
    name maps back to the unit (enabled_unit_of_file)."""
    return f"{POLICY_PREFIX}{unit}{POLICY_SUFFIX}"


def enabled_unit_of_file(path: str) -> str | None:
    """The unit whose policy record `path` is (unit-UNIT.toml), or None for any other file."""
    name = os.path.basename(path)
    if not (name.startswith(POLICY_PREFIX) and name.endswith(POLICY_SUFFIX)):
        return None
    unit = name[len(POLICY_PREFIX):-len(POLICY_SUFFIX)]
    return unit if check_service_name(unit) is None else None
