"""A client of the daemon's control socket: one request, one answer, every failure one clear error
(exit 3 no daemon, 77 not allowed, the daemon's own code for its refusals)."""

import json
import socket
import time
from pathlib import Path

from mptcpize_py.daemon.protocol import (
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


def no_daemon_error(path: Path | str = DEFAULT_PATH) -> MptcpizeError:
    return MptcpizeError(f"no daemon is running (cannot connect to {path})",
                         hint="start it: systemctl start mptcpize-py", exit_code=EXIT_NO_DAEMON)


def request(cmd: dict, path: Path | str = DEFAULT_PATH, timeout: float = TIMEOUT,
            max_response: int = MAX_RESPONSE) -> dict:
    """Sends one request, returns the daemon's response object.

    Raises MptcpizeError: exit 3 when no daemon listens, 77 when we may not talk to it (the socket's
    permissions or the daemon's SO_PEERCRED check), the daemon's exit code for an error response, 1
    for a daemon that does not answer properly within `timeout` seconds.
    """
    path = str(path)
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise no_daemon_error(path) from None
        except PermissionError:
            raise _permission_error(path) from None
        except TimeoutError:
            raise MptcpizeError(f"the daemon did not accept a connection on {path} within "
                                f"{timeout:g} s") from None
        except OSError as e:
            raise MptcpizeError(f"cannot connect to {path}: {e.strerror}") from None
        try:
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
        raise MptcpizeError(str(resp["error"]), hint=hint,
                            exit_code=code if type(code) is int and 0 < code < 256 else None)
    return resp


def _permission_error(path: str) -> PermissionDenied:
    return PermissionDenied(f"permission denied: the daemon's control socket {path} is root-only",
                            hint="run it as root, e.g. with sudo")
