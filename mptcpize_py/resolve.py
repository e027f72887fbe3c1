"""Policy -> the integer keys the kernel program matches: exe identities, cgroup ids, netns inums.

The kernel side (bpf/mptcpize.bpf.c) sees only numbers. This module turns a validated Policy into them,
and says per rule what could not be resolved, as `file:line: reason` lines like policy errors. Nothing
here raises for a single rule: the daemon decides what is fatal (e.g. at start) and what is a warning
(e.g. on reload), so resolve_policy() always returns a complete Resolved.

What each key is, and why (each one checked against what a BPF program reads, tests/host/test_resolve.py):

- exe rule -> (dev, ino) of `mm->exe_file->f_inode`: `i_sb->s_dev` (the kernel's dev_t, MKDEV =
  major << 20 | minor) and `i_ino`. The path is opened with O_PATH, following symlinks
  (/usr/bin/python3 -> /usr/bin/python3.11: the process runs the file the link leads to, and that is
  what the kernel sees). We do NOT take stat()'s st_dev: filesystems may report another device there
  than their superblock's. Measured on this host (6.18): an overlayfs whose layers are on different
  filesystems (lower ext4, upper tmpfs, as in the VM tier's writable /usr) reports st_dev 0:44 for a
  lower file, while the superblock, and so the kernel key, is 0:42; btrfs reports a per-subvolume
  st_dev that is not s_dev either. Instead the inode number comes from /proc/self/fdinfo/FD (`ino:`,
  which is file_inode(file)->i_ino) and the device from the superblock of the fd's mount (`mnt_id:` ->
  /proc/self/mountinfo `major:minor`, which the kernel prints from sb->s_dev). Both describe exactly the
  inode that exec() puts into mm->exe_file. Limits: a container's binary on the container's own overlay
  is a different file (another overlay superblock) from the host path the policy names; a file replaced
  by a package upgrade is a new inode: the daemon re-resolves when the directory changes.
- cgroup rule -> the cgroup id, i.e. the inode number of its directory on the cgroup v2 filesystem
  (since Linux 5.5 a cgroup's id is its kernfs node id, which is its inode number on 64-bit).
  bpf_get_current_cgroup_id() and bpf_get_current_ancestor_cgroup_id() return the same number for the
  default (v2) hierarchy, also on hybrid v1/v2 hosts. The cgroup v2 mount is found in mountinfo: it is
  /sys/fs/cgroup on a unified host but /sys/fs/cgroup/unified on a hybrid one (this host). A cgroup that
  does not exist yet is not an error but `pending`: a unit may start later. Ids are never reused
  within a boot, so a unit that restarts gets a new cgroup and a new id: the daemon must watch and
  re-resolve.
- unit rule -> a cgroup path by systemd's naming rules (system manager, no Slice= override; the pure
  functions below follow src/basic/cgroup-util.c and src/core/unit.c), or, when PID 1 is systemd and
  systemctl exists, by asking it (`systemctl show -p ControlGroup -p Slice UNIT`, argv list, timeout).
  Only asking finds units with Slice= overrides and units of a manager whose cgroup root is not "/"
  (systemd in a container); user units (user@UID.service/...) are out of reach of the system policy.
- netns -> the inode number of the namespace (ns.inum): st_ino of /run/netns/NAME (an nsfs bind mount,
  as `ip netns add` makes it) and of /proc/self/ns/net for "host". "host" is the daemon's own namespace:
  under systemd (no PrivateNetwork=) that is PID 1's; we do not read /proc/1/ns/net because that needs
  ptrace access to PID 1 (CAP_SYS_PTRACE), which the hardened unit should not hold (and which is
  refused even to root on this host). A named namespace that does not exist (yet) is `pending`.

Policy values are hostile input: exe paths are only opened with O_PATH (no read, no exec) and must be
regular files; cgroup paths are normalised, joined under the cgroup2 mount and must stay under it after
realpath() and be directories of that very filesystem; netns names cannot contain '/' (policy.py).
"""

import errno
import os
import posixpath
import stat
from dataclasses import dataclass, field
from typing import Callable, Mapping

from mptcpize_py import abi
from mptcpize_py.host import files
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
    unit_cgroup,
    unit_cgroup_path,
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
        """{(dev, ino): (rule_id, action)} ready for bpf.py (action: abi.ACTION_ALLOW / ACTION_DENY)."""
        return {(k.dev, k.ino): (r.id, _action(r)) for k, r in self.exe.items()}

    def cgroup_map(self) -> dict[int, tuple[int, int]]:
        """{cgroup id: (rule_id, action)} ready for bpf.py."""
        return {k: (r.id, _action(r)) for k, r in self.cgroups.items()}

    def selection(self) -> tuple[dict, dict, set[int] | None]:
        """The arguments of bpf.Rewriter.set_selection(): exe map, cgroup map, netns set (None: all)."""
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
        fd = files.open_no_magiclinks(path)
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
        real = os.readlink(f"/proc/self/fd/{fd}")
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


def resolve_policy(policy: Policy, *, cgroup_mount: str | None = None, netns_dir: str = NETNS_DIR,
                   host_netns: str = HOST_NETNS, systemd: SystemdAsker | bool | None = None,
                   mounts: list[Mount] | None = None) -> Resolved:
    """Resolves every rule of `policy`; never raises for a single rule (see Resolved.problems/pending).

    cgroup_mount: the cgroup v2 mount point (default: found in /proc/self/mountinfo).
    systemd: None = ask systemctl when PID 1 is systemd and systemctl exists; False = never (naming
    rules only); True = always; or a callable unit -> cgroup path (tests).
    """
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
            if rule.kind == "exe":
                key, real = exe_key(rule.value, mounts or None)
                exe_entries.append((key, rule))
                shown = rule.value if real == rule.value else f"{rule.value} -> {real}"
                targets[rule.id] = f"{shown} ({key})"
                continue
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
                continue
            cg_entries.append((cid, rule))
            targets[rule.id] = f"{cgpath} (cgroup id {cid})"
        except ResolveError as e:
            problem(rule, str(e))

    exe_map = _merge(exe_entries, "file", notes)
    cg_map = _merge(cg_entries, "cgroup", notes)

    all_netns = policy.netns.mode == "all"
    netns: set[int] = set()
    if not all_netns:
        try:
            host = os.stat(host_netns)
            netns.add(host.st_ino)
            nsfs_dev = host.st_dev
        except OSError as e:
            problems.append(f"netns host: cannot stat {host_netns}: {e.strerror}")
            nsfs_dev = None
        for name in policy.netns.names if policy.netns.mode == "names" else ():
            path = posixpath.join(netns_dir, name)
            if "/" in name or name in ("", ".", ".."):  # policy.py refuses these; never trust a join
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

    return Resolved(exe_map, cg_map, frozenset(netns), all_netns, targets, tuple(pending),
                    tuple(problems), tuple(notes))


def _systemd_asker(systemd, rules) -> SystemdAsker | None:
    if callable(systemd):
        return systemd
    if systemd is False or not any(r.kind == "unit" for r in rules):
        return None
    if systemd is None and not booted():
        return None
    return unit_cgroup


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
