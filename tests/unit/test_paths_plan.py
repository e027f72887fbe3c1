"""What the path manager wants and changes (paths/plan.py, pure), who else manages endpoints
(paths/others.py: NetworkManager's configuration, processes), and how `paths` and `status` show it."""

import pytest

from mptcpize_py import report
from mptcpize_py.paths import others, plan
from mptcpize_py.paths.facts import PathsEndpoint, PathsReport
from mptcpize_py.paths.plan import (
    AF_INET,
    AF_INET6,
    BACKUP,
    FULLMESH,
    IFA_F_DEPRECATED,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    IFF_LOOPBACK,
    IFF_RUNNING,
    IFF_UP,
    RTNH_F_LINKDOWN,
    SIGNAL,
    SUBFLOW,
    Addr,
    KernelEndpoint,
    KernelView,
    Limits,
    Link,
    Route,
)
from mptcpize_py.policy import PathsSettings
from mptcpize_py.status import PathsStatus
from tests.unit.status_builder import daemon_status

UP = IFF_UP | IFF_RUNNING
LINKS = (Link(1, b"lo", IFF_LOOPBACK | UP), Link(2, b"eth0", UP), Link(3, b"wwan0", UP), Link(4, b"eth1", IFF_UP),
         Link(5, b"docker0", UP))
ROUTES = (Route(AF_INET, 254, 1, "10.0.0.0", 24, ((2, 0),)), Route(AF_INET, 254, 1, None, 0, ((3, 0),)),
          Route(AF_INET, 254, 1, "10.9.0.0", 24, ((4, RTNH_F_LINKDOWN),)),
          Route(AF_INET, 254, 1, "172.17.0.0", 16, ((5, 0),)),
          Route(AF_INET6, 254, 1, "2001:db8::", 64, ((2, 0),)),
          Route(AF_INET6, 254, 1, "fe80::", 64, ((3, 0),)),
          Route(AF_INET, 255, 2, "10.8.0.1", 32, ((3, 0),)))


def addr(address, ifindex, flags=0, scope=0):
    return Addr(AF_INET6 if ":" in address else AF_INET, address, 24, ifindex, flags, scope)


ADDRS = (addr("127.0.0.1", 1, scope=254), addr("10.0.0.5", 2), addr("100.64.1.2", 3), addr("10.9.0.1", 4),
         addr("172.17.0.1", 5), addr("169.254.3.3", 2), addr("2001:db8::5", 2), addr("2001:db8::6", 2,
         IFA_F_TEMPORARY), addr("2001:db8::7", 2, IFA_F_TENTATIVE), addr("2001:db8::8", 2, IFA_F_DEPRECATED),
         addr("fd00::1", 2), addr("fe80::1", 2, scope=253), addr("2001:db8:3::1", 3))


DEFAULT_LIMITS = Limits(2, 0)


def view(endpoints=(), limits=DEFAULT_LIMITS):
    return KernelView(LINKS, ADDRS, ROUTES, tuple(endpoints), limits)


def test_what_gets_an_endpoint_and_why_the_rest_does_not():
    wanted, skipped, unmatched = plan.wanted_endpoints(view(), PathsSettings(role="client"))
    assert [(w.address, w.ifname, w.flags) for w in wanted] == [
        ("172.17.0.1", b"docker0", SUBFLOW), ("10.0.0.5", b"eth0", SUBFLOW), ("2001:db8::5", b"eth0", SUBFLOW),
        ("100.64.1.2", b"wwan0", SUBFLOW)]   # interface, then family, then address order
    assert {(s.address, s.reason) for s in skipped} == {
        ("127.0.0.1", "loopback interface"),
        ("10.9.0.1", "interface has no carrier"),
        ("169.254.3.3", "IPv4 link-local"),
        ("2001:db8::6", "temporary (privacy) address"),
        ("2001:db8::7", "tentative (duplicate address detection not done)"),
        ("2001:db8::8", "deprecated"),
        ("fd00::1", "IPv6 ULA"),
        ("fe80::1", "IPv6 link-local"),
        # wwan0 has a default route for IPv4 but only fe80::/64 for IPv6: no usable IPv6 route.
        ("2001:db8:3::1", "no usable route through the interface")}
    assert unmatched == []


