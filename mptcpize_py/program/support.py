"""The kernel side of the BPF path, judged once per process: the hook in BTF, a trampoline that
attaches, the netns guard. Each check really tries the thing; nothing is inferred from versions.
Consumed by `check` (support.py), `enable`, the bcc loader (which writes the netns guard's facts into
the settings map from here), and the libbpf loader only when its object did not load, to say why (its
start reads neither BTF nor /proc/kallsyms here: the object finds the guard's facts itself)."""

import errno
import functools
import os
from dataclasses import dataclass, field

from mptcpize_py.errors import MptcpizeError, PermissionDenied, Unavailable
from mptcpize_py.host import procfs
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

    if hook.status != OK or facts is None or facts.update_socket_protocol_id is None:   # hook OK implies both
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
        errors["netns guard"] = guard_error()
    return KernelSupport(facts, pernet_addr or None, hook, tramp, guard, errors)


def guard_error(err: int = 0) -> Unavailable:
    """What a user of the hook is told when the program cannot read net.mptcp.enabled (both loaders);
    err: the errno of the libbpf loader's in-kernel look-up, if any (EPERM: addresses hidden)."""
    hint = ("the kernel hides its addresses from this process: it needs CAP_SYSLOG (kptr_restrict)"
            if err == errno.EPERM else "needs CONFIG_KALLSYMS_ALL=y; see `mptcpize-py check`")
    return Unavailable("cannot locate net.mptcp.enabled in kernel memory (mptcp_pernet_id in "
                       "/proc/kallsyms, struct mptcp_pernet in BTF)", hint=hint)


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
