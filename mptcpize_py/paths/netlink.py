"""Netlink for path management: the tree's only pyroute2 importer. Every function works in the network
namespace of the calling thread (host.netns.in_netns() puts a call in another one); sockets are made
per call and closed, except the event socket, which stays in the namespace it was made in.

pyroute2 is imported inside the functions: `check` and `paths` load this module on hosts where
importing pyroute2 may fail, and say so instead of dying at import.

Attributes are read with msg.get_attr("NLA_NAME") (and get_nested for nested ones), which answer the
same from pyroute2 0.7.2 (Debian 12's python3-pyroute2) to 0.9: 0.7's msg.get("NLA_NAME") gives None
(tests/host/test_netlink_versions.py runs both against `ip`).
"""

import errno
import socket
import struct

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.paths.plan import Addr, KernelEndpoint, KernelView, Limits, Link, Route

# include/uapi/linux/rtnetlink.h: the multicast groups whose messages can change what we want:
# links (up/down, carrier), IPv4/IPv6 addresses (new, deleted, DAD done, deprecated) and routes.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
EVENT_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
NETLINK_ROUTE = 0
SO_NETNS_COOKIE = 71   # include/uapi/asm-generic/socket.h, Linux 5.14


class NetlinkUnavailable(MptcpizeError):
    pass


def _pyroute2():
    try:
        import pyroute2
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as e:
        raise NetlinkUnavailable(f"pyroute2 not importable: {e}", hint="pip install pyroute2") from None
    return pyroute2, NetlinkError


def netns_cookie() -> int | None:
    """The calling thread's network namespace's cookie: unlike its inode number, never reused while
    the machine runs (None before Linux 5.14)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        except OSError:
            return None


def event_socket() -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to EVENT_GROUPS in the calling thread's namespace.
    Only a wake-up: what arrived is not parsed, the namespace is read anew (a burst, or an overrun of
    the socket's buffer, ENOBUFS, loses nothing that way)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                      NETLINK_ROUTE)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, EVENT_GROUPS))
    except OSError:
        s.close()
        raise
    return s


def drain(s: socket.socket) -> bool:
    """Reads what is queued on an event socket; True when anything (or an overrun) was there."""
    got = False
    while True:
        try:
            if not s.recv(1 << 16):
                return got
            got = True
        except BlockingIOError:
            return got
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            got = True   # events were lost: the caller reads everything again anyway


def _ifindex(value) -> int | None:
    """MPTCP_PM_ADDR_ATTR_IF_IDX: an int, or (pyroute2 0.9 decodes it as "hex") "03:00:00:00", a
    native s32."""
    if isinstance(value, str):
        value = int.from_bytes(bytes.fromhex(value.replace(":", "")), "little", signed=True)
    elif isinstance(value, bytes | bytearray):
        value = int.from_bytes(value, "little", signed=True)
    return value or None


def _endpoint(ep) -> KernelEndpoint:
    def attr(name):
        return ep.get_nested("MPTCP_PM_ATTR_ADDR", f"MPTCP_PM_ADDR_ATTR_{name}")
    return KernelEndpoint(id=attr("ID") or 0, address=str(attr("ADDR4") or attr("ADDR6")),
                          ifindex=_ifindex(attr("IF_IDX")), flags=attr("FLAGS") or 0, port=attr("PORT") or 0)


def read_endpoints_and_limits() -> tuple[tuple[KernelEndpoint, ...], Limits]:
    pyroute2, NetlinkError = _pyroute2()
    try:
        with pyroute2.MPTCP() as m:
            limits = m.limits("show")[0]
            eps = m.endpoint("show")
    except (NetlinkError, OSError) as e:
        raise MptcpizeError(f"cannot read MPTCP path manager: {e}") from None
    return tuple(_endpoint(ep) for ep in eps), Limits(limits.get_attr("MPTCP_PM_ATTR_SUBFLOWS") or 0,
                                                      limits.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS") or 0)


def _ifname(raw: str | bytes | None, index: int) -> bytes:
    """IFLA_IFNAME as the kernel's bytes: pyroute2 gives a str when they are UTF-8 and the bytes when
    they are not (a name such as b"u\xff" is legal: the kernel refuses only '/', ':', whitespace)."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    return raw.encode() if raw else f"if{index}".encode()


def read_view() -> KernelView:
    """Links, addresses, routes, MPTCP endpoints and limits of the calling thread's namespace."""
    pyroute2, NetlinkError = _pyroute2()
    try:
        with pyroute2.IPRoute() as ipr:
            links = tuple(Link(lk["index"], _ifname(lk.get_attr("IFLA_IFNAME"), lk["index"]), lk["flags"])
                          for lk in ipr.get_links())
            addrs = tuple(Addr(a["family"], a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"),
                               a["prefixlen"], a["index"], a.get_attr("IFA_FLAGS") or a["flags"], a["scope"])
                          for a in ipr.get_addr() if a["family"] in (socket.AF_INET, socket.AF_INET6))
            routes = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family):
                    hops = r.get_attr("RTA_MULTIPATH")
                    if hops:
                        oifs = tuple((h["oif"], h["flags"]) for h in hops)
                    else:
                        oifs = ((r.get_attr("RTA_OIF"), r["flags"]),) if r.get_attr("RTA_OIF") else ()
                    routes.append(Route(r["family"], r.get_attr("RTA_TABLE") or r["table"], r["type"],
                                        r.get_attr("RTA_DST"), r["dst_len"], oifs))
    except (NetlinkError, OSError) as e:
        raise MptcpizeError(f"cannot read links, addresses and routes: {e}") from None
    endpoints, limits = read_endpoints_and_limits()
    return KernelView(links, addrs, tuple(routes), endpoints, limits)


def add_endpoint(address: str, ifindex: int, flags: int) -> KernelEndpoint:
    """Adds an endpoint; returns it as the kernel then lists it (with the id it gave it). Raises OSError
    (errno EEXIST: the address has one; ERANGE: the namespace holds MPTCP_PM_ADDR_MAX)."""
    pyroute2, NetlinkError = _pyroute2()
    family = "addr6" if ":" in address else "addr4"
    with pyroute2.MPTCP() as m:
        try:
            m.endpoint("add", **{family: address}, flags=flags, if_idx=struct.pack("=i", ifindex))
        except NetlinkError as e:
            raise OSError(e.code, f"{address}: {errno.errorcode.get(e.code, e.code)}") from None
        for ep in m.endpoint("show"):
            got = _endpoint(ep)
            if got.address == address:
                return got
    raise OSError(errno.ENOENT, f"{address}: added, then not listed")


def delete_endpoint(endpoint_id: int, address: str) -> None:
    """Removes endpoint `endpoint_id` (the address too: the kernel checks both). ENOENT is fine: gone."""
    pyroute2, NetlinkError = _pyroute2()
    family = "addr6" if ":" in address else "addr4"
    with pyroute2.MPTCP() as m:
        try:
            m.endpoint("del", id=endpoint_id, **{family: address})
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise OSError(e.code, f"id {endpoint_id}: {errno.errorcode.get(e.code, e.code)}") from None


def set_limits(limits: Limits) -> None:
    pyroute2, NetlinkError = _pyroute2()
    with pyroute2.MPTCP() as m:
        try:
            m.limits("set", subflows=limits.subflows, add_addr_accepted=limits.add_addr_accepted)
        except NetlinkError as e:
            raise OSError(e.code, f"limits: {errno.errorcode.get(e.code, e.code)}") from None
