"""`mptcpize-py enable UNIT` / `disable UNIT`: per-service MPTCP through a drop-in and a policy record.

mptcpd's `mptcpize enable` rewrites the vendor unit file in place (and loses its Environment= lines,
mptcpd issue #209). We never touch a unit file: `enable` writes two files that are ours alone,

- /etc/systemd/system/UNIT.d/mptcpize-py.conf, the drop-in: `Wants=`/`After=mptcpize-py.service`
  and `ExecStartPre=-+…/mptcpize-py resync --unit %n`. ExecStartPre runs in the unit's fresh cgroup
  before ExecStart; `resync --unit` answers once the daemon's maps hold that cgroup, so the main
  process's first socket() is already covered (no race with the daemon's 2 s poll). "+" runs it as
  root outside the unit's sandbox (the control socket is root-only); "-" keeps the unit starting, with
  plain TCP, when the daemon is down: MPTCP is an optimisation, it must not cost availability.
- /etc/mptcpize-py/policy.d/unit-UNIT.toml, the policy record: one `[[allow]] unit = 'UNIT'`.

and `disable` removes exactly these, plus the directories `enable` created, once empty: after
enable + disable, /etc is byte for byte what it was. A directory `enable` creates gets a hidden marker
file (CREATED_MARKER: systemd reads only *.conf in a drop-in directory, the policy loader only
non-hidden *.toml), which is how `disable` knows, even after other units were enabled and disabled in
between, that the directory is ours to remove.

Each file starts with MARKER. A file at our path without it is someone else's: we refuse to overwrite
or remove it. Writes are atomic (temporary file in the same directory, fsync, rename) and skipped when
the content is already right, so a second `enable` changes nothing, not even an mtime.

Unit names are hostile input: they are checked against systemd's grammar (policy.check_unit_name, the
one copy of it) before they reach a path or an argv; systemctl is run with argv lists, "--" before
the name, a fixed PATH and a timeout.

Only services: a drop-in with ExecStartPre only means something for a .service, and the listening
sockets of a .socket unit are created by PID 1 itself, outside the unit's cgroup.
"""

import errno
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MptcpizeError, PermissionDenied, Unavailable, UsageError
from .policy import NAME_MAX, check_unit_name

SERVICE = "mptcpize-py.service"
DROPIN_NAME = "mptcpize-py.conf"
POLICY_PREFIX, POLICY_SUFFIX = "unit-", ".toml"
MARKER = "# Managed by mptcpize-py enable/disable"
CREATED_MARKER = ".created-by-mptcpize-py-enable"
SYSTEMD_RUNTIME = "/run/systemd/system"   # sd_booted(3): PID 1 is systemd when this directory exists
SYSTEMCTL_TIMEOUT = 30.0
RESTART_TIMEOUT = 300.0
FILE_MODE = 0o644                          # policy.py refuses group/world-writable files
DIR_MODE = 0o755
# Characters we write into ExecStartPre= unquoted: no whitespace, quotes, '\\' or '%' (a specifier).
_EXEC_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+-@")


# ---------------------------------------------------------------------------------------------------
# Names and paths (pure)


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


def validate_service_name(unit) -> str:
    problem = check_service_name(unit)
    if problem:
        raise UsageError(problem, hint="give a service such as nginx.service or getty@tty1.service")
    return unit


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


