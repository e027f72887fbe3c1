"""Which endpoints are ours: a record per network namespace of the endpoints mptcpize-py added and the
limits it set, kept in the runtime directory beside the control socket (/run/mptcpize-py/paths.json,
gone at reboot like the endpoints themselves). A restarted daemon, `paths --apply` and `paths` read it to
tell our endpoints from foreign ones.

One manager at a time: whoever changes endpoints (the daemon, `paths --apply`) holds paths.lock
(flock) meanwhile, and names itself in the record (`owner`).

An endpoint is recorded as the kernel listed it after we added it: id, address, flags and interface
index. Ownership needs all four (plan.py); a record of version 1 (id and address only) proves nothing,
and its endpoints are taken for foreign.

A namespace is keyed by its cookie (SO_NETNS_COOKIE, never reused while the machine runs); its inode
number, which the kernel hands out again once a namespace is gone, only where there is no cookie.
"""

import errno
import fcntl
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs
from mptcpize_py.host.files import write_atomic
from mptcpize_py.paths.plan import Limits, OwnKey

STATE_FILE = "paths.json"
LOCK_FILE = "paths.lock"
VERSION = 2

log = logging.getLogger("mptcpize_py.paths")


@dataclass
class NetnsRecord:
    name: str
    endpoints: set[OwnKey] = field(default_factory=set)   # (id, address, flags, ifindex) we added
    limits_before: Limits | None = None   # the limits we found, given back when we stop
    limits_set: Limits | None = None      # the limits we set

    def to_json(self) -> dict:
        return {"name": self.name,
                "endpoints": [{"id": i, "address": a, "flags": f, "ifindex": x}
                              for i, a, f, x in sorted(self.endpoints)],
                "limits_before": _limits_json(self.limits_before),
                "limits_set": _limits_json(self.limits_set)}

    @classmethod
    def from_json(cls, d: dict) -> "NetnsRecord":
        return cls(str(d["name"]), {(int(e["id"]), str(e["address"]), int(e["flags"]), int(e["ifindex"]))
                                    for e in d["endpoints"] if "flags" in e and "ifindex" in e},
                   _limits(d.get("limits_before")), _limits(d.get("limits_set")))

    @property
    def empty(self) -> bool:
        return not self.endpoints and self.limits_set is None


def _limits_json(lim: Limits | None) -> list[int] | None:
    return None if lim is None else [lim.subflows, lim.add_addr_accepted]


def _limits(v) -> Limits | None:
    return None if v is None else Limits(int(v[0]), int(v[1]))


def netns_key(cookie: int | None, inum: int) -> str:
    return f"cookie:{cookie}" if cookie is not None else f"inum:{inum}"


def read(directory: Path) -> tuple[dict | None, dict[str, NetnsRecord]]:
    """(owner, records) as last written; ({}, {}) when there is no record or it cannot be read."""
    try:
        data = json.loads((Path(directory) / STATE_FILE).read_text())
        netns = data.get("netns", {})
        records = {k: NetnsRecord.from_json(v) for k, v in netns.items()}
        unproven = sum(len(v["endpoints"]) for v in netns.values()) - \
            sum(len(r.endpoints) for r in records.values())
        if unproven:
            log.warning("paths: %d endpoint(s) in %s recorded without flags and interface (by an older "
                        "mptcpize-py) are taken for foreign, and left as they are: `ip mptcp endpoint "
                        "delete` removes them", unproven, Path(directory) / STATE_FILE)
        return data.get("owner"), records
    except (FileNotFoundError, PermissionError):   # none yet; not root (the directory is 0700)
        return None, {}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        log.warning("paths: ignoring %s: %s", Path(directory) / STATE_FILE, e)
        return None, {}


def owner_alive(owner: dict | None) -> bool:
    """Whether the process named in the record still runs (pid and start time)."""
    if not owner:
        return False
    try:
        return procfs.starttime(int(owner["pid"])) == int(owner["start"])
    except (KeyError, TypeError, ValueError):
        return False


def describe_owner(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return f"mptcpize-py {owner.get('what', '?')} (pid {owner.get('pid', '?')})"


class PathsState:
    """The record, held by the one process that manages endpoints (lock() to unlock())."""

    def __init__(self, directory: Path, what: str):
        self.directory = Path(directory)
        self.what = what              # "daemon", "paths --apply": named in the record and in errors
        self.records: dict[str, NetnsRecord] = {}
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def lock(self) -> None:
        """Takes the lock and reads the record; MptcpizeError naming the holder when another has it."""
        if self._fd is not None:
            return
        try:
            # Beside the control socket, in the directory the daemon keeps root-only (0700).
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.directory)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise MptcpizeError(f"{self.directory}: refused: not a directory of uid {os.geteuid()}",
                                    hint="remove it; mptcpize-py creates it itself")
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as e:
            raise MptcpizeError(f"cannot open {self.directory / LOCK_FILE}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                owner, _ = read(self.directory)
                raise MptcpizeError(f"{describe_owner(owner)} manages MPTCP endpoints already",
                                    hint="one manager at a time: change the policy and let that one "
                                         "reload it") from None
            raise MptcpizeError(f"cannot lock {self.directory / LOCK_FILE}: {e.strerror}") from None
        self._fd = fd
        _, self.records = read(self.directory)
        self.save()

    def save(self) -> None:
        self.records = {k: r for k, r in self.records.items() if not r.empty}
        pid = os.getpid()
        owner = {"pid": pid, "start": procfs.starttime(pid), "what": self.what} if self.locked else None
        text = json.dumps({"version": VERSION, "owner": owner,
                           "netns": {k: r.to_json() for k, r in sorted(self.records.items())}},
                          indent=1, sort_keys=True)
        try:
            write_atomic(self.directory / STATE_FILE, text + "\n", mode=0o644)
        except OSError as e:   # the endpoints are right; only a restart would take ours for foreign
            log.error("paths: cannot write %s: %s", self.directory / STATE_FILE, e.strerror)

    def unlock(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self.save()   # owner: none
        os.close(fd)
