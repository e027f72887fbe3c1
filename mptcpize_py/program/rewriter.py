"""The loaded and attached program as the long-lived process holds it: file descriptors, and the maps
and ring buffer read through them (program/maps.py). One of two loaders hands the descriptors over
(program/prebuilt.py chooses): libbpf loads the prebuilt CO-RE object in this process
(program/prebuilt.py); or a bcc loader child compiles, loads and attaches (program/loader.py), hands
the descriptors over a Unix socket (SCM_RIGHTS) and exits, so that no LLVM stays mapped here.

The descriptors are received close-on-exec and held by this process only: when it exits or dies
(SIGKILL included), the links and the dry run's perf event close, the program is detached and new
sockets are plain TCP (fail-open), as when bcc lived in this process. A command that `run` starts
inherits none of them.
"""

import array
import ctypes
import dataclasses
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, cast

from mptcpize_py import abi
from mptcpize_py.errors import MptcpizeError, PermissionDenied, Unavailable
from mptcpize_py.host import libc, mounts
from mptcpize_py.program import attached, layout, maps, prebuilt
from mptcpize_py.program.handle import ProcStats, UpgradeEvent

EVENT_STRUCT = "mptcpize_event"   # what the program writes into its ring buffer (bpf/mptcpize.h)
HOOK_PROGRAM = "kmod_ret__update_socket_protocol"
# The loader child: this checkout's package first on its path, whatever the environment says, so that
# the child runs the same code as the parent. The descriptor number matches loader.CHILD_FD.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CHILD_FD = 3
_CHILD_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from mptcpize_py.program import loader; loader.child_main(sys.argv[2:])")
MAX_FDS = 128


def _error_from(d: dict) -> MptcpizeError:
    """The child's error as the parent raises it: same class, words, hint and exit code."""
    cls = {c.__name__: c for c in (MptcpizeError, Unavailable, PermissionDenied)}.get(
        str(d.get("class")), MptcpizeError)
    return cls(d.get("message") or "the program loader failed", hint=d.get("hint"),
               exit_code=d.get("exit_code"))


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _receive(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One message and its descriptors, received close-on-exec (MSG_CMSG_CLOEXEC): a descriptor that
    leaked into a command `run` execs would keep the program attached after we die. Not
    socket.recv_fds(): Python 3.11's ignores its flags argument."""
    fds = array.array("i")
    msg, ancdata, flags, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                          socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds), flags


