"""`check`: the kernel facts (program/support.py), the toolchain, net.mptcp.enabled, path
management and the backend `run` would use, composed into one report."""

from dataclasses import dataclass, field

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import netns, root
from mptcpize_py.paths import NetnsPaths, path_management
from mptcpize_py.program.support import FAIL, OK, WARN, Check, kernel_support

__all__ = ["FAIL", "OK", "WARN", "Check", "Report", "kernel_support", "run_checks"]


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    backend: str | None = None
    backend_reason: str = ""
    path_management: list[NetnsPaths] = field(default_factory=list)
    loader: str | None = None    # the program loader run would use: "libbpf" or "bcc"
    loader_reason: str = ""

    @property
    def run_can_upgrade(self) -> bool:
        return self.backend is not None


def run_checks(compile_test: bool = True) -> Report:
    """Everything `check` reports, and which backend `run` would use."""
    from mptcpize_py.program import prebuilt
    rep = Report()
    add = rep.checks.append
    kern = kernel_support()
    rep.checks.extend(kern.checks)

    rep.loader, rep.loader_reason = prebuilt.choose()
    if rep.loader == "libbpf":   # no compiler: bcc is not asked (`check --loader bcc` asks it)
        ok, detail, hint = prebuilt.probe(hook=kern.trampoline.status == OK)
        add(Check("prebuilt program", OK if ok else FAIL, detail, hint))
    else:
        from mptcpize_py.program import loader  # bcc's owner: imported only when asked
        status = loader.toolchain_status(compile_test=compile_test)
        add(Check("bcc", OK if status.ok else FAIL, status.detail, status.hint))

    enabled = netns.read_sysctl("net.mptcp.enabled")
    if enabled == "1":
        add(Check("net.mptcp.enabled", OK, "1 in this network namespace", required=False))
    else:
        add(Check("net.mptcp.enabled", WARN,
                  f"{enabled if enabled is not None else 'absent'} in this network namespace: "
                  "sockets created here stay TCP",
                  "sysctl -w net.mptcp.enabled=1", required=False))

    blind = root.blind_spot()
    if blind:
        add(Check("host root", WARN, blind, required=False))
    rep.path_management = path_management()

    failed = [c.name for c in rep.checks if c.required and c.status == FAIL]
    if not failed:
        rep.backend, rep.backend_reason = "bpf", "fmod_ret on update_socket_protocol works here"
        return rep
    from mptcpize_py.run.seccomp import backend as seccomp_backend
    try:
        seccomp_backend.probe()
        add(Check("seccomp notify", OK, "user notification with ADDFD+SEND works", required=False))
        rep.backend, rep.backend_reason = "seccomp", ("BPF backend unusable (" + ", ".join(failed)
                                                      + "); seccomp user notification works")
    except MptcpizeError as e:
        add(Check("seccomp notify", FAIL, e.message, e.hint, required=False))
        rep.backend, rep.backend_reason = None, "BPF backend unusable: " + ", ".join(failed)
    return rep