@dataclass(frozen=True)
class Tree:
    """Where enable writes: `root` is "/" for real, a temporary directory in tests."""
    root: Path = Path("/")

    def etc(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    @property
    def systemd_dir(self) -> Path:
        return self.etc("/etc/systemd/system")

    @property
    def policy_dir(self) -> Path:
        return self.etc("/etc/mptcpize-py/policy.d")

    def dropin(self, unit: str) -> Path:
        return self.systemd_dir / f"{unit}.d" / DROPIN_NAME

    def policy(self, unit: str) -> Path:
        return self.policy_dir / policy_file_name(unit)

    def shown(self, path: Path) -> str:
        """The path as the system sees it (without a test root)."""
        return "/" + str(path.relative_to(self.root)).lstrip("/")


REAL = Tree()


def dropin_text(unit: str, exe: str) -> str:
    return f"""\
{MARKER} for {unit}: `mptcpize-py disable {unit}` removes it.
# {unit}'s TCP sockets become MPTCP through the mptcpize-py daemon (policy record
# {REAL.shown(REAL.policy(unit))}). Before the main process starts, ExecStartPre asks the daemon to
# select the unit's new cgroup and waits until it has; "+": as root, outside the unit's sandbox;
# "-": if the daemon is not running the unit still starts, with plain TCP.
[Unit]
Wants={SERVICE}
After={SERVICE}

[Service]
ExecStartPre=-+{exe} resync --unit %n
"""


def policy_text(unit: str) -> str:
    # A TOML literal string: no escapes inside, and a unit name has no "'" (nor newline).
    return f"""\
{MARKER} for {unit}: `mptcpize-py disable {unit}` removes it.
# Selects {unit} for the mptcpize-py daemon; {REAL.shown(REAL.dropin(unit))}
# makes the unit wait for that selection at each start.
[[allow]]
unit = '{unit}'
"""


def cli_executable() -> str:
    """The mptcpize-py that ExecStartPre= runs: the console script next to this interpreter (a venv or
    a distribution install), else the one on PATH."""
    candidates = [Path(sys.executable).parent / "mptcpize-py"]
    found = shutil.which("mptcpize-py")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_absolute() and os.access(c, os.X_OK) and c.is_file():
            exe = os.path.abspath(c)
            bad = next((ch for ch in exe if ch not in _EXEC_PATH_CHARS), None)
            if bad is not None:
                raise MptcpizeError(f"cannot write {exe!r} into a unit file: {bad!r} would need quoting",
                                    hint="install mptcpize-py under a plain path such as "
                                         "/opt/mptcpize-py/venv")
            return exe
    raise MptcpizeError("cannot find the mptcpize-py executable for the drop-in's ExecStartPre=",
                        hint="install the package so that mptcpize-py is on PATH")


# ---------------------------------------------------------------------------------------------------
# Files


def _read_ours(path: Path) -> str | None:
    """Content of our file at `path`; None when there is none. Raises when something else is there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None   # (a file where a directory should be: writing reports it)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_ours(path, "a symbolic link") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(f"cannot read {path}: {e.strerror}", hint="run it as root") from None
        raise MptcpizeError(f"cannot read {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_ours(path, "not a regular file")
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    if not text.startswith(MARKER):
        raise _not_ours(path, "not written by mptcpize-py enable")
    return text


def _not_ours(path: Path, why: str) -> MptcpizeError:
    return MptcpizeError(f"{path} exists and is {why}: refusing to touch it",
                         hint="move it away (it is not ours), then run the command again")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Temporary file in the same directory (hidden, so neither systemd nor the policy loader reads
    it half-written), fsync, rename over `path`, fsync the directory."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it; policy.py wants no g/o write
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _remove_file(path: Path) -> None:
    os.unlink(path)
    _fsync_dir(path.parent)


@dataclass
class _Transaction:
    """What enable changed so far, so a failure can put everything back (nothing half-applied)."""
    created_dirs: list[Path] = field(default_factory=list)
    written: list[tuple[Path, str | None]] = field(default_factory=list)  # (path, previous content)

    def ensure_dir(self, d: Path, root: Path) -> None:
        missing = []
        p = d
        while not p.exists() and p != root and p != p.parent:
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            os.mkdir(p, DIR_MODE)
            self.created_dirs.append(p)
            os.chmod(p, DIR_MODE)  # umask; policy.py refuses a group/world-writable directory
            (p / CREATED_MARKER).touch(mode=0o644)
            _fsync_dir(p.parent)

    def write(self, path: Path, text: str) -> bool:
        old = _read_ours(path)
        if old == text:
            return False
        _write_atomic(path, text)
        self.written.append((path, old))
        return True

    def rollback(self) -> None:
        for path, old in reversed(self.written):
            try:
                if old is None:
                    _remove_file(path)
                else:
                    _write_atomic(path, old)
            except OSError:
                pass
        for d in reversed(self.created_dirs):
            try:
                os.unlink(d / CREATED_MARKER)
                os.rmdir(d)
            except OSError:
                pass


def write_files(unit: str, exe: str, tree: Tree = REAL) -> list[Path]:
    """Writes (or confirms) the policy record and the drop-in; returns the paths that changed.
    All or nothing: on failure, what was written is removed again."""
    return [p for p, _ in _write_files(unit, exe, tree).written]


def _write_files(unit: str, exe: str, tree: Tree) -> _Transaction:
    tx = _Transaction()
    # Refuse foreign files before creating anything.
    for path in (tree.policy(unit), tree.dropin(unit)):
        _read_ours(path)
    try:
        # The policy record first: by the time systemd sees the drop-in, the daemon can know the unit.
        tx.ensure_dir(tree.policy_dir, tree.root)
        tx.write(tree.policy(unit), policy_text(unit))
        tx.ensure_dir(tree.dropin(unit).parent, tree.root)
        tx.write(tree.dropin(unit), dropin_text(unit, exe))
    except OSError as e:
        tx.rollback()
        path = e.filename or "/etc"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionDenied(f"cannot write {path}: {e.strerror}", hint="run it as root") from None
        raise MptcpizeError(f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        tx.rollback()
        raise
    return tx


def remove_files(unit: str, tree: Tree = REAL) -> list[Path]:
    """Removes our drop-in and policy record (refusing files that are not ours) and the directories
    enable created once they hold nothing but their marker; returns what was removed."""
    paths = [tree.dropin(unit), tree.policy(unit)]
    present = [p for p in paths if _read_ours(p) is not None]   # raises on a foreign file
    removed: list[Path] = []
    try:
        for p in present:
            _remove_file(p)
            removed.append(p)
        for d in (tree.dropin(unit).parent, tree.policy_dir, tree.policy_dir.parent):
            if _remove_created_dir(d):
                removed.append(d)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionDenied(f"cannot remove {e.filename}: {e.strerror}", hint="run it as root") \
                from None
        raise MptcpizeError(f"cannot remove {e.filename}: {e.strerror}") from None
    return removed


def _remove_created_dir(d: Path) -> bool:
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return False
    if names != [CREATED_MARKER]:
        return False   # not ours, or still in use
    os.unlink(d / CREATED_MARKER)
    os.rmdir(d)
    _fsync_dir(d.parent)
    return True


def enabled_units(tree: Tree = REAL) -> list[str]:
    """Units with a policy record written by enable (sorted)."""
    try:
        names = os.listdir(tree.policy_dir)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        unit = enabled_unit_of_file(n)
        if unit is None:
            continue
        try:
            if _read_ours(tree.policy_dir / n) is not None:
                out.append(unit)
        except MptcpizeError:
            pass
    return out


# ---------------------------------------------------------------------------------------------------
# systemd


def systemd_running(runtime_dir: str = SYSTEMD_RUNTIME) -> bool:
    return os.path.isdir(runtime_dir)


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs systemctl with an argv list (never a shell), a fixed PATH, no pager, C locale."""
    exe = shutil.which("systemctl", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        raise Unavailable("systemctl not found", hint="enable needs systemd")
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "",
                                   "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise MptcpizeError(f"systemctl {args[0]} did not finish within {timeout:g} s") from None
    except OSError as e:
        raise MptcpizeError(f"cannot run {exe}: {e.strerror}") from None


def _first_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines()
            or [f"exit status {proc.returncode}"])[0]


def _not_running() -> Unavailable:
    return Unavailable("systemd is not running (PID 1 is not systemd): enable and disable manage "
                       "systemd drop-ins",
                       hint="without systemd use `mptcpize-py run CMD`, or the daemon with an exe or "
                            "cgroup rule")


def unit_properties(unit: str, *props: str) -> dict[str, str]:
    proc = systemctl("show", *(f"--property={p}" for p in props), "--", unit)
    if proc.returncode != 0:
        if not systemd_running():
            raise _not_running()
        raise MptcpizeError(f"cannot ask systemd about {unit}: {_first_line(proc)}")
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


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


def bpf_problems() -> list[tuple[str, str, str | None]]:
    """(check, detail, hint) for each kernel prerequisite of the daemon that fails here; empty when the
    BPF path is usable. The kernel checks of `mptcpize-py check` (probe.py), without its bcc import,
    compile test and per-namespace netlink queries: those cost seconds (~10 s under qemu TCG), and a
    missing bcc or header package is the daemon's to report at start, not a property of the kernel."""
    from . import kernel
    try:
        facts = kernel.read_hook_facts()
    except MptcpizeError as e:
        return [("kernel hook", e.message, e.hint)]
    if facts.update_socket_protocol_id is None:
        return [("kernel hook", "update_socket_protocol is not in the kernel's BTF",
                 "the daemon needs Linux >= 6.6 with CONFIG_DEBUG_INFO_BTF=y")]
    problems = []
    try:
        kernel.probe_trampoline(facts.update_socket_protocol_id)
    except OSError as e:
        problems.append(("bpf trampoline", f"fmod_ret load/attach refused: {e.strerror}",
                         "this kernel refuses BPF trampolines (fentry/fmod_ret)"))
    if facts.mptcp_enabled_offset is None or not kernel.read_kallsyms_address("mptcp_pernet_id"):
        problems.append(("netns guard", "cannot read net.mptcp.enabled per namespace (mptcp_pernet_id "
                         "in /proc/kallsyms, struct mptcp_pernet in BTF)", "needs CONFIG_KALLSYMS_ALL=y"))
    return problems


# ---------------------------------------------------------------------------------------------------
# The two commands


@dataclass
class Outcome:
    unit: str
    changed: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)      # what happened (stdout)
    warnings: list[str] = field(default_factory=list)   # stderr


