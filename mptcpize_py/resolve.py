"""Policy -> the integer keys the kernel program matches: exe identities, cgroup ids, netns inums.
resolve_policy() never raises for one rule; what cannot be resolved is said per rule. Design notes:
docs/ARCHITECTURE.md ("resolve")."""

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mptcpize_py import abi
from mptcpize_py.host import files, root
from mptcpize_py.host.mounts import (
    PROC_MOUNTINFO,
    Mount,
    find_cgroup2_mount,
    read_mounts,
)
from mptcpize_py.host.netns import HOST_NETNS, NETNS_DIR, netns_inum
from mptcpize_py.host.systemd import (
    UnitNameError,
    booted,
    unit_cgroup_path,
    unit_cgroups,
)
from mptcpize_py.policy import Policy, Rule


@dataclass(frozen=True)
class ExeKey:
    """struct mptcpize_exe_key: the kernel's dev_t (MKDEV) and inode number of an executable."""
    dev: int
    ino: int

    def __str__(self) -> str:
        return f"dev {self.dev >> 20}:{self.dev & 0xFFFFF} ino {self.ino}"


@dataclass(frozen=True)
class Pending:
    """Something a rule names that does not exist yet; the daemon watches `path` and re-resolves."""
    kind: str              # "cgroup" (cgroup and unit rules) | "netns"
    rule: Rule | None      # None for a [netns] name
    path: str              # the filesystem path that will appear: /sys/fs/cgroup/..., /run/netns/NAME
    message: str           # one line for the log


@dataclass(frozen=True)
class Resolved:
    exe: Mapping[ExeKey, Rule] = field(default_factory=dict)    # exe_rules map entries
    cgroups: Mapping[int, Rule] = field(default_factory=dict)   # cgroup_rules map entries
    netns: frozenset[int] = frozenset()                          # netns_allow entries (unused if all)
    all_netns: bool = False
    targets: Mapping[int, str] = field(default_factory=dict)    # rule id -> what it resolved to
    pending: tuple[Pending, ...] = ()
    problems: tuple[str, ...] = ()   # `file:line: reason`: rules that resolve to nothing until fixed
    notes: tuple[str, ...] = ()      # informational: two rules with one key, systemd not asked, ...

    def exe_map(self) -> dict[tuple[int, int], tuple[int, int]]:
        """{(dev, ino): (rule_id, action)} for the program loader (abi.ACTION_ALLOW / ACTION_DENY)."""
        return {(k.dev, k.ino): (r.id, _action(r)) for k, r in self.exe.items()}

    def cgroup_map(self) -> dict[int, tuple[int, int]]:
        """{cgroup id: (rule_id, action)} ready for the program loader."""
        return {k: (r.id, _action(r)) for k, r in self.cgroups.items()}

    def selection(self) -> tuple[dict, dict, set[int] | None]:
        """The arguments of rewriter.Rewriter.set_selection(): exe map, cgroup map, netns set (None: all)."""
        return self.exe_map(), self.cgroup_map(), (None if self.all_netns else set(self.netns))

    def flags(self) -> int:
        """mptcpize_config.flags for this selection."""
        return ((abi.CFG_ALL_NETNS if self.all_netns else 0)
                | (abi.CFG_HAS_EXE_RULES if self.exe else 0)
                | (abi.CFG_HAS_CGROUP_RULES if self.cgroups else 0))


def _action(rule: Rule) -> int:
    return abi.ACTION_DENY if rule.action == "deny" else abi.ACTION_ALLOW


class ResolveError(ValueError):
    """Why one selector resolves to nothing: a reason without the selector (the caller prefixes it)."""


# ---------------------------------------------------------------------------------------------------
# Executables


