"""The image's root filesystem on the kernel with the hook: `make test-vm` unpacks the OCI archive with
skopeo and umoci (scripts/image-bundle.sh, into /opt, which the guest sees) and this test runs it with
runc the way deploy/kubernetes/daemonset.yaml runs it (tests/container/daemonset.py: host pid and
network namespaces, its capabilities, the host's / read-only at /host, the policy directory), without
--dry-run. What is checked is what the processes see: SO_PROTOCOL 262 or 6."""

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from mptcpize_py.host.mounts import find_cgroup2_mount, read_mounts
from tests.container import daemonset
from tests.vm.test_bpf_run import bpf_prog_names
from tests.waiting import scaled, wait_exit, wait_for

BUNDLE = Path(os.environ.get("IMAGE_BUNDLE", "/opt/mptcpize-py/image-bundle"))
ID = "fleet-vm-mptcpize"
# A safety net, not a goal: libbpf loads the prebuilt object in a few seconds under TCG (scaled by 4 in the VM).
READY_TIMEOUT = 180
POD_UID = "6f3c2a4e-93f1-4d6b-8a43-0c1d2e3f4a5b"
OTHER_UID = "0b9e8d7c-6a5b-4c3d-9e2f-1a0b9c8d7e6f"


def systemd_pod(uid: str) -> str:
    """The kubelet's systemd-driver cgroup of a Burstable pod (dashes of the UID become underscores,
    which systemd's slice naming needs)."""
    return f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice"


def cgroupfs_pod(uid: str) -> str:
    """The kubelet's cgroupfs-driver cgroup of a BestEffort pod."""
    return f"/kubepods/besteffort/pod{uid}"


def runc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["runc", *args], capture_output=True, text=True, check=check, timeout=scaled(60))


def sockproto(exe: str, cgroup: Path | None = None) -> int:
    """SO_PROTOCOL of one socket() by `exe` (the static rawsock), in `cgroup` when given: the child moves
    itself there before exec, as a container runtime puts a container's first process."""
    def enter() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text("0")
    out = subprocess.run([exe], preexec_fn=enter, capture_output=True, text=True, check=True).stdout
    return int(out)


@pytest.fixture
def pod_cgroups():
    cg2 = find_cgroup2_mount(read_mounts())
    assert cg2 is not None, "no cgroup2 hierarchy in the guest"
    root = Path(cg2.mount_point)
    made = []
    leaves = {}
    for key, parent in (("selected-systemd", systemd_pod(POD_UID)), ("selected-cgroupfs", cgroupfs_pod(POD_UID)),
                        ("other", systemd_pod(OTHER_UID))):
        leaf = root / parent.lstrip("/") / ("cri-containerd-" + uuid.uuid4().hex + ".scope"
                                            if "slice" in parent else uuid.uuid4().hex)
        leaf.mkdir(parents=True)
        made.append(leaf)
        leaves[key] = leaf
    yield leaves
    for leaf in made:   # children first, then their parents up to the top the test made
        for d in [leaf, *leaf.parents]:
            if d == root:
                break
            try:
                d.rmdir()
            except OSError:
                pass


def test_the_image_upgrades_host_processes_and_pods_and_leaves_nothing_when_stopped(bpf_backend, static_rawsock,
                                                                                    pod_cgroups, tmp_path):
    if not (BUNDLE / "rootfs" / "usr" / "bin" / "mptcpize-py").exists():
        pytest.fail(f"no image bundle at {BUNDLE}: `make test-vm` makes it (scripts/image-bundle.sh)")
    os.chmod(tmp_path, 0o755)
    selected = tmp_path / "selected"
    other = tmp_path / "other"
    shutil.copy2(static_rawsock, selected)
    shutil.copy2(static_rawsock, other)
    cm = tmp_path / "policy"
    cm.mkdir(mode=0o755)
    (cm / "10-fleet.toml").write_text(
        f'[[allow]]\nname = "host exe"\nexe = "{selected}"\n\n'
        f'[[allow]]\nname = "one pod (systemd driver)"\ncgroup = "{systemd_pod(POD_UID)}"\n\n'
        f'[[allow]]\nname = "one pod (cgroupfs driver)"\ncgroup = "{cgroupfs_pod(POD_UID)}"\n')
    (cm / "10-fleet.toml").chmod(0o644)

    spec = daemonset.read()
    base = json.loads((BUNDLE / "config.json").read_text())
    args = [a for a in spec.args if not a.startswith("--metrics-listen")]
    cfg = daemonset.runc_config(spec, base, str(BUNDLE / "rootfs"), cm, [], f"/{ID}")
    cfg["process"]["args"] = [*base["process"]["args"], *args]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(cfg))
    log_path = tmp_path / "container.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        ctr = subprocess.Popen(["runc", "run", "--bundle", str(bundle), ID], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if ctr.poll() is not None:
                pytest.fail(f"the container exited with {ctr.returncode}: {log_path.read_text()}")
            return runc("exec", ID, *spec.probe, check=False).returncode == 0   # the readiness probe
        wait_for(ready, "the readiness probe (`mptcpize-py status` by exec)", timeout=READY_TIMEOUT,
                 interval=1, details=log_path.read_text)
        print(f"runc run to readiness probe passing: {time.monotonic() - t0:.1f} s (a measurement, "
              "not a bound)")

        # Host processes: the exe rule names a file of the host (the guest), reached through /host.
        assert sockproto(str(selected)) == 262
        assert sockproto(str(other)) == 6
        # Pods by cgroup, both drivers' layouts: any exe in the pod's cgroup subtree.
        assert sockproto(str(other), pod_cgroups["selected-systemd"]) == 262
        assert sockproto(str(other), pod_cgroups["selected-cgroupfs"]) == 262
        assert sockproto(str(other), pod_cgroups["other"]) == 6
        status = json.loads(runc("exec", ID, "mptcpize-py", "status", "--json").stdout)
        upgraded = {r["description"].split('"')[1]: r["upgraded"] for r in status["policy"]["rules"]}
        assert upgraded == {"host exe": 1, "one pod (systemd driver)": 1, "one pod (cgroupfs driver)": 1}
        assert status["loader"] == "libbpf"   # the image has no bcc: the prebuilt CO-RE object
        assert any(n.startswith("kmod_ret__upd") for n in bpf_prog_names())
    finally:
        # SIGTERM to the daemon, as the kubelet's first step at a pod's deletion. Never `runc delete
        # --force` or `kill --all`: with the host's pid namespace they signal by cgroup, and a
        # container whose cgroup was not set up would take the host's processes with it.
        if ctr.poll() is None:
            runc("kill", ID, "TERM", check=False)
            wait_exit(ctr, "the container to stop after SIGTERM", timeout=60)
        runc("delete", ID, check=False)
    assert "stopping: detaching the program" in log_path.read_text()
    # Stopped: nothing is attached, and the selected executable gets TCP again.
    assert not any(n.startswith("kmod_ret__upd") for n in bpf_prog_names())
    assert sockproto(str(selected)) == 6
    assert sockproto(str(other), pod_cgroups["selected-systemd"]) == 6
