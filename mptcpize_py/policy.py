"""Allowlist policy files -> a validated, immutable Policy.

Pure: the only system calls are the ones that open, stat and read the policy directory and its files.
Turning selectors into kernel keys (exe -> dev/ino, unit -> cgroup id, netns name -> inum) is resolve.py's
job; here we only check that each selector is well formed.

Rules of the format (docs/policy reference follows this module):

- Policy = every `*.toml` file of the directory, read in sorted name order. Hidden files (".name.toml",
  e.g. editor lock files) are ignored.
- `[[allow]]` / `[[deny]]` tables with exactly one selector (`exe`, `cgroup` or `unit`) and an optional
  `name`. Unknown keys are errors. `deny` beats `allow` (the kernel side applies it).
- At most one `[netns]` table across all files: the choice is global, and "which file wins" rules would
  be surprising. Without it: the host's namespace only. `names = [...]` adds /run/netns/NAME namespaces
  to the host's; `all = true` selects every namespace. Both at once is an error.
- Template units (`foo@.service`) are refused: a template runs no processes. Instances (`foo@bar.service`)
  are fine; to cover every instance, select their slice with `cgroup = "/system.slice/system-foo.slice"`.
- Unit types that never own processes (target, timer, path, device, automount) are refused: the rule
  could never match, which is always a mistake.
- Files are treated as hostile input (the daemon runs as root): the directory and each file must be owned
  by `owner_uid` (root) and not group- or world-writable; a symlinked policy file is refused outright (we
  open with O_NOFOLLOW, so neither a link into /etc/shadow nor a swapped link can be read); files are
  bounded to 1 MiB. The directory itself may be a symlink: the admin chose that path, and the checks
  apply to the directory it leads to.
- Problems are reported as `file:line: reason` (or `file: reason` for a problem with the file as a whole:
  permissions, size, symlink). All problems of all files are collected into one PolicyError; a policy is
  returned complete or not at all.
"""

import bisect
import errno
import os
import posixpath
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mptcpize_py.errors import EXIT_BAD_POLICY, MptcpizeError

DEFAULT_POLICY_DIR = Path("/etc/mptcpize-py/policy.d")

# bpf/mptcpize.h does not reserve rule ids; we keep 0..15 free for non-policy selections (0 = none, run
# trees) so a rule_id in an event or in proc_stats tells at a glance whether the policy chose it.
FIRST_RULE_ID = 16

MAX_FILE_BYTES = 1 << 20
MAX_FILES = 1000
# The kernel maps' sizes (bpf/mptcpize.h MPTCPIZE_MAX_EXE_RULES / _CGROUP_RULES / _CGROUP_MAX_DEPTH;
# a unit rule becomes a cgroup entry). Checked here so an oversized policy fails with file:line instead
# of half-filling a map. tests/unit/test_policy.py checks these against the header.
MAX_EXE_RULES = 4096
MAX_CGROUP_RULES = 4096
CGROUP_MAX_DEPTH = 16
MAX_NAME_LEN = 80
PATH_MAX = 4096
NAME_MAX = 255

ACTIONS = ("allow", "deny")
SELECTORS = ("exe", "cgroup", "unit")
RULE_KEYS = SELECTORS + ("name",)
NETNS_KEYS = ("names", "all")

# systemd src/basic/unit-name.c: VALID_CHARS ("@" only in the prefix/instance part), UNIT_NAME_MAX 256
# including the NUL, and the unit types of src/basic/unit-def.c.
UNIT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_.\\@")
UNIT_NAME_MAX = 255
UNIT_TYPES_WITH_PROCESSES = ("service", "socket", "mount", "swap", "scope", "slice")
UNIT_TYPES_WITHOUT_PROCESSES = ("target", "timer", "path", "device", "automount")


class PolicyError(MptcpizeError):
    """Every problem found in the policy; `message` is the first, `errors` all of them (one line each)."""

    exit_code = EXIT_BAD_POLICY

    def __init__(self, errors: list[str], hint: str | None = None):
        super().__init__(errors[0], hint=hint)
        self.errors = list(errors)