def exe_key(path: str, mounts: list[Mount] | None = None) -> tuple[ExeKey, str]:
    """(the kernel's identity of the file `path` leads to, its real path). Raises ResolveError.

    Opens with O_PATH (following symlinks, refusing /proc magic links), so nothing is read or
    executed; the descriptor pins the inode while we look it up, so the key and the checks describe
    one and the same file.
    """
    try:
        # In a container the policy names the host's files: resolved in the host's tree (host/root.py).
        fd = root.open_in_host(path) if root.is_container() else files.open_no_magiclinks(path)
    except FileNotFoundError:
        raise ResolveError("does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ResolveError("leads through a /proc magic link (such as /proc/PID/exe) or a symbolic "
                               "link loop: name the executable's own path") from None
        raise ResolveError(f"cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ResolveError("not a regular file")
        if not st.st_mode & 0o111:
            raise ResolveError("not executable (no x permission bit)")
        real = root.shown(os.readlink(f"/proc/self/fd/{fd}"))
        try:
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
                info = files.parse_fdinfo(f.read())
        except OSError:
            info = {}
    finally:
        os.close(fd)
    ino = int(info["ino"]) if info.get("ino", "").isdigit() else st.st_ino  # "ino:" since Linux 5.14
    mnt_id = int(info["mnt_id"]) if info.get("mnt_id", "").isdigit() else None
    if mounts is None:
        mounts = read_mounts()
    mount = next((m for m in mounts if m.mount_id == mnt_id), None)
    if mount is not None:
        dev = mount.kernel_dev
    else:  # mountinfo unreadable: st_dev is right for ext4, xfs, tmpfs, same-filesystem overlays
        dev = files.kernel_dev(st.st_dev)
    return ExeKey(dev, ino), real


# ---------------------------------------------------------------------------------------------------
# Cgroups


def cgroup_fs_path(mount_point: str, cgroup: str) -> str:
    """`cgroup` (a cgroup v2 path such as /system.slice/x.service) as a path under `mount_point`.

    Lexical: '.', '..' and repeated '/' are normalised away first, so the result always stays under
    `mount_point` (the "/.." of a hostile path ends at the root). Raises ResolveError otherwise.
    """
    rel = posixpath.normpath("/" + cgroup).lstrip("/")
    full = posixpath.join(mount_point, rel) if rel else mount_point
    if posixpath.commonpath([mount_point, full]) != mount_point:
        raise ResolveError("leads outside the cgroup hierarchy")
    return full


def cgroup_id(mount_point: str, cgroup: str) -> int | None:
    """The id of cgroup `cgroup` (st_ino of its directory), None when it does not exist (yet).

    Raises ResolveError when the path leaves the cgroup2 filesystem or names a file, not a cgroup.
    """
    full = cgroup_fs_path(mount_point, cgroup)
    real_root = os.path.realpath(mount_point)
    real = os.path.realpath(full)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise ResolveError(f"leads outside the cgroup hierarchy ({real})")
    try:
        root_st = os.stat(real_root)
    except OSError as e:
        raise ResolveError(f"cannot stat the cgroup v2 mount {mount_point}: {e.strerror}") from None
    try:
        st = os.stat(real, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ResolveError("not a cgroup (a component is a file)") from None
    except OSError as e:
        raise ResolveError(f"cannot stat {full}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ResolveError(f"not a cgroup ({full} is not a directory)")
    if st.st_dev != root_st.st_dev:
        raise ResolveError(f"{full} is not on the cgroup v2 filesystem mounted at {mount_point}")
    return st.st_ino


# ---------------------------------------------------------------------------------------------------
# The whole policy


SystemdAsker = Callable[[str], str]


def resolve_policy(policy: Policy, *, cgroup_mount: str | None = None, netns_dir: str | None = None,
                   host_netns: str = HOST_NETNS, systemd: SystemdAsker | bool | None = None,
                   mounts: list[Mount] | None = None) -> Resolved:
    """Resolves every rule of `policy`; never raises for a single rule (see Resolved.problems/pending).

    cgroup_mount: the cgroup v2 mount point (default: found in /proc/self/mountinfo).
    systemd: None = ask systemctl when PID 1 is systemd and systemctl exists; False = never (naming
    rules only); True = always; or a callable unit -> cgroup path (tests).
    """
    netns_dir = netns_dir or root.host_path(NETNS_DIR)
    problems: list[str] = []
    notes: list[str] = []
    pending: list[Pending] = []
    targets: dict[int, str] = {}
    exe_entries: list[tuple[ExeKey, Rule]] = []
    cg_entries: list[tuple[int, Rule]] = []

    def problem(rule: Rule, reason: str) -> None:
        problems.append(f"{rule.source_file}:{rule.line}: {rule.kind}={rule.value}: {reason}")

    rules = policy.rules
    if mounts is None and (any(r.kind == "exe" for r in rules) or cgroup_mount is None):
        try:
            mounts = read_mounts()
        except OSError as e:
            notes.append(f"cannot read {PROC_MOUNTINFO}: {e.strerror}")
            mounts = []

    if cgroup_mount is None and any(r.kind != "exe" for r in rules):
        found = find_cgroup2_mount(mounts or [])
        cgroup_mount = found.mount_point if found else None

    asker = _systemd_asker(systemd, rules)

    for rule in rules:
        try:
            _resolve_rule(rule, mounts, cgroup_mount, asker, notes, pending, targets, exe_entries, cg_entries)
        except ResolveError as e:
            problem(rule, str(e))

    exe_map = _merge(exe_entries, "file", notes)
    cg_map = _merge(cg_entries, "cgroup", notes)

    all_netns = policy.netns.mode == "all"
    netns = set() if all_netns else _resolve_netns(policy, netns_dir, host_netns, problems, pending)

    return Resolved(exe_map, cg_map, frozenset(netns), all_netns, targets, tuple(pending),
                    tuple(problems), tuple(notes))


def _resolve_rule(rule: Rule, mounts: list[Mount] | None, cgroup_mount: str | None,
                  asker: "SystemdAsker | None", notes: list[str], pending: list[Pending],
                  targets: dict[int, str], exe_entries: list[tuple[ExeKey, Rule]],
                  cg_entries: list[tuple[int, Rule]]) -> None:
    """One rule: its key appended to exe_entries or cg_entries, or its pending entry; raises ResolveError."""
    if rule.kind == "exe":
        key, real = exe_key(rule.value, mounts or None)
        exe_entries.append((key, rule))
        shown = rule.value if real == rule.value else f"{rule.value} -> {real}"
        targets[rule.id] = f"{shown} ({key})"
        return
    if cgroup_mount is None:
        raise ResolveError("no cgroup v2 hierarchy is mounted (cgroup2 in /proc/self/mountinfo)")
    if rule.kind == "unit":
        cgpath = _unit_path(rule.value, asker, notes, rule)
    else:
        cgpath = rule.value
    cid = cgroup_id(cgroup_mount, cgpath)
    full = cgroup_fs_path(cgroup_mount, cgpath)
    if cid is None:
        what = "not running yet" if rule.kind == "unit" else "does not exist yet"
        pending.append(Pending("cgroup", rule, full,
                               f"{rule.source_file}:{rule.line}: {rule.kind}={rule.value}: "
                               f"{what} (no cgroup {full}); waiting for it"))
        targets[rule.id] = f"{cgpath} (pending)"
        return
    cg_entries.append((cid, rule))
    targets[rule.id] = f"{cgpath} (cgroup id {cid})"


def _resolve_netns(policy: Policy, netns_dir: str, host_netns: str, problems: list[str],
                   pending: list[Pending]) -> set[int]:
    """The netns_allow entries: the host's namespace and each named one (a missing name is pending)."""
    netns: set[int] = set()
    try:
        host = os.stat(host_netns)
        netns.add(host.st_ino)
        nsfs_dev = host.st_dev
    except OSError as e:
        problems.append(f"netns host: cannot stat {host_netns}: {e.strerror}")
        nsfs_dev = None
    for name in policy.netns.names if policy.netns.mode == "names" else ():
        path = posixpath.join(netns_dir, name)
        if "/" in name or name in ("", ".", ".."):  # the policy refuses these; never trust a join
            problems.append(f"netns {name!r}: not a namespace name")
            continue
        try:
            inum = netns_inum(path, nsfs_dev)
        except OSError as e:
            problems.append(f"netns {name}: cannot stat {path}: {e.strerror}")
            continue
        if inum is None:
            pending.append(Pending("netns", None, path,
                                   f"netns {name}: {path} is not a network namespace (yet); "
                                   "waiting for it (ip netns add " + name + ")"))
        else:
            netns.add(inum)
    return netns


def _systemd_asker(systemd, rules) -> SystemdAsker | None:
    if callable(systemd):
        return systemd
    units = sorted({r.value for r in rules if r.kind == "unit"})
    if systemd is False or not units:
        return None
    if systemd is None and (root.is_container() or not booted()):
        return None   # in a container systemctl would ask the container's /run: root.blind_spot()
    answers = unit_cgroups(units)   # every unit rule in one systemctl process

    def asker(unit: str) -> str:
        answer = answers[unit]
        if isinstance(answer, UnitNameError):
            raise answer
        return answer

    return asker


def _unit_path(unit: str, asker: SystemdAsker | None, notes: list[str], rule: Rule) -> str:
    if asker is not None:
        try:
            return asker(unit)
        except UnitNameError as e:
            notes.append(f"{rule.source_file}:{rule.line}: unit={unit}: {e}; using systemd's default "
                         "cgroup path")
    return unit_cgroup_path(unit)


def _merge(entries: list[tuple], what: str, notes: list[str]) -> dict:
    """One map entry per key: a deny rule beats allow rules; among equals the first rule (lowest id)."""
    out: dict = {}
    for key, rule in sorted(entries, key=lambda e: e[1].id):
        have = out.get(key)
        if have is None:
            out[key] = rule
            continue
        winner = rule if (rule.action == "deny" and have.action == "allow") else have
        loser = have if winner is rule else rule
        notes.append(f"{rule.source_file}:{rule.line}: {rule.kind}={rule.value} selects the same {what} "
                     f"as {have.description}; {winner.action} ({winner.source_file}:{winner.line}) "
                     f"applies, {loser.source_file}:{loser.line} is shadowed")
        out[key] = winner
    return out
