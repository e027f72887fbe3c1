"""The image `make image` builds, run natively with podman (runc) the way the DaemonSet runs it: its
capabilities, hostPID, hostNetwork and host mounts (tests/container/daemonset.py reads them from
deploy/kubernetes/daemonset.yaml), a ConfigMap-style policy directory, in the dry-run mode this kernel
allows (no fmod_ret here). What is checked is what an operator sees: `status` through exec, the log,
and a real Prometheus server's scrape of /metrics."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mptcpize_py.host.mounts import find_cgroup2_mount, read_mounts
from tests.configmap import write_configmap
from tests.container import daemonset
from tests.waiting import scaled, wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="podman as root (the DaemonSet's host mounts)"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed (scripts/setup.sh)"),
]

IMAGE = "localhost/mptcpize-py:fleet-test"
NAME = "fleet-mptcpize-test"
NETNS = "fleet-ns1"
HOST_CGROUP = "/fleet-host-procs"
# A safety net for a loaded 2-core machine, not a goal: libbpf loads the prebuilt object in well under
# a second here (README, Kubernetes).
READY_TIMEOUT = 240
# What only bcc brought into the image: the compiler (LLVM, clang), bcc itself, kernel headers.
COMPILER_PACKAGE = re.compile(r"(libllvm|libclang|clang|llvm|python3-bpfcc|libbpfcc|bpfcc-|linux-headers-)")
MEASUREMENTS = daemonset.REPO / "build" / "container-measurements.txt"

# Makes one TCP socket, prints its pid and SO_PROTOCOL, then waits for stdin to close.
SOCKET_PROG = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
print(os.getpid(), s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def policy(name: str, exe: str) -> str:
    return f'[[allow]]\nname = "{name}"\nexe = "{exe}"\n'


def podman(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=scaled(timeout), **kw)


def exec_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("exec", NAME, "mptcpize-py", *args, check=check)


def status() -> dict:
    return json.loads(exec_cli("status", "--json").stdout)


def logs() -> str:
    r = podman("logs", NAME, check=False)
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def image():
    if not daemonset.ARCHIVE.exists():
        pytest.fail(f"no image archive at {daemonset.ARCHIVE}: run `make image` first")
    subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{daemonset.ARCHIVE}",
                    f"containers-storage:{IMAGE}"], check=True, timeout=scaled(300))
    yield IMAGE
    podman("rmi", "-f", IMAGE, check=False)


@pytest.fixture(scope="module")
def pod(image, tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet-pod")
    os.chmod(base, 0o755)
    cm = base / "policy"
    cm.mkdir()
    os.chmod(cm, 0o777)
    write_configmap(cm, {"10-fleet.toml": policy("python on the host", "/usr/bin/python3")},
                    "..2026_12_07_21_00_00.1")
    spec = daemonset.read()
    port = free_port()
    args = [a for a in spec.args if not a.startswith("--metrics-listen")]
    args += [f"--metrics-listen=127.0.0.1:{port}", "--dry-run"]
    podman("rm", "-f", NAME, check=False)
    t0 = time.monotonic()
    # A cgroup namespace of its own, as containerd gives every container on cgroup v2.
    podman("run", "-d", "--name", NAME, "--cgroupns=private", *daemonset.podman_args(spec, cm), image, *args)
    try:
        def ready() -> bool:
            if podman("inspect", "-f", "{{.State.Running}}", NAME, check=False).stdout.strip() != "true":
                pytest.fail(f"the container stopped: {logs()}")
            return podman("exec", NAME, *spec.probe, check=False).returncode == 0   # the readiness probe
        wait_for(ready, "the DaemonSet's readiness probe (`mptcpize-py status`) to pass",
                 timeout=READY_TIMEOUT, interval=0.5, details=logs)
        ready_s = time.monotonic() - t0
        daemon_pid = status()["pid"]
        rss = next(line.split()[1] for line in Path(f"/proc/{daemon_pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        MEASUREMENTS.parent.mkdir(exist_ok=True)
        MEASUREMENTS.write_text(f"podman run to readiness probe passing: {ready_s:.1f} s\n"
                                f"daemon RSS after start: {rss} kB (pid {daemon_pid})\n")
        yield {"cm": cm, "port": port, "base": base}
    finally:
        podman("stop", "-t", "30", NAME, check=False)
        podman("rm", "-f", NAME, check=False)


def test_the_images_daemon_loads_the_prebuilt_program_with_libbpf_and_no_compiler_is_in_the_image(pod):
    """The image is the package without bcc: the daemon's program is the CO-RE object loaded by libbpf
    (status and check say so), and neither the image nor the daemon's memory holds LLVM or clang."""
    assert status()["loader"] == "libbpf"
    assert any(line.startswith("backend: ") and "loaded by libbpf" in line
               for line in exec_cli("status").stdout.splitlines())
    r = exec_cli("check", "--json", check=False)
    assert r.returncode in (0, 69), r.stderr
    assert json.loads(r.stdout)["loader"] == "libbpf", r.stdout
    installed = podman("exec", NAME, "dpkg-query", "-W", "-f", "${Package}\n").stdout.split()
    assert "mptcpize-py" in installed and "libbpf1" in installed, installed
    assert [p for p in installed if COMPILER_PACKAGE.match(p)] == []
    listed = (daemonset.ARCHIVE.parent / "mptcpize-py-image.packages").read_text().split("\n")
    assert [p for p in listed if COMPILER_PACKAGE.match(p)] == []
    maps = Path(f"/proc/{status()['pid']}/maps").read_text()   # hostPID: the daemon's pid is the host's
    assert "libbpf.so" in maps
    assert not re.search(r"libLLVM|libclang", maps), [m for m in maps.splitlines() if "LLVM" in m or "clang" in m]


