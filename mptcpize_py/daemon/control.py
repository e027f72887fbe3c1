"""The daemon's side of its local control socket: `status` and `run` registration, root-only.

Who gets through (the socket file at /run/mptcpize-py/control, its modes, the one-daemon lock, the
SO_PEERCRED check and its rate-limited refusal log) is socketfile.py's; this module serves them.

The wire format is protocol.py's; client.py is the other end. A request may not exceed 64 KiB;
malformed JSON gets an error line and the connection is closed (framing cannot be trusted after it). A
connection may carry several requests.

Bursts and slow peers: a burst of clients (at boot, every enabled unit's ExecStartPre asks for a
`resync`) must be served, not refused, since a refused unit starts with plain TCP. The listen queue is
as deep as the kernel allows (SOMAXCONN; the kernel caps it at net.core.somaxconn, 4096 by default).
A connection gets `timeout` seconds in total to send its requests (idle time counts: idle peers and
slow writers are cut off) and as long again in total to take its answers (slow readers); only the time
its handlers take is not counted.

Idle connections hold nothing but a descriptor (issue 23: 500 half-open connections from root used to
hold every thread for their whole budget, and `status` timed out at 10 s). One I/O thread accepts,
checks the peer and waits, in one selector, for each connection's next request line; only a
connection with a whole request gets one of `max_connections` serving threads, which dispatches it,
writes the answer and gives the connection back. At most `max_open` connections are open (MAX_OPEN,
at most half of RLIMIT_NOFILE); when that many are, the one that has waited longest for a request is
cut off to admit the next (idle peers are cut off anyway), and only when every open connection has a
request being served does accepting stop, so that later clients wait in the kernel's queue, first come
first served, each until its own time limit (client.py retries when that queue itself is full).
The bound: a new client never waits for an idle connection to end (0 s, where the budget allows 2 s),
only for the I/O thread to accept the connections queued before it and for the handlers ahead of it;
an idle connection is cut off after `timeout` (2 s) at the latest. Measured with
bench/idle_connections.py (dry-run daemon, 2-core build machine under a load of 3 to 6): the first
`status` after 500 idle root connections 23-42 ms, after 2,000: 63-436 ms; before, 14.1 s and 62.4 s.

Threads, not a selectable object in the main loop: the daemon's main loop blocks in bcc's
ring_buffer_poll(), whose epoll descriptor bcc does not expose, so the socket could not join that loop
without a second poll loop anyway. Handlers are called one at a time under one lock, so the daemon's
handlers need no locking among themselves, only against its main loop (e.g. read a snapshot it swaps
atomically).
"""

import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

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
    short_reason,
)
from mptcpize_py.daemon.socketfile import REFUSAL_WINDOW, REFUSALS_LOGGED, ControlSocketFile, PeerCheck
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs, systemd

MAX_CONNECTIONS = 64   # serving threads, each in a handler (or waiting for its lock) or writing an answer
MAX_OPEN = 1024        # connections open at once, most of them waiting for a request (no thread)
PID_MAX = 1 << 22                  # PID_MAX_LIMIT on 64-bit

log = logging.getLogger("mptcpize_py.control")

# REFUSALS_LOGGED is socketfile.py's, named here too for the tests of the server
__all__ = ["MAX_CONNECTIONS", "MAX_OPEN", "REFUSALS_LOGGED", "ControlServer", "Handler", "check_registrant"]


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


