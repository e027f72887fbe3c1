"""What the [paths] settings want in one network namespace, and the changes that get there. Pure: the
kernel's view comes in (netlink.py reads it), a Plan goes out (manager.py carries it out).

Which addresses get an endpoint, following what NetworkManager (>= 1.40, connection.mptcp-flags)
skips, so that the two behave alike where either could run:
- loopback interfaces and addresses (127/8, ::1, host scope);
- IPv4 link-local (169.254/16), IPv6 link-local (fe80::/10) and IPv6 ULA (fc00::/7);
- IPv6 addresses that are temporary (privacy extensions), tentative (DAD not finished), deprecated
  (preferred lifetime over) or failed DAD;
- interfaces that are down (not IFF_UP, or no carrier: not IFF_RUNNING);
- interfaces with no usable route for the address's family: no unicast route through them in any
  table but `local`, or only routes flagged linkdown/dead. NetworkManager by default also wants a
  *default* route through the interface; here a connected route is enough, because a second path
  on a server or router (a direct link, a storage network) rarely carries the default route.

Ownership: an endpoint is ours only when it is exactly one we added, id, address, flags and interface
(state.py records them), and we have seen it there at every look since (the manager forgets an
endpoint of ours the first time it is missing or different: after `ip mptcp endpoint flush` the
kernel hands the same ids out again, to whoever adds next). Everything else is foreign and is never
changed or removed; an address a foreign endpoint already covers gets no endpoint of ours (the kernel
refuses a second one for an address).

Interface names are bytes, as the kernel keeps them (IFNAMSIZ bytes, any but '/', ':', whitespace and
NUL; not necessarily UTF-8); policy patterns are matched against them as UTF-8. Text carries a name as
ifname_text() gives it (an undecodable byte as a PEP 383 lone surrogate): exact in JSON, and every
line a person reads shows it through display.escaped().
"""

import fnmatch
import ipaddress
from dataclasses import dataclass, field

from mptcpize_py.policy import MPTCP_PM_ADDR_MAX, PathsSettings

AF_INET, AF_INET6 = 2, 10

# include/uapi/linux/mptcp.h MPTCP_PM_ADDR_FLAG_*
SIGNAL, SUBFLOW, BACKUP, FULLMESH, IMPLICIT, LAMINAR = 1, 2, 4, 8, 16, 32
FLAG_NAMES = {SIGNAL: "signal", SUBFLOW: "subflow", BACKUP: "backup", FULLMESH: "fullmesh",
              IMPLICIT: "implicit", LAMINAR: "laminar"}

# include/uapi/linux/if_addr.h IFA_F_*
IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x01, 0x08, 0x20, 0x40
# include/uapi/linux/if.h
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
# include/uapi/linux/rtnetlink.h
RTN_UNICAST, RT_TABLE_LOCAL, RT_SCOPE_HOST = 1, 255, 254
RTNH_F_DEAD, RTNH_F_LINKDOWN = 0x1, 0x10

_V4_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
_V6_ULA = ipaddress.ip_network("fc00::/7")
_V6_LINK_LOCAL = ipaddress.ip_network("fe80::/10")


def flag_names(flags: int) -> tuple[str, ...]:
    return tuple(name for bit, name in FLAG_NAMES.items() if flags & bit)


def ifname_text(name: bytes | None) -> str | None:
    """An interface name as text: exact (undecodable bytes become lone surrogates, PEP 383); shown to a
    person only through display.escaped()."""
    return None if name is None else name.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Link:
    index: int
    name: bytes          # as the kernel has it: not necessarily UTF-8
    flags: int           # IFF_*

    @property
    def usable(self) -> bool:
        return bool(self.flags & IFF_UP and self.flags & IFF_RUNNING)


@dataclass(frozen=True)
class Addr:
    family: int
    address: str
    prefixlen: int
    ifindex: int
    flags: int           # IFA_F_* (the 32-bit IFA_FLAGS when the kernel sends it)
    scope: int


@dataclass(frozen=True)
class Route:
    family: int
    table: int
    type: int
    dst: str | None
    dst_len: int
    oifs: tuple[tuple[int, int], ...]   # (ifindex, flags) of each nexthop


