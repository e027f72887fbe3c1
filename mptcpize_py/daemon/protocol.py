"""The control socket's wire format, shared by the daemon and its clients: one JSON object per line
each way, peer credentials (SO_PEERCRED), the socket's path. Requests `{"cmd": "status"}`,
`{"cmd": "register", "pid": N}`; a response is the handler's object, or
`{"error": "...", "hint": "...", "exit_code": N}`."""

import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import NamedTuple

from mptcpize_py.locations import CONTROL_SOCKET

DEFAULT_PATH = CONTROL_SOCKET


CONTROL_ENV = "MPTCPIZE_CONTROL"   # another path, for tests and side-by-side daemons


MAX_REQUEST = 64 * 1024


MAX_RESPONSE = 64 * 1024 * 1024   # `status` of a busy host: ~16k process rows


TIMEOUT = 2.0


PERMISSION_DENIED = "permission denied"


# What daemons before the waiting accept queue answered when their connection slots were full; clients
# still retry on it (a newer CLI may talk to an older daemon until it is restarted).
BUSY_PREFIX = "busy:"


_UCRED = struct.Struct("=iII")     # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


class Ucred(NamedTuple):   # not a dataclass: every client imports this module (`run`'s start-up)
    pid: int
    uid: int
    gid: int


def parse_ucred(data: bytes) -> Ucred:
    if len(data) != _UCRED.size:
        raise ValueError(f"struct ucred is {_UCRED.size} bytes, got {len(data)}")
    return Ucred(*_UCRED.unpack(data))


def peer_cred(sock: socket.socket) -> Ucred:
    """The credentials the peer had when it called connect() (SO_PEERCRED)."""
    return parse_ucred(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


class RequestError(ValueError):
    """A request we cannot serve; the message goes back to the client."""


def encode(obj: dict) -> bytes:
    """One line: compact JSON (ASCII, so no character can be taken for a line break) and '\\n'."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, default=str).encode() + b"\n"


def decode_request(line: bytes) -> dict:
    """One request line (without its '\\n') -> the request object; RequestError when malformed."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RequestError(f"malformed request: not JSON ({short_reason(e)})") from None
    if not isinstance(obj, dict):
        raise RequestError("malformed request: expected a JSON object such as {\"cmd\": \"status\"}")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise RequestError("malformed request: no \"cmd\" string")
    return obj


def short_reason(e: Exception) -> str:
    s = str(e)
    return s if len(s) <= 100 else s[:100] + "..."


class TooLarge(RequestError):
    pass


class LineReader:
    """Reads '\\n'-terminated lines from a socket, each bounded in size and in time."""

    def __init__(self, sock: socket.socket, limit: int):
        self._sock = sock
        self._limit = limit
        self._buf = bytearray()
        self._scanned = 0          # _buf[:_scanned] holds no newline: a byte is searched once, not per recv

    @property
    def buffered(self) -> bool:
        return bool(self._buf)

    @property
    def has_line(self) -> bool:
        """readline() would answer without reading: a whole line is buffered, or too many bytes."""
        return self._buf.find(b"\n", self._scanned) >= 0 or len(self._buf) > self._limit

    def pull(self) -> bool:
        """Reads what a non-blocking socket holds now, without waiting; False at EOF."""
        try:
            chunk = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        if not chunk:
            return False
        self._buf += chunk
        return True

    def readline(self, deadline: float) -> bytes | None:
        """The next line without '\\n'; None at EOF (a partial last line is dropped).

        Raises TooLarge past `limit` bytes, TimeoutError when `deadline` (time.monotonic()) passes.
        """
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                if nl > self._limit:
                    raise TooLarge(f"request larger than {self._limit} bytes")
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self._limit:
                raise TooLarge(f"request larger than {self._limit} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError from None
            if not chunk:
                return None
            self._buf += chunk


def control_path() -> Path:
    """The daemon's control socket: $MPTCPIZE_CONTROL, else DEFAULT_PATH."""
    return Path(os.environ.get(CONTROL_ENV) or DEFAULT_PATH)
