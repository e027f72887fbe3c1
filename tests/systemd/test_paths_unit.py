"""A [paths] table under the hardened mptcpize-py.service (systemd as PID 1): without the drop-in
systemd/mptcpize-py-paths.conf the unit's sandbox refuses path management, and the daemon says why and
runs on; with it the daemon sets up the endpoints of a /run/netns namespace, follows an address that
appears, and removes its endpoints when it stops.

Run by `make test-systemd` (scripts/vm-systemd.sh), against the installed Debian package: its unit, its
/usr/bin/mptcpize-py and the drop-in it ships in /usr/share/mptcpize-py."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemd.installed import mptcpize
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.usefixtures("package")

SERVICE = "mptcpize-py.service"
NS = "mzu-paths"
POLICY = Path("/etc/mptcpize-py/policy.d/50-mzu-paths.toml")
DROPINS = Path("/run/systemd/system/mptcpize-py.service.d")
PATHS = DROPINS / "paths.conf"
SHIPPED_DROPIN = Path("/usr/share/mptcpize-py/paths.conf")   # the package's copy of systemd/mptcpize-py-paths.conf


def run(*argv, check=True, timeout=180) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=scaled(timeout))
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def endpoints() -> dict[str, dict]:
    out = json.loads(run("ip", "-j", "-n", NS, "mptcp", "endpoint", "show").stdout or "[]")
    return {e["address"]: {"dev": e.get("dev"), "flags": sorted(k for k, v in e.items() if v is True)}
            for e in out}


def journal_cursor() -> str:
    return run("journalctl", "-q", "-n", "0", "--show-cursor").stdout.strip().rsplit("cursor: ", 1)[-1]


def journal_after(cursor: str) -> str:
    return run("journalctl", "-q", "--no-pager", "-o", "cat", f"--after-cursor={cursor}", "-u", SERVICE).stdout


def restart() -> str:
    cursor = journal_cursor()
    run("systemctl", "daemon-reload")
    proc = run("systemctl", "restart", SERVICE, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{SERVICE} did not start: {proc.stderr}\n{journal_after(cursor)}")
    return cursor


@pytest.fixture(scope="module")
def lab():
    run("ip", "netns", "del", NS, check=False)
    run("ip", "netns", "add", NS)
    run("ip", "-n", NS, "link", "add", "mzp0", "type", "veth", "peer", "name", "mzp1")
    run("ip", "-n", NS, "addr", "add", "10.246.1.1/24", "dev", "mzp0")
    for dev in ("lo", "mzp0", "mzp1"):
        run("ip", "-n", NS, "link", "set", dev, "up")
    POLICY.write_text(f'[netns]\nnames = ["{NS}"]\n\n[paths]\nrole = "none"\n\n'
                      f'[paths.netns.{NS}]\nrole = "client"\nsubflows = 2\nadd_addr_accepted = 2\n')
    POLICY.chmod(0o644)
    DROPINS.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        run("systemctl", "stop", SERVICE, check=False)
        for f in (PATHS, POLICY):
            f.unlink(missing_ok=True)
        run("systemctl", "daemon-reload", check=False)
        run("ip", "netns", "del", NS, check=False)


def test_without_the_dropin_the_sandbox_refuses_and_the_daemon_says_why(lab):
    PATHS.unlink(missing_ok=True)
    cursor = restart()
    line = f"paths: netns {NS}: cannot enter the network namespace /run/netns/{NS}"
    wait_for(lambda: line in journal_after(cursor), "the daemon's line", interval=0.5,
             details=lambda: journal_after(cursor))
    assert endpoints() == {}
    st = mptcpize("status")
    assert st.returncode == 0 and "backend: bpf" in st.stdout, st.stderr


def test_with_the_dropin_endpoints_follow_the_addresses(lab):
    shutil.copyfile(SHIPPED_DROPIN, PATHS)
    cursor = restart()
    wait_for(lambda: endpoints() == {"10.246.1.1": {"dev": "mzp0", "flags": ["subflow"]}},
             "the daemon's endpoint", interval=0.5, details=lambda: (endpoints(), journal_after(cursor)))
    assert " ".join(run("ip", "-n", NS, "mptcp", "limits", "show").stdout.split()) == \
        "add_addr_accepted 2 subflows 2"
    run("ip", "-n", NS, "addr", "add", "10.246.2.1/24", "dev", "mzp0")
    wait_for(lambda: "10.246.2.1" in endpoints(), "an address's endpoint", interval=0.5,
             details=lambda: journal_after(cursor))
    st = json.loads(mptcpize("status", "--json").stdout)
    mine = next(p for p in st["paths"] if p["netns"] == NS)
    assert mine["managed_by"] == "mptcpize-py" and len(mine["endpoints"]) == 2, mine
    assert "Traceback" not in journal_after(cursor)
    run("systemctl", "stop", SERVICE)
    assert endpoints() == {}