def _require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("enable and disable need root: they write /etc and reload systemd",
                               hint="run it as root, e.g. with sudo")


def enable(unit: str, now: bool = False) -> Outcome:
    validate_service_name(unit)
    _require_root()
    # Cheap refusals first (an unknown unit is the likely typo); the kernel probe loads a program.
    running = systemd_running()
    name = validate_service_name(known_unit(unit)) if running else unit
    problems = bpf_problems()
    if problems:
        raise Unavailable("the BPF backend the daemon needs is unusable here: "
                          + "; ".join(f"{check}: {detail}" for check, detail, _ in problems),
                          hint=(problems[0][2] + "; " if problems[0][2] else "")
                          + "details: mptcpize-py check")
    if not running:
        raise _not_running()
    out = Outcome(name)
    if name != unit:
        out.lines.append(f"{unit} is an alias of {name}: enabling {name}")
    exe = cli_executable()
    tx = _write_files(name, exe, REAL)
    changed = [p for p, _ in tx.written]
    out.changed = [str(p) for p in changed]
    try:
        _apply(name, changed)
    except BaseException:
        if changed:   # systemd did not take it: leave /etc as it was
            tx.rollback()
            systemctl("daemon-reload")
        raise
    if changed:
        out.lines.append(f"enabled {name}: wrote {', '.join(out.changed)}")
    else:
        out.lines.append(f"{name} is already enabled: nothing changed")
    if unit_properties(SERVICE, "LoadState").get("LoadState") != "loaded":
        out.warnings.append(f"{SERVICE} is not installed: {name} stays TCP until it is "
                            "(make install-units)")
    out.warnings.extend(policy_warnings(name))
    if now:
        proc = systemctl("restart", "--", name, timeout=RESTART_TIMEOUT)
        if proc.returncode != 0:
            raise MptcpizeError(f"{name} is enabled, but restarting it failed: {_first_line(proc)}",
                                hint=f"systemctl status {name}; journalctl -u {name}")
        out.lines.append(f"restarted {name}: its sockets are MPTCP from now on")
    elif changed:
        out.lines.append(f"{name}'s sockets become MPTCP from its next start "
                         f"(systemctl restart {name}, or enable --now)")
    return out


