"""systemd: the one `systemctl` runner, unit-name grammar and slices, booted-or-not, and (the only
python3-systemd user) journald records and sd_notify.

Under systemd the daemon's stderr is a journal stream ($JOURNAL_STREAM names its device:inode); then
log records go to journald directly, so extra fields (MPTCPIZE_PID=, MPTCPIZE_RULE=, …) stay
searchable: `journalctl -u mptcpize-py MPTCPIZE_RULE=…`. Without python3-systemd, notify() is a no-op
unless systemd asked for notifications ($NOTIFY_SOCKET), which is then an error the caller reports.

Unit names reach systemctl only as argv elements after "--", with a fixed PATH and a timeout.
"""

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

from mptcpize_py.errors import MptcpizeError, Unavailable

SYSTEMD_RUNTIME = "/run/systemd/system"   # sd_booted(3): PID 1 is systemd when this directory exists
SYSTEMCTL_TIMEOUT = 30.0
_SYSTEMCTL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "", "LC_ALL": "C"}

# systemd unit -> cgroup path (pure). systemd v252 (Debian 12): src/basic/cgroup-util.c cg_escape(),
# cg_slice_to_path(); src/core/unit.c unit_set_default_slice(), unit_default_cgroup_path();
# src/basic/unit-name.c unit_name_escape().

# cgroup_controller_table of systemd v252. v256 dropped the cgroup v1 names cpuacct and blkio, so a unit
# named e.g. "blkio.service" is escaped by v252 and not by v256+: only `systemctl show` knows for sure.
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "io", "blkio", "memory", "devices", "pids",
                      "bpf-firewall", "bpf-devices", "bpf-foreign", "bpf-socket-bind",
                      "bpf-restrict-network-interfaces")
_UNIT_VALID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_.\\")
ROOT_SLICE = "-.slice"
SYSTEM_SLICE = "system.slice"
INIT_SCOPE = "init.scope"
# systemd src/basic/unit-name.c (v252 and today): unit_type_table and UNIT_NAME_MAX (a name is shorter).
UNIT_TYPES = ("service", "mount", "swap", "socket", "target", "device", "automount", "timer", "path",
              "slice", "scope")
UNIT_NAME_MAX = 256
UNIT_NAME_CHARS = _UNIT_VALID_CHARS | {"@"}   # "@" only between a template's prefix and its instance
# Which of UNIT_TYPES run processes (src/basic/unit-def.c): only those have a cgroup a rule can select.
UNIT_TYPES_WITH_PROCESSES = ("service", "socket", "mount", "swap", "scope", "slice")
UNIT_TYPES_WITHOUT_PROCESSES = ("target", "timer", "path", "device", "automount")

IDENTIFIER = "mptcpize-py"


class UnitNameError(ValueError):
    """Why systemd's naming rules (or systemd itself) give no cgroup for a unit."""


def cg_needs_escape(name: str) -> bool:
    """systemd's cg_needs_escape(): names that could clash with kernel files get a '_' prefix."""
    if name in ("", ".", "..") or "/" in name or len(name.encode()) > 255:
        return True
    if name[0] in "_.":
        return True
    if name in ("notify_on_release", "release_agent", "tasks") or name.startswith("cgroup."):
        return True
    return any(name.startswith(c + ".") for c in CGROUP_CONTROLLERS)


def cg_escape(name: str) -> str:
    return "_" + name if cg_needs_escape(name) else name


def unit_name_escape(s: str) -> str:
    """systemd's unit_name_escape(): '/' -> '-', a leading '.', '-', '\\' and anything outside the
    unit name characters -> \\xNN (lower-case hex)."""
    out = []
    for i, c in enumerate(s):
        if c == "/":
            out.append("-")
        elif (i == 0 and c == ".") or c in "-\\" or c not in _UNIT_VALID_CHARS:
            out.extend(f"\\x{b:02x}" for b in c.encode())
        else:
            out.append(c)
    return "".join(out)


def _split_unit(unit: str) -> tuple[str, str | None, str]:
    """'foo@bar.service' -> ('foo', 'bar', 'service'); 'foo.service' -> ('foo', None, 'service')."""
    dot = unit.rfind(".")
    if dot <= 0:
        raise UnitNameError(f"{unit!r} has no unit type suffix")
    name, suffix = unit[:dot], unit[dot + 1:]
    prefix, at, instance = name.partition("@")
    if not prefix:
        raise UnitNameError(f"{unit!r} is not a valid unit name")
    return prefix, (instance if at else None), suffix


