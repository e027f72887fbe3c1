"""Mounts: /proc/self/mountinfo parsed, the cgroup v2 hierarchy found, tracefs mounted when missing."""

import os
from collections.abc import Iterable
from dataclasses import dataclass

from mptcpize_py.errors import Unavailable
from mptcpize_py.host import libc, root
from mptcpize_py.host.files import mkdev

DEFAULT_CGROUP2_MOUNT = "/sys/fs/cgroup"
TRACEFS = "/sys/kernel/tracing"


def ensure_tracefs() -> None:
    """Mounts tracefs at /sys/kernel/tracing when it is not (systemd does at boot; minimal systems
    and containers may not): bcc reads tracepoint formats there."""
    if os.path.isdir(f"{TRACEFS}/events"):
        return
    try:
        libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs")
    except OSError as e:
        raise Unavailable(f"tracefs is not mounted at {TRACEFS} and mounting it failed: {e.strerror}",
                          hint=f"mount -t tracefs tracefs {TRACEFS}") from None


PROC_MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    mount_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    fstype: str

    @property
    def kernel_dev(self) -> int:
        """The superblock's s_dev as the kernel stores it."""
        return mkdev(self.major, self.minor)


def _unescape_mountinfo(s: str) -> str:
    # The kernel escapes ' ', '\t', '\n' and '\\' in paths as \ooo (fs/proc_namespace.c, mangle()).
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/PID/mountinfo lines -> Mounts (malformed lines are skipped)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            mounts.append(Mount(int(fields[0]), int(major), int(minor), _unescape_mountinfo(fields[3]),
                                _unescape_mountinfo(fields[4]), fields[sep + 1]))
        except (ValueError, IndexError):
            continue
    return mounts


def find_cgroup2_mount(mounts: Iterable[Mount]) -> Mount | None:
    """The cgroup v2 hierarchy's mount: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid)
    first, else the first cgroup2 mount. Only mounts of the whole hierarchy (root "/") count: inside
    a cgroup namespace the mount's root is a subtree and policy paths (which are absolute) would not
    map onto it.

    With a host root (host/root.py) only the host's own mounts under it count, whatever their root
    field says: the host mounted its whole hierarchy there, and a container in a cgroup namespace of
    its own sees that mount's root relative to its namespace ("/../.."); cgroup ids (inodes) are the
    same in every namespace."""
    if root.is_container():
        base = root.host_root()
        candidates = [m for m in mounts if m.fstype == "cgroup2" and m.mount_point.startswith(base + "/")]
    else:
        candidates = [m for m in mounts if m.fstype == "cgroup2" and m.root == "/"]
    for preferred in (root.host_path(DEFAULT_CGROUP2_MOUNT),
                      root.host_path(DEFAULT_CGROUP2_MOUNT + "/unified")):
        for m in candidates:
            if m.mount_point == preferred:
                return m
    return candidates[0] if candidates else None


def read_mounts() -> list[Mount]:
    with open(PROC_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())