def test_a_host_process_selected_by_exe_through_the_host_root_is_counted_not_one_in_the_container(pod):
    # The policy names /usr/bin/python3: on this host Debian 12's python3.11, in the image Debian 13's
    # python3.13. Resolved in the host's tree (--host-root /host), only the host's counts.
    inside = subprocess.Popen(["podman", "exec", "-i", NAME, "python3", "-I", "-c", SOCKET_PROG],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cg2 = find_cgroup2_mount(read_mounts())
    cgroup = Path(cg2.mount_point) / HOST_CGROUP.lstrip("/")
    cgroup.mkdir(exist_ok=True)

    def enter() -> None:   # the host process runs in a cgroup of the host's, named in status as such
        (cgroup / "cgroup.procs").write_text("0")
    host = subprocess.Popen(["/usr/bin/python3", "-I", "-c", SOCKET_PROG], preexec_fn=enter,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        inside_pid, inside_proto = map(int, inside.stdout.readline().split())   # a host pid: hostPID
        host_pid, host_proto = map(int, host.stdout.readline().split())
        assert (inside_proto, host_proto) == (6, 6)   # a dry run changes no socket

        def counted() -> dict[int, dict]:
            return {p["pid"]: p for p in status()["processes"]}
        rows = wait_for(lambda: (r := counted()) and host_pid in r and r, f"host pid {host_pid} in status")
        assert rows[host_pid]["exe"] == os.path.realpath("/usr/bin/python3")
        assert rows[host_pid]["upgraded"] == 1
        # The daemon's own cgroup namespace does not show in what it reports: the host's path.
        assert rows[host_pid]["cgroup"] == HOST_CGROUP
        # The container's socket() ran before the host's; events arrive in order: it was seen, not selected.
        assert inside_pid not in rows
        assert status()["policy"]["rules"][0]["target"].startswith("/usr/bin/python3 -> /usr/bin/python3.11")
    finally:
        for p in (inside, host):
            p.stdin.close()
            p.wait(timeout=scaled(30))
        cgroup.rmdir()


def test_check_and_paths_work_through_exec_and_say_what_a_container_cannot_see(pod):
    r = exec_cli("check", check=False)
    assert r.returncode in (0, 69), r.stderr
    blind = [line for line in r.stdout.splitlines() if line.startswith("warn  host root")]
    assert len(blind) == 1 and "systemd is not asked" in blind[0], r.stdout
    assert "systemd is not asked" in logs()
    # A namespace named on the host after the container started: seen through the host root's
    # HostToContainer propagation, entered by `paths` (setns, CAP_SYS_ADMIN).
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.mptcp.enabled=0"], check=True)
        r = exec_cli("paths")
        assert r.stdout.startswith("netns host:"), r.stdout
        assert f"netns {NETNS}:" in r.stdout, r.stdout
        r = exec_cli("paths", "--netns", NETNS, "--json")
        reports = json.loads(r.stdout)
        reports = reports if isinstance(reports, list) else reports.get("namespaces", reports)
        assert [(n["name"], n["enabled"]) for n in reports if n["name"] == NETNS] == [(NETNS, "0")], r.stdout
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def test_a_configmap_update_is_one_reload_and_a_bad_one_keeps_the_last_good_policy(pod):
    cm = pod["cm"]
    before = status()["policy"]
    write_configmap(cm, {"10-fleet.toml": policy("swapped", "/usr/bin/python3")}, "..2026_12_07_21_10_00.2")
    after = wait_for(lambda: (p := status()["policy"])["reloads"] > before["reloads"] and p,
                     "the daemon to reload the swapped ..data", details=logs)
    assert after["reloads"] == before["reloads"] + 1
    assert '"swapped"' in after["rules"][0]["description"]
    write_configmap(cm, {"10-fleet.toml": "[[allow]]\nexe = 'relative'\n"}, "..2026_12_07_21_20_00.3")
    refused = wait_for(lambda: (p := status()["policy"])["failed_reloads"] > before["failed_reloads"] and p,
                       "the daemon to refuse the bad update", details=logs)
    assert refused["reloads"] == after["reloads"]
    assert '"swapped"' in refused["rules"][0]["description"]
    log = logs()
    assert "10-fleet.toml:2: exe: 'relative' is not an absolute path" in log
    assert "keeping the last good policy" in log


def test_prometheus_scrapes_the_counters(pod, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus is not installed (scripts/setup.sh installs Debian's)")
    host = subprocess.run(["/usr/bin/python3", "-I", "-c", SOCKET_PROG], input="", capture_output=True,
                          text=True, check=True)
    host_pid = int(host.stdout.split()[0])
    wait_for(lambda: host_pid in {p["pid"] for p in status()["processes"]}, f"host pid {host_pid} counted")
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: mptcpize\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{pod['port']}']\n")
    server = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'data'}",
                               f"--web.listen-address=127.0.0.1:{web}"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))

    def query(q: str) -> list:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)["data"]["result"]
        except OSError:
            return []
    try:
        up = wait_for(lambda: query('up{job="mptcpize"}'), "Prometheus to scrape the daemon", timeout=60,
                      interval=1, details=lambda: (tmp_path / "prometheus.log").read_text()[-2000:])
        assert up[0]["value"][1] == "1"
        total = wait_for(lambda: query("mptcpize_upgraded_sockets_total"), "the host-wide counter", timeout=60)
        per_rule = query('mptcpize_rule_upgraded_sockets_total{rule="swapped"}') or \
            query('mptcpize_rule_upgraded_sockets_total{rule="python on the host"}')
        assert float(total[0]["value"][1]) >= 1
        assert per_rule and float(per_rule[0]["value"][1]) >= 1, per_rule
        assert query("mptcpize_dry_run")[0]["value"][1] == "1"
    finally:
        server.terminate()
        server.wait(timeout=scaled(30))


