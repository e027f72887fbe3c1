"""`mptcpize-py enable UNIT` / `disable UNIT`: per-service MPTCP through a drop-in and a policy record
that are ours alone; `disable` is the exact inverse. Design notes: docs/ARCHITECTURE.md ("enable")."""

import errno
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mptcpize_py.errors import MptcpizeError, PermissionDenied, Unavailable, UsageError
from mptcpize_py.host import files, systemd
from mptcpize_py.policy import DEFAULT_POLICY_DIR
from mptcpize_py.policy.names import check_service_name, policy_file_name
from mptcpize_py.program.support import kernel_support

SERVICE = "mptcpize-py.service"
# What systemd orders SERVICE after when it is not loaded (not installed yet): systemd/mptcpize-py.service
# keeps DefaultDependencies=yes, which means After=sysinit.target basic.target (systemd.service(5),
# "Default Dependencies"). When it is loaded, systemd's own After= list of it is used.
SERVICE_DEFAULT_AFTER = ("sysinit.target", "basic.target")
DROPIN_NAME = "mptcpize-py.conf"
MARKER = "# Managed by mptcpize-py enable/disable"
CREATED_MARKER = ".created-by-mptcpize-py-enable"
RESTART_TIMEOUT = 300.0
DIR_MODE = 0o755
# Characters we write into ExecStartPre= unquoted: no whitespace, quotes, '\\' or '%' (a specifier).
_EXEC_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+-@")


# ---------------------------------------------------------------------------------------------------
# Names and paths (pure)


def validate_service_name(unit) -> str:
    """The service that `unit`, as given on the command line, names; raises when it names none. As
    systemctl reads it: without a unit type suffix it is a service (nginx: nginx.service)."""
    name = systemd.with_type_suffix(unit) if isinstance(unit, str) and unit else unit
    problem = check_service_name(name)
    if problem:
        raise UsageError(problem, hint="give a service such as nginx, nginx.service or getty@tty1.service")
    return name


