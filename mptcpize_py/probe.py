"""What this kernel and host can do: each check really tries the thing, nothing is inferred from versions."""

import errno
import os
from dataclasses import dataclass, field

from . import bpf, kernel, mptcp
from .errors import MptcpizeError

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str          # ok / warn / fail
    detail: str
    hint: str | None = None
    required: bool = True  # a failed required check means `run` cannot upgrade


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    backend: str | None = None
    backend_reason: str = ""

    @property
    def run_can_upgrade(self) -> bool:
        return self.backend is not None


def _errno_text(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "?")
    return f"{e.strerror} ({name})"


def run_checks(compile_test: bool = True) -> Report:
    rep = Report()
    add = rep.checks.append

    try:
        facts = kernel.read_hook_facts()
    except MptcpizeError as e:
        facts = None
        add(Check("kernel hook", FAIL, e.message, e.hint))
    if facts is not None:
        if facts.update_socket_protocol_id is None:
            add(Check("kernel hook", FAIL, "update_socket_protocol is not in the kernel's BTF",
                      "Linux >= 6.6 with CONFIG_DEBUG_INFO_BTF=y is needed for the BPF backend"))
        else:
            add(Check("kernel hook", OK,
                      f"update_socket_protocol in BTF (id {facts.update_socket_protocol_id})"))

    hook_ok = facts is not None and facts.update_socket_protocol_id is not None
    if hook_ok:
        try:
            kernel.probe_trampoline(facts.update_socket_protocol_id)
            add(Check("bpf trampoline", OK, "fmod_ret program loaded and attached"))
        except OSError as e:
            hint = ("this kernel refuses BPF trampolines (fentry/fmod_ret); run on a kernel that allows "
                    "them" if e.errno == errno.EPERM and os.geteuid() == 0 else
                    "run as root" if e.errno == errno.EPERM else None)
            add(Check("bpf trampoline", FAIL, f"fmod_ret load/attach refused: {_errno_text(e)}", hint))
    else:
        add(Check("bpf trampoline", FAIL, "not tried: no hook to attach to", "see 'kernel hook' above"))

    pernet_addr = kernel.read_kallsyms_address("mptcp_pernet_id")
    if facts is not None and facts.mptcp_enabled_offset is not None and pernet_addr:
        add(Check("netns guard", OK, "net.mptcp.enabled readable per namespace "
                  f"(mptcp_pernet_id, mptcp_enabled at +{facts.mptcp_enabled_offset})"))
    else:
        missing = [what for what, ok in (
            ("mptcp_pernet_id in /proc/kallsyms", pernet_addr),
            ("struct mptcp_pernet.mptcp_enabled in BTF",
             facts is not None and facts.mptcp_enabled_offset is not None)) if not ok]
        add(Check("netns guard", FAIL, "cannot read net.mptcp.enabled per namespace: missing "
                  + ", ".join(missing),
                  "needs CONFIG_KALLSYMS_ALL=y and root (kptr_restrict hides addresses otherwise)"))

    status = bpf.toolchain_status(compile_test=compile_test)
    add(Check("bcc", OK if status.ok else FAIL, status.detail, status.hint))

    enabled = kernel.read_sysctl("net.mptcp.enabled")
    if enabled == "1":
        add(Check("net.mptcp.enabled", OK, "1 in this network namespace", required=False))
    else:
        add(Check("net.mptcp.enabled", WARN,
                  f"{enabled if enabled is not None else 'absent'} in this network namespace: "
                  "sockets created here stay TCP",
                  "sysctl -w net.mptcp.enabled=1", required=False))

    add(_path_manager_check())

    failed = [c.name for c in rep.checks if c.required and c.status == FAIL]
    if not failed:
        rep.backend, rep.backend_reason = "bpf", "fmod_ret on update_socket_protocol works here"
        return rep
    from . import seccomp
    try:
        seccomp.probe()
        add(Check("seccomp notify", OK, "user notification with ADDFD+SEND works", required=False))
        rep.backend, rep.backend_reason = "seccomp", ("BPF backend unusable (" + ", ".join(failed)
                                                      + "); seccomp user notification works")
    except MptcpizeError as e:
        add(Check("seccomp notify", FAIL, e.message, e.hint, required=False))
        rep.backend, rep.backend_reason = None, "BPF backend unusable: " + ", ".join(failed)
    return rep


def _path_manager_check() -> Check:
    try:
        pm = mptcp.path_manager_state()
    except MptcpizeError as e:
        return Check("mptcp endpoints", WARN, e.message, e.hint, required=False)
    detail = (f"{len(pm.endpoints)} endpoint(s); limits subflows={pm.subflows} "
              f"add_addr_accepted={pm.add_addr_accepted}")
    if pm.subflows == 0:
        return Check("mptcp endpoints", WARN, detail + ": connections never open a second subflow",
                     "ip mptcp limits set subflows 2 add_addr_accepted 2", required=False)
    if not any("subflow" in e.flags for e in pm.endpoints):
        return Check("mptcp endpoints", WARN, detail + ": no 'subflow' endpoint, so this host "
                     "opens no extra subflow itself (it may still accept the peer's)",
                     "ip mptcp endpoint add ADDRESS dev IFACE subflow", required=False)
    return Check("mptcp endpoints", OK, detail, required=False)