def test_patterns_roles_and_flags():
    s = PathsSettings(role="client", interfaces=("eth*", "wwan*", "ppp*"), exclude=("eth1",), backup=("wwan*",),
                      fullmesh=("eth*",))
    wanted, _, unmatched = plan.wanted_endpoints(view(), s)
    assert {w.address: w.flags for w in wanted} == {"10.0.0.5": SUBFLOW | FULLMESH,
                                                     "2001:db8::5": SUBFLOW | FULLMESH,
                                                     "100.64.1.2": SUBFLOW | BACKUP}
    assert unmatched == ["ppp*"]
    both = PathsSettings(role="both", interfaces=("eth0",))
    assert {w.flags for w in plan.wanted_endpoints(view(), both)[0]} == {SIGNAL | SUBFLOW}
    server = PathsSettings(role="server", interfaces=("eth0",), fullmesh=("eth0",))   # not validated here
    assert {w.flags for w in plan.wanted_endpoints(view(), server)[0]} == {SIGNAL}


def test_the_plan_touches_only_ours():
    s = PathsSettings(role="client", interfaces=("eth0", "wwan0"), subflows=4, add_addr_accepted=2)
    eps = [KernelEndpoint(1, "10.0.0.5", 2, SUBFLOW),             # ours, right
           KernelEndpoint(2, "2001:db8::5", 2, SUBFLOW | BACKUP),  # ours, flags now wrong: re-added
           KernelEndpoint(3, "10.0.0.99", 2, SUBFLOW),            # ours, address gone
           KernelEndpoint(4, "100.64.1.2", None, SIGNAL),         # foreign, covers an address we want
           KernelEndpoint(5, "192.0.2.1", None, SIGNAL)]          # foreign, nothing to do with us
    own = frozenset(e.key for e in eps[:3])
    p = plan.plan(view(eps), s, own)
    assert [e.id for e in p.keep] == [1]
    assert [e.id for e in p.remove] == [2, 3]
    assert [(w.address, w.flags) for w in p.add] == [("2001:db8::5", SUBFLOW)]
    assert [(w.address, e.id) for w, e in p.covered] == [("100.64.1.2", 4)]
    assert p.limits == Limits(4, 2)
    # A namespace of ours that another manager took over: ours go, the limits we set come back if
    # nobody changed them since.
    p = plan.plan(view(eps, Limits(4, 2)), None, own, limits_set=Limits(4, 2), limits_before=Limits(2, 0))
    assert [e.id for e in p.remove] == [1, 2, 3] and p.add == [] and p.limits == Limits(2, 0)
    p = plan.plan(view(eps, Limits(3, 2)), None, own, limits_set=Limits(4, 2), limits_before=Limits(2, 0))
    assert p.limits is None


def test_interface_names_are_bytes_not_always_utf8():
    """A name the kernel accepts need not be UTF-8 (pyroute2 then gives bytes): it is planned for like
    any other, sorted among the others, matched by patterns, and shown as PEP 383 text."""
    links = (*LINKS, Link(6, b"u\xff", UP), Link(7, b"e\xe2\x80\xaegp", UP))
    routes = (*ROUTES, Route(AF_INET, 254, 1, "10.6.0.0", 24, ((6, 0),)),
              Route(AF_INET, 254, 1, "10.7.0.0", 24, ((7, 0),)))
    v = KernelView(links, (*ADDRS, addr("10.6.0.1", 6), addr("10.7.0.1", 7)), routes, (), DEFAULT_LIMITS)
    wanted, _, unmatched = plan.wanted_endpoints(v, PathsSettings(role="client", interfaces=("u*", "e*"),
                                                                  backup=("u?",)))
    assert [(w.address, w.ifname, w.flags) for w in wanted] == [
        ("10.0.0.5", b"eth0", SUBFLOW), ("2001:db8::5", b"eth0", SUBFLOW),
        ("10.7.0.1", b"e\xe2\x80\xaegp", SUBFLOW), ("10.6.0.1", b"u\xff", SUBFLOW | BACKUP)]   # byte order
    assert unmatched == []
    assert wanted[-1].describe() == "10.6.0.1 dev u\udcff subflow backup"
    assert v.ifname_text(6) == "u\udcff" and v.ifname_text(None) == "-"


