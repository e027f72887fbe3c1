"""The kernel side's selection for the daemon front-ends, driven through rewriter.Rewriter directly:
executable identity, cgroup (with ancestors), deny beating allow, and the netns allow set. Processes
here are NOT under `run`; what they see (SO_PROTOCOL) is the assertion."""

import os
import shutil
import subprocess

import pytest

from mptcpize_py import abi, resolve

pytestmark = pytest.mark.vm

CG_ROOT = "/sys/fs/cgroup"


@pytest.fixture(scope="module")
def rewriter(bpf_backend):
    from mptcpize_py.program.rewriter import Rewriter
    rw = Rewriter(all_netns=True)
    yield rw
    rw.close()


@pytest.fixture
def binaries(static_rawsock, tmp_path):
    """Two copies of the static probe: same content, different inodes (identity is dev+inode)."""
    paths = {}
    for name in ("selected", "other"):
        paths[name] = str(tmp_path / f"rawsock-{name}")
        shutil.copy2(static_rawsock, paths[name])
    return paths


@pytest.fixture
def cgroups():
    parent = os.path.join(CG_ROOT, "mzv-sel")
    child = os.path.join(parent, "child")
    os.makedirs(child, exist_ok=True)
    yield {"parent": parent, "child": child}
    for d in (child, parent):
        os.rmdir(d)


def exe_key(path: str) -> tuple[int, int]:
    # Not os.stat(): on overlayfs (the VM's /tmp and /usr) st_dev is not the superblock's dev_t
    # that the kernel keys on; resolve.exe_key reads the mount's and the inode from fdinfo.
    key, _real = resolve.exe_key(path)
    return key.dev, key.ino


def proto(path: str, cgroup: str | None = None, netns: str | None = None) -> str:
    """SO_PROTOCOL of a socket made by `path`, started (optionally) inside a cgroup or netns."""
    if cgroup:
        cmd = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "{path}"']
    else:
        cmd = [path]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def counters(rw) -> dict[str, int]:
    return rw.counters()


def test_exe_identity_cgroup_ancestors_deny_and_netns(rewriter, binaries, cgroups):
    allow, deny = abi.ACTION_ALLOW, abi.ACTION_DENY
    parent_id = os.stat(cgroups["parent"]).st_ino  # cgroup v2 id == the directory's inode

    # Nothing selected: plain TCP for everyone.
    rewriter.set_selection({}, {}, None)
    assert proto(binaries["selected"]) == "6"

    # An exe rule selects that file (device + inode), not its content or name.
    rewriter.set_selection({exe_key(binaries["selected"]): (16, allow)}, {}, None)
    assert proto(binaries["selected"]) == "262"
    assert proto(binaries["other"]) == "6"

    # A cgroup rule selects its cgroup and everything below it.
    rewriter.set_selection({}, {parent_id: (17, allow)}, None)
    assert proto(binaries["other"], cgroups["parent"]) == "262"
    assert proto(binaries["other"], cgroups["child"]) == "262"
    assert proto(binaries["other"]) == "6"

    # deny beats allow, whichever kind each is.
    before = counters(rewriter)["denied"]
    rewriter.set_selection({exe_key(binaries["selected"]): (18, deny)}, {parent_id: (17, allow)}, None)
    assert proto(binaries["selected"], cgroups["child"]) == "6"
    assert proto(binaries["other"], cgroups["child"]) == "262"
    assert counters(rewriter)["denied"] == before + 1

    # The netns allow set: only the listed namespaces are rewritten.
    subprocess.run(["ip", "netns", "add", "mzv-sel"], check=True)
    try:
        host_netns = os.stat("/proc/1/ns/net").st_ino
        rewriter.set_selection({exe_key(binaries["selected"]): (16, allow)}, {}, {host_netns})
        before = counters(rewriter)["netns_not_selected"]
        assert proto(binaries["selected"]) == "262"
        assert proto(binaries["selected"], netns="mzv-sel") == "6"
        assert counters(rewriter)["netns_not_selected"] == before + 1
        # None = every namespace (still only where MPTCP is enabled).
        rewriter.set_selection({exe_key(binaries["selected"]): (16, allow)}, {}, None)
        assert proto(binaries["selected"], netns="mzv-sel") == "262"
    finally:
        subprocess.run(["ip", "netns", "del", "mzv-sel"], check=True)


def test_full_maps_are_replaced_whole_and_kept_keys_updated_in_place(rewriter, binaries):
    """A selection as large as the maps replaced by another as large, as when a package upgrade renames
    over every selected executable: no E2BIG; the one key in both (the probe's, its action changed)
    is updated in place. Identities no file has here (inode numbers above 2**62, netns inums above
    2**31) fill the maps."""
    allow, deny = abi.ACTION_ALLOW, abi.ACTION_DENY
    kept = exe_key(binaries["selected"])
    host_netns = os.stat("/proc/1/ns/net").st_ino

    def selection(generation: int, action: int):
        base = (generation + 1) << 40
        exe = {(kept[0], (1 << 62) + base + i): (100 + i, allow) for i in range(abi.MAX_EXE_RULES - 1)}
        netns = {(1 << 31) + (generation << 20) + i for i in range(abi.MAX_NETNS - 1)}
        return exe | {kept: (16, action)}, {}, netns | {host_netns}

    try:
        rewriter.set_selection(*selection(0, allow))     # every map full
        assert proto(binaries["selected"]) == "262"
        rewriter.set_selection(*selection(1, deny))      # every other key replaced, the kept one denied
        assert proto(binaries["selected"]) == "6"
        rewriter.set_selection(*selection(2, allow))
        assert proto(binaries["selected"]) == "262"
        assert proto(binaries["other"]) == "6"
    finally:
        rewriter.set_selection({}, {}, None)
