"""`mptcpize-py run`: start CMD with a backend that upgrades the TCP sockets of its process tree.

backend.py says what a backend provides; spawn.py starts CMD and keeps its status; bpf.py and seccomp/
are the backends. Nothing is imported here at module level: `run` through the daemon (the fast path)
imports only the modules it uses."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mptcpize_py.run.backend import RunBackend
    from mptcpize_py.run.bpf import DaemonRunBackend


def daemon_fast_path(choice: str) -> "DaemonRunBackend | None":
    """The running daemon's program, when `run --backend CHOICE` may use it (auto, bpf) and a daemon
    that upgrades answers; else None. Costs one round trip."""
    if choice not in ("auto", "bpf"):
        return None
    from mptcpize_py.run.bpf import daemon_backend
    return daemon_backend()


def make_backend(choice: str, try_daemon: bool = True) -> "RunBackend":
    """The backend `run --backend CHOICE` uses: bpf = the running daemon's program, else our own;
    auto = that, else seccomp. try_daemon=False: the caller already asked daemon_fast_path()."""
    from mptcpize_py.errors import PermissionDenied, Unavailable
    if try_daemon:
        fast = daemon_fast_path(choice)
        if fast is not None:
            return fast
    if choice == "bpf":
        from mptcpize_py.run.bpf import BpfRunBackend
        return BpfRunBackend()
    if choice == "seccomp":
        return _seccomp_backend()
    try:
        from mptcpize_py.run.bpf import BpfRunBackend
        return BpfRunBackend()
    except (Unavailable, PermissionDenied) as bpf_error:  # seccomp needs no privilege
        try:
            return _seccomp_backend()
        except Unavailable as seccomp_error:
            raise Unavailable(f"no backend can upgrade sockets here: bpf: {bpf_error.message}; "
                              f"seccomp: {seccomp_error.message}",
                              hint=bpf_error.hint or seccomp_error.hint) from None


def _seccomp_backend() -> "RunBackend":
    from mptcpize_py.errors import Unavailable
    try:
        from mptcpize_py.run.seccomp.backend import SeccompRunBackend
    except ImportError:
        raise Unavailable("the seccomp backend is not part of this build") from None
    return SeccompRunBackend()