def slice_path(slice_name: str) -> str:
    """systemd's slice nesting: 'a-b-c.slice' -> '/a.slice/a-b.slice/a-b-c.slice'; '-.slice' -> '/'.

    Every '-' of the name is a level ('\\x2d' is how a literal dash is written); leading, trailing
    and double dashes, and instance names (foo@bar.slice), are invalid, as in cg_slice_to_path().
    """
    if slice_name == ROOT_SLICE:
        return "/"
    prefix, instance, suffix = _split_unit(slice_name)
    if suffix != "slice":
        raise UnitNameError(f"{slice_name!r} is not a slice")
    if instance is not None or "@" in slice_name:
        raise UnitNameError(f"{slice_name!r} is not a valid slice name ('@' is not allowed)")
    if prefix.startswith("-") or prefix.endswith("-") or "--" in prefix:
        raise UnitNameError(f"{slice_name!r} is not a valid slice name (leading, trailing or double '-')")
    parts = prefix.split("-")
    levels = ["-".join(parts[:i + 1]) + ".slice" for i in range(len(parts))]
    return "/" + "/".join(cg_escape(level) for level in levels)


def default_slice(unit: str) -> str:
    """The slice systemd (system manager) puts `unit` in when it has no Slice= setting."""
    prefix, instance, suffix = _split_unit(unit)
    if suffix == "slice":
        # A slice's parent follows from its name (slice_build_parent_slice()).
        dash = prefix.rfind("-")
        return ROOT_SLICE if dash < 0 else prefix[:dash] + ".slice"
    if unit == INIT_SCOPE:
        return ROOT_SLICE
    if instance is not None:
        # Instances go to a per-template slice; the prefix's own '-' would nest, so it is escaped.
        return f"system-{unit_name_escape(prefix)}.slice"
    return SYSTEM_SLICE


def unit_cgroup_path(unit: str, slice_name: str | None = None) -> str:
    """The cgroup path of `unit` in slice `slice_name` (default: default_slice(unit)), as systemd's
    unit_default_cgroup_path() builds it for a manager whose cgroup root is '/'."""
    prefix, _, suffix = _split_unit(unit)
    if suffix == "slice":
        return slice_path(unit)
    parent = slice_path(slice_name or default_slice(unit))
    return parent.rstrip("/") + "/" + cg_escape(unit)


