"""The only bcc importer: compile bpf/mptcpize.bpf.c, attach it, fill its maps, read its reports.

bcc comes from the distribution (python3-bpfcc) and compiles at run time. The program reads kernel
structs at offsets taken from the running kernel's BTF (btf.STRUCT_FIELDS), so the headers only
have to satisfy the compiler: the running kernel's (/lib/modules/$(uname -r)/build) when installed,
else any Debian linux-headers tree under /usr/src, merged into the one-directory layout bcc expects
($BCC_KERNEL_SOURCE).

Rewriter(dry_run=True) builds the same decision on the socket() syscall tracepoint: it needs no
trampoline and no hook, counts and reports what would be upgraded, and changes no socket.
"""

import ctypes
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mptcpize_py import abi
from mptcpize_py.errors import MptcpizeError, PermissionDenied, Unavailable
from mptcpize_py.host import mounts
from mptcpize_py.locations import MERGED_HEADERS_DIR
from mptcpize_py.program import btf
from mptcpize_py.support import HOOK, OK, kernel_support


@dataclass(frozen=True)
class ToolchainStatus:
    ok: bool
    detail: str
    hint: str | None = None


def _headers_dir() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def _debian_header_trees(src: Path = Path("/usr/src")) -> list[tuple[Path, Path]]:
    """(arch tree, -common tree) pairs of installed Debian linux-headers packages, newest first."""
    pairs = []
    for arch in sorted(src.glob("linux-headers-*-amd64"), reverse=True):
        common = arch.with_name(arch.name[:-len("amd64")] + "common")
        if (arch / "include" / "generated").is_dir() and (common / "include" / "linux").is_dir():
            pairs.append((arch, common))
    return pairs


def merge_header_tree(arch: Path, common: Path, dest: Path) -> Path:
    """Builds in `dest` (symlinks only) the single tree bcc's $BCC_KERNEL_SOURCE wants from Debian's
    split arch/-common packages: common's include/ and arch/x86/include/ plus arch's generated/."""
    for sub in ("include", "arch/x86/include"):
        out = dest / sub
        out.mkdir(parents=True, exist_ok=True)
        for src_dir in (common / sub, arch / sub):
            if not src_dir.is_dir():
                continue
            for entry in src_dir.iterdir():
                link = out / entry.name
                if not link.exists() and not link.is_symlink():
                    link.symlink_to(entry)
    return dest


def compile_env() -> tuple[Path | None, str]:
    """(headers tree for bcc or None, description). Sets $BCC_KERNEL_SOURCE when it is not the
    running kernel's own tree."""
    own = _headers_dir()
    try:
        if (own / "include").is_dir():
            return own, str(own)
    except OSError as e:   # e.g. a sandbox that hides the tree: try the others
        own = f"{own} ({e.strerror})"
    try:
        trees = _debian_header_trees()
    except OSError:
        trees = []
    for arch, common in trees:
        dest = MERGED_HEADERS_DIR / arch.name
        try:
            if not (dest / "include" / "linux").exists():
                merge_header_tree(arch, common, dest)
        except OSError:
            continue
        os.environ["BCC_KERNEL_SOURCE"] = str(dest)
        return dest, f"{arch.name} (this kernel's own headers are not installed; the program takes " \
                     f"struct offsets from BTF, so other headers do)"
    return None, f"no kernel headers at {own} or /usr/src/linux-headers-*"


def _import_bcc():
    try:
        import bcc  # noqa: F401  (distro package python3-bpfcc)
        return bcc
    except ImportError as e:
        raise Unavailable(f"bcc is not importable: {e}",
                          hint="apt-get install python3-bpfcc, and use Debian's /usr/bin/python3 "
                               "or a venv made with --system-site-packages") from None


def toolchain_status(compile_test: bool = True) -> ToolchainStatus:
    try:
        bcc = _import_bcc()
    except MptcpizeError as e:
        return ToolchainStatus(False, e.message, e.hint)
    headers, where = compile_env()
    if headers is None:
        return ToolchainStatus(False, f"bcc importable, but {where}",
                               f"apt-get install linux-headers-{os.uname().release}")
    if compile_test:
        try:
            bcc.BPF(text="int mptcpize_compile_probe(void *ctx) { return 0; }").cleanup()
        except Exception as e:  # bcc raises plain Exception on compile failure
            return ToolchainStatus(False, f"bcc cannot compile against {headers}: {e}",
                                   f"reinstall linux-headers-{os.uname().release}")
    return ToolchainStatus(True, f"bcc {getattr(bcc, '__version__', '?')} "
                                 f"{'compiles' if compile_test else 'with headers'} at {where}")


@dataclass(frozen=True)
class UpgradeEvent:
    pid: int
    tgid: int
    uid: int
    comm: str
    cgroup_id: int
    netns: int
    family: int
    kind: str
    rule_id: int
    start_ns: int   # with tgid, the process: when it started (ns after boot; see ProcStats)


