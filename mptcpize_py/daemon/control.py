"""The daemon's side of its local control socket: `status` and `run` registration, root-only.

A Unix stream socket at /run/mptcpize-py/control (directory 0700, socket 0600, both root's). Every
connection's peer is checked with SO_PEERCRED before a byte is read: only `allowed_uids` (root) are
served; anyone else gets one line `{"error": "permission denied"}`, the connection is closed and the
refusal logged. The file modes already keep other users out (connect() fails with EACCES, which the
client maps to exit 77 too); the credential check is what holds when they do not, e.g. for a process
with CAP_DAC_OVERRIDE but not uid 0.

The wire format is protocol.py's; client.py is the other end. A request may not exceed 64 KiB;
malformed JSON gets an error line and the connection is closed (framing cannot be trusted after it). A
connection may carry several requests.

Bursts and slow peers: a burst of clients (at boot, every enabled unit's ExecStartPre asks for a
`resync`) must be served, not refused, since a refused unit starts with plain TCP. The listen queue is
as deep as the kernel allows (SOMAXCONN; the kernel caps it at net.core.somaxconn, 4096 by default).
At most `max_connections` connections are served at once; while all are taken the accept thread stops
accepting, so later clients wait in the kernel's queue, first come first served, each until its own
time limit (client.py retries when that queue itself is full). No slot is held for long: a connection
gets `timeout` seconds in total to send its requests (idle time counts: idle peers and slow writers
are cut off) and as long again in total to take its answers (slow readers); only the time its
handlers take is not counted.

Threads, not a selectable object: the daemon's main loop blocks in bcc's ring_buffer_poll(), whose epoll
descriptor bcc does not expose, so the socket could not join that loop without a second poll loop
anyway. The server runs an accept thread and one short-lived thread per connection (at most
`max_connections`); handlers are called one at a time under one lock, so the daemon's handlers need
no locking among themselves, only against its main loop (e.g. read a snapshot it swaps atomically).

One daemon at a time: start() holds an exclusive flock on CONTROL.lock for the server's life. With the
lock held, a leftover socket file is a dead daemon's: it is replaced (after a connect() that must be
refused, as a guard against a daemon that predates the lock). Without the lock, start() refuses.
"""

import errno
import fcntl
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from mptcpize_py.daemon.protocol import (
    DEFAULT_PATH,
    MAX_REQUEST,
    PERMISSION_DENIED,
    TIMEOUT,
    LineReader,
    RequestError,
    TooLarge,
    Ucred,
    decode_request,
    encode,
    peer_cred,
    short_reason,
)
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs, systemd

MAX_CONNECTIONS = 64   # threads, each blocked in recv() or waiting for the handler lock
PID_MAX = 1 << 22                  # PID_MAX_LIMIT on 64-bit

log = logging.getLogger("mptcpize_py.control")


# ---------------------------------------------------------------------------------------------------
# Registration check


def check_registrant(pid, peer: Ucred) -> None:
    """Refuses (MptcpizeError) unless `pid` is a process whose parent is the peer.

    `run` registers the child it forked, before letting it exec: the child cannot have been reaped
    (its parent, the peer, is busy waiting for our answer), so its pid cannot have been recycled.
    """
    if type(pid) is not int or not 0 < pid <= PID_MAX:
        raise MptcpizeError(f"register: pid must be an integer in 1..{PID_MAX}, not {pid!r}")
    try:
        ppid, tgid = procfs.parent_and_tgid(pid)
    except ProcessLookupError:
        raise MptcpizeError(f"register: no process {pid}") from None
    except OSError as e:
        raise MptcpizeError(f"register: cannot read process {pid}: {short_reason(e)}") from None
    if tgid is not None and tgid != pid:
        raise MptcpizeError(f"register: {pid} is a thread of process {tgid}, not a process")
    if ppid != peer.pid:
        raise MptcpizeError(f"register: process {pid} is not a child of the caller (pid {peer.pid}); "
                            f"its parent is {ppid}")


# ---------------------------------------------------------------------------------------------------
# Server

Handler = Callable[[dict, Ucred], dict]