def parse_show(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def unit_name_is_valid(name: str, *, instance: bool = True) -> bool:
    """systemd's unit_name_is_valid(name, UNIT_NAME_PLAIN[|UNIT_NAME_INSTANCE]): foo.service and, with
    `instance`, foo@bar.service; never a template (foo@.service)."""
    if not name or len(name) >= UNIT_NAME_MAX:
        return False
    dot = name.rfind(".")
    if dot <= 0 or name[dot + 1:] not in UNIT_TYPES:
        return False
    stem = name[:dot]
    if any(c not in _UNIT_VALID_CHARS and c != "@" for c in stem):
        return False
    at = stem.find("@")
    if at == -1:
        return True
    return instance and 0 < at < len(stem) - 1


def with_type_suffix(name: str, suffix: str = "service") -> str:
    """A unit named on the command line as systemctl reads it (unit_name_mangle_with_suffix() in
    src/basic/unit-name.c, v252 and today): a name whose last '.' is not followed by a unit type gets
    ".service" (nginx -> nginx.service, foo@ -> foo@.service, a.conf -> a.conf.service); any other
    name is left as it is. Unlike systemctl we never escape characters into a name: the caller
    validates the result and refuses what is not a unit name."""
    dot = name.rfind(".")
    return name if dot >= 0 and name[dot + 1:] in UNIT_TYPES else f"{name}.{suffix}"


def cg_unescape(name: str) -> str:
    """systemd's cg_unescape(): drops the '_' that cg_escape() put in front."""
    return name[1:] if name.startswith("_") else name


def _valid_slice_component(part: str) -> bool:
    """systemd's valid_slice_name() (src/basic/cgroup-util.c) for one cgroup path component."""
    return (len(part) >= len("x.slice") and part.endswith(".slice")
            and unit_name_is_valid(cg_unescape(part), instance=False))


def unit_of_cgroup(cgroup: str | None) -> str | None:
    """The system manager's unit that a process in cgroup v2 path `cgroup` belongs to, by systemd's own
    rule, cg_path_get_unit() in src/basic/cgroup-util.c (same in v252 and today): skip the leading
    *.slice components (skip_slices()); the next component is the unit, if cg_unescape() of it is a
    valid plain or instance name and not a slice (cg_path_decode_unit()); whatever lies below it is
    that unit's own subtree. So "/system.slice/nginx.service/worker" is nginx.service, and a cgroup
    named sshd.service that a delegated unit made inside its subtree
    (".../user@1000.service/app.slice/sshd.service") is still user@1000.service, never the system's
    sshd. None outside units ("/", "/system.slice", a cgroup of our own such as "/mzd-allow/x").

    The path is the one /proc/PID/cgroup shows in the caller's cgroup namespace; like `systemctl
    status PID` run there, it is taken as relative to systemd's root.
    """
    if not cgroup:
        return None
    parts = [p for p in cgroup.split("/") if p]   # skip_slices() skips runs of '/'
    i = 0
    while i < len(parts) and _valid_slice_component(parts[i]):
        i += 1
    if i == len(parts) or len(parts[i]) < 3:
        return None
    unit = cg_unescape(parts[i])
    if not unit_name_is_valid(unit) or unit.endswith(".slice"):
        return None
    return unit


def booted() -> bool:
    return os.path.isdir(SYSTEMD_RUNTIME)


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT,
              exe: str | None = None) -> subprocess.CompletedProcess:
    """Runs systemctl with an argv list (never a shell), a fixed PATH, no pager, C locale. `exe`: a
    stand-in for tests. Raises Unavailable without systemctl, MptcpizeError on timeout."""
    exe = exe or shutil.which("systemctl", path=_SYSTEMCTL_ENV["PATH"])
    if exe is None:
        raise Unavailable("systemctl not found", hint="this needs systemd")
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=_SYSTEMCTL_ENV)
    except subprocess.TimeoutExpired:
        raise MptcpizeError(f"systemctl {args[0]} did not finish within {timeout:g} s") from None
    except OSError as e:
        raise MptcpizeError(f"cannot run {exe}: {e.strerror}") from None


def first_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines()
            or [f"exit status {proc.returncode}"])[0]


def not_running() -> Unavailable:
    return Unavailable("systemd is not running (PID 1 is not systemd): enable and disable manage "
                       "systemd drop-ins",
                       hint="without systemd use `mptcpize-py run CMD`, or the daemon with an exe or "
                            "cgroup rule")


def unit_properties(unit: str, *props: str) -> dict[str, str]:
    proc = systemctl("show", *(f"--property={p}" for p in props), "--", unit)
    if proc.returncode != 0:
        if not booted():
            raise not_running()
        raise MptcpizeError(f"cannot ask systemd about {unit}: {first_line(proc)}")
    return parse_show(proc.stdout)


def known_unit(unit: str) -> str:
    """The name systemd knows `unit` by (an alias resolves to its unit); raises when systemd does not
    know it or cannot load it."""
    props = unit_properties(unit, "Id", "LoadState")
    state = props.get("LoadState", "")
    if state == "not-found":
        stem = unit.split("@")[0] if "@" in unit else unit.rsplit(".", 1)[0]
        hint = (f"check the name: systemctl list-units --all '{stem}*'"
                + (f"; an instance needs its template {stem}@.service" if "@" in unit else ""))
        raise MptcpizeError(f"systemd does not know {unit}", hint=hint)
    if state == "masked":
        raise MptcpizeError(f"{unit} is masked: it cannot start, so there is nothing to upgrade",
                            hint=f"systemctl unmask {unit}")
    if state != "loaded":
        raise MptcpizeError(f"systemd cannot load {unit} (LoadState={state or '?'})",
                            hint=f"systemctl status {unit}")
    return props.get("Id") or unit


# argv bytes per `systemctl show` (names + their pointers): far below ARG_MAX (2 MiB by default; at least
# 128 KiB on Linux), so one process asks about thousands of units (4,096 names of 30 bytes: 1 process).
SHOW_ARGV_BYTES = 96 * 1024
# `systemctl show` of N units: one D-Bus call each in one process (4,096 unknown units: 3.4 s here).
SHOW_UNITS_PER_TIMEOUT = 128


