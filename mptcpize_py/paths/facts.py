"""What MPTCP path management looks like per network namespace, read from the kernel: for `check`
(NetnsPaths: what the endpoints and limits mean for a connection made or accepted there) and for
`paths` (PathsReport: who manages the endpoints, which are ours, what the policy would change)."""

import functools
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs
from mptcpize_py.host.netns import in_netns, named_netns_dir, netns_names, read_sysctl
from mptcpize_py.paths import netlink, others, plan, state
from mptcpize_py.policy import HOST_NETNS_NAME, Policy


@dataclass(frozen=True)
class Endpoint:
    address: str
    ifname: str | None
    flags: tuple[str, ...]
    id: int


@dataclass(frozen=True)
class PathManagerState:
    endpoints: tuple[Endpoint, ...]
    subflows: int
    add_addr_accepted: int


def path_manager_state() -> PathManagerState:
    """Endpoints and limits of the in-kernel path manager of the current network namespace."""
    eps, limits = netlink.read_endpoints_and_limits()
    return PathManagerState(tuple(Endpoint(e.address, _ifname(e.ifindex), plan.flag_names(e.flags), e.id)
                                  for e in eps), limits.subflows, limits.add_addr_accepted)


def _ifname(ifindex: int | None) -> str | None:
    if not ifindex:
        return None
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return str(ifindex)


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
    managed_by: str | None = None  # who else manages endpoints here (mptcpd, NetworkManager), if anyone


def _netns_facts(name: str, procs: list | None = None) -> NetnsPaths:
    """What the calling thread's namespace has (run through in_netns for another one)."""
    facts = NetnsPaths(name, enabled=read_sysctl("net.mptcp.enabled"),
                       path_manager=others.read_path_manager())
    if procs is not None:
        other, _ = others.other_manager(os.stat("/proc/thread-self/ns/net").st_ino, procs,
                                        facts.path_manager)
        if other is not None and other.pid is not None:
            facts.managed_by = other.why
    if facts.enabled is None:
        facts.error = "no net.mptcp sysctls: this kernel has no MPTCP (CONFIG_MPTCP)"
        return facts
    try:
        pm = path_manager_state()
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
    if facts.managed_by:
        notes.append(PathNote(f"{facts.managed_by}: a [paths] table of mptcpize-py stands back here"))
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


def path_management(netns_dir: str | None = None) -> list[NetnsPaths]:
    """The caller's namespace, then (as root) every namespace named in /run/netns."""
    netns_dir = netns_dir or named_netns_dir()
    names = netns_names(netns_dir)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    host = procfs.netns_inum(1)
    own_name = "host" if own == host else names.get(own, f"current (inum:{own})")
    procs = others.processes()
    facts = _netns_facts(own_name, procs)
    facts.notes = explain_paths(facts, names.get(own))
    out = [facts]
    if os.geteuid() != 0:
        rest = [n for i, n in names.items() if i != own]
        if rest:
            out[0].notes.append(PathNote(f"{len(rest)} other namespace(s) in {netns_dir} not "
                                         "inspected", "run as root to see them"))
        return out
    for inum, name in sorted(names.items(), key=lambda kv: kv[1]):
        if inum == own:
            continue
        try:
            facts = in_netns(os.path.join(netns_dir, name), functools.partial(_netns_facts, name, procs))
        except MptcpizeError as e:   # deleted meanwhile, ...
            facts = NetnsPaths(name, error=e.message)
        facts.notes = explain_paths(facts, name)
        out.append(facts)
    return out


# ---------------------------------------------------------------------------------------------------
# `paths`: who manages endpoints, which are ours, what the policy would change


@dataclass
class PathsEndpoint:
    id: int
    address: str
    dev: str | None    # plan.ifname_text(): exact (JSON), escaped in text
    flags: list[str]
    own: bool          # added by mptcpize-py (paths.json records it); else foreign, never touched


@dataclass
class PathsReport:
    name: str                        # "host", a /run/netns NAME, or "current (inum:N)"
    managed_by: str = "nobody"
    role: str | None = None          # the policy's role here; None: no [paths] table, or not selected
    enabled: str | None = None       # net.mptcp.enabled
    path_manager: str | None = None
    subflows: int | None = None
    add_addr_accepted: int | None = None
    endpoints: list[PathsEndpoint] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)   # what applying the policy would change
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _selected(policy: Policy, name: str) -> bool:
    sel = policy.netns
    return name == HOST_NETNS_NAME or sel.mode == "all" or name in sel.names