def test_ours_only_while_seen_exactly_as_we_added_them():
    """After `ip mptcp endpoint flush` the kernel hands our ids out again: an endpoint with our id and
    address but other flags or interface is someone else's, and once missing, ours is forgotten."""
    ours = KernelEndpoint(1, "10.0.0.5", 2, SUBFLOW)
    theirs = KernelEndpoint(1, "10.0.0.5", 2, SIGNAL | BACKUP)
    other_dev = KernelEndpoint(1, "10.0.0.5", 3, SUBFLOW)
    own = {ours.key}
    assert plan.still_ours(view([ours]), own) == own
    assert plan.still_ours(view([theirs]), own) == set()
    assert plan.still_ours(view([other_dev]), own) == set()
    assert plan.still_ours(view([]), own) == set()
    p = plan.plan(view([theirs]), PathsSettings(role="client", interfaces=("eth0",)), frozenset(own))
    assert p.remove == [] and [(w.address, e) for w, e in p.covered] == [("10.0.0.5", theirs)]


def test_no_more_than_the_kernel_holds():
    many = tuple(addr(f"10.0.0.{i}", 2) for i in range(1, 12))
    v = KernelView(LINKS, many, ROUTES, (KernelEndpoint(9, "192.0.2.1", None, SIGNAL),), Limits(2, 0))
    p = plan.plan(v, PathsSettings(role="client"), frozenset())
    assert len(p.add) == 7 and len(p.no_room) == 4     # 8 per namespace, one of them foreign


def test_limits_left_alone_when_unset():
    assert plan.plan(view(), PathsSettings(role="client"), frozenset()).limits is None
    assert plan.plan(view(), PathsSettings(role="client", add_addr_accepted=1), frozenset()).limits == \
        Limits(2, 1)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_networkmanager_off_only_when_its_configuration_says_so(tmp_path):
    root = tmp_path
    assert others.network_manager_mptcp_off(str(root)) is None            # its default: manages
    write(root / "etc/NetworkManager/conf.d/90-mptcp.conf", "[connection]\nconnection.mptcp-flags=0x1\n")
    assert others.network_manager_mptcp_off(str(root)) == \
        f"connection.mptcp-flags=0x1 in {root}/etc/NetworkManager/conf.d/90-mptcp.conf"
    write(root / "etc/NetworkManager/system-connections/wifi.nmconnection",
          "[connection]\nid=wifi\nmptcp-flags=0\n")
    assert others.network_manager_mptcp_off(str(root)) is not None          # 0: the default, off
    write(root / "etc/NetworkManager/system-connections/lte.nmconnection",
          "[connection]\nid=lte\nmptcp-flags=34\n")                       # enabled,subflow
    assert others.network_manager_mptcp_off(str(root)) is None
    (root / "etc/NetworkManager/system-connections/lte.nmconnection").unlink()
    write(root / "etc/NetworkManager/conf.d/95-later.conf", "[connection]\nconnection.mptcp-flags=enabled,subflow\n")
    assert others.network_manager_mptcp_off(str(root)) is None              # a later file wins
    write(root / "etc/NetworkManager/conf.d/95-later.conf", "[connection]\nconnection.mptcp-flags=disabled\n")
    assert others.network_manager_mptcp_off(str(root)) is not None
    write(root / "etc/NetworkManager/conf.d/96-dev.conf",
          "[connection-eth]\nmatch-device=interface-name:eth*\nconnection.mptcp-flags=0x22\n")
    assert others.network_manager_mptcp_off(str(root)) is None              # on for some devices
    write(root / "etc/NetworkManager/conf.d/96-dev.conf", "garbage without a section\n")
    assert others.network_manager_mptcp_off(str(root)) is None              # cannot tell: it manages