def parse_show_blocks(text: str) -> list[dict[str, str]]:
    """`systemctl show -- U1 U2 ...` output: one block of KEY=VALUE lines per unit, in argv order,
    separated by an empty line (systemctl's show_one() prints it before every block but the first).
    The properties we ask for hold no newline: unit names cannot, nor can cgroup paths (the kernel
    refuses '\n' in a cgroup name)."""
    return [parse_show(block) for block in text.strip("\n").split("\n\n")] if text.strip() else []


def _argv_chunks(units: list[str], budget: int) -> list[list[str]]:
    chunks: list[list[str]] = []
    size = budget
    for u in units:
        cost = len(u.encode()) + 1 + 8   # the string, its NUL, its argv pointer
        if size + cost > budget and (not chunks or chunks[-1]):
            chunks.append([])
            size = 0
        chunks[-1].append(u)
        size += cost
    return chunks


def show_units(units, props, *, timeout: float = 2.0, exe: str | None = None,
               argv_bytes: int = SHOW_ARGV_BYTES) -> dict[str, dict[str, str] | UnitNameError]:
    """{unit: its properties `props`} for many units at once: `systemctl show --property=... -- U1 U2
    ...`, one process per SHOW_ARGV_BYTES of names (not one per unit). A unit systemd does not know
    has a block too (LoadState=not-found). When a process fails (no bus, a timeout, output that does
    not have one block per unit), each of its units maps to a UnitNameError saying why."""
    names = list(dict.fromkeys(units))   # systemctl would print a duplicate's block twice
    out: dict[str, dict[str, str] | UnitNameError] = {}
    for chunk in _argv_chunks(names, argv_bytes):
        limit = timeout * max(1.0, len(chunk) / SHOW_UNITS_PER_TIMEOUT)
        what = chunk[0] if len(chunk) == 1 else f"{len(chunk)} units"
        try:
            proc = systemctl("show", "--property=" + ",".join(props), "--", *chunk, timeout=limit,
                             exe=exe)
        except MptcpizeError as e:
            out.update(dict.fromkeys(chunk, UnitNameError(e.message)))
            continue
        blocks = parse_show_blocks(proc.stdout) if proc.returncode == 0 else []
        if proc.returncode != 0:
            err = UnitNameError(f"systemctl show {what}: {first_line(proc)}")
        elif len(blocks) != len(chunk):
            err = UnitNameError(f"systemctl show {what}: {len(blocks)} answers for {len(chunk)} units")
        else:
            out.update(zip(chunk, blocks, strict=True))
            continue
        out.update(dict.fromkeys(chunk, err))
    return out


def _cgroup_of(unit: str, props: dict[str, str]) -> str:
    cg = props.get("ControlGroup", "")
    if cg.startswith("/"):
        return cg
    if props.get("LoadState") == "not-found":
        raise UnitNameError(f"systemd does not know {unit} (LoadState=not-found)")
    slice_name = props.get("Slice", "")
    if slice_name:
        return unit_cgroup_path(unit, slice_name)
    raise UnitNameError(f"systemd reports neither ControlGroup nor Slice for {unit}")


def unit_cgroups(units, timeout: float = 2.0, exe: str | None = None,
                 argv_bytes: int = SHOW_ARGV_BYTES) -> dict[str, str | UnitNameError]:
    """{unit: the cgroup path systemd gives it}: its ControlGroup= while it runs, else its Slice=
    (known from the unit file even while inactive) joined with the unit's escaped name; or the
    UnitNameError saying why systemd cannot tell (then the caller falls back to unit_cgroup_path()).
    All units in one `systemctl show` (see show_units())."""
    out: dict[str, str | UnitNameError] = {}
    for unit, props in show_units(units, ("Id", "LoadState", "ControlGroup", "Slice"), timeout=timeout,
                                  exe=exe, argv_bytes=argv_bytes).items():
        if isinstance(props, UnitNameError):
            out[unit] = props
            continue
        try:
            out[unit] = _cgroup_of(unit, props)
        except UnitNameError as e:
            out[unit] = e
    return out


