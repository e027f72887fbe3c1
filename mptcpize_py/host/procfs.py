"""Processes: the few facts we read about them, each in one place. psutil lists processes and gives
their parent and name; /proc is read raw where psutil cannot serve, each place saying why: the exact
start time (pid-reuse identity), the exe link, the thread group id, cgroup, network namespace,
capabilities, socket inodes. (The seccomp supervisor reads per-thread credentials and namespaces raw
in its hot path: run/seccomp/caller.py, supervisor.py.)

Every reader returns None when the process is gone or not ours to inspect: a pid is a moment's name.
"""

import errno
import os
import re
from collections.abc import Iterable
from types import ModuleType

from mptcpize_py.host import root

PROC = "/proc"


def _psutil() -> ModuleType:
    """psutil, imported on first use: `run` (seccomp) imports this module for raw reads alone and
    should not pay psutil's import (10-20 ms here) before its command starts."""
    import psutil
    return psutil


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def stat_fields(text: str) -> list[str]:
    """/proc/PID/stat fields after comm (field 2, which may hold spaces and ')'): [state, ppid, ...];
    starttime (field 22) is index 19."""
    return text[text.rindex(")") + 2:].split()


def parent_pid(pid: int) -> int | None:
    """The parent's pid (0 for init and kernel threads' kthreadd); None: gone or not ours to see."""
    psutil = _psutil()
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:   # NoSuchProcess, AccessDenied
        return None


def parent_and_tgid(pid: int) -> tuple[int, int | None]:
    """(parent pid, thread group id) of the task `pid`, which may name a thread: its tgid is then
    another pid. Raises ProcessLookupError when there is no such task, another OSError when it may
    not be read. The tgid is read raw: psutil has no thread group id (psutil.Process(tid) works)."""
    psutil = _psutil()
    try:
        ppid = psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}") from None
    except psutil.AccessDenied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES)) from None
    try:
        with open(f"{PROC}/{pid}/status", encoding="utf-8", errors="replace") as f:
            tgid = parse_status_field(f.read(), "Tgid")
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}") from None
    return ppid, int(tgid) if tgid is not None else None


def starttime(pid: int, proc: str = PROC) -> int | None:
    """Clock ticks after boot at which the process started: tells a recycled pid from the same process.
    Raw: psutil's create_time() is float seconds since the epoch (boot time added), which the exact
    comparisons with the BPF program's start_boottime and with a stored lock owner cannot use."""
    text = read_text(f"{proc}/{pid}/stat")
    try:
        return int(stat_fields(text)[19]) if text else None
    except (ValueError, IndexError):
        return None


# USER_HZ, the unit of /proc/PID/stat's times (100 on x86_64, whatever the kernel's HZ).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def boottime_to_ticks(start_ns: int) -> int:
    """A task's start_boottime (ns after boot) as /proc/PID/stat field 22 shows it: the kernel's
    nsec_to_clock_t() (kernel/time/time.c), ns / (NSEC_PER_SEC / USER_HZ) when USER_HZ divides 1e9."""
    return start_ns // (1_000_000_000 // CLOCK_TICKS)


def is_process(pid: int, start_ns: int, proc: str = PROC) -> bool:
    """Whether `pid` is now the process that started start_ns after boot (the BPF program's identity
    of a process: its leader's start_boottime); False once it exited, also when the pid was recycled.
    Two processes given the same pid within one clock tick (10 ms) are not told apart here."""
    return starttime(pid, proc) == boottime_to_ticks(start_ns)


def exe_of_process(pid: int, start_ns: int, proc: str = PROC) -> str | None:
    """exe(pid), provided pid is still the process that started at start_ns (see is_process)."""
    path = exe(pid, proc)
    # Read, then check: if it is still that process now, it was when the link was read.
    return path if path is not None and is_process(pid, start_ns, proc) else None


def exe(pid: int | str, proc: str = PROC) -> str | None:
    """The /proc/PID/exe link as the kernel gives it. Raw: where the link may not be read (EACCES),
    psutil's Process.exe() answers argv[0] when it names an executable file, which any process sets."""
    try:
        return os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return None


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path from /proc/PID/cgroup (the "0::/path" line). Lines end at "\n" only: a
    cgroup name may hold other line breaks (\v, \f, \x1c…) that str.splitlines() would split on."""
    for line in text.split("\n"):
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def cgroup(pid: int | str, proc: str = PROC) -> str | None:
    """Raw: psutil has no cgroup. The host's path also from a container's cgroup namespace."""
    text = root.in_host_cgroupns(lambda: read_text(f"{proc}/{pid}/cgroup"))
    return parse_cgroup(text) if text else None


def parse_status_field(text: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def netns_inum(pid: int | str, proc: str = PROC) -> int | None:
    """The inum of a process's network namespace (None: gone or not ours to see). Raw: psutil has no
    namespaces."""
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None


CAPABILITY_BITS = {"CAP_SYS_ADMIN": 21, "CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39}


def missing_capabilities(names: Iterable[str], status_text: str | None = None) -> list[str]:
    """Those of `names` not in this process's effective capability set (/proc/self/status CapEff;
    raw: psutil has no capabilities)."""
    if status_text is None:
        status_text = read_text(f"{PROC}/self/status")
        if status_text is None:
            return []
    eff = parse_status_field(status_text, "CapEff")
    if eff is None:
        return []
    return [n for n in names if not int(eff, 16) >> CAPABILITY_BITS[n] & 1]


def socket_owners(inodes: Iterable[int] | None = None, proc: str = PROC) -> dict[int, list[int]]:
    """{socket inode: [pids holding an fd to it]}, pids ascending. Only `inodes` when given (a socket
    inherited over fork is held by several processes). Processes we may not inspect are skipped.
    Raw: psutil's net_connections() gives no inode, and its open_files() leaves sockets out."""
    wanted = None if inodes is None else set(inodes)
    owners: dict[int, list[int]] = {}
    if wanted is not None and not wanted:
        return owners
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return owners
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                ino = int(target[8:-1])
                if wanted is None or ino in wanted:
                    lst = owners.setdefault(ino, [])
                    if not lst or lst[-1] != pid:
                        lst.append(pid)
    return owners


def processes_named(names: Iterable[str]) -> list[tuple[int, str, int | None]]:
    """(pid, name, netns inum) of the running processes whose executable is named one of `names`
    (its base name; "NetworkManager", "mptcpd"), pids ascending. The name (comm, 15 bytes) picks
    candidates cheaply; the exe link confirms, because any process may call itself anything. Where exe
    may not be read (another user's process, without CAP_SYS_PTRACE: not root, or root in a unit whose
    bounding set lacks it), the name alone decides, and the netns inum is None (unknown) when
    /proc/PID/ns/net may not be read either. No exe at all: a kernel thread, or gone."""
    psutil = _psutil()
    wanted = set(names)
    out: list[tuple[int, str, int | None]] = []
    for p in psutil.process_iter():
        try:
            name = p.name()
        except psutil.Error:
            continue   # gone
        if name not in wanted:
            continue
        try:   # raw, not psutil's exe(), which answers argv[0] where the link may not be read
            path = os.readlink(f"{PROC}/{p.pid}/exe")
        except PermissionError:
            path = None
        except OSError:
            continue
        if path is not None and path.removesuffix(" (deleted)").rsplit("/", 1)[-1] != name:
            continue   # (deleted): replaced by a package upgrade, still that program
        out.append((p.pid, name, netns_inum(p.pid)))
    return sorted(out)
