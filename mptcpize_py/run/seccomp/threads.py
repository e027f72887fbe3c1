"""What the supervisor reads of a calling thread at each socket(), with the files kept open per thread.

Opening /proc/TID/... costs a path walk per file and call; a file kept open is read again with one
pread() (seq_file regenerates it from offset 0), and it stays bound to the task it was opened for: once
that task is gone, reads fail with ESRCH even if the tid is handed out again, so a cached entry can
never describe another thread. Everything the checks use is read afresh at every call (credentials,
cgroup, LSM label, namespaces); what is cached is the open files, the parsed credentials while the
bytes they came from are unchanged, and the process identity (tgid, start) of a live thread."""

import errno
import os
from collections.abc import Callable
from typing import NamedTuple

from mptcpize_py.run.seccomp.caller import Creds, parse_creds

_O = os.O_RDONLY | os.O_CLOEXEC


class Facts(NamedTuple):
    netns: tuple[int, int]       # (st_dev, st_ino) of its network namespace
    userns: tuple[int, int]
    creds: Creds
    cgroup: bytes
    label: bytes | None
    process: tuple[int, int]     # (tgid, process identity): the key of `run -v`'s rows
    ns_dir: int                  # /proc/TID/ns, open: to open its netns (valid until the next call)


class _Entry:
    __slots__ = ("status", "cgroup", "label", "ns_dir", "creds_key", "creds", "process")
    status: int      # open fds, -1 when not open
    cgroup: int
    label: int
    ns_dir: int
    creds_key: bytes | None   # the status lines `creds` was parsed from
    creds: Creds | None
    process: tuple[int, int] | None

    def fds(self) -> list[int]:
        return [fd for fd in (self.status, self.cgroup, self.label, self.ns_dir) if fd >= 0]


class ThreadFacts:
    """Per-thread open files, at most MAX threads (the oldest is forgotten first)."""

    MAX = 64   # 4 fds each at most: far below any RLIMIT_NOFILE

    def __init__(self, want_label: bool, process_id: Callable[[int], int]):
        self._want_label = want_label
        self._process_id = process_id
        self._entries: dict[int, _Entry] = {}

    def read(self, tid: int) -> Facts:
        """The caller's facts, now. OSError (ESRCH, ENOENT) when the thread is gone."""
        entry = self._entries.get(tid)
        if entry is not None:
            try:
                return self._read(entry)
            except OSError:   # that task is gone; the tid may be another thread's now
                self._forget(tid)
        entry = self._open(tid)
        try:
            facts = self._read(entry)
        except OSError:
            for fd in entry.fds():
                os.close(fd)
            raise
        if len(self._entries) >= self.MAX:
            self._forget(next(iter(self._entries)))
        self._entries[tid] = entry
        return facts

    def _open(self, tid: int) -> _Entry:
        e = _Entry()
        e.status = e.cgroup = e.label = e.ns_dir = -1
        e.creds_key, e.creds, e.process = None, None, None
        try:
            e.status = os.open(f"/proc/{tid}/status", _O)
            e.cgroup = os.open(f"/proc/{tid}/cgroup", _O)
            e.ns_dir = os.open(f"/proc/{tid}/ns", _O | os.O_DIRECTORY)
            if self._want_label:
                try:
                    e.label = os.open(f"/proc/{tid}/attr/current", _O)
                except OSError:
                    e.label = -1
        except OSError:
            for fd in e.fds():
                os.close(fd)
            raise
        return e

    def _read(self, e: _Entry) -> Facts:
        status = os.pread(e.status, 8192, 0)
        if not status:
            raise OSError(errno.ESRCH, "thread gone")
        # The lines credentials come from (Tgid..Groups, CapInh..CapAmb): parsed again only when
        # their bytes changed.
        a, b = status.find(b"\nTgid:"), status.find(b"\nNStgid:")
        c = status.find(b"\nCapInh:")
        key = status[a:b] + status[c:status.find(b"\nNoNewPrivs:", c)]
        if key != e.creds_key:
            e.creds, e.creds_key = parse_creds(status), key
        creds = e.creds
        assert creds is not None
        if e.process is None:
            e.process = (creds.tgid, self._process_id(creds.tgid))
        net = os.stat("net", dir_fd=e.ns_dir)
        user = os.stat("user", dir_fd=e.ns_dir)
        cgroup = os.pread(e.cgroup, 65536, 0)
        label = os.pread(e.label, 65536, 0) if e.label >= 0 else None
        return Facts((net.st_dev, net.st_ino), (user.st_dev, user.st_ino), creds, cgroup, label,
                     e.process, e.ns_dir)

    def _forget(self, tid: int) -> None:
        entry = self._entries.pop(tid, None)
        if entry is not None:
            for fd in entry.fds():
                os.close(fd)

    def close(self) -> None:
        for tid in list(self._entries):
            self._forget(tid)