@dataclass(frozen=True)
class ProcStats:
    """One process's exact count. A process is (tgid, start_ns): start_ns is its leader's
    start_boottime, ns after boot (host.procfs.is_process compares it with /proc), so a recycled pid
    is another entry."""
    tgid: int
    upgraded: int
    kind: str
    rule_id: int
    start_ns: int


class MapTable(Protocol):
    """The part of a bcc table the sync uses (tests drive sync_map with a fake of fixed capacity)."""

    def keys(self) -> Iterator[Any]: ...

    def __setitem__(self, key: Any, leaf: Any) -> None: ...

    def __delitem__(self, key: Any) -> None: ...


def sync_map(table: MapTable, entries: Iterable[tuple[Any, Any]], ident=bytes) -> None:
    """Makes `table` hold exactly `entries` [(key, leaf)], whatever it held before (even a half-done
    sync); ident(key) compares keys (bcc's ctypes keys compare by identity, their bytes by value).

    Stale keys go out first, then the wanted ones are upserted: the map never holds more than
    max(old, new) entries, so any selection that fits the map can replace any other (upserting first
    needed old + new at once: E2BIG from a full hash map when a package upgrade gave every selected
    executable a new inode). A key in both is updated in place, which a full BPF hash map allows
    (kernel/bpf/hashtab.c, since Linux 4.8, commit a6ed3ea65d98), so it is never absent. A key only
    in the old selection may stop matching before one only in the new starts: that is the change."""
    wanted = {ident(key): (key, leaf) for key, leaf in entries}
    for key in [k for k in table.keys() if ident(k) not in wanted]:
        del table[key]
    for key, leaf in wanted.values():
        table[key] = leaf


