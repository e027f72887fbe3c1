"""Who may reach the control socket: the socket file (directory 0700, socket 0600, both root's; the
one-daemon lock; a dead daemon's leftover replaced; only our own file unlinked) and the peer check
that holds where the file modes do not (SO_PEERCRED, refusals logged at a bounded rate).
control.py serves what gets through."""

import errno
import fcntl
import logging
import os
import socket
import stat
import time
from pathlib import Path

from mptcpize_py.daemon.protocol import Ucred, peer_cred
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import systemd

REFUSAL_WINDOW = 60.0  # seconds: the refused-peer warnings of one window are...
REFUSALS_LOGGED = 5    # ...this many one by one, then one summary line per uid
REFUSAL_UIDS_NAMED = 8   # uids a summary names; the others are summed in one more line

log = logging.getLogger("mptcpize_py.control")


class ControlSocketFile:
    """The listening socket's file at `path`, and CONTROL.lock beside it.

    One daemon at a time: open() holds an exclusive flock on CONTROL.lock until close(). With the
    lock held, a leftover socket file is a dead daemon's: it is replaced (after a connect() that must
    be refused, as a guard against a daemon that predates the lock). Without the lock, open() refuses.
    """

    def __init__(self, path: Path, *, socket_mode: int = 0o600, dir_mode: int | None = 0o700):
        self.path = path
        self.socket_mode = socket_mode
        self.dir_mode = dir_mode      # None: leave an existing directory's mode alone (tests)
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock_fd = -1
        self._bound: tuple[int, int] | None = None
        self.replaced_stale = False   # open() found a dead daemon's socket and replaced it

    def open(self) -> socket.socket:
        """The bound, listening, non-blocking socket; the lock is held until close()."""
        self._prepare_dir()
        self._take_lock()
        try:
            self._remove_stale()
            return self._bind()
        except BaseException:
            self._release_lock()
            raise

    def close(self) -> None:
        """Unlinks the socket file (the listening socket is the caller's to close) and drops the lock."""
        # Unlink only our own socket: a file someone else bound after us is theirs.
        if self._bound is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.path)
            except OSError:
                pass
            self._bound = None
        self._release_lock()

    def _prepare_dir(self) -> None:
        d = self.path.parent
        try:
            os.mkdir(d, self.dir_mode if self.dir_mode is not None else 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise MptcpizeError(f"cannot create {d}: {e.strerror}") from None
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise MptcpizeError(f"{d} is not a directory (a symbolic link or a file is in the way)",
                                hint=f"remove it; the daemon creates {d} itself")
        if st.st_uid != os.geteuid():
            raise MptcpizeError(f"{d} is owned by uid {st.st_uid}, not by uid {os.geteuid()}",
                                hint=f"remove it; the daemon creates {d} itself")
        if self.dir_mode is not None and stat.S_IMODE(st.st_mode) != self.dir_mode:
            os.chmod(d, self.dir_mode)  # mkdir's mode is masked by the umask; systemd's may be 0755

    def _take_lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise MptcpizeError(f"cannot open {self.lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._already_running() from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _already_running(self) -> MptcpizeError:
        return MptcpizeError(f"another mptcpize-py daemon is already running (it serves {self.path})",
                             hint="stop it first (systemctl stop mptcpize-py), or ask it: "
                                  "mptcpize-py status")

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise MptcpizeError(f"{self.path} exists and is not a socket", hint="remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except ConnectionRefusedError:
            pass          # nobody listens: a dead daemon's socket
        except FileNotFoundError:
            return
        except OSError as e:
            raise MptcpizeError(f"cannot check the existing socket {self.path}: {e.strerror}") from None
        else:
            raise self._already_running()
        finally:
            probe.close()
        os.unlink(self.path)
        self.replaced_stale = True
        log.info("replaced the stale control socket %s (a previous daemon did not shut down cleanly)",
                 self.path)

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # unix_bind() creates the file with the socket inode's mode & ~umask: set the mode first so
            # the file is never more open than socket_mode, then chmod() in case the umask narrowed it.
            try:
                os.fchmod(sock.fileno(), self.socket_mode)
            except OSError:
                pass
            try:
                sock.bind(str(self.path))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise self._already_running() from None
                raise MptcpizeError(f"cannot bind {self.path}: {e.strerror}") from None
            os.chmod(self.path, self.socket_mode)
            st = os.lstat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if self._bound is not None:
                os.unlink(self.path)
                self._bound = None
            raise
        return sock


class PeerCheck:
    """Which peers are served: only `allowed_uids` (root), checked with SO_PEERCRED before a byte is
    read. The file modes already keep other users out (connect() fails with EACCES, which the client
    maps to exit 77 too); this check is what holds when they do not, e.g. for a process with
    CAP_DAC_OVERRIDE but not uid 0. Used by the I/O thread only."""

    def __init__(self, allowed_uids: frozenset[int], refusal_window: float = REFUSAL_WINDOW):
        self.allowed_uids = allowed_uids
        self.refusals = RefusalLog(refusal_window)

    @staticmethod
    def credentials(conn: socket.socket) -> Ucred | None:
        """The peer's credentials, or None (logged) when they cannot be read."""
        try:
            return peer_cred(conn)
        except (OSError, ValueError) as e:
            log.warning("control socket: cannot read the peer's credentials: %s", e)
            return None

    def allowed(self, cred: Ucred) -> bool:
        """Whether the peer is served; a refusal is logged (rate-limited), the caller answers it."""
        if cred.uid in self.allowed_uids:
            return True
        if self.refusals.count(cred.uid, time.monotonic()):
            log.warning("control socket: refused pid=%d uid=%d gid=%d: permission denied (only uid %s)",
                        cred.pid, cred.uid, cred.gid, ",".join(map(str, sorted(self.allowed_uids))),
                        extra=systemd.fields(about_pid=cred.pid))
        return False


class RefusalLog:
    """Rate limit of the refused-peer warnings (a refused process may connect thousands of times a
    second, and journald's own rate limit would then drop the upgrade records too): in each `window`
    the first REFUSALS_LOGGED refusals are logged one by one, the others counted per uid and summed up
    when the window ends ("N more refused from uid U"). At most REFUSALS_LOGGED + REFUSAL_UIDS_NAMED + 1
    lines per window, however many peers and uids. Used by the I/O thread only."""

    def __init__(self, window: float):
        self.window = window
        self._end: float | None = None   # the current window's end
        self._logged = 0
        self._more: dict[int, int] = {}  # uid -> refusals not logged one by one
        self._more_others = 0            # of uids beyond REFUSAL_UIDS_NAMED
        self._other_uids: set[int] = set()

    def count(self, uid: int, now: float) -> bool:
        """Counts a refusal; True when it is to be logged one by one."""
        self.flush(now)
        if self._end is None:
            self._end = now + self.window
        if self._logged < REFUSALS_LOGGED:
            self._logged += 1
            return True
        if uid in self._more or len(self._more) < REFUSAL_UIDS_NAMED:
            self._more[uid] = self._more.get(uid, 0) + 1
        else:
            self._more_others += 1
            if len(self._other_uids) < 65536:
                self._other_uids.add(uid)
        return False

    def due(self) -> float | None:
        """When flush() has a summary to say (time.monotonic()), or None."""
        return self._end if self._more else None

    def flush(self, now: float) -> None:
        if self._end is None or now < self._end:
            return
        for uid, n in self._more.items():
            log.warning("control socket: %d more refused from uid %d in the last %g s (not logged one "
                        "by one)", n, uid, self.window)
        if self._more_others:
            log.warning("control socket: %d more refused from %d other uids in the last %g s",
                        self._more_others, len(self._other_uids), self.window)
        self._end, self._logged, self._more_others = None, 0, 0
        self._more, self._other_uids = {}, set()