@dataclass(frozen=True)
class KernelEndpoint:
    id: int
    address: str
    ifindex: int | None
    flags: int
    port: int = 0

    @property
    def key(self) -> "OwnKey":
        return (self.id, self.address, self.flags, self.ifindex or 0)


# What makes an endpoint ours: (id, address, flags, ifindex) exactly as the kernel listed it after we
# added it.
OwnKey = tuple[int, str, int, int]


@dataclass(frozen=True)
class Limits:
    subflows: int
    add_addr_accepted: int


@dataclass(frozen=True)
class KernelView:
    """One namespace as netlink shows it."""
    links: tuple[Link, ...]
    addrs: tuple[Addr, ...]
    routes: tuple[Route, ...]
    endpoints: tuple[KernelEndpoint, ...]
    limits: Limits

    def link(self, index: int | None) -> Link | None:
        return next((lk for lk in self.links if lk.index == index), None)

    def ifname(self, index: int | None) -> bytes | None:
        lk = self.link(index)
        return lk.name if lk else (None if not index else f"if{index}".encode())

    def ifname_text(self, index: int | None) -> str:
        """The name as text (ifname_text()), "-" for none."""
        return ifname_text(self.ifname(index)) or "-"


@dataclass(frozen=True)
class Wanted:
    """An endpoint the settings want: this address, bound to its interface, with these flags."""
    address: str
    ifindex: int
    ifname: bytes
    flags: int

    def describe(self) -> str:
        return f"{self.address} dev {ifname_text(self.ifname)} {' '.join(flag_names(self.flags))}"


@dataclass(frozen=True)
class Skipped:
    address: str
    ifname: bytes
    reason: str


@dataclass
class Plan:
    """What to change in one namespace. `remove` and `add` are carried out in that order."""
    remove: list[KernelEndpoint] = field(default_factory=list)
    add: list[Wanted] = field(default_factory=list)
    limits: Limits | None = None                     # set these (None: leave them)
    keep: list[KernelEndpoint] = field(default_factory=list)      # ours, already right
    covered: list[tuple[Wanted, KernelEndpoint]] = field(default_factory=list)  # by a foreign one
    no_room: list[Wanted] = field(default_factory=list)   # the namespace holds MPTCP_PM_ADDR_MAX
    skipped: list[Skipped] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)    # include patterns no interface matches

    @property
    def changes(self) -> bool:
        return bool(self.remove or self.add or self.limits)

    def left_undone(self) -> list[str]:
        """One line per wanted endpoint this plan cannot make: a foreign one covers it, or no room."""
        return ([f"{w.address} ({ifname_text(w.ifname)}) has a foreign endpoint (id {e.id}): left as it is"
                 for w, e in self.covered]
                + [f"no endpoint for {w.describe()}: the namespace holds {MPTCP_PM_ADDR_MAX} endpoints"
                   for w in self.no_room])


def matches(name: bytes, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p.encode("utf-8", "surrogateescape")) for p in patterns)


def has_usable_route(ifindex: int, family: int, routes: tuple[Route, ...]) -> bool:
    for r in routes:
        if r.family != family or r.type != RTN_UNICAST or r.table == RT_TABLE_LOCAL:
            continue
        if family == AF_INET6 and r.dst and r.dst_len >= 10 and \
                ipaddress.ip_address(r.dst) in _V6_LINK_LOCAL:
            continue   # every IPv6 interface has fe80::/64: it says nothing about reaching anyone
        if any(oif == ifindex and not flags & (RTNH_F_DEAD | RTNH_F_LINKDOWN) for oif, flags in r.oifs):
            return True
    return False


def skip_reason(addr: Addr, link: Link | None, routes: tuple[Route, ...]) -> str | None:
    """Why `addr` gets no endpoint whatever the settings say (None: it may get one)."""
    if link is None:
        return "its interface is gone"
    if link.flags & IFF_LOOPBACK:
        return "loopback interface"
    ip = ipaddress.ip_address(addr.address)
    if ip.is_loopback or addr.scope == RT_SCOPE_HOST:
        return "loopback address"
    if addr.family == AF_INET and ip in _V4_LINK_LOCAL:
        return "IPv4 link-local"
    if addr.family == AF_INET6:
        if ip in _V6_LINK_LOCAL:
            return "IPv6 link-local"
        if ip in _V6_ULA:
            return "IPv6 ULA"
        for bit, why in ((IFA_F_TEMPORARY, "temporary (privacy) address"),
                         (IFA_F_TENTATIVE, "tentative (duplicate address detection not done)"),
                         (IFA_F_DADFAILED, "duplicate address detection failed"),
                         (IFA_F_DEPRECATED, "deprecated")):
            if addr.flags & bit:
                return why
    if not link.usable:
        return "interface down" if not link.flags & IFF_UP else "interface has no carrier"
    if not has_usable_route(link.index, addr.family, routes):
        return "no usable route through the interface"
    return None


