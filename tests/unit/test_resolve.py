"""resolve.py without root: systemd's unit -> cgroup naming rules, mountinfo/fdinfo parsing, and whole
policies resolved against directories and files made in tmp_path."""

import os
from pathlib import Path

import pytest

from mptcpize_py import abi, resolve

# ---------------------------------------------------------------------------------------------------
from mptcpize_py.host import files, systemd
from mptcpize_py.host import mounts as host_mounts
from mptcpize_py.host.systemd import (
    UnitNameError,
    cg_escape,
    default_slice,
    slice_path,
    unit_cgroup_path,
    unit_name_escape,
)
from mptcpize_py.policy import parse_policy_text
from mptcpize_py.resolve import ResolveError

# systemd naming rules (v252: src/basic/cgroup-util.c, src/core/unit.c, src/basic/unit-name.c)


@pytest.mark.parametrize("name, path", [
    ("-.slice", "/"),
    ("system.slice", "/system.slice"),
    ("user.slice", "/user.slice"),
    ("machine.slice", "/machine.slice"),
    ("user-1000.slice", "/user.slice/user-1000.slice"),
    ("a-b-c.slice", "/a.slice/a-b.slice/a-b-c.slice"),
    ("a-b-c-d.slice", "/a.slice/a-b.slice/a-b-c.slice/a-b-c-d.slice"),
    ("system-getty.slice", "/system.slice/system-getty.slice"),
    ("system-systemd\\x2dfsck.slice", "/system.slice/system-systemd\\x2dfsck.slice"),
    ("a\\x2db.slice", "/a\\x2db.slice"),             # an escaped dash is not a level
    ("cpu.slice", "/_cpu.slice"),                     # escaped: looks like a controller attribute
    ("io-x.slice", "/_io.slice/io-x.slice"),          # each level is escaped on its own
])
def test_slice_nesting(name, path):
    assert slice_path(name) == path


@pytest.mark.parametrize("name", [
    "-a.slice", "a-.slice", "a--b.slice", "-.service", "foo.service", "foo@bar.slice", "@x.slice",
    "slice", ".slice",
])
def test_invalid_slice_names(name):
    with pytest.raises(UnitNameError):
        slice_path(name)


@pytest.mark.parametrize("name, escaped", [
    ("nginx.service", "nginx.service"),
    ("cpu.service", "_cpu.service"),
    ("cpuset.service", "_cpuset.service"),
    ("cpuacct.service", "_cpuacct.service"),          # systemd v252; v256+ no longer escapes it
    ("io.service", "_io.service"),
    ("blkio.service", "_blkio.service"),
    ("memory.service", "_memory.service"),
    ("devices.service", "_devices.service"),
    ("pids.service", "_pids.service"),
    ("bpf-firewall.service", "_bpf-firewall.service"),
    ("bpf-restrict-network-interfaces.socket", "_bpf-restrict-network-interfaces.socket"),
    ("cgroup.service", "_cgroup.service"),
    ("_foo.service", "__foo.service"),
    (".foo.service", "_.foo.service"),
    ("cpux.service", "cpux.service"),                 # the controller name must be followed by '.'
    ("io-stat.service", "io-stat.service"),
    ("memoryd.service", "memoryd.service"),
    ("-.mount", "-.mount"),
    ("tasks", "_tasks"),
    ("release_agent", "_release_agent"),
    ("notify_on_release", "_notify_on_release"),
])
def test_cg_escape(name, escaped):
    assert cg_escape(name) == escaped


@pytest.mark.parametrize("raw, escaped", [
    ("foo", "foo"),
    ("foo-bar", "foo\\x2dbar"),
    (".dot", "\\x2edot"),
    ("a.b", "a.b"),
    ("a/b", "a-b"),
    ("a\\b", "a\\x5cb"),
    ("a b", "a\\x20b"),
    ("é", "\\xc3\\xa9"),
    ("a:b_c", "a:b_c"),
])
def test_unit_name_escape(raw, escaped):
    assert unit_name_escape(raw) == escaped