@pytest.mark.parametrize("procs, pm, expected", [
    ([], "kernel", None),
    ([(10, "mptcpd", 99)], "kernel", ("mptcpd", 10)),
    ([(10, "mptcpd", 98)], "kernel", None),                                  # another namespace's
    ([(11, "NetworkManager", 99)], None, ("NetworkManager", 11)),
    ([], "userspace", ("userspace path manager", None)),
    ([(12, "mptcpd", None)], "kernel", ("mptcpd", 12)),                      # its namespace hidden from us
])
def test_other_managers(tmp_path, procs, pm, expected):
    other, _ = others.other_manager(99, procs, pm, root=str(tmp_path))
    assert (other.name, other.pid) == expected if expected else other is None


def test_paths_text_and_status_text():
    rep = PathsReport("blue", managed_by="mptcpize-py daemon (pid 7)", role="client", enabled="1",
                      path_manager="kernel", subflows=2, add_addr_accepted=0,
                      endpoints=[PathsEndpoint(1, "10.0.0.5", "eth0", ["subflow"], True),
                                 PathsEndpoint(2, "10.0.1.5", "eth\x1b1", [], False)],
                      changes=["add endpoint 10.0.2.5 dev eth2 subflow"], notes=["no endpoint for x (y): z"])
    assert report.paths_text([rep]) == [
        "netns blue: endpoints managed by mptcpize-py daemon (pid 7); [paths] role client",
        "  limits subflows=2 add_addr_accepted=0",
        "  own     10.0.0.5 id 1 dev eth0 subflow",
        "  foreign 10.0.1.5 id 2 dev eth\\x1b1 (no flags)",
        "  the policy would change:",
        "    add endpoint 10.0.2.5 dev eth2 subflow",
        "  note: no endpoint for x (y): z"]
    st = daemon_status()
    st = type(st)(**{**st.__dict__, "paths": (
        PathsStatus("host", "none", "nobody (role none)", (), "subflows=2 add_addr_accepted=0"),
        PathsStatus("red", "server", "mptcpd (pid 5) manages MPTCP endpoints in this namespace", (), None),
        PathsStatus("blue", "client", "mptcpize-py", ("10.0.0.5 id 1 dev eth0 subflow",),
                    "subflows=2 add_addr_accepted=0", ("x",)))})
    lines = report.status_text(st)
    i = lines.index("paths ([paths] table):")
    assert lines[i + 1:] == [
        "  netns host: role none; nobody (role none)",
        "  netns red: role server; mptcpd (pid 5) manages MPTCP endpoints in this namespace",
        "  netns blue: role client; limits subflows=2 add_addr_accepted=0",
        "    endpoint 10.0.0.5 id 1 dev eth0 subflow",
        "    note: x"]
    from mptcpize_py.status import DaemonStatus
    assert DaemonStatus.from_json_dict(st.to_json_dict()) == st


def test_a_record_without_flags_and_interface_proves_nothing(tmp_path, caplog):
    """paths.json of version 1 kept (id, address) only: not enough to call an endpoint ours."""
    from mptcpize_py.paths import state
    (tmp_path / state.STATE_FILE).write_text(
        '{"version": 1, "owner": null, "netns": {"cookie:1": {"name": "blue", "endpoints": '
        '[{"id": 1, "address": "10.0.0.5"}], "limits_before": null, "limits_set": null}}}')
    _, records = state.read(tmp_path)
    assert records["cookie:1"].endpoints == set()
    assert "1 endpoint(s) in" in caplog.text and "taken for foreign" in caplog.text
    rec = state.NetnsRecord("blue", {(1, "10.0.0.5", SUBFLOW, 2)})
    assert state.NetnsRecord.from_json(rec.to_json()) == rec