def test_pod_and_unit_rules_resolve_in_the_hosts_cgroup2_from_a_private_cgroup_namespace(image, tmp_path):
    """As under containerd on cgroup v2 (a private cgroup namespace): `daemon --check` in the image,
    with the DaemonSet's mounts, resolves a pod rule to the host's cgroup (its id is the directory's
    inode on the host) and a unit rule to systemd's default path in the host's hierarchy."""
    cg2 = find_cgroup2_mount(read_mounts())
    if cg2 is None:
        pytest.skip("no cgroup2 hierarchy on this host")
    pod_cg = ("/kubepods.slice/kubepods-besteffort.slice/"
              "kubepods-besteffort-podf1ee7000_0000_4000_8000_000000000001.slice")
    made = Path(cg2.mount_point + pod_cg)
    made.mkdir(parents=True, exist_ok=True)
    try:
        cm = tmp_path / "policy"
        cm.mkdir()
        write_configmap(cm, {"10-pods.toml": f'[[allow]]\ncgroup = "{pod_cg}"\n\n'
                                             '[[allow]]\nunit = "fleet-absent.service"\n'}, "..2026_1")
        spec = daemonset.read()
        args = [a for a in spec.args if not a.startswith("--metrics-listen")]
        r = podman("run", "--rm", "--cgroupns=private", *daemonset.podman_args(spec, cm), image, *args,
                   "--check", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"-> {pod_cg} (cgroup id {made.stat().st_ino})" in r.stdout, r.stdout
        unit_dir = cg2.mount_point.rstrip("/") + "/system.slice/fleet-absent.service"
        assert f"not running yet (no cgroup /host{unit_dir})" in r.stdout, r.stdout
    finally:
        for d in [made, *made.parents]:
            if str(d) == cg2.mount_point:
                break
            try:
                d.rmdir()
            except OSError:
                break


def test_the_archive_records_its_inputs_and_carries_no_build_time():
    """What makes a rebuild comparable: the image's date is SOURCE_DATE_EPOCH (not the build's
    clock), and the inputs are written beside it: every package version, the mirror, the .deb's hash.
    (Two builds from the same inputs gave the same manifest and layer digests: README, Kubernetes.)"""
    out = daemonset.ARCHIVE.parent
    inputs = dict(line.split(" ", 1) for line in (out / "mptcpize-py-image.inputs").read_text().splitlines())
    assert inputs["suite"] == "trixie"
    r = subprocess.run(["skopeo", "inspect", f"oci-archive:{daemonset.ARCHIVE}"], capture_output=True,
                       text=True, check=True, timeout=scaled(120))
    created = json.loads(r.stdout)["Created"]
    epoch = int(inputs["source-date-epoch"])
    assert created == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)), (created, epoch)
    packages = dict(line.split(" ", 1) for line in (out / "mptcpize-py-image.packages").read_text().splitlines())
    assert packages["mptcpize-py"] == "0.1.0"
    assert packages["python3"].startswith("3.13")