@pytest.mark.parametrize("unit, slice_name", [
    ("nginx.service", "system.slice"),
    ("sshd.socket", "system.slice"),
    ("home.mount", "system.slice"),
    ("-.mount", "system.slice"),
    ("dev-sda2.swap", "system.slice"),
    ("session-1.scope", "system.slice"),       # real sessions set Slice=user-UID.slice: ask systemd
    ("init.scope", "-.slice"),
    ("getty@tty1.service", "system-getty.slice"),
    ("serial-getty@ttyS0.service", "system-serial\\x2dgetty.slice"),
    ("systemd-fsck@dev-sda1.service", "system-systemd\\x2dfsck.slice"),
    ("foo\\x2dbar@x.service", "system-foo\\x5cx2dbar.slice"),
    ("container@a@b.service", "system-container.slice"),
    ("system.slice", "-.slice"),
    ("user-1000.slice", "user.slice"),
    ("a-b-c.slice", "a-b.slice"),
])
def test_default_slice(unit, slice_name):
    assert default_slice(unit) == slice_name


@pytest.mark.parametrize("unit, path", [
    ("nginx.service", "/system.slice/nginx.service"),
    ("sshd.socket", "/system.slice/sshd.socket"),
    ("-.mount", "/system.slice/-.mount"),
    ("init.scope", "/init.scope"),
    ("-.slice", "/"),
    ("user-1000.slice", "/user.slice/user-1000.slice"),
    ("getty@tty1.service", "/system.slice/system-getty.slice/getty@tty1.service"),
    ("systemd-fsck@dev-sda1.service",
     "/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-sda1.service"),
    ("cpu.service", "/system.slice/_cpu.service"),
    ("_x.service", "/system.slice/__x.service"),
])
def test_unit_cgroup_path_default(unit, path):
    assert unit_cgroup_path(unit) == path


@pytest.mark.parametrize("unit, slice_name, path", [
    ("batch.service", "batch.slice", "/batch.slice/batch.service"),
    ("job.service", "batch-night.slice", "/batch.slice/batch-night.slice/job.service"),
    ("worker@1.service", "batch.slice", "/batch.slice/worker@1.service"),
    ("x.service", "-.slice", "/x.service"),
    ("x.scope", "user-1000.slice", "/user.slice/user-1000.slice/x.scope"),
    ("a-b.slice", "ignored.slice", "/a.slice/a-b.slice"),  # a slice's place follows from its name
])
def test_unit_cgroup_path_in_a_slice(unit, slice_name, path):
    assert unit_cgroup_path(unit, slice_name) == path


@pytest.mark.parametrize("unit", ["nosuffix", ".service", "@x.service"])
def test_unit_cgroup_path_bad_names(unit):
    with pytest.raises(UnitNameError):
        unit_cgroup_path(unit)


# ---------------------------------------------------------------------------------------------------
# Asking systemd (a stand-in systemctl: PID 1 is not systemd here)