@dataclass(frozen=True)
class Tree:
    """Where enable writes: `root` is "/" for real, a temporary directory in tests; `policy_path` is
    the daemon's policy directory (the one `--policy-dir` setting of daemon, enable and disable)."""
    root: Path = Path("/")
    policy_path: Path = DEFAULT_POLICY_DIR

    def etc(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    @property
    def systemd_dir(self) -> Path:
        return self.etc("/etc/systemd/system")

    @property
    def policy_dir(self) -> Path:
        return self.etc(str(self.policy_path))

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


def ordering_cycle(name: str, policy_dir: Path = DEFAULT_POLICY_DIR, exe: str | None = None) -> None:
    """Raises when the drop-in's After=SERVICE would close an ordering cycle: `name` is already
    ordered (through Before= chains) before SERVICE or before a unit SERVICE starts after."""
    if name == SERVICE:
        raise UsageError(f"{SERVICE} is the daemon itself: it cannot wait for itself",
                         hint="enable the services whose sockets should become MPTCP")
    # A person waits for enable: systemctl's own limit, not the daemon loop's 2 s (measured: more than
    # 2 s under qemu TCG while the daemon had just started).
    limit = systemd.SYSTEMCTL_TIMEOUT
    daemon = systemd.show_units([SERVICE], ("LoadState", "After"), timeout=limit, exe=exe)[SERVICE]
    if isinstance(daemon, systemd.UnitNameError):
        raise MptcpizeError(f"cannot ask systemd how {SERVICE} is ordered: {daemon}")
    after = (daemon.get("After", "").split() if daemon.get("LoadState") == "loaded"
             else list(SERVICE_DEFAULT_AFTER))
    path = systemd.ordering_path(name, {SERVICE, *after}, timeout=limit, exe=exe)
    if path is None:
        return
    chain = " is before ".join(path) + ("" if path[-1] == SERVICE else f", which {SERVICE} starts after")
    start = systemd.show_units([name], ("ExecStart",), timeout=limit, exe=exe)[name]
    found = re.search(r"path=(\S+)", start.get("ExecStart", "")) if isinstance(start, dict) else None
    program = found.group(1) if found else "/path/to/its/program"
    raise MptcpizeError(
        f"{name} starts before {SERVICE} can ({chain}): the drop-in's After={SERVICE} would make an "
        "ordering cycle, and systemd would break it at boot by deleting a start job",
        hint=f"select it by its executable instead: [[allow]] exe = \"{program}\" in a file of "
             f"{policy_dir} (its sockets become MPTCP once the daemon runs; restart {name} then)")


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


def _refuse_symlinked_dirs(unit: str, tree: Tree, doing: str) -> None:
    """We write and remove only inside real directories: a symbolic link at UNIT.d, at the policy
    directory or at any directory above them (below the tree's root) would carry our writes, or
    removals, to wherever it points. Checked before anything is written or removed."""
    policy_chain = files.first_symlink(tree.policy_dir, tree.root)
    for link in (files.first_symlink(tree.dropin(unit).parent, tree.root), policy_chain):
        if link is None:
            continue
        hint = "replace the link with a real directory, then run the command again"
        if link == policy_chain and not tree.dropin(unit).is_relative_to(link):
            hint += f", or give --policy-dir the directory it leads to ({os.path.realpath(link)})"
        raise MptcpizeError(f"{link} is a symbolic link: refusing to {doing} through it", hint=hint)


def _not_ours(path: Path, why: str) -> MptcpizeError:
    return MptcpizeError(f"{path} exists and is {why}: refusing to touch it",
                         hint="move it away (it is not ours), then run the command again")


@dataclass
class _Transaction:
    """What enable changed so far, so a failure can put everything back (nothing half-applied)."""
    created_dirs: list[Path] = field(default_factory=list)
    written: list[tuple[Path, str | None]] = field(default_factory=list)  # (path, previous content)

    def ensure_dir(self, d: Path, root: Path) -> None:
        missing = []
        p = d
        while not os.path.lexists(p) and p != root and p != p.parent:
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            os.mkdir(p, DIR_MODE)
            self.created_dirs.append(p)
            os.chmod(p, DIR_MODE)  # umask; the policy refuses a group/world-writable directory
            (p / CREATED_MARKER).touch(mode=0o644)
            files.fsync_dir(p.parent)

    def write(self, path: Path, text: str) -> bool:
        old = _read_ours(path)
        if old == text:
            return False
        files.write_atomic(path, text)
        self.written.append((path, old))
        return True

    def rollback(self) -> None:
        for path, old in reversed(self.written):
            try:
                if old is None:
                    files.remove_durably(path)
                else:
                    files.write_atomic(path, old)
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
    # Refuse symlinked directories and foreign files before creating anything.
    _refuse_symlinked_dirs(unit, tree, "write")
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
        where = e.filename or "/etc"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionDenied(f"cannot write {where}: {e.strerror}", hint="run it as root") from None
        raise MptcpizeError(f"cannot write {where}: {e.strerror}") from None
    except BaseException:
        tx.rollback()
        raise
    return tx


def remove_files(unit: str, tree: Tree = REAL) -> list[Path]:
    """Removes our drop-in and policy record (refusing files that are not ours) and the directories
    enable created once they hold nothing but their marker; returns what was removed."""
    _refuse_symlinked_dirs(unit, tree, "remove files")
    paths = [tree.dropin(unit), tree.policy(unit)]
    present = [p for p in paths if _read_ours(p) is not None]   # raises on a foreign file
    removed: list[Path] = []
    try:
        for p in present:
            files.remove_durably(p)
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
    files.fsync_dir(d.parent)
    return True


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


def enable(unit: str, now: bool = False, policy_dir: Path = DEFAULT_POLICY_DIR) -> Outcome:
    tree = Tree(policy_path=Path(policy_dir))
    unit = validate_service_name(unit)
    _require_root()
    # Cheap refusals first (an unknown unit is the likely typo); the kernel probe loads a program.
    running = systemd.booted()
    name = validate_service_name(systemd.known_unit(unit)) if running else unit
    if running:
        ordering_cycle(name, tree.policy_path)
    problems = kernel_support().problems
    if problems:
        raise Unavailable("the BPF backend the daemon needs is unusable here: "
                          + "; ".join(f"{c.name}: {c.detail}" for c in problems),
                          hint=(problems[0].hint + "; " if problems[0].hint else "")
                          + "details: mptcpize-py check")
    if not running:
        raise systemd.not_running()
    out = Outcome(name)
    if name != unit:
        out.lines.append(f"{unit} is an alias of {name}: enabling {name}")
    exe = cli_executable()
    tx = _write_files(name, exe, tree)
    changed = [p for p, _ in tx.written]
    out.changed = [str(p) for p in changed]
    try:
        _apply(name, changed, tree)
    except BaseException:
        if changed:   # systemd did not take it: leave /etc as it was
            tx.rollback()
            systemd.systemctl("daemon-reload")
        raise
    if changed:
        out.lines.append(f"enabled {name}: wrote {', '.join(out.changed)}")
    else:
        out.lines.append(f"{name} is already enabled: nothing changed")
    if systemd.unit_properties(SERVICE, "LoadState").get("LoadState") != "loaded":
        out.warnings.append(f"{SERVICE} is not installed: {name} stays TCP until it is "
                            "(the Debian package installs it; else make install-units)")
    out.warnings.extend(policy_warnings(name, tree))
    if now:
        proc = systemd.systemctl("restart", "--", name, timeout=RESTART_TIMEOUT)
        if proc.returncode != 0:
            raise MptcpizeError(f"{name} is enabled, but restarting it failed: {systemd.first_line(proc)}",
                                hint=f"systemctl status {name}; journalctl -u {name}")
        out.lines.append(f"restarted {name}: its sockets are MPTCP from now on")
    elif changed:
        out.lines.append(f"{name}'s sockets become MPTCP from its next start "
                         f"(systemctl restart {name}, or enable --now)")
    return out


def _apply(name: str, changed: list[Path], tree: Tree) -> None:
    """daemon-reload when we changed something, then check that systemd sees our drop-in (a stale
    reload from an interrupted enable is caught here too)."""
    ours = str(tree.dropin(name))
    if changed:
        _daemon_reload()
    paths = systemd.unit_properties(name, "DropInPaths").get("DropInPaths", "").split()
    if ours not in paths and not changed:
        _daemon_reload()
        paths = systemd.unit_properties(name, "DropInPaths").get("DropInPaths", "").split()
    if ours not in paths:
        raise MptcpizeError(f"systemd does not apply {ours} to {name} (its drop-ins: "
                            f"{' '.join(paths) or 'none'})",
                            hint=f"systemctl cat {name}")


def _daemon_reload() -> None:
    proc = systemd.systemctl("daemon-reload", timeout=RESTART_TIMEOUT)
    if proc.returncode != 0:
        raise MptcpizeError(f"systemctl daemon-reload failed: {systemd.first_line(proc)}")


def policy_warnings(name: str, tree: Tree = REAL, owner_uid: int = 0) -> list[str]:
    """The record only helps if the daemon can load the policy and no deny rule beats it."""
    from mptcpize_py.policy import PolicyError, load_policy
    try:
        pol = load_policy(tree.policy_dir, owner_uid=owner_uid)
    except PolicyError as e:
        return [f"the policy in {tree.shown(tree.policy_dir)} does not load, so the daemon keeps its last "
                f"good one, without {name}: {e.errors[0]}"]
    return [f"{r.description} beats the allow rule enable wrote: {name} stays TCP"
            for r in pol.deny if r.kind == "unit" and r.value == name]


def disable(unit: str, now: bool = False, policy_dir: Path = DEFAULT_POLICY_DIR) -> Outcome:
    tree = Tree(policy_path=Path(policy_dir))
    unit = validate_service_name(unit)
    _require_root()
    name = unit
    running = systemd.booted()
    if running:
        props = systemd.unit_properties(unit, "Id", "LoadState")
        if props.get("LoadState") != "not-found" and props.get("Id"):
            name = props["Id"]   # an alias: enable wrote the files under the unit's own name
    out = Outcome(name)
    removed = remove_files(name, tree)
    out.changed = [str(p) for p in removed]
    if not removed:
        out.lines.append(f"{name} is not enabled: nothing changed")
        return out
    if running:
        _daemon_reload()
    out.lines.append(f"disabled {name}: removed {', '.join(out.changed)}")
    if now and running:
        proc = systemd.systemctl("try-restart", "--", name, timeout=RESTART_TIMEOUT)
        if proc.returncode != 0:
            raise MptcpizeError(f"{name} is disabled, but restarting it failed: {systemd.first_line(proc)}",
                                hint=f"systemctl status {name}")
        out.lines.append(f"restarted {name} (if it was running): its new sockets are plain TCP")
    elif running:
        out.lines.append(f"{name}'s running processes keep their MPTCP sockets until it restarts")
    return out