@dataclass(frozen=True)
class Rule:
    id: int
    action: str        # "allow" | "deny"
    kind: str          # "exe" | "cgroup" | "unit"
    value: str
    name: str | None
    source_file: str
    line: int

    @property
    def description(self) -> str:
        """`allow exe=/usr/bin/iperf3 "iperf" (10-web.toml:3)`"""
        label = f' "{self.name}"' if self.name else ""
        return f"{self.action} {self.kind}={self.value}{label} ({Path(self.source_file).name}:{self.line})"


@dataclass(frozen=True)
class NetnsSelection:
    mode: str = "host"            # "host" | "names" (the host's plus these) | "all"
    names: tuple[str, ...] = ()   # /run/netns/NAME, in mode "names" only

    def describe(self) -> str:
        if self.mode == "names":
            return "host + " + ", ".join(self.names)
        return self.mode


@dataclass(frozen=True)
class Policy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    netns: NetnsSelection = NetnsSelection()
    files: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(sorted(self.allow + self.deny, key=lambda r: r.id))

    def summary(self) -> str:
        files = "file" if len(self.files) == 1 else "files"
        return (f"{len(self.allow)} allow, {len(self.deny)} deny rules from {len(self.files)} {files}; "
                f"netns: {self.netns.describe()}")


# ---------------------------------------------------------------------------------------------------
# Reading the directory


def load_policy(directory: Path = DEFAULT_POLICY_DIR, owner_uid: int = 0) -> Policy:
    """Reads and validates every policy file of `directory`; returns the Policy or raises PolicyError."""
    directory = Path(directory)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PolicyError([f"{directory}: policy directory does not exist"],
                          hint=f"create it (mkdir -p {directory}), or pass --policy-dir") from None
    except OSError as e:
        raise PolicyError([f"{directory}: cannot open policy directory: {e.strerror}"]) from None
    try:
        # Checked on the open descriptor, so the directory we list is the one we checked.
        problem = _unsafe(os.fstat(dfd), owner_uid)
        if problem:
            raise PolicyError([f"{directory}: refused: {problem}"], hint=_OWNERSHIP_HINT)
        names = sorted(n for n in os.listdir(dfd) if n.endswith(".toml") and not n.startswith("."))
        if len(names) > MAX_FILES:
            raise PolicyError([f"{directory}: {len(names)} policy files; at most {MAX_FILES} are read"])
        parsed = []
        for name in names:
            label = str(directory / name)
            try:
                text = _read_policy_file(dfd, name, label, owner_uid)
            except _FileRefused as e:
                parsed.append(_FileResult(label, [], None, 0, [(0, str(e))]))
                continue
            parsed.append(_parse_file(text, label))
    finally:
        os.close(dfd)
    return _build(parsed)


_OWNERSHIP_HINT = "policy files and their directory must be owned by root and writable only by root"


class _FileRefused(Exception):
    pass


def _unsafe(st: os.stat_result, owner_uid: int) -> str | None:
    """Why a file or directory with this stat may not hold policy, or None."""
    if st.st_uid != owner_uid:
        return f"owned by uid {st.st_uid}, not uid {owner_uid}"
    if st.st_mode & stat.S_IWOTH:
        return "world-writable (chmod o-w)"
    if st.st_mode & stat.S_IWGRP:
        return "group-writable (chmod g-w)"
    return None