def endpoint_flags(settings: PathsSettings, ifname: bytes) -> int:
    flags = {"client": SUBFLOW, "server": SIGNAL, "both": SIGNAL | SUBFLOW}[settings.role]
    if matches(ifname, settings.backup):
        flags |= BACKUP
    if settings.role == "client" and matches(ifname, settings.fullmesh):
        flags |= FULLMESH   # validation refuses fullmesh with the signal flag
    return flags


def wanted_endpoints(view: KernelView, settings: PathsSettings) -> tuple[list[Wanted], list[Skipped],
                                                                           list[str]]:
    """(wanted, skipped, include patterns that match no interface), in interface then address order."""
    wanted, skipped = [], []
    for addr in sorted(view.addrs, key=lambda a: (view.ifname(a.ifindex) or b"", a.family, a.address)):
        link = view.link(addr.ifindex)
        name = link.name if link else f"if{addr.ifindex}".encode()
        if link is None or not matches(name, settings.interfaces) or matches(name, settings.exclude):
            continue
        why = skip_reason(addr, link, view.routes)
        if why:
            skipped.append(Skipped(addr.address, name, why))
            continue
        wanted.append(Wanted(addr.address, addr.ifindex, name, endpoint_flags(settings, name)))
    unmatched = [p for p in settings.interfaces if not any(matches(lk.name, (p,)) for lk in view.links)]
    return wanted, skipped, unmatched


def is_own(ep: KernelEndpoint, own: frozenset[OwnKey]) -> bool:
    return ep.key in own


def still_ours(view: KernelView, own: frozenset[OwnKey] | set[OwnKey]) -> set[OwnKey]:
    """The endpoints of `own` that the kernel still lists exactly as we added them. One missing or
    different was removed or changed by someone else: forgotten, never ours again (an endpoint added
    later with the same id, address, flags and interface is someone else's)."""
    listed = {e.key for e in view.endpoints}
    return {k for k in own if k in listed}


def plan(view: KernelView, settings: PathsSettings | None, own: frozenset[OwnKey],
         limits_set: Limits | None = None, limits_before: Limits | None = None) -> Plan:
    """The changes that make `view` what `settings` want. settings None: we manage nothing here
    (no table, role none, or another manager): remove ours, and give back the limits we set
    (`limits_before`) if nobody changed them since (they still are `limits_set`)."""
    p = Plan()
    mine = [e for e in view.endpoints if is_own(e, own)]
    foreign = [e for e in view.endpoints if not is_own(e, own)]
    if settings is None:
        p.remove = mine
        if limits_before is not None and limits_set is not None and view.limits == limits_set \
                and limits_before != limits_set:
            p.limits = limits_before
        return p
    wanted, p.skipped, p.unmatched = wanted_endpoints(view, settings)
    by_address = {w.address: w for w in wanted}
    for e in mine:
        w = by_address.get(e.address)
        if w is not None and e.flags == w.flags and e.ifindex == w.ifindex:
            p.keep.append(e)
        else:
            p.remove.append(e)   # gone, no longer wanted, or wanted otherwise: removed, then re-added
    kept = {e.address for e in p.keep}
    room = MPTCP_PM_ADDR_MAX - len(foreign) - len(p.keep)
    for w in wanted:
        if w.address in kept:
            continue
        cover = next((e for e in foreign if e.address == w.address), None)
        if cover is not None:
            p.covered.append((w, cover))
        elif room > 0:
            p.add.append(w)
            room -= 1
        else:
            p.no_room.append(w)
    want = Limits(view.limits.subflows if settings.subflows is None else settings.subflows,
                  view.limits.add_addr_accepted if settings.add_addr_accepted is None
                  else settings.add_addr_accepted)
    if want != view.limits:
        p.limits = want
    return p
