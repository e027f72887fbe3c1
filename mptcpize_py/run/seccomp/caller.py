"""The caller's context, as far as a new socket records it: credentials, capabilities, network
namespace; and a thread that takes that context on to create a socket for the caller."""

import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import cast

from mptcpize_py.abi import IPPROTO_MPTCP
from mptcpize_py.host import libc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Creds:
    """What a new socket's file records of its creator (f_cred) and its owner (sk_uid = fsuid)."""
    tgid: int
    euid: int
    fsuid: int
    egid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_eff: int
    cap_prm: int
    cap_inh: int

    def same_as(self, other: "Creds") -> bool:
        return (self.euid, self.fsuid, self.egid, self.fsgid, self.groups, self.cap_eff) == \
            (other.euid, other.fsuid, other.egid, other.fsgid, other.groups, other.cap_eff)

    def holds(self, uid: int, gid: int) -> bool:
        """Whether `uid` is one of the user ids a socket takes from these credentials, or `gid` one
        of the group ids."""
        return uid in (self.euid, self.fsuid) or gid in (self.egid, self.fsgid, *self.groups)


def read_creds(pid: int | str) -> Creds:
    """Tgid and credentials of a thread, from /proc/PID/status: ids as our pid/user namespace sees
    them, which is what the raw set*id syscalls take (an id it does not map reads as overflow_ids());
    capabilities relative to the thread's own user namespace, meaningful to us only if it is ours."""
    fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 8192)
    finally:
        os.close(fd)
    return parse_creds(data)


def parse_creds(data: bytes) -> Creds:
    """Creds from the bytes of a /proc/PID/status."""

    def field(name: bytes) -> list[bytes]:
        start = data.index(name) + len(name)
        return data[start:data.index(b"\n", start)].split()

    uid, gid = field(b"\nUid:"), field(b"\nGid:")
    return Creds(int(field(b"\nTgid:")[0]), int(uid[1]), int(uid[3]), int(gid[1]), int(gid[3]),
                 tuple(sorted(int(g) for g in field(b"\nGroups:"))),
                 *(int(field(k)[0], 16) for k in (b"\nCapEff:", b"\nCapPrm:", b"\nCapInh:")))


def overflow_ids() -> tuple[int, int] | None:
    """(uid, gid) that /proc shows in place of an id our user namespace does not map (the kernel's
    overflowuid/overflowgid); None when it maps every id (the initial one), so that every id read
    is exact. Where it is not None, an id read as that value may be the real one or any unmapped one."""
    if all(_read_text(f"/proc/self/{kind}_map").split() == ["0", "0", "4294967295"]
           for kind in ("uid", "gid")):
        return None
    return (int(_read_text("/proc/sys/kernel/overflowuid")),
            int(_read_text("/proc/sys/kernel/overflowgid")))


def _read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192).decode()
    finally:
        os.close(fd)


class CallerContextThread:
    """A thread that may enter the caller's network namespace and take its credentials (both are
    per-thread in the kernel) to create one socket, then returns home. The supervisor thread itself
    never changes namespace or credentials. A thread that cannot return home retires itself; so does
    one that took credentials when `home` cannot be restored by value (restorable=False: it holds an
    id read as the overflow id, which set*id() would turn into that real id): its successor starts
    with the supervisor thread's own credentials."""

    def __init__(self, home_netns_fd: int, home: Creds, restorable: bool = True):
        self._home_netns_fd = home_netns_fd
        self._home = home
        self._restorable = restorable
        self._cv = threading.Condition()
        self._request: tuple[int | None, Creds | None, int, int] | None = None
        self._result: int | OSError | None = None
        self.alive = True
        self._thread = threading.Thread(target=self._loop, name="mptcpize-seccomp-ctx", daemon=True)
        self._thread.start()

    def make(self, netns_fd: int | None, creds: Creds | None, family: int, type_: int,
             timeout: float = 5.0) -> int:
        """Returns the new fd, or raises OSError. netns_fd/creds None mean 'as the supervisor'."""
        with self._cv:
            self._request, self._result = (netns_fd, creds, family, type_), None
            self._cv.notify()
            if not self._cv.wait_for(lambda: self._result is not None, timeout):
                self.alive = False  # wedged: never reuse it
                raise OSError(errno.ETIMEDOUT, "socket helper thread did not answer")
            result = self._result
        if isinstance(result, OSError):
            raise result
        return cast(int, result)   # not None: waited for

    def stop(self) -> None:
        with self._cv:
            self.alive = False
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._request is not None or not self.alive)
                if self._request is None:
                    return
                request, self._request = self._request, None
            result: int | OSError
            try:
                result = self._make(*request)
            except OSError as e:
                result = e
            with self._cv:
                self._result = result
                self._cv.notify_all()
            if not self.alive:
                return

    def _make(self, netns_fd, creds, family, type_) -> int:
        home, undo = self._home, []
        try:
            if netns_fd is not None:
                # needs CAP_SYS_ADMIN: before giving up our credentials
                libc.setns(netns_fd, libc.CLONE_NEWNET)
                undo.append(lambda: libc.setns(self._home_netns_fd, libc.CLONE_NEWNET))
            if creds is not None:
                if not self._restorable:
                    self.alive = False  # answers this request, then ends with the credentials it took
                # gids first, while we still have CAP_SETGID; an euid other than 0 clears the
                # effective capabilities, and restoring euid 0 (allowed: ruid stays 0) brings them back.
                libc.setgroups(creds.groups)
                undo.append(lambda: libc.setgroups(home.groups))
                libc.setresgid(-1, creds.egid, -1)
                libc.setfsgid(creds.fsgid)
                def undo_gid() -> None:
                    libc.setresgid(-1, home.egid, -1)
                    libc.setfsgid(home.fsgid)
                undo.append(undo_gid)
                libc.setresuid(-1, creds.euid, -1)
                def undo_uid() -> None:
                    libc.setresuid(-1, home.euid, -1)
                    libc.setfsuid(home.fsuid)
                undo.append(undo_uid)
                libc.setfsuid(creds.fsuid)
                # The caller's effective capabilities, no more (ours stay permitted: ruid is still
                # ours, so the way back is open). No less either: sk_net_capable() checks both the
                # socket opener's and the current task's capabilities. The supervisor passes only
                # callers of our own user namespace: their capabilities mean the same here.
                libc.capset(creds.cap_eff & home.cap_prm, home.cap_prm, home.cap_inh)
                undo.append(lambda: libc.capset(home.cap_eff, home.cap_prm, home.cap_inh))
            return libc.socket(family, type_, IPPROTO_MPTCP)
        finally:
            try:
                if self.alive:
                    for step in reversed(undo):
                        step()
            except OSError:
                log.warning("socket helper thread could not restore its context: retiring it")
                self.alive = False