class Rewriter:
    """The loaded and attached program (a program.handle.ProgramHandle). Detaches on close() or when
    this process exits (fail-open)."""

    reads_netns_from_kernel: bool   # False: a dry run told net.mptcp.enabled by set_netns_mptcp()

    def __init__(self, all_netns: bool = True, dry_run: bool = False):
        if os.geteuid() != 0:
            raise PermissionDenied("loading the BPF program needs root (CAP_BPF, CAP_PERFMON, "
                                   "CAP_SYS_ADMIN)", hint="run it as root, e.g. with sudo")
        self.dry_run = dry_run
        support = kernel_support()   # the prerequisites `check` and `enable` judge by, too
        if support.facts is None:
            raise support.errors["kernel hook"]
        facts, offsets = support.facts, btf.read_struct_offsets()
        if not dry_run and support.problems:
            raise support.errors[support.problems[0].name]
        # Without the in-kernel guard the dry run asks userspace's netns_mptcp map (set_netns_mptcp).
        pernet_addr = support.pernet_addr if support.netns_guard.status == OK else 0
        bcc = _import_bcc()  # after the cheap probes: importing bcc loads libLLVM (slow)
        headers, where = compile_env()
        if headers is None:
            raise Unavailable(f"bcc has nothing to compile against: {where}",
                              hint=f"apt-get install linux-headers-{os.uname().release} (or any "
                                   f"linux-headers-*-amd64)")
        cflags = [f"-I{abi.BPF_DIR}", "-w"] + [f"-D{k}={v}" for k, v in sorted(offsets.items())]
        if dry_run:
            cflags.append("-DMPTCPIZE_DRY_RUN")
            mounts.ensure_tracefs()
        try:
            self._b = bcc.BPF(src_file=str(abi.PROGRAM).encode(), cflags=cflags)
        except Exception as e:
            raise Unavailable(f"bcc could not compile {abi.PROGRAM.name} against {where}: {e}") \
                from None
        self._bcc = bcc
        self._pernet_addr, self._enabled_offset = pernet_addr, facts.mptcp_enabled_offset or 0
        self._set_flags(abi.CFG_ALL_NETNS if all_netns else 0)
        self._link_fd = -1
        self.reads_netns_from_kernel = bool(pernet_addr)
        if dry_run:   # bcc attached the syscall tracepoint when it loaded the program
            self._events_open = False
            return
        try:
            fn = self._b.load_func(b"kmod_ret__" + HOOK.encode(), bcc.BPF.TRACING)
        except Exception as e:
            self._b.cleanup()
            raise Unavailable(f"the kernel refused the fmod_ret program: {e}",
                              hint="see `mptcpize-py check`") from None
        # bcc 0.26 has KMOD_RET but no attach_fmod_ret: attach the TRACING program by fd. The link
        # lives as long as this fd, i.e. as long as this process (fail-open when it dies).
        self._link_fd = bcc.lib.bpf_attach_kfunc(fn.fd)
        if self._link_fd < 0:
            err = ctypes.get_errno() or -self._link_fd
            self._b.cleanup()
            raise Unavailable(f"cannot attach fmod_ret to {HOOK}: {os.strerror(err)}",
                              hint="see `mptcpize-py check`")
        self._events_open = False

    # --- selection -------------------------------------------------------------------------------
    def add_run_root(self, pid: int, run_id: int = 1) -> None:
        """Selects process `pid` and every process it forks from now on."""
        t = self._b[b"run_tgids"]
        t[t.Key(pid)] = t.Leaf(run_id, 0)

    def set_selection(self, exe_rules: dict[tuple[int, int], tuple[int, int]],
                      cgroup_rules: dict[int, tuple[int, int]], netns: set[int] | None) -> None:
        """Makes the policy maps equal to the arguments: exe_rules {(kernel dev, ino): (rule_id,
        action)}, cgroup_rules {cgroup id: (rule_id, action)}, netns = allowed netns inodes, or None
        for every namespace. sync_map: a key present in both the old and the new selection never stops
        matching, and any selection that fits the maps can follow any other."""
        flags = (abi.CFG_ALL_NETNS if netns is None else 0) \
            | (abi.CFG_HAS_EXE_RULES if exe_rules else 0) \
            | (abi.CFG_HAS_CGROUP_RULES if cgroup_rules else 0)
        self._set_flags(self._flags | flags)  # match by the old and the new rules while syncing
        exe, cg, ns = self._b[b"exe_rules"], self._b[b"cgroup_rules"], self._b[b"netns_allow"]
        sync_map(exe, [(exe.Key(dev, ino), exe.Leaf(*rule)) for (dev, ino), rule in exe_rules.items()])
        sync_map(cg, [(cg.Key(cgid), cg.Leaf(*rule)) for cgid, rule in cgroup_rules.items()])
        sync_map(ns, [(ns.Key(inum), ns.Leaf(1)) for inum in (netns or ())])
        self._set_flags(flags)

    def set_netns_mptcp(self, enabled: dict[int, bool]) -> None:
        """net.mptcp.enabled per netns inode, for a dry run on a kernel whose memory we cannot read it
        from (no mptcp_pernet_id in /proc/kallsyms). Namespaces not listed count as unreadable."""
        t = self._b[b"netns_mptcp"]
        sync_map(t, [(t.Key(inum), t.Leaf(1 if on else 0)) for inum, on in enabled.items()])

    def _set_flags(self, flags: int) -> None:
        cfg = self._b[b"config"]
        cfg[ctypes.c_int(0)] = cfg.Leaf(self._pernet_addr, self._enabled_offset, flags)
        self._flags = flags

    # --- reports ---------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        t = self._b[b"counters"]
        return {name: sum(t[t.Key(idx)]) for name, idx in abi.COUNTERS.items()}

    def rule_stats(self) -> dict[tuple[str, int], int]:
        """{(kind, rule id): sockets upgraded} for policy rules (not run trees), exact."""
        return {(abi.KIND_NAMES.get(k.value >> 32, "?"), k.value & 0xFFFFFFFF): sum(v)
                for k, v in self._b[b"rule_stats"].items()}

    def proc_stats(self) -> list[ProcStats]:
        return [ProcStats(k.tgid, v.upgraded, abi.KIND_NAMES.get(v.kind, "?"), v.rule_id, k.start_ns)
                for k, v in self._b[b"proc_stats"].items()]

    def exe_name(self, tgid: int, start_ns: int) -> str | None:
        """The file a run-tree process last exec'd, as the kernel saw it (None if unknown)."""
        t = self._b[b"exe_names"]
        try:
            return t[t.Key(start_ns=start_ns, tgid=tgid)].path.decode(errors="replace") or None
        except KeyError:
            return None

    def open_events(self, callback) -> None:
        """callback(UpgradeEvent) for every upgrade; call poll_events() to have them delivered."""
        table = self._b[b"events"]

        def on_event(_ctx, data, _size):
            ev = table.event(data)
            callback(UpgradeEvent(ev.pid, ev.tgid, ev.uid, ev.comm.decode(errors="replace"),
                                  ev.cgroup_id, ev.netns, ev.family,
                                  abi.KIND_NAMES.get(ev.kind, "?"), ev.rule_id, ev.start_ns))

        table.open_ring_buffer(on_event)
        self._events_open = True

    def poll_events(self, timeout_ms: int) -> None:
        if self._events_open:
            self._b.ring_buffer_poll(timeout_ms)

    def drain_events(self) -> None:
        if self._events_open:
            self._b.ring_buffer_consume()

    def close(self) -> None:
        if getattr(self, "_link_fd", -1) >= 0:
            os.close(self._link_fd)
            self._link_fd = -1
        if getattr(self, "_b", None) is not None:
            self._b.cleanup()
            self._b = None
