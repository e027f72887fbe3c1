"""`mptcpize-py run`: start CMD with a backend that upgrades the TCP sockets of its process tree.

backend.py says what a backend provides; spawn.py starts CMD and keeps its status; bpf.py and seccomp/
are the backends."""

from mptcpize_py.errors import PermissionDenied, Unavailable
from mptcpize_py.run.backend import RunBackend


def make_backend(choice: str) -> RunBackend:
    """The backend `run --backend CHOICE` uses: bpf = the running daemon's program, else our own;
    auto = that, else seccomp."""
    from mptcpize_py.run.bpf import BpfRunBackend, daemon_backend
    if choice in ("auto", "bpf"):
        fast = daemon_backend()
        if fast is not None:
            return fast
    if choice == "bpf":
        return BpfRunBackend()
    if choice == "seccomp":
        return _seccomp_backend()
    try:
        return BpfRunBackend()
    except (Unavailable, PermissionDenied) as bpf_error:  # seccomp needs no privilege
        try:
            return _seccomp_backend()
        except Unavailable as seccomp_error:
            raise Unavailable(f"no backend can upgrade sockets here: bpf: {bpf_error.message}; "
                              f"seccomp: {seccomp_error.message}",
                              hint=bpf_error.hint or seccomp_error.hint) from None


def _seccomp_backend() -> RunBackend:
    try:
        from mptcpize_py.run.seccomp.backend import SeccompRunBackend
    except ImportError:
        raise Unavailable("the seccomp backend is not part of this build") from None
    return SeccompRunBackend()
