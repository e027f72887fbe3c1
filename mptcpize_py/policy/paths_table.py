"""The [paths] table: its keys, each value checked, the conflicts of the merged settings of a namespace.
Called by validate.py with its line finder and error sink; the path manager (paths/) applies the result."""

import dataclasses
from collections.abc import Callable

from mptcpize_py.display import escaped
from mptcpize_py.policy.model import HOST_NETNS_NAME, NetnsSelection, PathsSettings, PathsTable
from mptcpize_py.policy.values import check_netns_name, show, toml_type

# [paths]: the keys of a namespace's settings, and the table's own.
PATHS_ROLES = ("client", "server", "both", "none")
PATHS_SETTING_KEYS = ("role", "interfaces", "exclude", "backup", "fullmesh", "subflows",
                      "add_addr_accepted")
PATHS_KEYS = PATHS_SETTING_KEYS + ("netns",)
# net/mptcp/pm_netlink.c (Linux 5.6 to 6.18): `#define MPTCP_PM_ADDR_MAX 8`, the largest value
# `ip mptcp limits set` accepts ("limit greater than maximum", EINVAL) and the most endpoints a
# namespace holds (ERANGE beyond it).
MPTCP_PM_ADDR_MAX = 8
IFNAMSIZ = 16   # include/uapi/linux/if.h: names are at most 15 bytes

At = Callable[..., int]              # the line of a key path (its most specific known prefix)
Error = Callable[[int, str], None]   # reports `reason` at a line


def paths_selection_errors(filename: str, netns_lines: dict[str, int], netns: NetnsSelection) -> list[str]:
    """[paths.netns.NAME] for a namespace the policy does not select: its settings would never apply."""
    out = []
    for name, line in netns_lines.items():
        if name == HOST_NETNS_NAME or netns.mode == "all" or name in netns.names:
            continue
        out.append(f"{filename}:{line}: [paths.netns.{escaped(name)}]: the policy does not select "
                   f"namespace {show(name)} (add it to [netns] names)")
    return out


def parse_paths(filename: str, table: dict, at: At, error: Error, netns_lines: dict[str, int],
                ) -> PathsTable | None:
    """[paths] and its [paths.netns.NAME] tables -> a PathsTable (None when anything is wrong); the line
    of each [paths.netns.NAME] goes to `netns_lines`."""
    where = f"{filename}:{at()}"
    ok = True
    for k in table:
        if k not in PATHS_KEYS:
            error(at(k), f"unknown key {show(k)} in [paths] (expected one of {', '.join(PATHS_KEYS)})")
            ok = False
    default = _paths_settings(table, PathsSettings(where=where), at, error, "[paths]")
    per_ns = table.get("netns", {})
    if not isinstance(per_ns, dict):
        error(at("netns"), "paths.netns must hold one table per namespace: [paths.netns.NAME]")
        return None
    overrides = []
    for name, sub in per_ns.items():
        line = at("netns", name)
        header = f"[paths.netns.{escaped(name)}]"   # a hostile name shown on one line, escaped
        reason = check_netns_name(name)
        if reason:
            error(line, f"{header}: {reason}")
            ok = False
            continue
        netns_lines[name] = line
        if not isinstance(sub, dict):
            error(line, f"paths.netns.{name} must be a table: {header} with role = ...")
            ok = False
            continue
        for k in sub:
            if k not in PATHS_SETTING_KEYS:
                error(at("netns", name, k), f"unknown key {show(k)} in {header} (expected one of "
                      f"{', '.join(PATHS_SETTING_KEYS)})")
                ok = False
        if default is None:
            continue
        settings = _paths_settings(sub, dataclasses.replace(default, where=f"{filename}:{line}"),
                                   lambda *p, n=name: at("netns", n, *p), error, header)
        if settings is None:
            ok = False
            continue
        overrides.append((name, settings))
    if not ok or default is None:
        return None
    if not default.manages and not any(s.manages for _, s in overrides):
        error(at(), "[paths] manages no namespace: give a role (client, server or both) in [paths] or in "
              "a [paths.netns.NAME] table")
        return None
    return PathsTable(default, tuple(overrides), where)


