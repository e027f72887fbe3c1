"""Policy text -> rules: the format's grammar and every value check, all problems as `file:line:
reason` in one PolicyError. Pure. docs/mptcpize-py-policy.5 follows this module; design notes:
docs/ARCHITECTURE.md ("the policy format")."""

import dataclasses
import posixpath
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass

from mptcpize_py import abi
from mptcpize_py.host import systemd
from mptcpize_py.host.systemd import UNIT_NAME_CHARS, UNIT_TYPES_WITH_PROCESSES, UNIT_TYPES_WITHOUT_PROCESSES
from mptcpize_py.policy.model import (
    NetnsSelection,
    PathsTable,
    Policy,
    PolicyError,
    PolicyFile,
    Rule,
)
from mptcpize_py.policy.paths_table import parse_paths, paths_selection_errors
from mptcpize_py.policy.positions import (
    count_tokens,
    long_dotted_key,
    scan,
    toml_error_line,
    toml_lines,
)
from mptcpize_py.policy.values import NAME_MAX, check_netns_name, show, toml_type

# bpf/mptcpize.h does not reserve rule ids; we keep 0..15 free for non-policy selections (0 = none, run
# trees) so a rule_id in an event or in proc_stats tells at a glance whether the policy chose it.
FIRST_RULE_ID = 16

MAX_NAME_LEN = 80
PATH_MAX = 4096

# netns_allow holds the host's namespace and one entry per name (two names of one namespace share one:
# counting names is the bound that holds whatever they turn out to be).
MAX_NETNS_NAMES = abi.MAX_NETNS - 1

ACTIONS = ("allow", "deny")
SELECTORS = ("exe", "cgroup", "unit")
RULE_KEYS = SELECTORS + ("name",)
NETNS_KEYS = ("names", "all")


# The unit-name grammar is host/systemd.py's (systemd's own); the policy adds its messages and refuses
# templates and unit types that run no processes. systemd's UNIT_NAME_MAX counts the NUL.
UNIT_NAME_LEN_MAX = systemd.UNIT_NAME_MAX - 1

# Parsing is pure Python and the daemon does it in its main loop at every reload: its cost is bounded
# by a linear scan before tomllib sees a file (figures measured on the 2-core build machine):
# - tomllib (3.11) takes time quadratic in the parts of a dotted key or table header: a 120 KB
#   `a.a.a... = 1` took 97 s. A policy's keys have one part, two at most (`netns.names`).
# - every other cost grows with the size (load.py: 1 MiB in all) and with the number of tokens: 2-6 us
#   for each key, value, array, table or comment (tomllib, then positions.py), so 1 MiB of `"",` took
#   2 s. A policy that fills the kernel maps (8192 rules, each with a name and a comment) has 61,000.
MAX_KEY_PARTS = 8
MAX_TOKENS = 100_000   # in all files together

# Problems reported at most: each is a log line at every refused reload (a file of 100,000 unknown keys
# would otherwise log 100,000 lines each time).
MAX_PROBLEMS = 100

def parse_policy_text(text: str, filename: str) -> Policy:
    """Validates one file's text as a whole policy; `filename` labels errors and rules."""
    return policy_from_files([PolicyFile(filename, text)])


def policy_from_files(files: Iterable[PolicyFile]) -> Policy:
    """Validates the files of a policy directory (in name order) together; raises PolicyError."""
    tokens = _Tokens()
    return _build([_FileResult(f.path, [], None, 0, [(0, f.refused)]) if f.refused is not None
                   else _parse_file(f.text, f.path, tokens) for f in files])


@dataclass
class _Tokens:
    """Tokens seen so far in the files of one policy."""
    seen: int = 0


@dataclass
class _FileResult:
    filename: str
    rules: list[tuple[int, str, str, str, str | None]]  # (line, action, kind, value, name)
    netns: NetnsSelection | None
    netns_line: int
    errors: list[tuple[int, str]]                        # (line, "file:line: reason"); line 0: whole file
    paths: PathsTable | None = None
    paths_line: int = 0
    paths_netns_lines: dict[str, int] = dataclasses.field(default_factory=dict)


