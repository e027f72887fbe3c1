"""What this kernel and host can do, judged once per process and consumed by `check`, `enable`, `run`
and the program loader. Each check really tries the thing; nothing is inferred from versions."""

import errno
import functools
import os
from dataclasses import dataclass, field

from mptcpize_py.errors import MptcpizeError, PermissionDenied, Unavailable
from mptcpize_py.host import netns, procfs
from mptcpize_py.paths import NetnsPaths, path_management
from mptcpize_py.program import btf, kallsyms, trampoline

OK, WARN, FAIL = "ok", "warn", "fail"
HOOK = "update_socket_protocol"


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
    path_management: list[NetnsPaths] = field(default_factory=list)
    loader: str | None = None    # the program loader run would use: "libbpf" or "bcc"
    loader_reason: str = ""

    @property
    def run_can_upgrade(self) -> bool:
        return self.backend is not None


@dataclass(frozen=True)
class KernelSupport:
    """The kernel side of the BPF path: the hook in BTF, a trampoline that attaches, and the netns
    guard (net.mptcp.enabled readable in kernel memory). No bcc, no compile: cheap enough for `enable`."""
    facts: btf.HookFacts | None
    pernet_addr: int | None     # address of mptcp_pernet_id (None: hidden or absent)
    hook: Check
    trampoline: Check
    netns_guard: Check
    # What a user of a failed feature is told (the loader raises it), per check name: its own words,
    # exception class and exit code.
    errors: dict[str, MptcpizeError] = field(default_factory=dict)

    @property
    def checks(self) -> list[Check]:
        return [self.hook, self.trampoline, self.netns_guard]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def hook_usable(self) -> bool:
        return self.hook.status == OK and self.trampoline.status == OK


def _errno_text(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "?")
    return f"{e.strerror} ({name})"


@functools.cache
def kernel_support() -> KernelSupport:
    errors: dict[str, MptcpizeError] = {}
    try:
        facts = btf.read_hook_facts()
        hook = (Check("kernel hook", OK, f"{HOOK} in BTF (id {facts.update_socket_protocol_id})")
                if facts.update_socket_protocol_id is not None else
                Check("kernel hook", FAIL, f"{HOOK} is not in the kernel's BTF",
                      "Linux >= 6.6 with CONFIG_DEBUG_INFO_BTF=y is needed for the BPF backend"))
        errors["kernel hook"] = Unavailable(f"this kernel has no {HOOK}() in its BTF",
                                            hint="the BPF backend needs Linux >= 6.6 with "
                                                 "CONFIG_DEBUG_INFO_BTF=y")
    except MptcpizeError as e:
        facts, hook = None, Check("kernel hook", FAIL, e.message, e.hint)
        errors["kernel hook"] = e

    if hook.status != OK:
        tramp = Check("bpf trampoline", FAIL, "not tried: no hook to attach to",
                      "see 'kernel hook' above")
        errors["bpf trampoline"] = errors["kernel hook"]
    else:
        try:
            trampoline.probe_trampoline(facts.update_socket_protocol_id)
            tramp = Check("bpf trampoline", OK, "fmod_ret program loaded and attached")
        except OSError as e:
            tramp, errors["bpf trampoline"] = _trampoline_failure(e)

    pernet_addr = kallsyms.read_kallsyms_address("mptcp_pernet_id")
    offset = facts.mptcp_enabled_offset if facts is not None else None
    if offset is not None and pernet_addr:
        guard = Check("netns guard", OK, "net.mptcp.enabled readable per namespace "
                      f"(mptcp_pernet_id, mptcp_enabled at +{offset})")
    else:
        missing = [what for what, ok in (("mptcp_pernet_id in /proc/kallsyms", pernet_addr),
                                         ("struct mptcp_pernet.mptcp_enabled in BTF", offset is not None))
                   if not ok]
        guard = Check("netns guard", FAIL, "cannot read net.mptcp.enabled per namespace: missing "
                      + ", ".join(missing),
                      "needs CONFIG_KALLSYMS_ALL=y and root (kptr_restrict hides addresses otherwise)")
        errors["netns guard"] = Unavailable(
            "cannot locate net.mptcp.enabled in kernel memory (mptcp_pernet_id in /proc/kallsyms, "
            "struct mptcp_pernet in BTF)", hint="needs CONFIG_KALLSYMS_ALL=y; see `mptcpize-py check`")
    return KernelSupport(facts, pernet_addr or None, hook, tramp, guard, errors)


def _trampoline_failure(e: OSError) -> tuple[Check, MptcpizeError]:
    missing = procfs.missing_capabilities(("CAP_BPF", "CAP_PERFMON"))
    if missing:
        error: MptcpizeError = PermissionDenied(
            f"loading the fmod_ret program needs {' and '.join(missing)} (not in this process's "
            "effective set)", hint="run as root with them, e.g. AmbientCapabilities= / "
                                   "CapabilityBoundingSet= in the unit")
    else:
        error = Unavailable(f"this kernel refuses the fmod_ret program on {HOOK}(): {e.strerror}",
                            hint="BPF trampolines are disabled here; see `mptcpize-py check`")
    hint = ("this kernel refuses BPF trampolines (fentry/fmod_ret); run on a kernel that allows "
            "them" if e.errno == errno.EPERM and os.geteuid() == 0 else
            "run as root" if e.errno == errno.EPERM else None)
    return Check("bpf trampoline", FAIL, f"fmod_ret load/attach refused: {_errno_text(e)}", hint), error


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