def _paths_settings(table: dict, base: PathsSettings, at: At, error: Error, header: str,
                    ) -> PathsSettings | None:
    """`base` with the keys `table` sets; the checks that need the merged result (conflicts) too.
    None when anything is wrong (each problem reported)."""
    ok = True
    changes: dict = {}
    if "role" in table:
        role = table["role"]
        if role not in PATHS_ROLES:
            error(at("role"), f"role: {show(role) if isinstance(role, str) else toml_type(role)} is not "
                  f"a role (client, server, both or none)")
            ok = False
        else:
            changes["role"] = role
    for key in ("interfaces", "exclude", "backup", "fullmesh"):
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, list):
            error(at(key), f"{key} must be an array of interface names or patterns, not "
                  f"{toml_type(value)}")
            ok = False
            continue
        if key == "interfaces" and not value:
            error(at(key), "interfaces: empty: no interface would be managed (leave it out for every "
                  "interface)")
            ok = False
            continue
        good = True
        for i, pattern in enumerate(value):
            reason = _check_ifname_pattern(pattern)
            if reason:
                error(at(key, i), f"{key}: {reason}")
                good = ok = False
        if good:
            changes[key] = tuple(dict.fromkeys(value))
    for key in ("subflows", "add_addr_accepted"):
        if key not in table:
            continue
        value = table[key]
        if type(value) is not int:
            error(at(key), f"{key} must be an integer from 0 to {MPTCP_PM_ADDR_MAX}, not {toml_type(value)}")
            ok = False
        elif value > MPTCP_PM_ADDR_MAX:
            error(at(key), f"{key}: {value} is above the kernel's maximum of {MPTCP_PM_ADDR_MAX} "
                  "(MPTCP_PM_ADDR_MAX; `ip mptcp limits set` refuses it)")
            ok = False
        elif value < 0:
            error(at(key), f"{key} must be an integer from 0 to {MPTCP_PM_ADDR_MAX}, not {value}")
            ok = False
        else:
            changes[key] = value
    if not ok:
        return None
    s = dataclasses.replace(base, **changes)

    def line_of(*keys: str) -> int:   # where the conflict shows: the first of `keys` this table sets
        return next((at(k) for k in keys if k in table), at())

    if s.fullmesh and s.role in ("server", "both"):
        error(line_of("fullmesh", "role"), f"{header}: fullmesh conflicts with role {show(s.role)}: the "
              "kernel refuses an endpoint with both the 'signal' flag (roles server and both) and "
              "'fullmesh'")
        ok = False
    for pattern in s.exclude:
        if pattern in s.interfaces and s.interfaces != ("*",):
            error(line_of("exclude", "interfaces"), f"{header}: {show(pattern)} is both in interfaces "
                  "and in exclude")
            ok = False
        for key in ("backup", "fullmesh"):
            if pattern in getattr(s, key):
                error(line_of(key, "exclude"), f"{header}: {show(pattern)} is in {key} but also in "
                      "exclude: its interfaces get no endpoint at all")
                ok = False
    return s if ok else None


_GLOB = frozenset("*?[")


def _check_ifname_pattern(v) -> str | None:
    """An interface name (what the kernel's dev_valid_name() accepts) or a shell-style pattern of one."""
    if not isinstance(v, str):
        return f"must be strings, not {toml_type(v)}"
    if not v:
        return "an empty pattern matches no interface"
    if v in (".", ".."):
        return f"{show(v)} is not an interface name"
    if not v.isprintable() or any(c.isspace() for c in v):
        return f"{show(v)} contains whitespace or a control character: no interface name does"
    bad = next((c for c in v if c in "/:"), None)
    if bad:
        return f"{show(v)} contains {show(bad)}: no interface name does"
    glob = any(c in _GLOB for c in v)
    if not glob and len(v.encode()) >= IFNAMSIZ:
        return f"{show(v)} is longer than {IFNAMSIZ - 1} bytes: no interface name is"
    if len(v.encode()) > 64:
        return "longer than 64 bytes"
    i = v.find("[")
    while i != -1:
        j = v.find("]", i + 2 if v[i + 1:i + 2] in ("!", "]") else i + 1)
        if j == -1:
            return f"{show(v)} has a '[' without its ']'"
        i = v.find("[", j + 1)
    return None