def _build(parsed: list[_FileResult]) -> Policy:
    """Combines per-file results: ids in file then line order, one [netns], map limits, all errors."""
    allow: list[Rule] = []
    deny: list[Rule] = []
    errors: list[str] = []
    netns_at: str | None = None
    paths_at: str | None = None
    paths_res: _FileResult | None = None
    netns = NetnsSelection()
    counts = {"exe": 0, "cgroup": 0}
    next_id = FIRST_RULE_ID
    for res in parsed:
        errors.extend(msg for _, msg in sorted(res.errors, key=lambda e: e[0]))
        if res.netns is not None:
            if netns_at is None:
                netns, netns_at = res.netns, f"{res.filename}:{res.netns_line}"
            else:
                errors.append(f"{res.filename}:{res.netns_line}: a second [netns] table (the first is at "
                              f"{netns_at}); the namespace choice is global, keep one")
        if res.paths is not None:
            if paths_at is None:
                paths_at, paths_res = f"{res.filename}:{res.paths_line}", res
            else:
                errors.append(f"{res.filename}:{res.paths_line}: a second [paths] table (the first is at "
                              f"{paths_at}); keep one ([paths.netns.NAME] tables set one namespace)")
        for line, action, kind, value, name in res.rules:
            slot = "exe" if kind == "exe" else "cgroup"  # a unit rule becomes a cgroup map entry
            counts[slot] += 1
            limit = abi.MAX_EXE_RULES if slot == "exe" else abi.MAX_CGROUP_RULES
            if counts[slot] == limit + 1:
                what = "exe rules" if slot == "exe" else "cgroup and unit rules"
                errors.append(f"{res.filename}:{line}: more than {limit} {what}: "
                              f"the kernel map holds {limit}")
            rule = Rule(next_id, action, kind, value, name, res.filename, line)
            next_id += 1
            (allow if action == "allow" else deny).append(rule)
    if paths_res is not None:
        errors.extend(paths_selection_errors(paths_res.filename, paths_res.paths_netns_lines, netns))
    if len(errors) > MAX_PROBLEMS:
        errors[MAX_PROBLEMS:] = [f"and {len(errors) - MAX_PROBLEMS} more problems"]
    if errors:
        raise PolicyError(errors)
    return Policy(tuple(allow), tuple(deny), netns, tuple(r.filename for r in parsed),
                  paths_res.paths if paths_res is not None else None)


def _parse_file(text: str, filename: str, tokens: _Tokens) -> _FileResult:
    res = _FileResult(filename, [], None, 0, [])

    def error(line: int, reason: str):
        res.errors.append((line, f"{filename}:{line}: {reason}"))

    scanned = scan(text)   # one linear pass; its tokens serve the guard here and the lines below
    before, tokens.seen = tokens.seen, tokens.seen + count_tokens(text, scanned)
    if tokens.seen > MAX_TOKENS:
        if before <= MAX_TOKENS:   # files after this one are not parsed either
            res.errors.append((0, f"{filename}: refused: the policy files together hold more than "
                                  f"{MAX_TOKENS} keys, values and comments (this file passes the limit)"))
        return res
    long_key = long_dotted_key(scanned, MAX_KEY_PARTS)
    if long_key is not None:
        line, chain = long_key
        error(line, f"a dotted key of more than {MAX_KEY_PARTS} parts ({show(chain)}); policy keys have "
              "one or two")
        return res
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, reason = toml_error_line(str(e), text)
        error(line, f"invalid TOML: {reason}")
        return res
    except RecursionError:  # tomllib recurses once per nested array / inline table
        error(1, "invalid TOML: nested too deeply")
        return res

    lines = toml_lines(scanned)

    def at(*path) -> int:
        """Line of the most specific known prefix of `path` (table, key or array element)."""
        while path:
            if path in lines:
                return lines[path]
            path = path[:-1]
        return 1

    for key, value in data.items():
        if key in ACTIONS:
            if not isinstance(value, list):
                error(at(key), f"write each rule as its own [[{key}]] table")
                continue
            for idx, table in enumerate(value):
                if not isinstance(table, dict):
                    error(at(key, idx), f"each {key} entry must be a table ([[{key}]])")
                    continue
                _parse_rule(res, key, table, lambda *p, k=key, i=idx: at(k, i, *p), error)
        elif key == "netns":
            if not isinstance(value, dict):
                error(at(key), "netns must be a table: [netns] with names = [...] or all = true")
                continue
            res.netns_line = at(key)
            res.netns = _parse_netns(value, lambda *p: at("netns", *p), error)
        elif key == "paths":
            if not isinstance(value, dict):
                error(at(key), "paths must be a table: [paths] with role = ...")
                continue
            res.paths_line = at(key)
            res.paths = parse_paths(res.filename, value, lambda *p: at("paths", *p), error,
                                    res.paths_netns_lines)
        else:
            error(at(key), f"unknown key {show(key)}: a policy file holds [[allow]], [[deny]], [netns] and"
                  " [paths] tables")
    res.rules.sort(key=lambda r: r[0])
    return res