class Dispatcher:
    """Calls the handler a request names, one at a time (the daemon's handlers need no locking among
    themselves), and turns what it raises into an error response."""

    def __init__(self, handlers: Mapping[str, Handler]):
        self.handlers = dict(handlers)
        self._lock = threading.Lock()

    def __call__(self, req: dict, cred: Ucred) -> dict:
        cmd = req["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"error": f"unknown command {cmd[:40]!r} (known: {known})"}
        try:
            with self._lock:
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


class ControlServer:
    """The listening side. `handlers`: cmd -> handler(request, peer) -> response object.

    A handler may raise MptcpizeError: its message, hint and exit code go back as an error response.
    Use as a context manager, or start() ... close().
    """

    def __init__(self, handlers: Mapping[str, Handler], path: Path | str = DEFAULT_PATH, *,
                 allowed_uids=frozenset({0}), timeout: float = TIMEOUT, max_request: int = MAX_REQUEST,
                 max_connections: int = MAX_CONNECTIONS, socket_mode: int = 0o600,
                 dir_mode: int | None = 0o700, max_open: int = MAX_OPEN,
                 refusal_window: float = REFUSAL_WINDOW):
        self.path = Path(path)
        self._dispatch = Dispatcher(handlers)
        self.timeout = timeout
        self.max_request = max_request
        self.max_connections = max_connections
        self._file = ControlSocketFile(self.path, socket_mode=socket_mode, dir_mode=dir_mode)
        self._peers = PeerCheck(frozenset(allowed_uids), refusal_window)
        self._listen: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()   # every admitted connection still open
        self._conns_lock = threading.Lock()       # _conns, _returned, _queue, _workers
        # At most half the descriptors we may open: the program's maps and the journal need some.
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._max_open = max(max_connections, min(max_open, soft // 2))
        self._parked: dict[socket.socket, _Conn] = {}   # waiting for a request (I/O thread), oldest first
        self._returned: list[_Conn] = []      # answered, back to waiting (serving thread -> I/O thread)
        self._queue: deque[_Conn] = deque()   # a request is there, every serving thread is busy
        self._workers = 0

    @property
    def replaced_stale(self) -> bool:
        """start() found a dead daemon's socket and replaced it."""
        return self._file.replaced_stale

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "ControlServer":
        self._listen = self._file.open()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._io_loop, name="mptcpize-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._conns_lock:
            returned, self._returned = self._returned, []
        for c in returned:   # given back by a serving thread after the I/O thread ended
            self._release(c.sock)
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._listen is not None:
            self._listen.close()
            self._listen = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._file.close()

    # --- serving ------------------------------------------------------------------------------
    def _io_loop(self) -> None:
        """The I/O thread: accepts, checks peers, and holds every connection that waits for a request
        (non-blocking, in one selector) until a whole request line is there; then a serving thread
        takes it. Also cuts off connections whose read budget is spent, and says the refusal summary."""
        listen = self._listen
        assert listen is not None   # start() binds before starting this thread
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        listening = False
        try:
            while not self._stopping.is_set():
                self._take_returned(sel)
                with self._conns_lock:
                    room = len(self._conns) < self._max_open or bool(self._parked)
                if room != listening:   # every connection open has a thread: the kernel queues the next
                    if room:
                        sel.register(listen, selectors.EVENT_READ, "listen")
                    else:
                        sel.unregister(listen)
                    listening = room
                for key, _ in sel.select(self._next_timeout()):
                    if key.data is None:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif key.data == "listen":
                        self._accept_some(sel, listen)
                    elif key.fileobj in self._parked:
                        self._pull(sel, key.data)
                now = time.monotonic()
                self._expire(sel, now)
                self._peers.refusals.flush(now)
        finally:
            for c in list(self._parked.values()):
                self._release(c.sock)
            self._parked.clear()
            sel.close()

    def _next_timeout(self) -> float | None:
        """Seconds until the next parked connection's budget ends or the refusal summary is due."""
        times = [c.waiting_since + c.budget.read for c in self._parked.values()]
        due = self._peers.refusals.due()
        if due is not None:
            times.append(due)
        return max(min(times) - time.monotonic(), 0.0) if times else None

    def _accept_some(self, sel: selectors.BaseSelector, listen: socket.socket) -> None:
        for _ in range(self.max_connections):   # then look at the parked connections again
            with self._conns_lock:
                full = len(self._conns) >= self._max_open
            if full and not self._parked:
                return
            try:
                conn, _ = listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("control socket: accept failed: %s", e.strerror)
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                return
            if full:
                # The connection that has waited longest for a request makes room (cut off as its
                # budget would cut it off later): idle peers never keep a new client out.
                oldest = self._unpark(sel, next(iter(self._parked)))
                self._release(oldest.sock)
            self._admit(sel, conn)

    def _admit(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        conn.setblocking(False)
        cred = self._peers.credentials(conn)
        if cred is None:
            conn.close()
            return
        if not self._peers.allowed(cred):
            self._send_and_close(conn, {"error": PERMISSION_DENIED, "exit_code": 77})
            return
        with self._conns_lock:
            self._conns.add(conn)
        c = _Conn(conn, cred, LineReader(conn, self.max_request),
                  # The peer's time budgets for the whole connection (see the module's docstring).
                  _Budget(read=self.timeout, write=max(self.timeout, 1.0)), time.monotonic())
        self._park(sel, c)
        self._pull(sel, c)   # a client's request is usually there already

    def _park(self, sel: selectors.BaseSelector, c: "_Conn") -> None:
        c.sock.setblocking(False)
        c.waiting_since = time.monotonic()
        self._parked[c.sock] = c
        sel.register(c.sock, selectors.EVENT_READ, c)

    def _unpark(self, sel: selectors.BaseSelector, sock: socket.socket) -> "_Conn":
        c = self._parked.pop(sock)
        sel.unregister(sock)
        c.budget.read -= time.monotonic() - c.waiting_since
        return c

    def _pull(self, sel: selectors.BaseSelector, c: "_Conn") -> None:
        try:
            more = c.reader.pull()
        except OSError:
            more = False
        if c.reader.has_line:
            self._hand_over(self._unpark(sel, c.sock))
        elif not more:   # EOF (a partial request is dropped) or an error
            self._release(self._unpark(sel, c.sock).sock)

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        for c in [c for c in self._parked.values() if now >= c.waiting_since + c.budget.read]:
            self._unpark(sel, c.sock)
            if c.reader.buffered:   # idle: just closed; half a request: an error
                try:
                    c.sock.send(encode({"error": f"request not complete within {self.timeout:g} s"}))
                except OSError:
                    pass
            self._release(c.sock)

    def _take_returned(self, sel: selectors.BaseSelector) -> None:
        with self._conns_lock:
            returned, self._returned = self._returned, []
        for c in returned:
            self._park(sel, c)
            self._pull(sel, c)   # the next request may be there already

    def _hand_over(self, c: "_Conn") -> None:
        """A request is there: a serving thread takes the connection, now or when one is free."""
        with self._conns_lock:
            if self._workers >= self.max_connections:
                self._queue.append(c)
                return
            self._workers += 1
        try:
            threading.Thread(target=self._work, args=(c,), name=f"mptcpize-control-{c.cred.pid}",
                             daemon=True).start()
        except RuntimeError as e:   # no thread to be had: drop this one, keep serving
            with self._conns_lock:
                self._workers -= 1
            log.warning("control socket: pid=%d: cannot start a thread: %s", c.cred.pid, e,
                        extra=systemd.fields(about_pid=c.cred.pid))
            self._release(c.sock)

    def _work(self, c: "_Conn | None") -> None:
        while c is not None:
            self._serve(c)
            with self._conns_lock:
                c = self._queue.popleft() if self._queue else None
                if c is None:
                    self._workers -= 1

    def _release(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)
        conn.close()

    def _send_and_close(self, conn: socket.socket, obj: dict) -> None:
        try:
            conn.send(encode(obj))   # a few bytes into an empty buffer: never waits (non-blocking)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, c: "_Conn") -> None:
        """Answers the requests the connection holds, then gives it back to the I/O thread to wait
        for the next one (a serving thread never waits for a peer's request)."""
        conn, budget = c.sock, c.budget
        conn.setblocking(True)
        try:
            while not self._stopping.is_set():
                if not c.reader.has_line:
                    with self._conns_lock:
                        self._returned.append(c)
                    try:
                        os.write(self._wake_w, b"x")
                    except OSError:
                        pass   # closing: close() shuts every connection down
                    return
                try:
                    line = c.reader.readline(time.monotonic())   # buffered: never waits
                except TooLarge as e:
                    log.warning("control socket: pid=%d: %s", c.cred.pid, e,
                                extra=systemd.fields(about_pid=c.cred.pid))
                    self._reply(conn, {"error": str(e)}, budget)
                    break
                if line is None:
                    break
                try:
                    req = decode_request(line)
                except RequestError as e:
                    self._reply(conn, {"error": str(e)}, budget)
                    break
                if not self._reply(conn, self._dispatch(req, c.cred), budget):
                    break
        except OSError:
            pass  # the client went away
        self._release(conn)

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


@dataclass
class _Conn:
    """An admitted connection: its peer, what it sent so far, its budgets."""
    sock: socket.socket
    cred: Ucred
    reader: LineReader
    budget: _Budget
    waiting_since: float   # time.monotonic() when it began waiting for its next request