class ControlServer:
    """The listening side. `handlers`: cmd -> handler(request, peer) -> response object.

    A handler may raise MptcpizeError: its message, hint and exit code go back as an error response.
    Use as a context manager, or start() ... close().
    """

    def __init__(self, handlers: Mapping[str, Handler], path: Path | str = DEFAULT_PATH, *,
                 allowed_uids=frozenset({0}), timeout: float = TIMEOUT, max_request: int = MAX_REQUEST,
                 max_connections: int = MAX_CONNECTIONS, socket_mode: int = 0o600,
                 dir_mode: int | None = 0o700):
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.allowed_uids = frozenset(allowed_uids)
        self.timeout = timeout
        self.max_request = max_request
        self.max_connections = max_connections
        self.socket_mode = socket_mode
        self.dir_mode = dir_mode      # None: leave an existing directory's mode alone (tests)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd = -1
        self._listen: socket.socket | None = None
        self._bound: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._stopping = threading.Event()
        self._handler_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._slot_freed = threading.Condition(self._conns_lock)
        self.replaced_stale = False   # start() found a dead daemon's socket and replaced it

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "ControlServer":
        self._prepare_dir()
        self._take_lock()
        try:
            self._remove_stale()
            self._bind()
        except BaseException:
            self._release_lock()
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._accept_loop, name="mptcpize-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        with self._slot_freed:
            self._slot_freed.notify_all()   # an accept thread waiting for a free slot
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._listen is not None:
            self._listen.close()
            self._listen = None
        # Unlink only our own socket: a file someone else bound after us is theirs.
        if self._bound is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.path)
            except OSError:
                pass
            self._bound = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._release_lock()

    # --- start-up steps -------------------------------------------------------------------------
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

    def _bind(self) -> None:
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
        self._listen = sock

    # --- serving ------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(cast(socket.socket, self._listen), selectors.EVENT_READ)   # bound by start()
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while self._wait_for_slot():
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        return
                try:
                    conn, _ = cast(socket.socket, self._listen).accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    log.warning("control socket: accept failed: %s", e.strerror)
                    time.sleep(0.05)  # e.g. EMFILE: do not spin
                    continue
                self._admit(conn)
        finally:
            sel.close()

    def _wait_for_slot(self) -> bool:
        """Waits until fewer than max_connections are open; False once the server is stopping. Not
        accepting meanwhile is what makes clients wait in the kernel's queue, in order."""
        with self._slot_freed:
            self._slot_freed.wait_for(lambda: self._stopping.is_set()
                                      or len(self._conns) < self.max_connections)
            return not self._stopping.is_set()

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        try:
            cred = peer_cred(conn)
        except (OSError, ValueError) as e:
            log.warning("control socket: cannot read the peer's credentials: %s", e)
            conn.close()
            return
        if cred.uid not in self.allowed_uids:
            log.warning("control socket: refused pid=%d uid=%d gid=%d: permission denied (only uid %s)",
                        cred.pid, cred.uid, cred.gid, ",".join(map(str, sorted(self.allowed_uids))),
                        extra=systemd.fields(about_pid=cred.pid))
            self._send_and_close(conn, {"error": PERMISSION_DENIED, "exit_code": 77})
            return
        with self._conns_lock:
            self._conns.add(conn)   # a slot is free: only this thread adds, after _wait_for_slot()
        try:
            threading.Thread(target=self._serve, args=(conn, cred), name=f"mptcpize-control-{cred.pid}",
                             daemon=True).start()
        except RuntimeError as e:   # no thread to be had: drop this one, keep serving
            log.warning("control socket: pid=%d: cannot start a thread: %s", cred.pid, e,
                        extra=systemd.fields(about_pid=cred.pid))
            self._release(conn)

    def _release(self, conn: socket.socket) -> None:
        with self._slot_freed:
            self._conns.discard(conn)
            self._slot_freed.notify()
        conn.close()

    def _send_and_close(self, conn: socket.socket, obj: dict) -> None:
        try:
            conn.settimeout(0.2)
            conn.sendall(encode(obj))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket, cred: Ucred) -> None:
        reader = LineReader(conn, self.max_request)
        # The peer's time budgets for the whole connection (see the module's docstring).
        budget = _Budget(read=self.timeout, write=max(self.timeout, 1.0))
        try:
            while not self._stopping.is_set():
                start = time.monotonic()
                try:
                    line = reader.readline(start + budget.read)
                except TimeoutError:
                    if reader.buffered:  # idle: just closed; half a request: an error
                        self._reply(conn, {"error": f"request not complete within {self.timeout:g} s"},
                                    budget)
                    break
                except TooLarge as e:
                    log.warning("control socket: pid=%d: %s", cred.pid, e,
                                extra=systemd.fields(about_pid=cred.pid))
                    self._reply(conn, {"error": str(e)}, budget)
                    break
                finally:
                    budget.read -= time.monotonic() - start
                if line is None:
                    break
                try:
                    req = decode_request(line)
                except RequestError as e:
                    self._reply(conn, {"error": str(e)}, budget)
                    break
                if not self._reply(conn, self._dispatch(req, cred), budget):
                    break
        except OSError:
            pass  # the client went away
        finally:
            self._release(conn)

    def _dispatch(self, req: dict, cred: Ucred) -> dict:
        cmd = req["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"error": f"unknown command {cmd[:40]!r} (known: {known})"}
        try:
            with self._handler_lock:
                result = handler(req, cred)
        except MptcpizeError as e:
            out = {"error": e.message, "exit_code": e.exit_code}
            if e.hint:
                out["hint"] = e.hint
            return out
        except Exception as e:  # a bug in a handler must not take the server thread down
            log.exception("control socket: %s handler failed", cmd)
            return {"error": f"internal error in {cmd}: {short_reason(e)}"}
        if not isinstance(result, dict):
            log.error("control socket: %s handler returned %s, not a dict", cmd, type(result).__name__)
            return {"error": f"internal error in {cmd}: bad response"}
        return result

    def _reply(self, conn: socket.socket, obj: dict, budget: "_Budget") -> bool:
        """Sends one answer within what is left of the connection's write budget."""
        if budget.write <= 0:
            return False
        start = time.monotonic()
        conn.settimeout(budget.write)   # sendall(): a limit on the whole answer, not on each send()
        try:
            conn.sendall(encode(obj))
            return True
        except OSError:
            return False
        finally:
            budget.write -= time.monotonic() - start


@dataclass
class _Budget:
    """Seconds a connection may still spend waiting for its peer: to read requests, to write answers."""
    read: float
    write: float
