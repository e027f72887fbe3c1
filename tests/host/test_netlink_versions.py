"""paths/netlink.py reads the same namespace the same way under the pyroute2 the Debian package depends
on (python3-pyroute2, 0.7.2 in Debian 12, imported by /usr/bin/python3) and under the venv's newer
release, and both agree with what `ip` shows. pyroute2 0.7's message .get("NLA_NAME") answers None
for attributes (only .get_attr() reads them in both), which once made `check` read limits subflows=0
where `ip mptcp limits show` said 2, and lose every link name, address and route there."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, is_root
from tests.waiting import scaled

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (a network namespace, netlink)")

NS = "mzn-pr2"
V4, V4_OTHER, V6 = "10.243.7.1", "10.243.7.3", "fd00:243:7::1"
DEBIAN_PYTHON = "/usr/bin/python3"

# Runs in NS: the project's reading of the namespace, as JSON, and the pyroute2 that read it.
PROBE = """
import dataclasses, importlib.metadata, json
from mptcpize_py.paths import netlink
view = netlink.read_view()
print(json.dumps({"pyroute2": importlib.metadata.version("pyroute2"),
                  "view": dataclasses.asdict(view)},
                 default=lambda name: name.decode("utf-8", "surrogateescape")))   # interface names: bytes
"""


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True,
                          timeout=scaled(30)).stdout


@pytest.fixture(scope="module")
def namespace():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    ip("netns", "add", NS)
    try:
        # No duplicate address detection: a link-local address would otherwise be read "tentative" by
        # one reader and not by the next, a few ms later.
        subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0"], check=True, timeout=scaled(30))
        ip("-n", NS, "link", "add", "mzn0", "type", "veth", "peer", "name", "mzn1")
        for dev in ("lo", "mzn0", "mzn1"):
            ip("-n", NS, "link", "set", dev, "up")
        ip("-n", NS, "addr", "add", f"{V4}/24", "dev", "mzn0")
        ip("-n", NS, "addr", "add", f"{V6}/64", "dev", "mzn0", "nodad")
        ip("-n", NS, "route", "add", "10.243.8.0/24", "nexthop", "dev", "mzn0", "nexthop", "dev", "mzn1")
        ip("-n", NS, "route", "add", "10.243.9.0/24", "dev", "mzn1", "table", "100")
        ip("-n", NS, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "3")
        ip("-n", NS, "mptcp", "endpoint", "add", V4, "dev", "mzn0", "id", "5", "subflow", "backup")
        ip("-n", NS, "mptcp", "endpoint", "add", V6, "dev", "mzn0", "signal")
        ip("-n", NS, "mptcp", "endpoint", "add", V4_OTHER, "subflow", "fullmesh")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def read_with(python: str) -> dict:
    res = subprocess.run(["ip", "netns", "exec", NS, python, "-P", "-c", PROBE], capture_output=True,
                         text=True, timeout=scaled(60), env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def debian_has_pyroute2() -> bool:
    return Path(DEBIAN_PYTHON).exists() and subprocess.run(
        [DEBIAN_PYTHON, "-c", "import pyroute2"], capture_output=True, timeout=scaled(60)).returncode == 0


INTERPRETERS = [
    pytest.param(DEBIAN_PYTHON, id="debian-python3-pyroute2",
                 marks=pytest.mark.skipif(not debian_has_pyroute2(),
                                          reason=f"{DEBIAN_PYTHON} cannot import pyroute2 "
                                                 "(apt install python3-pyroute2)")),
    pytest.param(sys.executable, id="test-interpreter"),
]


def what_ip_shows() -> dict:
    # `ip mptcp limits show` has no JSON form (iproute2 6.1): "add_addr_accepted 3 subflows 2".
    words = ip("-n", NS, "mptcp", "limits", "show").split()
    limits = dict(zip(words[::2], map(int, words[1::2]), strict=True))
    links = {lk["ifindex"]: lk["ifname"] for lk in json.loads(ip("-j", "-n", NS, "link", "show"))}
    endpoints = [{"id": e["id"], "address": e["address"], "dev": e.get("dev"),
                  "flags": sorted(f for f in ("signal", "subflow", "backup", "fullmesh") if e.get(f))}
                 for e in json.loads(ip("-j", "-n", NS, "mptcp", "endpoint", "show"))]
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"])
                   for a in json.loads(ip("-j", "-n", NS, "addr", "show")) for i in a["addr_info"])
    return {"limits": limits, "links": links, "endpoints": endpoints, "addrs": addrs}


def as_ip_shows(view: dict) -> dict:
    """The project's reading, in the terms of what_ip_shows()."""
    from mptcpize_py.paths.plan import flag_names
    links = {lk["index"]: lk["name"] for lk in view["links"]}
    return {"limits": {"subflows": view["limits"]["subflows"],
                       "add_addr_accepted": view["limits"]["add_addr_accepted"]},
            "links": links,
            "endpoints": [{"id": e["id"], "address": e["address"], "dev": links.get(e["ifindex"]),
                           "flags": sorted(flag_names(e["flags"]))} for e in view["endpoints"]],
            "addrs": sorted((links[a["ifindex"]], a["address"], a["prefixlen"]) for a in view["addrs"])}


@pytest.mark.parametrize("python", INTERPRETERS)
def test_the_namespace_reads_as_ip_shows_it(namespace, python):
    got = read_with(python)
    want = what_ip_shows()
    assert want["limits"] == {"subflows": 2, "add_addr_accepted": 3}   # the fixture took
    assert as_ip_shows(got["view"]) == want, f"pyroute2 {got['pyroute2']} under {python}"
    routes = {(r["table"], r["dst"], r["dst_len"]): [tuple(o) for o in r["oifs"]] for r in got["view"]["routes"]}
    index = {name: i for i, name in want["links"].items()}
    assert sorted(routes[(254, "10.243.8.0", 24)]) == sorted([(index["mzn0"], 0), (index["mzn1"], 0)])
    assert routes[(100, "10.243.9.0", 24)] == [(index["mzn1"], 0)]


def test_both_pyroute2_releases_read_the_same(namespace):
    if not debian_has_pyroute2():
        pytest.skip(f"{DEBIAN_PYTHON} cannot import pyroute2 (apt install python3-pyroute2)")
    debian, ours = read_with(DEBIAN_PYTHON), read_with(sys.executable)
    assert debian["view"] == ours["view"], f"pyroute2 {debian['pyroute2']} vs {ours['pyroute2']}"
