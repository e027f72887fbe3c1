"""Network namespaces: run code inside one (one in_netns for the whole tree), sysctls as a namespace
sees them, and the names `ip netns` gives (/run/netns/NAME bind mounts on nsfs)."""

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mptcpize_py.errors import MptcpizeError, PermissionDenied, UsageError
from mptcpize_py.host import libc, root

T = TypeVar("T")
NETNS_DIR = "/run/netns"
HOST_NETNS = "/proc/self/ns/net"   # the daemon's own namespace: the policy's "host"


def named_netns_dir() -> str:
    """Where `ip netns` names live for this process: /run/netns, the host's under a host root."""
    return root.host_path(NETNS_DIR)


def read_sysctl(name: str, proc: Path = Path("/proc/sys")) -> str | None:
    try:
        return (proc / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def in_netns(path: str | int | None, fn: Callable[[], T], label: str | None = None) -> T:
    """fn() run in the network namespace bound at `path` (/proc/PID/ns/net, /run/netns/NAME, or an
    open descriptor of one), in a
    short-lived thread: setns(CLONE_NEWNET) affects only the calling thread, and that thread ends with
    fn, so no other code of this process ever runs in the other namespace. Sockets fn creates belong to
    that namespace; so does what fn reads under /proc/thread-self/net or /proc/sys/net. path None: fn()
    here. Raises what fn raises; MptcpizeError when the namespace cannot be entered (named `label`
    in the message, default: the path)."""
    if path is None:
        return fn()
    what = label or (path if isinstance(path, str) else f"fd {path}")
    result: list = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            failure.append(MptcpizeError(f"no network namespace at {what}",
                                         hint="see 'ip netns list'"))
            return
        except OSError as e:
            failure.append(_enter_error(what, e))
            return
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
        except OSError as e:
            failure.append(_enter_error(what, e))
            return
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    t = threading.Thread(target=target, name="mptcpize-netns", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return result[0]


def read_sysctl_in_netns(ns_path: str, name: str) -> str | None:
    """A net.* sysctl as seen in the network namespace `ns_path` (/run/netns/NAME, /proc/PID/ns/net):
    /proc/sys/net shows the namespace of the reading thread. None when unreadable."""
    try:
        return in_netns(ns_path, lambda: read_sysctl(name))
    except (MptcpizeError, OSError):
        return None


def _enter_error(path: str, e: OSError) -> MptcpizeError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"cannot enter the network namespace {path}: {e.strerror}",
                                hint="run it as root")
    if e.errno == errno.EINVAL:
        return MptcpizeError(f"{path} is not a network namespace")
    return MptcpizeError(f"cannot enter the network namespace {path}: {e.strerror}")


def netns_names(netns_dir: str | None = None) -> dict[int, str]:
    """{inum: NAME} of the namespaces `ip netns` names (/run/netns/NAME bind mounts)."""
    names: dict[int, str] = {}
    netns_dir = netns_dir or named_netns_dir()
    try:
        entries = sorted(os.listdir(netns_dir))
        nsfs_dev = os.stat(HOST_NETNS).st_dev
    except OSError:
        return names
    for name in entries:
        try:
            st = os.stat(os.path.join(netns_dir, name))
        except OSError:
            continue
        if st.st_dev == nsfs_dev:  # a name whose mount is gone is a plain file: not a namespace
            names.setdefault(st.st_ino, name)
    return names


def netns_path(name: str, netns_dir: str | None = None) -> str:
    """/run/netns/NAME for a user-given NAME; UsageError for a name that is not one, MptcpizeError
    when no such namespace exists."""
    if not name or name in (".", "..") or "/" in name or not name.isprintable():
        raise UsageError(f"--netns {name!r}: not a namespace name (a name of 'ip netns list')",
                         hint="see 'ip netns list'")
    path = os.path.join(netns_dir or named_netns_dir(), name)
    try:
        is_netns = os.stat(path).st_dev == os.stat(HOST_NETNS).st_dev  # on nsfs: mounted
    except OSError:
        is_netns = False
    if not is_netns:
        raise MptcpizeError(f"no network namespace {name!r} ({path} is not one)",
                            hint="see 'ip netns list'")
    return path


def netns_inum(path: str, nsfs_dev: int | None = None) -> int | None:
    """The inum of the network namespace bound at `path`; None when there is none (yet): the file
    is missing, or exists but nothing is mounted on it (`ip netns add` creates, then mounts)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if nsfs_dev is None:
        nsfs_dev = os.stat(HOST_NETNS).st_dev  # every namespace file lives on the one nsfs superblock
    if st.st_dev != nsfs_dev:
        return None
    return st.st_ino
