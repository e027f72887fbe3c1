"""`check` explains path management per network namespace, read from the real kernel: namespaces set
up each in one telling way, and what check --json / check say about them. Informational: the exit
status stays what the backend checks decide."""

import json
import os
import subprocess

import pytest

from tests.conftest import CLI, cli_env, mptcpize
from tests.waiting import scaled

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")

NS = {"mzc-p0": "subflows 0", "mzc-p1": "disabled", "mzc-p2": "complete"}


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def namespaces():
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        ip("netns", "add", ns)
    ip("-n", "mzc-p0", "mptcp", "limits", "set", "subflows", "0", "add_addr_accepted", "0")
    subprocess.run(["ip", "netns", "exec", "mzc-p1", "sysctl", "-qw", "net.mptcp.enabled=0"], check=True)
    ip("-n", "mzc-p2", "link", "add", "mzcp0", "type", "veth", "peer", "name", "mzcp1")
    ip("-n", "mzc-p2", "addr", "add", "10.241.9.1/24", "dev", "mzcp0")
    ip("-n", "mzc-p2", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
    ip("-n", "mzc-p2", "mptcp", "endpoint", "add", "10.241.9.1", "dev", "mzcp0", "subflow", "signal")
    try:
        yield
    finally:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_every_namespace_is_explained(namespaces):
    proc = mptcpize("check", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["run_can_upgrade"] else 69)
    by_name = {p["name"]: p for p in report["path_management"]}
    p0, p1, p2 = by_name["mzc-p0"], by_name["mzc-p1"], by_name["mzc-p2"]
    assert p0["subflows"] == 0
    assert [n["text"] for n in p0["notes"]][0] == \
        "limits subflows=0: upgraded connections will never open a second subflow"
    assert p0["notes"][0]["hint"] == "ip -n mzc-p0 mptcp limits set subflows 2 add_addr_accepted 2"
    assert p1["enabled"] == "0" and "never upgraded" in p1["notes"][0]["text"]
    assert p2["endpoints"] == [{"address": "10.241.9.1", "id": 1, "dev": "mzcp0",
                                "flags": ["signal", "subflow"]}]
    assert (p2["subflows"], p2["add_addr_accepted"], p2["notes"]) == (2, 2, [])

    text = mptcpize("check").stdout.splitlines()
    i = text.index(next(ln for ln in text if ln.startswith("  netns mzc-p2:")))
    assert text[i + 1] == "    endpoint 10.241.9.1 id 1 dev mzcp0 signal subflow"
    assert text[-1].startswith("run backend:")


def test_inside_a_namespace_it_comes_first(namespaces):
    proc = subprocess.run(["ip", "netns", "exec", "mzc-p0", *CLI, "check", "--json"],
                          capture_output=True, text=True, timeout=scaled(120), env=cli_env())
    first = json.loads(proc.stdout)["path_management"][0]
    assert first["name"] == "mzc-p0" and first["subflows"] == 0