def _parse_rule(res: _FileResult, action: str, table: dict, at, error) -> None:
    header = f"[[{action}]]"
    unknown = [k for k in table if k not in RULE_KEYS]
    for k in unknown:
        error(at(k), f"unknown key {show(k)} in {header} (expected one of {', '.join(RULE_KEYS)})")
    selectors = [k for k in table if k in SELECTORS]
    ok = not unknown
    if len(selectors) > 1:
        error(at(), f"{header} has {len(selectors)} selectors ({', '.join(selectors)}); a rule takes "
              f"exactly one: write one {header} per selector")
        ok = False
    elif not selectors:
        if not unknown:  # a misspelt selector is already reported as an unknown key
            error(at(), f"{header} has no selector: give exactly one of {', '.join(SELECTORS)}")
        ok = False
    else:
        kind = selectors[0]
        reason = _CHECKS[kind](table[kind])
        if reason:
            error(at(kind), f"{kind}: {reason}")
            ok = False
    name = table.get("name")
    if "name" in table:
        reason = _check_name(name)
        if reason:
            error(at("name"), f"name: {reason}")
            ok = False
    if ok:
        res.rules.append((at(), action, selectors[0], table[selectors[0]], name))


def _parse_netns(table: dict, at, error) -> NetnsSelection | None:
    ok = True
    for k in table:
        if k not in NETNS_KEYS:
            error(at(k), f"unknown key {show(k)} in [netns] (expected names or all)")
            ok = False
    all_ = table.get("all", False)
    if not isinstance(all_, bool):
        error(at("all"), f"all must be true or false, not {toml_type(all_)}")
        return None
    names = table.get("names", [])
    if not isinstance(names, list):
        error(at("names"), f"names must be an array of strings, not {toml_type(names)}")
        return None
    if all_ and "names" in table:
        error(at(), "[netns] sets both all = true and names: choose one")
        return None
    distinct: set = set()
    for i, n in enumerate(names):
        reason = check_netns_name(n)
        if reason:
            error(at("names", i), f"names: {reason}")
            ok = False
            continue
        distinct.add(n)
        if len(distinct) == MAX_NETNS_NAMES + 1:
            error(at("names", i), f"names: more than {MAX_NETNS_NAMES} namespaces: the kernel map holds "
                  f"{abi.MAX_NETNS}, the host's namespace included")
            ok = False
    if not ok:
        return None
    if all_:
        return NetnsSelection("all")
    if names:
        return NetnsSelection("names", tuple(dict.fromkeys(names)))  # de-duplicated, order kept
    return NetnsSelection()


# ---------------------------------------------------------------------------------------------------
# Value checks: each returns why the value is refused, or None.