def _read_policy_file(dfd: int, name: str, label: str, owner_uid: int) -> str:
    # lstat first so that we never open a device or FIFO; then open without following links and check
    # the descriptor again, which is what counts (the entry may have been swapped in between).
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError as e:
        raise _FileRefused(f"{label}: cannot stat: {e.strerror}") from None
    symlink = _FileRefused(f"{label}: refused: a symbolic link (copy the file into the directory instead)")
    if stat.S_ISLNK(st.st_mode):
        raise symlink
    if not stat.S_ISREG(st.st_mode):
        raise _FileRefused(f"{label}: refused: not a regular file")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise symlink from None
        raise _FileRefused(f"{label}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _FileRefused(f"{label}: refused: not a regular file")
        problem = _unsafe(st, owner_uid)
        if problem:
            raise _FileRefused(f"{label}: refused: {problem}")
        too_big = _FileRefused(f"{label}: refused: larger than {MAX_FILE_BYTES} bytes")
        if st.st_size > MAX_FILE_BYTES:
            raise too_big
        chunks, total = [], 0
        while total <= MAX_FILE_BYTES:  # the size may change under us: bound what we read, not st_size
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise too_big
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _FileRefused(f"{label}:{line}: not valid UTF-8") from None


# ---------------------------------------------------------------------------------------------------
# Parsing and validating text (pure)


def parse_policy_text(text: str, filename: str) -> Policy:
    """Validates one file's text as a whole policy; `filename` labels errors and rules."""
    return _build([_parse_file(text, filename)])


@dataclass
class _FileResult:
    filename: str
    rules: list[tuple[int, str, str, str, str | None]]  # (line, action, kind, value, name)
    netns: NetnsSelection | None
    netns_line: int
    errors: list[tuple[int, str]]                        # (line, "file:line: reason"); line 0: whole file


def _build(parsed: list[_FileResult]) -> Policy:
    """Combines per-file results: ids in file then line order, one [netns], map limits, all errors."""
    allow, deny, errors, netns_at = [], [], [], None
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
        for line, action, kind, value, name in res.rules:
            slot = "exe" if kind == "exe" else "cgroup"  # a unit rule becomes a cgroup map entry
            counts[slot] += 1
            limit = MAX_EXE_RULES if slot == "exe" else MAX_CGROUP_RULES
            if counts[slot] == limit + 1:
                what = "exe rules" if slot == "exe" else "cgroup and unit rules"
                errors.append(f"{res.filename}:{line}: more than {limit} {what}: the kernel map holds {limit}")
            rule = Rule(next_id, action, kind, value, name, res.filename, line)
            next_id += 1
            (allow if action == "allow" else deny).append(rule)
    if errors:
        raise PolicyError(errors)
    return Policy(tuple(allow), tuple(deny), netns, tuple(r.filename for r in parsed))


def _parse_file(text: str, filename: str) -> _FileResult:
    res = _FileResult(filename, [], None, 0, [])

    def error(line: int, reason: str):
        res.errors.append((line, f"{filename}:{line}: {reason}"))

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, reason = _toml_error_line(str(e), text)
        error(line, f"invalid TOML: {reason}")
        return res
    except RecursionError:  # tomllib recurses once per nested array / inline table
        error(1, "invalid TOML: nested too deeply")
        return res

    lines = _toml_lines(text)

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
        else:
            error(at(key), f"unknown key {_show(key)}: a policy file holds [[allow]], [[deny]] and [netns]"
                  " tables")
    res.rules.sort(key=lambda r: r[0])
    return res


def _parse_rule(res: _FileResult, action: str, table: dict, at, error) -> None:
    header = f"[[{action}]]"
    unknown = [k for k in table if k not in RULE_KEYS]
    for k in unknown:
        error(at(k), f"unknown key {_show(k)} in {header} (expected one of {', '.join(RULE_KEYS)})")
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
            error(at(k), f"unknown key {_show(k)} in [netns] (expected names or all)")
            ok = False
    all_ = table.get("all", False)
    if not isinstance(all_, bool):
        error(at("all"), f"all must be true or false, not {_toml_type(all_)}")
        return None
    names = table.get("names", [])
    if not isinstance(names, list):
        error(at("names"), f"names must be an array of strings, not {_toml_type(names)}")
        return None
    if all_ and "names" in table:
        error(at(), "[netns] sets both all = true and names: choose one")
        return None
    for i, n in enumerate(names):
        reason = _check_netns_name(n)
        if reason:
            error(at("names", i), f"names: {reason}")
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
        return f"{_show(v)} is not a normalised path (no '.', '..', '//' or trailing '/')"
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
            return f"{_show(v)} has an empty component ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"{_show(v)} contains {_show(part)}: write the cgroup's own path"
        if part != part.strip():
            return f"{_show(v)} has a component starting or ending with whitespace"
        if len(part.encode()) > NAME_MAX:
            return f"a component of {_show(v)} is longer than {NAME_MAX} bytes"
    if len(parts) > CGROUP_MAX_DEPTH:
        return f"{_show(v)} is {len(parts)} levels deep; the kernel side looks at most {CGROUP_MAX_DEPTH}"
    return None


def _check_abs_path(v, what: str) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {_toml_type(v)}"
    if "\0" in v:
        return "contains a NUL character"
    if not v.isprintable():
        return f"{_show(v)} contains a control character"
    if not v.startswith("/"):
        example = "/usr/bin/iperf3" if what == "exe" else "/system.slice/batch.slice"
        return f"{_show(v)} is not an absolute path (e.g. {example})"
    return None


def check_unit_name(v) -> str | None:
    """systemd's unit_name_is_valid(), minus templates and unit types that run no processes."""
    if not isinstance(v, str):
        return f"must be a string, not {_toml_type(v)}"
    if not v:
        return "empty unit name"
    bad = next((c for c in v if c not in UNIT_NAME_CHARS), None)
    if bad is not None:
        return (f"{_show(v)} is not a valid unit name: {_show(bad)} is not allowed (letters, digits and "
                r"':-_.\@' only)")
    if len(v) > UNIT_NAME_MAX:
        return f"unit names are at most {UNIT_NAME_MAX} characters"
    dot = v.rfind(".")
    suffix = v[dot + 1:] if dot > 0 else ""
    if suffix in UNIT_TYPES_WITHOUT_PROCESSES:
        return f"{_show(v)} is a .{suffix} unit, which runs no processes: name the unit it starts"
    if suffix not in UNIT_TYPES_WITH_PROCESSES:
        return (f"{_show(v)} has no valid unit type suffix (e.g. nginx.service; one of "
                f"{', '.join('.' + t for t in UNIT_TYPES_WITH_PROCESSES)})")
    at = v.find("@")
    if at == 0:
        return f"{_show(v)} is not a valid unit name: it starts with '@'"
    if at != -1 and at == dot - 1:
        prefix = v[:at]
        return (f"{_show(v)} is a template, which runs no processes: name an instance "
                f"({prefix}@NAME.{suffix}) or select all of them with "
                f'cgroup = "/system.slice/system-{prefix}.slice"')
    return None


def _check_name(v) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, not {_toml_type(v)}"
    if not v or len(v) > MAX_NAME_LEN:
        return f"must be 1 to {MAX_NAME_LEN} characters"
    if not v.isprintable():
        return f"{_show(v)} contains a control character"
    return None


def _check_netns_name(v) -> str | None:
    if not isinstance(v, str):
        return f"must be strings, not {_toml_type(v)}"
    if v in ("", ".", ".."):
        return f"{_show(v)} is not a namespace name"
    if "/" in v:
        return f"{_show(v)} contains '/': give the name of /run/netns/NAME, not a path"
    if "\0" in v or not v.isprintable():
        return f"{_show(v)} contains a control character"
    if len(v.encode()) > NAME_MAX:
        return f"longer than {NAME_MAX} bytes"
    return None


_CHECKS = {"exe": _check_exe, "cgroup": _check_cgroup, "unit": check_unit_name}


def _show(v: str) -> str:
    """A value quoted for a one-line message: escapes newlines and other control characters, bounded."""
    return repr(v) if len(v) <= 100 else repr(v[:100]) + "..."


def _toml_type(v) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(v), "a date/time")


