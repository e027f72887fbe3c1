"""MPTCP path management per network namespace: endpoints and limits (the only pyroute2 importer),
and what they mean for a connection made or accepted there (`check`)."""

import os
from dataclasses import dataclass, field

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs
from mptcpize_py.host.netns import NETNS_DIR, in_netns, netns_names, read_sysctl


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


_FLAG_BITS = {1: "signal", 2: "subflow", 4: "backup", 8: "fullmesh"}


def path_manager_state() -> PathManagerState:
    """Endpoints and limits of the in-kernel path manager of the current network namespace."""
    try:
        from pyroute2 import MPTCP
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as e:
        raise MptcpizeError(f"pyroute2 not importable: {e}", hint="pip install pyroute2") from None
    try:
        with MPTCP() as m:
            limits = m.limits("show")[0]
            eps = m.endpoint("show")
    except (NetlinkError, OSError) as e:
        raise MptcpizeError(f"cannot read MPTCP path manager: {e}") from None
    endpoints = []
    for ep in eps:
        addr = ep.get_nested("MPTCP_PM_ATTR_ADDR", "MPTCP_PM_ADDR_ATTR_ADDR4") or \
            ep.get_nested("MPTCP_PM_ATTR_ADDR", "MPTCP_PM_ADDR_ATTR_ADDR6")
        flag_bits = ep.get_nested("MPTCP_PM_ATTR_ADDR", "MPTCP_PM_ADDR_ATTR_FLAGS") or 0
        ifindex = ep.get_nested("MPTCP_PM_ATTR_ADDR", "MPTCP_PM_ADDR_ATTR_IF_IDX")
        ep_id = ep.get_nested("MPTCP_PM_ATTR_ADDR", "MPTCP_PM_ADDR_ATTR_ID") or 0
        endpoints.append(Endpoint(str(addr), _ifname(ifindex),
                                  tuple(n for b, n in _FLAG_BITS.items() if flag_bits & b), ep_id))
    return PathManagerState(tuple(endpoints), limits.get("MPTCP_PM_ATTR_SUBFLOWS") or 0,
                            limits.get("MPTCP_PM_ATTR_RCV_ADD_ADDRS") or 0)


def _ifname(ifindex: int | str | None) -> str | None:
    if isinstance(ifindex, str):
        # pyroute2 0.9 decodes MPTCP_PM_ADDR_ATTR_IF_IDX as hex bytes ("01:00:00:00"): a native s32.
        ifindex = int.from_bytes(bytes.fromhex(ifindex.replace(":", "")), "little", signed=True)
    if not ifindex:
        return None
    import socket
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


def _read_path_manager() -> str | None:
    """net.mptcp.path_manager (Linux >= 6.15: "kernel"/"userspace"), else net.mptcp.pm_type
    (5.19+: 0 in-kernel, 1 userspace); None before 5.19 (in-kernel only)."""
    pm = read_sysctl("net.mptcp.path_manager")
    if pm:
        return pm
    return {"0": "kernel", "1": "userspace"}.get(read_sysctl("net.mptcp.pm_type") or "", None)


def _netns_facts(name: str) -> NetnsPaths:
    """What the calling thread's namespace has (run through in_netns for another one)."""
    facts = NetnsPaths(name, enabled=read_sysctl("net.mptcp.enabled"),
                       path_manager=_read_path_manager())
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


def path_management(netns_dir: str = NETNS_DIR) -> list[NetnsPaths]:
    """The caller's namespace, then (as root) every namespace named in /run/netns."""
    names = netns_names(netns_dir)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    host = procfs.netns_inum(1)
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
            facts = in_netns(os.path.join(netns_dir, name), lambda n=name: _netns_facts(n))
        except MptcpizeError as e:   # deleted meanwhile, ...
            facts = NetnsPaths(name, error=e.message)
        facts.notes = explain_paths(facts, name)
        out.append(facts)
    return out
