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
class PathNote:
    text: str
    hint: str | None = None


@dataclass
class NetnsPaths:
    """How MPTCP path management is set up in one network namespace (informational: `check`'s
    exit status does not depend on it)."""
    name: str                      # "host", a /run/netns NAME, or "current (inum:N)"
    enabled: str | None = None     # net.mptcp.enabled
    path_manager: str | None = None   # "kernel" / "userspace" (net.mptcp.path_manager or pm_type)
    subflows: int | None = None    # limits
    add_addr_accepted: int | None = None
    endpoints: list[dict] = field(default_factory=list)
    error: str | None = None
    notes: list[PathNote] = field(default_factory=list)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    backend: str | None = None
    backend_reason: str = ""
    path_management: list[NetnsPaths] = field(default_factory=list)

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

    rep.path_management = path_management()

    failed = [c.name for c in rep.checks if c.required and c.status == FAIL]
    if not failed:
        rep.backend, rep.backend_reason = "bpf", "fmod_ret on update_socket_protocol works here"
        return rep
    from .run.seccomp.probe import probe as seccomp_probe
    try:
        seccomp_probe()
        add(Check("seccomp notify", OK, "user notification with ADDFD+SEND works", required=False))
        rep.backend, rep.backend_reason = "seccomp", ("BPF backend unusable (" + ", ".join(failed)
                                                      + "); seccomp user notification works")
    except MptcpizeError as e:
        add(Check("seccomp notify", FAIL, e.message, e.hint, required=False))
        rep.backend, rep.backend_reason = None, "BPF backend unusable: " + ", ".join(failed)
    return rep


# ---------------------------------------------------------------------------------------------------
# Path management, per network namespace


def _read_path_manager() -> str | None:
    """net.mptcp.path_manager (Linux >= 6.15: "kernel"/"userspace"), else net.mptcp.pm_type
    (5.19+: 0 in-kernel, 1 userspace); None before 5.19 (in-kernel only)."""
    pm = kernel.read_sysctl("net.mptcp.path_manager")
    if pm:
        return pm
    return {"0": "kernel", "1": "userspace"}.get(kernel.read_sysctl("net.mptcp.pm_type") or "", None)


def _netns_facts(name: str) -> NetnsPaths:
    """What the calling thread's namespace has (run through mptcpdiag.in_netns for another one)."""
    facts = NetnsPaths(name, enabled=kernel.read_sysctl("net.mptcp.enabled"),
                       path_manager=_read_path_manager())
    if facts.enabled is None:
        facts.error = "no net.mptcp sysctls: this kernel has no MPTCP (CONFIG_MPTCP)"
        return facts
    try:
        pm = mptcp.path_manager_state()
    except MptcpizeError as e:
        facts.error = e.message
        return facts
    facts.subflows, facts.add_addr_accepted = pm.subflows, pm.add_addr_accepted
    facts.endpoints = [{"address": e.address, "id": e.id, "dev": e.ifname, "flags": list(e.flags)}
                       for e in pm.endpoints]
    return facts


def explain_paths(facts: NetnsPaths, ns_name: str | None = None) -> list[PathNote]:
    """The notes and hints for one namespace (pure). ns_name: its `ip netns` name, put in the hints'
    commands (`ip -n NAME ...`); None for the caller's own namespace."""
    ip = f"ip -n {ns_name}" if ns_name else "ip"
    sysctl = f"ip netns exec {ns_name} sysctl" if ns_name else "sysctl"
    notes = []
    if facts.enabled is not None and facts.enabled != "1":
        notes.append(PathNote(f"net.mptcp.enabled={facts.enabled}: sockets created here are never "
                              "upgraded (they stay TCP)", f"{sysctl} -w net.mptcp.enabled=1"))
        return notes
    if facts.path_manager == "userspace":
        notes.append(PathNote("path manager 'userspace': the kernel opens no extra subflow and announces "
                              "no address by itself, and the endpoints and limits below are not used; a "
                              "userspace path manager (mptcpd) must do it",
                              f"run mptcpd, or {sysctl} -w net.mptcp.path_manager=kernel "
                              "(net.mptcp.pm_type=0 before Linux 6.15)"))
        return notes
    if facts.subflows is None:
        return notes
    flags = [set(e["flags"]) for e in facts.endpoints]
    n_subflow = sum(1 for f in flags if "subflow" in f)
    if facts.subflows == 0:
        notes.append(PathNote("limits subflows=0: upgraded connections will never open a second subflow",
                              f"{ip} mptcp limits set subflows 2 add_addr_accepted 2"))
    elif n_subflow > facts.subflows:
        notes.append(PathNote(f"limits subflows={facts.subflows} but {n_subflow} 'subflow' endpoints: "
                              f"a connection opens at most {facts.subflows} extra subflow(s)",
                              f"{ip} mptcp limits set subflows {n_subflow} "
                              f"add_addr_accepted {facts.add_addr_accepted}"))
    if facts.subflows and not n_subflow:
        if facts.add_addr_accepted:
            text = ("no endpoint with the 'subflow' flag: as a client, a connection made here gets a "
                    "second subflow only when the server announces another address (ADD_ADDR; "
                    f"add_addr_accepted={facts.add_addr_accepted})")
        else:
            text = ("no endpoint with the 'subflow' flag and add_addr_accepted=0: as a client, a "
                    "connection made here never gets a second subflow (it opens none itself and "
                    "ignores the addresses a server announces)")
        notes.append(PathNote(text,
                              f"{ip} mptcp endpoint add ADDRESS dev IFACE subflow"))
    if facts.subflows and not any("signal" in f for f in flags):
        notes.append(PathNote("no endpoint with the 'signal' flag: as a server, this namespace announces "
                              "no other address; clients get a second subflow only from their own "
                              "'subflow' endpoints",
                              f"{ip} mptcp endpoint add ADDRESS dev IFACE signal"))
    return notes


def path_management(netns_dir: str = "/run/netns") -> list[NetnsPaths]:
    """The caller's namespace, then (as root) every namespace named in /run/netns."""
    from . import mptcpdiag
    names = mptcpdiag.netns_names(netns_dir)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    try:
        host = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        host = None
    own_name = "host" if own == host else names.get(own, f"current (inum:{own})")
    facts = _netns_facts(own_name)
    facts.notes = explain_paths(facts, names.get(own))
    out = [facts]
    if os.geteuid() != 0:
        others = [n for i, n in names.items() if i != own]
        if others:
            out[0].notes.append(PathNote(f"{len(others)} other namespace(s) in {netns_dir} not "
                                         "inspected", "run as root to see them"))
        return out
    for inum, name in sorted(names.items(), key=lambda kv: kv[1]):
        if inum == own:
            continue
        try:
            facts = mptcpdiag.in_netns(os.path.join(netns_dir, name), lambda n=name: _netns_facts(n))
        except MptcpizeError as e:   # deleted meanwhile, ...
            facts = NetnsPaths(name, error=e.message)
        facts.notes = explain_paths(facts, name)
        out.append(facts)
    return out
