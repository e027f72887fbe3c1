"""A client of the daemon's control socket: one request, one answer, every failure one clear error
(exit 3 no daemon, 77 not allowed, the daemon's own code for its refusals).

A busy daemon is waited for, within the request's time limit: a burst of clients (every enabled unit's
ExecStartPre at boot) must all be served, since a unit whose `resync` fails starts with plain TCP.
Retried, after a pause that grows and is jittered (so that a burst does not come back in lockstep):
- connect() failing with EAGAIN: the daemon's accept queue is full (AF_UNIX says so with EAGAIN; a
  blocking connect() would wait, but a socket with a time limit is non-blocking in Python);
- a `busy: ...` answer, which daemons before the waiting accept queue sent when their slots were full.
Both happen before the daemon has read the request, so a retry never runs a request twice.
ECONNREFUSED is not retried: the kernel answers it for a socket file nobody listens on (a dead daemon's
leftover), never for a full queue; waiting there would only delay "no daemon is running".
"""

import errno
import json
import random
import socket
import time
from pathlib import Path

from mptcpize_py.daemon.protocol import (
    BUSY_PREFIX,
    DEFAULT_PATH,
    MAX_RESPONSE,
    PERMISSION_DENIED,
    TIMEOUT,
    LineReader,
    TooLarge,
    control_path,
    encode,
)
from mptcpize_py.errors import EXIT_NO_DAEMON, MptcpizeError, PermissionDenied

__all__ = ["control_path", "no_daemon_error", "request"]

RETRY_FIRST = 0.01    # seconds before the first retry; doubled each time, up to RETRY_MAX
RETRY_MAX = 0.25


class _Busy(Exception):
    """The daemon could not take the request yet; `error` is what to raise once time is up."""

    def __init__(self, error: MptcpizeError):
        super().__init__(error.message)
        self.error = error


def no_daemon_error(path: Path | str = DEFAULT_PATH) -> MptcpizeError:
    return MptcpizeError(f"no daemon is running (cannot connect to {path})",
                         hint="start it: systemctl start mptcpize-py", exit_code=EXIT_NO_DAEMON)


def request(cmd: dict, path: Path | str = DEFAULT_PATH, timeout: float = TIMEOUT,
            max_response: int = MAX_RESPONSE) -> dict:
    """Sends one request, returns the daemon's response object.

    Raises MptcpizeError: exit 3 when no daemon listens, 77 when we may not talk to it (the socket's
    permissions or the daemon's SO_PEERCRED check), the daemon's exit code for an error response, 1
    for a daemon that does not answer properly within `timeout` seconds, waits for a busy daemon
    included.
    """
    path = str(path)
    deadline = time.monotonic() + timeout
    pause, busy = RETRY_FIRST, None
    while True:
        try:
            return _exchange(cmd, path, deadline, timeout, max_response)
        except _Busy as e:
            busy = e.error
        except MptcpizeError:
            if busy is not None and time.monotonic() >= deadline:
                raise busy from None   # the last try ran out of time: being busy is the reason
            raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise busy
        time.sleep(min(remaining, random.uniform(pause / 2, pause)))
        pause = min(2 * pause, RETRY_MAX)


def _exchange(cmd: dict, path: str, deadline: float, timeout: float, max_response: int) -> dict:
    """One connection: the answer, or _Busy when it may be tried again."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise no_daemon_error(path) from None
        except PermissionError:
            raise _permission_error(path) from None
        except BlockingIOError as e:
            if e.errno != errno.EAGAIN:
                raise MptcpizeError(f"cannot connect to {path}: {e.strerror}") from None
            raise _Busy(MptcpizeError(f"the daemon on {path} is busy: its connection queue stayed full "
                                      f"for {timeout:g} s", hint="too many clients at once; try again")) \
                from None
        except TimeoutError:
            raise MptcpizeError(f"the daemon did not accept a connection on {path} within "
                                f"{timeout:g} s") from None
        except OSError as e:
            raise MptcpizeError(f"cannot connect to {path}: {e.strerror}") from None
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(encode(cmd))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may have refused us already: its answer is still ours to read
        except TimeoutError:
            raise MptcpizeError(f"the daemon on {path} did not take the request within {timeout:g} s") \
                from None
        reader = LineReader(sock, max_response)
        try:
            line = reader.readline(deadline)
        except TimeoutError:
            raise MptcpizeError(f"the daemon on {path} did not answer within {timeout:g} s") from None
        except TooLarge:
            raise MptcpizeError(f"the daemon's answer is larger than {max_response} bytes") from None
        except ConnectionResetError:
            line = None
    finally:
        sock.close()
    if line is None:
        raise MptcpizeError(f"the daemon on {path} closed the connection without an answer")
    try:
        resp = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MptcpizeError(f"the daemon on {path} sent a malformed answer") from None
    if not isinstance(resp, dict):
        raise MptcpizeError(f"the daemon on {path} sent a malformed answer")
    if "error" in resp:
        if resp["error"] == PERMISSION_DENIED:
            raise _permission_error(path)
        code = resp.get("exit_code")
        hint = resp.get("hint") if isinstance(resp.get("hint"), str) else None
        error = MptcpizeError(str(resp["error"]), hint=hint,
                              exit_code=code if type(code) is int and 0 < code < 256 else None)
        if str(resp["error"]).startswith(BUSY_PREFIX):
            raise _Busy(error)
        raise error
    return resp


def _permission_error(path: str) -> PermissionDenied:
    return PermissionDenied(f"permission denied: the daemon's control socket {path} is root-only",
                            hint="run it as root, e.g. with sudo")