def run_loader(dry_run: bool) -> tuple[dict, list[int]]:
    """Starts the loader child, waits for its one message and for its exit; returns (message, fds).
    Raises the child's error, or MptcpizeError when it died without a word."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)   # both close-on-exec
    argv = [sys.executable, "-P", "-c", _CHILD_CODE, str(PACKAGE_ROOT), str(os.getpid())]
    argv += ["--dry-run"] if dry_run else []
    try:
        # Its stdout is our stderr: bcc's compiler warnings must not land in a `run` command's or a
        # test's stdout. Nothing to read on stdin. No signal blocked, whatever our mask: SIGTERM and
        # Ctrl-C end a compile.
        pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, child.fileno(), CHILD_FD),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, 2, 1)], setsigmask=())
    except OSError as e:
        parent.close()
        raise MptcpizeError(f"cannot start the program loader ({sys.executable}): {e.strerror}") from None
    finally:
        child.close()
    msg, done = b"", False
    fds: list[int] = []
    try:
        with parent:
            msg, fds, flags = _receive(parent)
        if flags & socket.MSG_CTRUNC:
            raise MptcpizeError(f"the program loader sent more than {MAX_FDS} descriptors")
        done = True
    finally:
        if not done:
            _close_all(fds)
            try:
                os.kill(pid, signal.SIGKILL)   # interrupted: no half-loaded program left behind
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
    if not msg:
        code = os.waitstatus_to_exitcode(status)
        why = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise MptcpizeError(f"the program loader (pid {pid}) {why} before handing the program over",
                            hint="its error output is above; `mptcpize-py check` tells what is missing")
    data = json.loads(msg)
    if "error" in data:
        _close_all(fds)
        raise _error_from(data["error"])
    return data, fds


class Rewriter:
    """The loaded and attached program (a program.handle.ProgramHandle). Detaches on close() or when
    this process exits (fail-open).

    Rewriter(dry_run=True) holds the same decision on the socket() syscall tracepoint: it counts and
    reports what would be upgraded and changes no socket."""

    reads_netns_from_kernel: bool   # False: a dry run told net.mptcp.enabled by set_netns_mptcp()

    loader: str      # "libbpf" or "bcc": which one loaded the program
    detail: str      # the loader's version and what it loaded (the object, or bcc and its headers)

    def __init__(self, all_netns: bool = True, dry_run: bool = False, loader: str | None = None):
        self._fds: list[int] = []
        self._rule_ids_end = 0   # above every rule id set_selection was given: rule_stats reads below
        self._events: maps.RingBuffer | None = None
        if os.geteuid() != 0:
            raise PermissionDenied("loading the BPF program needs root (CAP_BPF, CAP_PERFMON, "
                                   "CAP_SYS_ADMIN)", hint="run it as root, e.g. with sudo")
        self.dry_run = dry_run
        self.loader, self.loader_reason = prebuilt.choose(loader)
        if self.loader == "libbpf":
            msg, self._fds = attached.message(prebuilt.load_and_attach(dry_run))
        else:
            msg, self._fds = run_loader(dry_run)
        try:
            fd = self._fds.__getitem__
            self._progs = {name: fd(i) for name, i in msg["progs"].items()}
            self._links = {name: (fd(i), kind) for name, (i, kind) in msg["links"].items()}
            self._hook = msg["hook"]
            self.detail = msg["detail"]
            declared = layout.maps()
            missing = sorted(set(declared) - set(msg["maps"]))
            if missing:
                raise MptcpizeError(f"the program loader sent no descriptor for map(s) {', '.join(missing)}")
            self._maps = {name: maps.BpfMap(fd(i), declared[name]) for name, i in msg["maps"].items()}
            self._pernet_addr, self._enabled_offset = msg["pernet_addr"], msg["enabled_offset"]
            self.reads_netns_from_kernel = bool(self._pernet_addr)
            self._set_flags(abi.CFG_ALL_NETNS if all_netns else 0)
        except BaseException:
            self.close()
            raise

    # --- what it holds -----------------------------------------------------------------------------
    def held(self) -> dict[str, int]:
        """{"prog:NAME" / "map:NAME" / "link:NAME": kernel object id} of the BPF objects held (a
        dry run's perf event has none and is left out); for diagnostics and tests."""
        out = {f"prog:{n}": maps.object_id(fd) for n, fd in self._progs.items()}
        out |= {f"map:{n}": maps.object_id(m.fd) for n, m in self._maps.items()}
        out |= {f"link:{n}": maps.object_id(fd) for n, (fd, kind) in self._links.items() if kind == "link"}
        return out

    def hook_program_fd(self) -> int:
        """The descriptor of the program on the hook (the fmod_ret program, or the dry run's socket()
        tracepoint program): benchmarks read its run time (BPF_ENABLE_STATS)."""
        if self.dry_run:
            # bcc names a TRACEPOINT_PROBE(a, b) program tracepoint__a__b
            return self._progs["tracepoint__" + self._hook.split(":", 1)[1].replace(":", "__")]
        return self._progs[HOOK_PROGRAM]

    def detach_hook(self) -> None:
        """Detaches the program from the hook alone (the fmod_ret link, or the dry run's socket()
        tracepoint): benchmarks compare attached and not without a new compile."""
        fd, _kind = self._links.pop(self._hook, (-1, ""))
        if fd >= 0:
            self._fds.remove(fd)
            os.close(fd)

    def attach_hook(self) -> None:
        """Attaches the program to the hook again after detach_hook()."""
        if self._hook in self._links:
            return
        if self.dry_run:
            tp = self._hook.split(":", 1)[1]   # "tp:syscalls:sys_enter_socket"
            with open(f"{mounts.TRACEFS}/events/{tp.replace(':', '/')}/id") as f:
                tp_id = int(f.read())
            fd, kind = libc.attach_to_tracepoint(tp_id, self.hook_program_fd()), "perf_event"
        else:
            fd, kind = maps.attach_tracing(self._progs[HOOK_PROGRAM]), "link"
        self._fds.append(fd)
        self._links[self._hook] = (fd, kind)

    # --- selection -------------------------------------------------------------------------------
    def add_run_root(self, pid: int, run_id: int = 1) -> None:
        """Selects process `pid` and every process it forks from now on."""
        t = self._maps["run_tgids"]
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
        ids = [rid for rid, _action in (*exe_rules.values(), *cgroup_rules.values())]
        self._rule_ids_end = max([self._rule_ids_end, *(rid + 1 for rid in ids)])
        self._set_flags(self._flags | flags)  # match by the old and the new rules while syncing
        exe, cg, ns = self._maps["exe_rules"], self._maps["cgroup_rules"], self._maps["netns_allow"]
        maps.sync_map(exe, [(exe.Key(dev, ino), exe.Leaf(*rule)) for (dev, ino), rule in exe_rules.items()])
        maps.sync_map(cg, [(cg.Key(cgid), cg.Leaf(*rule)) for cgid, rule in cgroup_rules.items()])
        maps.sync_map(ns, [(ns.Key(inum), ns.Leaf(1)) for inum in (netns or ())])
        self._set_flags(flags)

    def set_netns_mptcp(self, enabled: dict[int, bool]) -> None:
        """net.mptcp.enabled per netns inode, for a dry run on a kernel whose memory we cannot read it
        from (no mptcp_pernet_id in /proc/kallsyms). Namespaces not listed count as unreadable."""
        t = self._maps["netns_mptcp"]
        maps.sync_map(t, [(t.Key(inum), t.Leaf(1 if on else 0)) for inum, on in enabled.items()])

    def _set_flags(self, flags: int) -> None:
        cfg = self._maps["settings"]
        cfg[cfg.Key(0)] = cfg.Leaf(self._pernet_addr, self._enabled_offset, flags)
        self._flags = flags

    # --- reports ---------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        t = self._maps["counters"]
        return {name: sum(v.value for v in t[t.Key(idx)]) for name, idx in abi.COUNTERS.items()}

    def rule_stats(self) -> dict[int, int]:
        """{rule id: sockets upgraded} for policy rules (not run trees), exact; ids that upgraded none
        are left out. The kernel counts per id, whatever the kind of rule (a reload renumbers)."""
        sums = self._maps["rule_stats"].percpu_sums(self._rule_ids_end)
        return {rid: n for rid, n in enumerate(sums) if n}

    def proc_stats(self) -> list[ProcStats]:
        return [ProcStats(k.tgid, v.upgraded, abi.KIND_NAMES.get(v.kind, "?"), v.rule_id, k.start_ns)
                for k, v in self._maps["proc_stats"].items()]

    def exe_name(self, tgid: int, start_ns: int) -> str | None:
        """The file a run-tree process last exec'd, as the kernel saw it (None if unknown)."""
        t = self._maps["exe_names"]
        v = t.lookup(t.Key(start_ns=start_ns, tgid=tgid))
        return (v.path.decode(errors="replace") or None) if v is not None else None

    def open_events(self, callback) -> None:
        """callback(UpgradeEvent) for every upgrade; call poll_events() to have them delivered. The
        event's fields are the record's members of the same names (kind as a name, text decoded)."""
        record = cast(type[ctypes.Structure], layout.structs()[EVENT_STRUCT])
        members = {f[0] for f in record._fields_}
        wanted = [f.name for f in dataclasses.fields(UpgradeEvent)]
        absent = [n for n in wanted if n not in members]
        if absent:
            raise MptcpizeError(f"struct {EVENT_STRUCT} in {abi.HEADER.name} has no {', '.join(absent)}")

        def on_record(ev) -> None:
            values: dict[str, Any] = {}
            for name in wanted:
                v = getattr(ev, name)
                values[name] = abi.KIND_NAMES.get(v, "?") if name == "kind" else \
                    v.decode(errors="replace") if isinstance(v, bytes) else v
            callback(UpgradeEvent(**values))

        self._events = maps.RingBuffer(self._maps["events"].fd, record, on_record)

    def poll_events(self, timeout_ms: int) -> None:
        if self._events is not None:
            self._events.poll(timeout_ms)

    def drain_events(self) -> None:
        if self._events is not None:
            self._events.consume()

    def close(self) -> None:
        """Detaches (the hook first) and lets go of every descriptor."""
        if self._events is not None:
            self._events.close()
            self._events = None
        hook = getattr(self, "_links", {}).get(getattr(self, "_hook", None))
        fds = [hook[0]] if hook else []
        _close_all(fds + [fd for fd in self._fds if fd not in fds])
        self._fds, self._links, self._progs, self._maps = [], {}, {}, {}
