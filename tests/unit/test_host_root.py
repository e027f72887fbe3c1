"""--host-root (host/root.py): the policy's host paths resolved in the host's tree, not the caller's."""

import os
import sys

import pytest

from mptcpize_py.errors import UsageError
from mptcpize_py.host import root
from mptcpize_py.host.mounts import Mount, find_cgroup2_mount
from mptcpize_py.host.netns import named_netns_dir
from mptcpize_py.resolve import ResolveError, exe_key


@pytest.fixture
def host(tmp_path):
    """A host tree whose /usr/bin/tool is a real file and whose /bin -> /usr/bin is an absolute link
    (what it means in the host, never in the caller's tree)."""
    h = tmp_path / "host"
    (h / "usr/bin").mkdir(parents=True)
    (h / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    (h / "usr/bin/tool").chmod(0o755)
    (h / "bin").symlink_to("/usr/bin")
    (h / "usr/bin/escape").symlink_to("../../../../../../" + os.path.realpath(sys.executable).lstrip("/"))
    root.set_host_root(str(h))
    yield h
    root.set_host_root(None)


def test_exe_is_resolved_in_the_host_tree(host):
    key, real = exe_key("/bin/tool")   # through the host's absolute /bin -> /usr/bin
    st = os.stat(host / "usr/bin/tool")
    assert key.ino == st.st_ino
    assert real == "/usr/bin/tool"      # shown as the host names it


def test_links_cannot_climb_out_of_the_host_root(host):
    with pytest.raises(ResolveError, match="does not exist"):
        exe_key("/usr/bin/escape")   # `..` stops at the host root: the caller's python is not reached
    with pytest.raises(ResolveError, match="does not exist"):
        exe_key(os.path.realpath(sys.executable))   # a path of this tree, absent from the host's


def test_cgroup_and_netns_are_the_hosts(host):
    own = Mount(30, 0, 30, "/", "/sys/fs/cgroup/unified", "cgroup2")
    hosts = Mount(40, 0, 30, "/../../..", f"{host}/sys/fs/cgroup/unified", "cgroup2")
    assert find_cgroup2_mount([own, hosts]) == hosts
    assert named_netns_dir() == f"{host}/run/netns"
    assert root.blind_spot() and "systemd is not asked" in root.blind_spot()


def test_without_a_host_root_nothing_changes():
    own = Mount(30, 0, 30, "/", "/sys/fs/cgroup", "cgroup2")
    assert find_cgroup2_mount([own]) == own
    assert named_netns_dir() == "/run/netns"
    assert root.blind_spot() is None


def test_a_host_root_must_be_an_absolute_directory(tmp_path):
    with pytest.raises(UsageError, match="not an absolute path"):
        root.set_host_root("host")
    with pytest.raises(UsageError, match="not a directory"):
        root.set_host_root(str(tmp_path / "nope"))
    assert root.host_root() == "/"