# ---------------------------------------------------------------------------------------------------
# Where things are in a TOML text. tomllib returns values without positions, so we scan the (already
# valid) text once more, just enough to know where each table, key and array element starts. Scanning
# token by token (strings, arrays, inline tables) keeps a "[[allow]]" inside a multi-line string from
# being taken for a header.


def _toml_error_line(message: str, text: str) -> tuple[int, str]:
    """(line, reason) from tomllib's "Reason (at line 3, column 5)" / "Reason (at end of document)"."""
    if message.endswith(")") and " (at line " in message:
        reason, _, where = message.rpartition(" (at line ")
        line, _, column = where[:-1].partition(", column ")
        if line.isdigit():
            return int(line), f"{reason} (column {column})" if column else reason
    if message.endswith(" (at end of document)"):
        return max(1, len(text.splitlines())), message[: -len(" (at end of document)")] + " at end of file"
    return 1, message


def _toml_lines(text: str) -> dict[tuple, int]:
    """{path: line} for a valid TOML text. A path is the key path with array indexes: ("allow", 0) is
    the first [[allow]] table, ("allow", 0, "exe") its exe key, ("netns", "names", 1) an array element."""
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    lines: dict[tuple, int] = {}
    n = len(text)

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    def skip_blank(i: int, newline_ok: bool = True) -> int:
        while i < n:
            c = text[i]
            if c in " \t\r" or (c == "\n" and newline_ok):
                i += 1
            elif c == "#":
                j = text.find("\n", i)
                i = n if j == -1 else j
            else:
                break
        return i

    def read_string(i: int) -> tuple[str, int]:
        """A one-line basic or literal string starting at i: (its value, position after it)."""
        if text[i] == "'":
            j = text.index("'", i + 1)
            return text[i + 1:j], j + 1
        j = i + 1
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        return tomllib.loads("k = " + text[i:j + 1])["k"], j + 1  # let tomllib decode the escapes

    def read_key(i: int) -> tuple[tuple[str, ...], int]:
        parts = []
        while True:
            i = skip_blank(i, newline_ok=False)
            if text[i] in "\"'":
                part, i = read_string(i)
            else:
                j = i
                while j < n and (text[j].isalnum() or text[j] in "-_"):
                    j += 1
                part, i = text[i:j], j
            parts.append(part)
            i = skip_blank(i, newline_ok=False)
            if i < n and text[i] == ".":
                i += 1
                continue
            return tuple(parts), i

    def skip_value(i: int, path: tuple) -> int:
        for quote in ('"""', "'''"):
            if text.startswith(quote, i):
                j = i + 3
                while not text.startswith(quote, j):
                    j += 2 if quote == '"""' and text[j] == "\\" else 1
                # Up to two more quote characters still belong to the content: `"""a""""` is 'a"'.
                extra = 0
                while extra < 2 and j + 3 + extra < n and text[j + 3 + extra] == quote[0]:
                    extra += 1
                return j + 3 + extra
        c = text[i]
        if c in "\"'":
            return read_string(i)[1]
        if c == "[":
            i, idx = i + 1, 0
            while True:
                i = skip_blank(i)
                if text[i] == "]":
                    return i + 1
                lines.setdefault(path + (idx,), line_of(i))
                i = skip_blank(skip_value(i, path + (idx,)))
                idx += 1
                if text[i] == ",":
                    i += 1
        if c == "{":
            i += 1
            while True:
                i = skip_blank(i)
                if text[i] == "}":
                    return i + 1
                if text[i] == ",":
                    i += 1
                    continue
                key_start = i
                key, i = read_key(i)
                lines.setdefault(path + key, line_of(key_start))
                i = skip_blank(i, newline_ok=False) + 1  # past "="
                i = skip_value(skip_blank(i, newline_ok=False), path + key)
        while i < n and text[i] not in ",]}\n#":  # numbers, booleans, dates
            i += 1
        return i

    table: tuple = ()
    aot_count: dict[tuple, int] = {}  # array-of-tables path -> tables seen so far

    def resolve(keys: tuple) -> tuple:
        """A header's key path with the current index after each array of tables it passes through."""
        path: tuple = ()
        for k in keys:
            path += (k,)
            if path in aot_count:
                path += (aot_count[path] - 1,)
        return path

    try:
        i = skip_blank(0)
        while i < n:
            start = i
            if text[i] == "[":
                double = text.startswith("[[", i)
                keys, i = read_key(i + (2 if double else 1))
                i = skip_blank(i, newline_ok=False) + (2 if double else 1)
                if double:
                    path = resolve(keys[:-1]) + keys[-1:]
                    aot_count[path] = aot_count.get(path, 0) + 1
                    path += (aot_count[path] - 1,)
                else:
                    path = resolve(keys)
                lines.setdefault(path, line_of(start))
                table = path
            else:
                keys, i = read_key(i)
                lines.setdefault(table + keys, line_of(start))
                i = skip_blank(i, newline_ok=False) + 1  # past "="
                i = skip_value(skip_blank(i, newline_ok=False), table + keys)
            i = skip_blank(i)
    except (IndexError, ValueError, RecursionError, tomllib.TOMLDecodeError):
        pass  # cannot happen on text tomllib accepted; keep what we found: lines fall back to prefixes
    return lines


# The commented example shipped as /etc/mptcpize-py/policy.d/example.toml.sample (not loaded: only
# *.toml files are); `mptcpize-py daemon --example-policy` prints it.
EXAMPLE_POLICY = (Path(__file__).resolve().parent / "data" / "example-policy.toml").read_text()