def ordering_path(unit: str, targets, *, timeout: float = 2.0, exe: str | None = None) -> list[str] | None:
    """[unit, U1, ..., T]: a chain along systemd's Before= from `unit` to a unit of `targets` (each is
    ordered before the next), or None when `unit` is ordered before none of them. Before= as the
    running manager has it: a unit's own Before= and the inverse of other loaded units' After=.
    Breadth-first, one `systemctl show --property=Id,Before` per level (not per unit). Raises
    MptcpizeError when systemd cannot answer."""
    targets = set(targets)
    came_from: dict[str, str | None] = {unit: None}

    def chain(last: str) -> list[str]:
        out = [last]
        prev = came_from[last]
        while prev is not None:
            out.append(prev)
            prev = came_from[prev]
        return out[::-1]

    if unit in targets:
        return [unit]
    level = [unit]
    while level:
        answers = show_units(level, ("Id", "Before"), timeout=timeout, exe=exe)
        following = []
        for u in level:
            props = answers[u]
            if isinstance(props, UnitNameError):
                raise MptcpizeError(f"cannot ask systemd how {unit} is ordered: {props}")
            for b in props.get("Before", "").split():
                if b in came_from:
                    continue
                came_from[b] = u
                if b in targets:
                    return chain(b)
                following.append(b)
        level = following
    return None


# --- journald and sd_notify ------------------------------------------------------------------------


def _systemd():
    try:
        from systemd import daemon, journal  # distro package python3-systemd
        return daemon, journal
    except ImportError:
        return None, None


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd connected (its documented check)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def use_journal_if_under_systemd() -> bool:
    """Sends the root logger's records to journald when stderr is the journal stream."""
    if not stderr_is_journal():
        return False
    _, journal = _systemd()
    if journal is None:
        return False
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(journal_handler())
    return True


def journal_handler(sender: Callable[..., None] | None = None) -> logging.Handler:
    """python-systemd's handler: a record's upper-case `extra=` keys become journald fields.
    `sender` replaces journal.send (tests read what would be sent)."""
    _, journal = _systemd()
    if journal is None:
        raise RuntimeError("python3-systemd is not importable")
    kw = {"sender_function": sender} if sender is not None else {}
    handler = journal.JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER, **kw)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


# MESSAGE_ID= of the daemon's first-upgrade record of a process, and of its dry-run twin: generated
# once (uuid4), never to change, since `journalctl MESSAGE_ID=…` queries and alerts name them.
MESSAGE_ID_UPGRADED = "39e237fede894f41a4c1d1b9f9400edc"
MESSAGE_ID_WOULD_UPGRADE = "0cb857eea7b74d349683fc4de366db10"


def fields(*, about_pid: int | None = None, message_id: str | None = None, **values) -> dict:
    """`extra=` for a log call: journald fields MPTCPIZE_<NAME>=value (None values left out), exact:
    a name holding bytes that are not UTF-8 (os.readlink()'s lone surrogates) goes as its bytes, which
    journald keeps and python-systemd sends (a str with a surrogate, it refuses: the record is lost).
    about_pid: the record is about that process: OBJECT_PID=, from which journald (for a root sender)
    adds the process's OBJECT_SYSTEMD_UNIT=, OBJECT_EXE=, OBJECT_COMM=… (`journalctl
    OBJECT_SYSTEMD_UNIT=nginx.service`). The stderr formatter ignores them all."""
    out: dict = {f"MPTCPIZE_{k.upper()}": _field_value(v) for k, v in values.items() if v is not None}
    if about_pid is not None:
        out["OBJECT_PID"] = str(about_pid)
    if message_id is not None:
        out["MESSAGE_ID"] = message_id
    return out


def _field_value(v) -> str | bytes:
    text = str(v)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape")   # the bytes os.fsdecode() made it from
    except UnicodeEncodeError:   # a lone surrogate that stands for no byte: spelled \udXXX
        return text.encode("utf-8", "backslashreplace")


class Notifier:
    """sd_notify for a Type=notify service: READY/RELOADING/STATUS and watchdog pings."""

    def __init__(self):
        self.socket = os.environ.get("NOTIFY_SOCKET")
        self._daemon, _ = _systemd()
        usec = os.environ.get("WATCHDOG_USEC")
        wpid = os.environ.get("WATCHDOG_PID")
        try:
            interval = int(usec) / 1e6 if usec and (not wpid or int(wpid) == os.getpid()) else None
        except ValueError:
            interval = None
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = interval / 2 if interval else None

    @property
    def enabled(self) -> bool:
        return bool(self.socket)

    def notify(self, *lines: str) -> None:
        if not self.socket:
            return
        if self._daemon is None:
            raise RuntimeError("systemd asked for notifications ($NOTIFY_SOCKET) but python3-systemd "
                               "is not importable")
        self._daemon.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: detaching the program")


