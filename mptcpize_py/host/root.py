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

import ctypes
import errno
import os
import struct

from mptcpize_py.errors import UsageError
from mptcpize_py.host import libc

ENV = "MPTCPIZE_HOST_ROOT"
_AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10

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
        how = ctypes.create_string_buffer(
            struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS), 24)
        try:
            return libc.syscall(libc.syscall_number("openat2"), dirfd, ctypes.c_char_p(os.fsencode(path)),
                                how, 24)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM):
                raise OSError(e.errno, "openat2() is needed to resolve paths in the host root "
                                       "(Linux >= 5.6, allowed by the container's seccomp profile)", path) \
                    from None
            raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(dirfd)


def blind_spot() -> str | None:
    """One line: what the daemon cannot see of the host from where it runs (None on the host itself)."""
    if _root == "/":
        return None
    return (f"in a container (host root {_root}): systemd is not asked, unit rules use systemd's "
            "default cgroup names (/system.slice/NAME.service); a unit with Slice= or a custom cgroup "
            "needs a cgroup rule")