def _check_exe(v) -> str | None:
    reason = _check_abs_path(v, "exe")
    if reason:
        return reason
    if v == "/":
        return "'/' is a directory, not an executable"
    # Matching is by identity, but the path is what users read in reports: keep it canonical.
    if "/" + posixpath.normpath(v).lstrip("/") != v:
        return f"{show(v)} is not a normalised path (no '.', '..', '//' or trailing '/')"
    if len(v.encode()) >= PATH_MAX:
        return f"longer than {PATH_MAX - 1} bytes"
    return None


def _check_cgroup(v) -> str | None:
    reason = _check_abs_path(v, "cgroup")
    if reason:
        return reason
    if v == "/":
        return None  # the root cgroup: every process
    parts = v[1:].split("/")
    for part in parts:
        if part == "":
            return f"{show(v)} has an empty component ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"{show(v)} contains {show(part)}: write the cgroup's own path"
        if part != part.strip():
            return f"{show(v)} has a component starting or ending with whitespace"
        if len(part.encode()) > NAME_MAX:
            return f"a component of {show(v)} is longer than {NAME_MAX} bytes"
    if len(parts) > abi.CGROUP_MAX_DEPTH:
        return f"{show(v)} is {len(parts)} levels deep; the kernel side looks at most {abi.CGROUP_MAX_DEPTH}"
    return None


def _check_abs_path(v, what: str) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {toml_type(v)}"
    if "\0" in v:
        return "contains a NUL character"
    if not v.isprintable():
        return f"{show(v)} contains a control character"
    if not v.startswith("/"):
        example = "/usr/bin/iperf3" if what == "exe" else "/system.slice/batch.slice"
        return f"{show(v)} is not an absolute path (e.g. {example})"
    return None


def check_unit_name(v) -> str | None:
    """systemd's unit_name_is_valid(), minus templates and unit types that run no processes."""
    if not isinstance(v, str):
        return f"must be a string, not {toml_type(v)}"
    if not v:
        return "empty unit name"
    bad = next((c for c in v if c not in UNIT_NAME_CHARS), None)
    if bad is not None:
        return (f"{show(v)} is not a valid unit name: {show(bad)} is not allowed (letters, digits and "
                r"':-_.\@' only)")
    if len(v) > UNIT_NAME_LEN_MAX:
        return f"unit names are at most {UNIT_NAME_LEN_MAX} characters"
    dot = v.rfind(".")
    suffix = v[dot + 1:] if dot > 0 else ""
    if suffix in UNIT_TYPES_WITHOUT_PROCESSES:
        return f"{show(v)} is a .{suffix} unit, which runs no processes: name the unit it starts"
    if dot < 0 and "@" not in v:
        # The command line reads "nginx" as nginx.service (as systemctl does); a policy file, like a
        # unit file's Wants=, names a unit in full, so what it selects never depends on a default.
        return (f"{show(v)} has no unit type suffix: write {show(v + '.service')} (a policy names "
                "units in full, as unit files do; only the command line reads a bare name as a service)")
    if suffix not in UNIT_TYPES_WITH_PROCESSES:
        return (f"{show(v)} has no valid unit type suffix (e.g. nginx.service; one of "
                f"{', '.join('.' + t for t in UNIT_TYPES_WITH_PROCESSES)})")
    at = v.find("@")
    if at == 0:
        return f"{show(v)} is not a valid unit name: it starts with '@'"
    if at != -1 and at == dot - 1:
        prefix = v[:at]
        return (f"{show(v)} is a template, which runs no processes: name an instance "
                f"({prefix}@NAME.{suffix}) or select all of them with "
                f'cgroup = "/system.slice/system-{prefix}.slice"')
    return None


def _check_name(v) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {toml_type(v)}"
    if not v or len(v) > MAX_NAME_LEN:
        return f"must be 1 to {MAX_NAME_LEN} characters"
    if not v.isprintable():
        return f"{show(v)} contains a control character"
    return None


_CHECKS = {"exe": _check_exe, "cgroup": _check_cgroup, "unit": check_unit_name}