def fake_systemctl(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "systemctl"
    exe.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/argv\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


def unit_cgroup(unit: str, **kw) -> str:
    """systemd.unit_cgroups() for one unit; raises its UnitNameError."""
    answer = systemd.unit_cgroups([unit], **kw)[unit]
    if isinstance(answer, UnitNameError):
        raise answer
    return answer


def test_ask_systemd_running_unit_uses_control_group(tmp_path):
    exe = fake_systemctl(tmp_path, "echo Slice=batch.slice; echo ControlGroup=/batch.slice/x.service")
    assert unit_cgroup("x.service", exe=exe) == "/batch.slice/x.service"
    # argv, never a shell; "--" keeps a unit name from being taken for an option
    assert (tmp_path / "argv").read_text().splitlines() == [
        "show", "--property=Id,LoadState,ControlGroup,Slice", "--", "x.service"]


def test_ask_systemd_inactive_unit_uses_its_slice(tmp_path):
    exe = fake_systemctl(tmp_path, "echo ControlGroup=; echo Slice=batch-night.slice")
    assert unit_cgroup("x.service", exe=exe) == "/batch.slice/batch-night.slice/x.service"


def test_ask_systemd_shell_metacharacters_are_just_argv(tmp_path):
    exe = fake_systemctl(tmp_path, "echo ControlGroup=/x")
    unit = f"a;touch {tmp_path}/pwned;.service"
    unit_cgroup(unit, exe=exe)
    assert (tmp_path / "argv").read_text().splitlines()[-1] == unit
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("body, why", [
    ("echo 'Failed to connect to bus' >&2; exit 1", "Failed to connect to bus"),
    ("echo ControlGroup=; echo Slice=", "neither ControlGroup nor Slice"),
    ("sleep 5", "did not finish within 0.3 s"),
])
def test_ask_systemd_failures(tmp_path, body, why):
    exe = fake_systemctl(tmp_path, body)
    with pytest.raises(UnitNameError, match=why):
        unit_cgroup("x.service", exe=exe, timeout=0.3)


def test_ask_systemd_without_systemctl():
    with pytest.raises(UnitNameError, match="cannot run"):
        unit_cgroup("x.service", exe="/nonexistent/mzr-no-such-systemctl")


def test_parse_systemctl_show():
    assert systemd.parse_show("A=1\nB=\nC=x=y\nnoise\n") == {"A": "1", "B": "", "C": "x=y"}


# What systemd 252's `systemctl show --property=Id,ControlGroup,Slice,LoadState -- ...` printed for a
# running unit, an inactive one with Slice=, an alias of the first, and an unknown one (a real user
# manager on this host): one block per name, in argv order, an empty line between blocks.
SHOW_252 = """\
Slice=app.slice
ControlGroup=/app.slice/mzs-a.service
Id=mzs-a.service
LoadState=loaded

Slice=mzs-batch.slice
ControlGroup=
Id=mzs-b.service
LoadState=loaded

Slice=app.slice
ControlGroup=/app.slice/mzs-a.service
Id=mzs-a.service
LoadState=loaded

Slice=
ControlGroup=
Id=foo.service
LoadState=not-found
"""


def test_parse_systemctl_show_blocks():
    blocks = systemd.parse_show_blocks(SHOW_252)
    assert [b["Id"] for b in blocks] == ["mzs-a.service", "mzs-b.service", "mzs-a.service",
                                         "foo.service"]
    assert blocks[1] == {"Slice": "mzs-batch.slice", "ControlGroup": "", "Id": "mzs-b.service",
                         "LoadState": "loaded"}
    assert systemd.parse_show_blocks("") == []


def test_unit_cgroups_of_systemd_252_output(tmp_path):
    exe = fake_systemctl(tmp_path, f"cat <<'EOF'\n{SHOW_252}EOF")
    got = systemd.unit_cgroups(["mzs-a.service", "mzs-b.service", "mzs-alias.service", "foo.service"],
                               exe=exe)
    assert got["mzs-a.service"] == got["mzs-alias.service"] == "/app.slice/mzs-a.service"
    assert got["mzs-b.service"] == "/mzs.slice/mzs-batch.slice/mzs-b.service"
    assert isinstance(got["foo.service"], UnitNameError)
    assert "systemd does not know foo.service (LoadState=not-found)" in str(got["foo.service"])


# A stand-in systemctl that counts its runs and answers `show ... -- U1 U2 ...` like systemd 252: one
# block per unit (running, in system.slice), an empty line between blocks.
COUNTING_SYSTEMCTL = """\
echo run >> "${0%/*}/runs"   # builtins only: PATH holds just this directory
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift
first=1
for u in "$@"; do
    [ "$first" = 1 ] || echo
    first=0
    printf 'Id=%s\\nLoadState=loaded\\nControlGroup=/system.slice/%s\\nSlice=system.slice\\n' "$u" "$u"
done"""


def runs(tmp_path: Path) -> int:
    p = tmp_path / "runs"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_resolving_many_unit_rules_runs_systemctl_once(tmp_path, monkeypatch):
    """4,096 unit rules cost 4,096 systemctl processes per resync (every 2 s) before: now one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_systemctl(bin_dir, COUNTING_SYSTEMCTL)
    monkeypatch.setattr(systemd, "_SYSTEMCTL_ENV", {**systemd._SYSTEMCTL_ENV, "PATH": str(bin_dir)})
    cgroot = tmp_path / "cgroup"
    units = [f"mzr-{i:04d}.service" for i in range(300)]
    for u in units[::2]:          # half of them running: their cgroups exist
        (cgroot / "system.slice" / u).mkdir(parents=True)
    text = "".join(f'[[allow]]\nunit = "{u}"\n' for u in units)
    res = resolve.resolve_policy(policy(text), cgroup_mount=str(cgroot), systemd=True)
    assert runs(bin_dir) == 1
    assert len(res.cgroup_map()) == 150 and len(res.pending) == 150 and res.notes == ()
    assert res.targets[16].startswith("/system.slice/mzr-0000.service (cgroup id ")
    assert res.pending[0].path == f"{cgroot}/system.slice/mzr-0001.service"


def test_unit_cgroups_chunks_argv(tmp_path):
    exe = fake_systemctl(tmp_path, COUNTING_SYSTEMCTL)
    units = [f"mzr-{i:04d}.service" for i in range(100)]        # 17 bytes + NUL + pointer each
    got = systemd.unit_cgroups(units + units[:5], exe=exe, argv_bytes=26 * 30)   # duplicates: asked once
    assert runs(tmp_path) == 4                                    # ceil(100 / 30)
    assert got == {u: f"/system.slice/{u}" for u in units}


def test_unit_cgroups_a_failed_run_is_each_units_reason(tmp_path):
    exe = fake_systemctl(tmp_path, "echo 'Failed to connect to bus: No such file or directory' >&2; exit 1")
    got = systemd.unit_cgroups(["a.service", "b.service"], exe=exe)
    assert {u: str(e) for u, e in got.items()} == dict.fromkeys(
        ["a.service", "b.service"], "systemctl show 2 units: Failed to connect to bus: No such file or directory")
    exe = fake_systemctl(tmp_path, "printf 'Id=a.service\\nControlGroup=/a\\n'")   # one block for two
    got = systemd.unit_cgroups(["a.service", "b.service"], exe=exe)
    assert all("1 answers for 2 units" in str(e) for e in got.values())


# ---------------------------------------------------------------------------------------------------
# mountinfo, fdinfo

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw
49 27 0:42 / /tmp/with\\040space rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b
50 27 0:38 /sub /tmp/cg-sub rw - cgroup2 cgroup2 rw
bad line
"""


def test_parse_mountinfo():
    mounts = host_mounts.parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 7
    ov = next(m for m in mounts if m.mount_id == 49)
    assert (ov.major, ov.minor, ov.root, ov.mount_point, ov.fstype) == (0, 42, "/", "/tmp/with space",
                                                                       "overlay")
    assert ov.kernel_dev == 42
    assert next(m for m in mounts if m.mount_id == 27).kernel_dev == 254 << 20
    assert next(m for m in mounts if m.mount_id == 41).fstype == "cgroup2"  # optional fields skipped


def test_find_cgroup2_mount_hybrid_and_unified():
    mounts = host_mounts.parse_mountinfo(MOUNTINFO)
    assert host_mounts.find_cgroup2_mount(mounts).mount_point == "/sys/fs/cgroup/unified"
    unified = host_mounts.parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n" + MOUNTINFO)
    assert host_mounts.find_cgroup2_mount(unified).mount_point == "/sys/fs/cgroup"
    elsewhere = host_mounts.parse_mountinfo("30 23 0:26 / /mnt/cg rw - cgroup2 cgroup2 rw\n")
    assert host_mounts.find_cgroup2_mount(elsewhere).mount_point == "/mnt/cg"
    # only a subtree (inside a cgroup namespace): policy paths would not map onto it
    assert host_mounts.find_cgroup2_mount(host_mounts.parse_mountinfo(
        "50 27 0:38 /sub /tmp/cg-sub rw - cgroup2 cgroup2 rw\n")) is None
    assert host_mounts.find_cgroup2_mount([]) is None


def test_parse_fdinfo():
    text = "pos:\t0\nflags:\t012000000\nmnt_id:\t46\nino:\t2146468\n"
    assert files.parse_fdinfo(text) == {"pos": "0", "flags": "012000000", "mnt_id": "46",
                                          "ino": "2146468"}


# ---------------------------------------------------------------------------------------------------
# Executables (files made here; no root needed)


def make_exe(path: Path, mode=0o755) -> Path:
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_exe_key_is_the_inode_and_its_mounts_superblock_dev(tmp_path):
    exe = make_exe(tmp_path / "prog")
    key, real = resolve.exe_key(str(exe))
    st = os.stat(exe)
    fd = os.open(exe, os.O_PATH)
    try:
        mnt_id = int(files.parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())["mnt_id"])
    finally:
        os.close(fd)
    mount = next(m for m in host_mounts.read_mounts() if m.mount_id == mnt_id)
    assert key == resolve.ExeKey(mount.kernel_dev, st.st_ino)
    assert real == str(exe)
    if mount.fstype not in ("overlay", "btrfs"):  # where st_dev is the superblock's (see host tests)
        assert key.dev == (os.major(st.st_dev) << 20) | os.minor(st.st_dev)


