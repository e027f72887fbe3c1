"""The only pyroute2 importer: MPTCP path-manager endpoints and limits."""

from dataclasses import dataclass

from .errors import MptcpizeError


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
