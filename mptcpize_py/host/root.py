"""The host's root when the daemon runs in a container (`--host-root DIR`, node_exporter's --path.rootfs).

A DaemonSet mounts the node's `/` read-only at DIR (conventionally /host, with HostToContainer
propagation so that `ip netns add` on the node shows up). With hostPID and hostNetwork, the process
table and the network namespace are already the node's; what is not is the file system. Everything that
names a host path goes through here, read where the OS is touched (host/, resolve.py):

- executables: `exe = "/usr/bin/curl"` is opened under DIR with openat2(RESOLVE_IN_ROOT), so the
  node's absolute symlinks (/bin -> usr/bin, alternatives) resolve in the node's tree, never the image's;
- cgroups: the cgroup2 hierarchy mounted under DIR (DIR/sys/fs/cgroup, or .../unified on hybrid hosts);
- named network namespaces: DIR/run/netns.

What cannot be reached from a container is said in one line (blind_spot()): systemd is not asked
(systemctl talks to the container's /run), so unit rules use systemd's default cgroup names.

The setting is process-wide and set once at start (cli), before anything resolves: a function, not a
constant, so that it is read where it is used. The environment variable MPTCPIZE_HOST_ROOT is the
default, so that `kubectl exec POD -- mptcpize-py check` sees what the daemon sees.
"""

import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from mptcpize_py.errors import UsageError
from mptcpize_py.host import files, libc

T = TypeVar("T")
ENV = "MPTCPIZE_HOST_ROOT"

_root = "/"


def set_host_root(path: str | None) -> None:
    """`path` is where the host's `/` is mounted; None or "/": this process's own root."""
    global _root
    if not path or os.path.normpath(path) == "/":
        _root = "/"
        return
    if not os.path.isabs(path):
        raise UsageError(f"--host-root {path!r}: not an absolute path")
    if not os.path.isdir(path):
        raise UsageError(f"--host-root {path}: not a directory",
                         hint="mount the host's / there (hostPath / at /host, read-only)")
    _root = os.path.normpath(path)


def set_from_environment() -> None:
    set_host_root(os.environ.get(ENV) or None)


def host_root() -> str:
    return _root


def is_container() -> bool:
    """True when a host root other than / is set."""
    return _root != "/"


def host_path(path: str) -> str:
    """The host's absolute `path` as this process reaches it (lexical; for trusted, fixed paths such as
    /run/netns or /sys/fs/cgroup, not for policy values: see open_in_host)."""
    if _root == "/":
        return path
    return os.path.join(_root, os.path.normpath("/" + path).lstrip("/"))


def shown(path: str) -> str:
    """A path this process reached (under the host root) as the host names it."""
    if _root != "/" and (path == _root or path.startswith(_root + "/")):
        return path[len(_root):] or "/"
    return path


def open_in_host(path: str) -> int:
    """open(`path`, O_PATH) in the host's tree: every symlink, absolute ones included, resolved as if
    the host root were `/` (openat2 RESOLVE_IN_ROOT, Linux 5.6), and no /proc magic links. Raises
    OSError (ELOOP for a magic link or a loop)."""
    dirfd = os.open(_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = files.openat2(path, os.O_PATH | os.O_CLOEXEC,
                           files.RESOLVE_IN_ROOT | files.RESOLVE_NO_MAGICLINKS, dirfd)
    finally:
        os.close(dirfd)
    if fd is None:
        raise OSError(errno.ENOSYS, "openat2() is needed to resolve paths in the host root "
                                    "(Linux >= 5.6, allowed by the container's seccomp profile)", path)
    return fd


def in_host_cgroupns(fn: Callable[[], T]) -> T:
    """fn() with /proc/PID/cgroup rendered as the host sees it. The kernel writes a process's cgroup
    path relative to the reader's cgroup namespace (kernel/cgroup/cgroup.c, proc_cgroup_show; since
    Linux 4.6), so a daemon in a container with a namespace of its own (containerd on cgroup v2) would
    read "/../../system.slice/x.service". Run in a short-lived thread that joined the host's cgroup
    namespace (setns needs CAP_SYS_ADMIN; a cgroup namespace, unlike a mount namespace, can be joined
    by one thread alone). Not in a container, already in the host's namespace, or when it cannot be
    joined: fn() here."""
    if _root == "/":
        return fn()
    fd = _host_cgroupns()
    if fd is None:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            libc.setns(fd, libc.CLONE_NEWCGROUP)
        except OSError:
            pass   # the caller's view: relative paths, still better than none
        try:
            result.append(fn())
        except BaseException as e:   # handed to the caller's thread
            failure.append(e)
    try:
        t = threading.Thread(target=target, name="host-cgroupns")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if failure:
        raise failure[0]
    return result[0]


def _host_cgroupns() -> int | None:
    """An open descriptor of the host's cgroup namespace, None when ours is it or none can be opened:
    PID 1's (with hostPID; reading it takes CAP_SYS_PTRACE), else that of the nearest ancestor outside
    our namespace (the container runtime's shim, which runs in the host's): some sandboxes refuse
    access to PID 1 even so."""
    try:
        own = os.stat("/proc/self/ns/cgroup").st_ino
    except OSError:
        return None
    pid, seen = 1, 0
    candidates = [1]
    try:
        pid = os.getppid()
        while pid > 1 and seen < 64:   # bounded: a pid is a moment's name
            candidates.append(pid)
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
            pid = int(text[text.rindex(")") + 2:].split()[1])
            seen += 1
    except (OSError, ValueError, IndexError):
        pass
    for pid in candidates:
        try:
            fd = os.open(f"/proc/{pid}/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_ino != own:
            return fd
        os.close(fd)
        if pid == 1:
            return None   # PID 1 shares ours: we are in the host's namespace
    return None


def blind_spot() -> str | None:
    """One line: what the daemon cannot see of the host from where it runs (None on the host itself)."""
    if _root == "/":
        return None
    return (f"in a container (host root {_root}): systemd is not asked, unit rules use systemd's "
            "default cgroup names (/system.slice/NAME.service); a unit with Slice= or a custom cgroup "
            "needs a cgroup rule")