def test_exe_key_follows_symlinks(tmp_path):
    exe = make_exe(tmp_path / "python3.11")
    link = tmp_path / "python3"
    link.symlink_to("python3.11")
    assert resolve.exe_key(str(link)) == (resolve.exe_key(str(exe))[0], str(exe))


@pytest.mark.parametrize("make, reason", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "not a regular file"),
    (lambda p: make_exe(p, 0o644), "not executable"),
    (lambda p: (os.mkfifo(p), p)[1], "not a regular file"),
])
def test_exe_key_refusals(tmp_path, make, reason):
    path = make(tmp_path / "x")
    with pytest.raises(ResolveError, match=reason):
        resolve.exe_key(str(path))


@pytest.mark.parametrize("path", ["/proc/self/exe", "/proc/self/fd/0", "/proc/thread-self/exe"])
def test_exe_key_refuses_proc_magic_links(path):
    # They would resolve to whatever that process runs: for /proc/self/exe, the daemon itself.
    with pytest.raises(ResolveError, match="magic link"):
        resolve.exe_key(path)


def test_exe_key_refuses_a_symlink_into_proc_magic_links(tmp_path):
    (tmp_path / "sneaky").symlink_to("/proc/self/exe")
    with pytest.raises(ResolveError, match="magic link"):
        resolve.exe_key(str(tmp_path / "sneaky"))
    res = resolve.resolve_policy(policy(f'[[allow]]\nexe = "{tmp_path}/sneaky"\n'), systemd=False)
    assert res.exe == {} and "magic link" in res.problems[0]