def _apply(name: str, changed: list[Path]) -> None:
    """daemon-reload when we changed something, then check that systemd sees our drop-in (a stale
    reload from an interrupted enable is caught here too)."""
    ours = str(REAL.dropin(name))
    if changed:
        _daemon_reload()
    paths = unit_properties(name, "DropInPaths").get("DropInPaths", "").split()
    if ours not in paths and not changed:
        _daemon_reload()
        paths = unit_properties(name, "DropInPaths").get("DropInPaths", "").split()
    if ours not in paths:
        raise MptcpizeError(f"systemd does not apply {ours} to {name} (its drop-ins: "
                            f"{' '.join(paths) or 'none'})",
                            hint=f"systemctl cat {name}")


def _daemon_reload() -> None:
    proc = systemctl("daemon-reload", timeout=RESTART_TIMEOUT)
    if proc.returncode != 0:
        raise MptcpizeError(f"systemctl daemon-reload failed: {_first_line(proc)}")


def policy_warnings(name: str, tree: Tree = REAL, owner_uid: int = 0) -> list[str]:
    """The record only helps if the daemon can load the policy and no deny rule beats it."""
    from .policy import PolicyError, load_policy
    try:
        pol = load_policy(tree.policy_dir, owner_uid=owner_uid)
    except PolicyError as e:
        return [f"the policy in {tree.shown(tree.policy_dir)} does not load, so the daemon keeps its last "
                f"good one, without {name}: {e.errors[0]}"]
    return [f"{r.description} beats the allow rule enable wrote: {name} stays TCP"
            for r in pol.deny if r.kind == "unit" and r.value == name]


def disable(unit: str, now: bool = False) -> Outcome:
    validate_service_name(unit)
    _require_root()
    name = unit
    running = systemd_running()
    if running:
        props = unit_properties(unit, "Id", "LoadState")
        if props.get("LoadState") != "not-found" and props.get("Id"):
            name = props["Id"]   # an alias: enable wrote the files under the unit's own name
    out = Outcome(name)
    removed = remove_files(name)
    out.changed = [str(p) for p in removed]
    if not removed:
        out.lines.append(f"{name} is not enabled: nothing changed")
        return out
    if running:
        _daemon_reload()
    out.lines.append(f"disabled {name}: removed {', '.join(out.changed)}")
    if now and running:
        proc = systemctl("try-restart", "--", name, timeout=RESTART_TIMEOUT)
        if proc.returncode != 0:
            raise MptcpizeError(f"{name} is disabled, but restarting it failed: {_first_line(proc)}",
                                hint=f"systemctl status {name}")
        out.lines.append(f"restarted {name} (if it was running): its new sockets are plain TCP")
    elif running:
        out.lines.append(f"{name}'s running processes keep their MPTCP sockets until it restarts")
    return out