def _paths_here(rep: PathsReport, policy: Policy | None, owner: dict | None,
                records: dict[str, "state.NetnsRecord"], procs: list) -> PathsReport:
    """Fills `rep` for the calling thread's namespace."""
    rep.enabled, rep.path_manager = read_sysctl("net.mptcp.enabled"), others.read_path_manager()
    if rep.enabled is None:
        rep.error = "no net.mptcp sysctls: this kernel has no MPTCP (CONFIG_MPTCP)"
        return rep
    inum = os.stat("/proc/thread-self/ns/net").st_ino
    record = records.get(state.netns_key(netlink.netns_cookie(), inum))
    # What a look now can prove ours: those recorded that the kernel lists exactly so (the manager's
    # next pass forgets the others for good).
    own = frozenset(record.endpoints) if record else frozenset()
    view = netlink.read_view()
    rep.subflows, rep.add_addr_accepted = view.limits.subflows, view.limits.add_addr_accepted
    rep.endpoints = [PathsEndpoint(e.id, e.address, plan.ifname_text(view.ifname(e.ifindex)),
                                   list(plan.flag_names(e.flags)), plan.is_own(e, own))
                     for e in view.endpoints]
    other, note = others.other_manager(inum, procs, rep.path_manager)
    alive = state.owner_alive(owner)
    settings = None
    if policy is not None and policy.paths is not None and _selected(policy, rep.name):
        settings = policy.paths.for_netns(rep.name)
        rep.role = settings.role
    if other is not None:
        rep.managed_by = other.why
    elif alive and (own or (settings is not None and settings.manages)):
        rep.managed_by = state.describe_owner(owner)
    elif own:
        rep.managed_by = "nobody (the 'own' endpoints come from `mptcpize-py paths --apply`: nothing " \
                         "keeps them in sync)"
    if note:
        rep.notes.append(note)
    if policy is None:
        rep.notes.append("no policy read: what it would change is not shown")
        return rep
    manage = settings if settings is not None and settings.manages and other is None else None
    p = plan.plan(view, manage, own, record.limits_set if record else None,
                  record.limits_before if record else None)
    for e in p.remove:
        rep.changes.append(f"remove endpoint {e.address} id {e.id} dev {view.ifname_text(e.ifindex)} "
                           f"{' '.join(plan.flag_names(e.flags))}")
    for w in p.add:
        rep.changes.append(f"add endpoint {w.describe()}")
    if p.limits is not None:
        rep.changes.append(f"set limits subflows={p.limits.subflows} "
                           f"add_addr_accepted={p.limits.add_addr_accepted}")
    rep.notes.extend(p.left_undone())
    for sk in p.skipped:
        rep.notes.append(f"no endpoint for {sk.address} ({plan.ifname_text(sk.ifname)}): {sk.reason}")
    for pattern in p.unmatched:
        rep.notes.append(f"interfaces pattern {pattern!r} matches no interface")
    if settings is None and policy.paths is not None:
        rep.notes.append("the policy does not select this namespace" if not _selected(policy, rep.name)
                         else "")
    rep.notes = [n for n in rep.notes if n]
    return rep


def paths_report(policy: Policy | None, state_dir: Path, only: str | None = None,
                 netns_dir: str | None = None) -> list[PathsReport]:
    """`paths`: the caller's namespace, then (as root) every namespace named in /run/netns; only the
    namespace /run/netns/`only` when given. `policy` None: none could be read."""
    netns_dir = netns_dir or named_netns_dir()
    owner, records = state.read(state_dir)
    procs = others.processes()
    names = netns_names(netns_dir)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    # The policy's "host" is the daemon's own namespace; `paths` run beside it (not in a named one
    # with `ip netns exec`) shares it.
    host = own if own not in names else None

    def one(name: str, path: str | None) -> PathsReport:
        rep = PathsReport(name)
        try:
            return in_netns(path, lambda: _paths_here(rep, policy, owner, records, procs))
        except MptcpizeError as e:
            rep.error = e.message
            return rep

    if only is not None:
        path = os.path.join(netns_dir, only)
        return [one(HOST_NETNS_NAME if os.stat(path).st_ino == host else only, path)]
    out = [one(names.get(own, HOST_NETNS_NAME), None)]
    if os.geteuid() != 0:
        out[0].notes.append(f"not root: {state_dir}/{state.STATE_FILE} cannot be read, so every endpoint "
                            "shows as foreign")
        others_n = [n for i, n in names.items() if i != own]
        if others_n:
            out[0].notes.append(f"{len(others_n)} other namespace(s) in {netns_dir} not inspected: "
                                "run as root to see them")
        return out
    for inum, name in sorted(names.items(), key=lambda kv: kv[1]):
        if inum != own:
            out.append(one(name, os.path.join(netns_dir, name)))
    return out