def test_exe_key_fifo_is_not_opened_for_reading(tmp_path):
    # O_PATH: a FIFO with no writer would block a plain open(); this must return at once.
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ResolveError):
        resolve.exe_key(str(tmp_path / "fifo"))


# ---------------------------------------------------------------------------------------------------
# Cgroup paths (a directory tree in tmp_path stands in for the cgroup2 mount)


@pytest.mark.parametrize("cgroup, rel", [
    ("/", ""),
    ("/system.slice", "system.slice"),
    ("/a/b/c", "a/b/c"),
    ("/a/../b", "b"),
    ("/../../etc", "etc"),
    ("//a//b/", "a/b"),
    ("/./a/.", "a"),
])
def test_cgroup_fs_path_is_normalised_under_the_mount(cgroup, rel):
    assert resolve.cgroup_fs_path("/sys/fs/cgroup", cgroup) == "/sys/fs/cgroup" + ("/" + rel if rel else "")


def test_cgroup_id_is_the_directory_inode(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert resolve.cgroup_id(str(tmp_path), "/a/b") == os.stat(tmp_path / "a" / "b").st_ino
    assert resolve.cgroup_id(str(tmp_path), "/") == os.stat(tmp_path).st_ino
    assert resolve.cgroup_id(str(tmp_path), "/a/missing") is None


def test_cgroup_id_refuses_files_and_escaping_symlinks(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.procs").write_text("")
    (root / "evil").symlink_to("/etc")
    (root / "inside").symlink_to(".")
    with pytest.raises(ResolveError, match="not a cgroup"):
        resolve.cgroup_id(str(root), "/cgroup.procs")
    with pytest.raises(ResolveError, match="not a cgroup"):
        resolve.cgroup_id(str(root), "/cgroup.procs/x")
    with pytest.raises(ResolveError, match="outside the cgroup hierarchy"):
        resolve.cgroup_id(str(root), "/evil")
    assert resolve.cgroup_id(str(root), "/inside") == os.stat(root).st_ino


# ---------------------------------------------------------------------------------------------------
# Whole policies


def policy(text: str):
    return parse_policy_text(text, "/etc/mptcpize-py/policy.d/10-test.toml")


def test_resolve_policy_everything(tmp_path):
    exe = make_exe(tmp_path / "iperf3")
    cg = tmp_path / "cg"
    (cg / "system.slice" / "nginx.service").mkdir(parents=True)
    (cg / "batch.slice").mkdir()
    pol = policy(f'''
[[allow]]
exe = "{exe}"
[[allow]]
unit = "nginx.service"
[[allow]]
cgroup = "/batch.slice"
[[deny]]
unit = "backup.service"
[[allow]]
exe = "{tmp_path}/missing"
''')
    res = resolve.resolve_policy(pol, cgroup_mount=str(cg), systemd=False)
    key, _ = resolve.exe_key(str(exe))
    nginx = os.stat(cg / "system.slice" / "nginx.service").st_ino
    batch = os.stat(cg / "batch.slice").st_ino
    assert res.exe_map() == {(key.dev, key.ino): (16, abi.ACTION_ALLOW)}
    assert res.cgroup_map() == {nginx: (17, abi.ACTION_ALLOW), batch: (18, abi.ACTION_ALLOW)}
    assert res.problems == (f"/etc/mptcpize-py/policy.d/10-test.toml:10: exe={tmp_path}/missing: "
                            "does not exist",)
    (pending,) = res.pending
    assert (pending.kind, pending.rule.id, pending.path) == ("cgroup", 19,
                                                             f"{cg}/system.slice/backup.service")
    assert pending.message == (f"/etc/mptcpize-py/policy.d/10-test.toml:8: unit=backup.service: not "
                               f"running yet (no cgroup {cg}/system.slice/backup.service); waiting for it")
    assert res.targets[17] == f"/system.slice/nginx.service (cgroup id {nginx})"
    assert res.targets[19] == "/system.slice/backup.service (pending)"
    assert res.flags() == abi.CFG_HAS_EXE_RULES | abi.CFG_HAS_CGROUP_RULES
    assert res.netns == {os.stat("/proc/self/ns/net").st_ino} and not res.all_netns


def test_deny_beats_allow_on_the_same_file_through_a_symlink(tmp_path):
    exe = make_exe(tmp_path / "python3.11")
    (tmp_path / "python3").symlink_to("python3.11")
    pol = policy(f'[[allow]]\nexe = "{tmp_path}/python3"\n[[deny]]\nexe = "{exe}"\n'
                 f'[[allow]]\nexe = "{exe}"\n')
    res = resolve.resolve_policy(pol, systemd=False)
    key, _ = resolve.exe_key(str(exe))
    assert res.exe_map() == {(key.dev, key.ino): (17, abi.ACTION_DENY)}
    assert len(res.notes) == 2 and all("shadowed" in n for n in res.notes)
    assert res.targets[16] == f"{tmp_path}/python3 -> {exe} ({key})"


def test_first_allow_wins_between_allows_on_one_cgroup(tmp_path):
    (tmp_path / "x.service").mkdir()
    pol = policy('[[allow]]\ncgroup = "/x.service"\nname = "first"\n[[allow]]\nunit = "x.service"\n')
    res = resolve.resolve_policy(pol, cgroup_mount=str(tmp_path), systemd=lambda u: "/x.service")
    assert res.cgroup_map() == {os.stat(tmp_path / "x.service").st_ino: (16, abi.ACTION_ALLOW)}
    assert "is shadowed" in res.notes[0]


def test_systemd_failure_falls_back_to_the_naming_rule_with_a_note(tmp_path):
    (tmp_path / "system.slice" / "x.service").mkdir(parents=True)

    def broken(unit):
        raise UnitNameError("systemctl show x.service: Failed to connect to bus")

    res = resolve.resolve_policy(policy('[[allow]]\nunit = "x.service"\n'), cgroup_mount=str(tmp_path),
                                 systemd=broken)
    assert res.cgroup_map() == {os.stat(tmp_path / "system.slice" / "x.service").st_ino: (16, 1)}
    assert res.notes == ("/etc/mptcpize-py/policy.d/10-test.toml:1: unit=x.service: systemctl show "
                         "x.service: Failed to connect to bus; using systemd's default cgroup path",)


def test_systemd_is_not_asked_when_pid1_is_not_systemd(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "SYSTEMD_RUNTIME", str(tmp_path / "no-systemd"))
    monkeypatch.setattr(resolve, "unit_cgroups", lambda *a, **k: pytest.fail("asked systemd"))
    res = resolve.resolve_policy(policy('[[allow]]\nunit = "x.service"\n'), cgroup_mount=str(tmp_path))
    assert [p.path for p in res.pending] == [f"{tmp_path}/system.slice/x.service"]


def test_no_cgroup2_mount_is_a_problem_per_rule():
    res = resolve.resolve_policy(policy('[[allow]]\ncgroup = "/a"\n[[allow]]\nunit = "b.service"\n'),
                                 mounts=[], systemd=False)
    assert len(res.problems) == 2 and all("no cgroup v2 hierarchy" in p for p in res.problems)


def test_netns_names_all_and_pending(tmp_path):
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (netns_dir / "stale").write_text("")  # a file with no namespace mounted on it (ip netns add half done)
    host = os.stat("/proc/self/ns/net").st_ino
    res = resolve.resolve_policy(policy('[netns]\nnames = ["stale", "absent"]\n'),
                                 netns_dir=str(netns_dir), systemd=False)
    assert res.netns == {host} and not res.all_netns
    assert [(p.kind, p.path) for p in res.pending] == [("netns", f"{netns_dir}/stale"),
                                                      ("netns", f"{netns_dir}/absent")]
    assert res.problems == ()

    res = resolve.resolve_policy(policy("[netns]\nall = true\n"), systemd=False)
    assert res.all_netns and res.netns == frozenset() and res.flags() == abi.CFG_ALL_NETNS


def test_host_netns_from_the_given_path(tmp_path):
    res = resolve.resolve_policy(policy(""), host_netns="/proc/self/ns/net", systemd=False)
    assert res.netns == {os.stat("/proc/self/ns/net").st_ino}
    res = resolve.resolve_policy(policy(""), host_netns=str(tmp_path / "nope"), systemd=False)
    assert res.netns == frozenset() and "netns host" in res.problems[0]


def test_selection_is_what_bpf_set_selection_takes(tmp_path):
    exe = make_exe(tmp_path / "prog")
    (tmp_path / "cg" / "a").mkdir(parents=True)
    pol = policy(f'[[allow]]\nexe = "{exe}"\n[[deny]]\ncgroup = "/a"\n')
    res = resolve.resolve_policy(pol, cgroup_mount=str(tmp_path / "cg"), systemd=False)
    key, _ = resolve.exe_key(str(exe))
    assert res.selection() == ({(key.dev, key.ino): (16, abi.ACTION_ALLOW)},
                               {os.stat(tmp_path / "cg" / "a").st_ino: (17, abi.ACTION_DENY)},
                               {os.stat("/proc/self/ns/net").st_ino})
    res = resolve.resolve_policy(policy("[netns]\nall = true\n"), systemd=False)
    assert res.selection() == ({}, {}, None)


def test_empty_policy_resolves_to_nothing():
    res = resolve.resolve_policy(policy(""), systemd=False)
    assert (res.exe, res.cgroups, res.pending, res.problems) == ({}, {}, (), ())
    assert res.flags() == 0


def test_exe_key_str():
    assert str(resolve.ExeKey((254 << 20) | 3, 42)) == "dev 254:3 ino 42"
