"""resolve.py against real things on this host, checked against what the kernel itself reports: a BPF
program (hand-assembled, raw_tp sys_enter; this host loads those but no trampolines) reads the same
fields the rewriter keys on: mm->exe_file->f_inode's (i_sb->s_dev, i_ino), bpf_get_current_cgroup_id(),
bpf_get_current_ancestor_cgroup_id() and nsproxy->net_ns->ns.inum of a chosen process."""

import ctypes
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mptcpize_py import resolve
from mptcpize_py.host import files, mounts
from mptcpize_py.host.files import kernel_dev
from mptcpize_py.policy import parse_policy_text
from tests.conftest import is_root
from tests.waiting import scaled, wait_exit, wait_for

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (cgroups, netns, mounts, BPF)")

SLEEP = shutil.which("sleep") or "/bin/sleep"


# ---------------------------------------------------------------------------------------------------
# What the kernel sees: a tiny BPF program, assembled here (no compiler, no kernel headers needed).

_BTF_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
              15: (0, 12), 17: (4, 0), 19: (0, 12)}
_BTF_STRUCT, _BTF_UNION, _BTF_MODIFIERS = 4, 5, (8, 9, 10, 11, 18)  # typedef volatile const restrict tag


def _btf_types(data: bytes) -> list:
    _magic, _v, _f, hdr_len = struct.unpack_from("<HBBI", data, 0)
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    strings = data[hdr_len + str_off: hdr_len + str_off + str_len]

    def name(off):
        return strings[off:strings.index(b"\0", off)].decode()

    types, pos, end = [None], hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        name_off, info, size = struct.unpack_from("<III", data, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        members = None
        if kind in (_BTF_STRUCT, _BTF_UNION):
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 + 12 * i)
                members.append((name(m_name), m_type, (m_off & 0xFFFFFF) if kflag else m_off))
        types.append((kind, name(name_off), size, members))
        fixed, per = _BTF_EXTRA.get(kind, (0, 0))
        pos += 12 + fixed + per * vlen
    return types


def _offsetof(types: list, struct_name: str, member: str) -> int:
    """Byte offset of `member` in `struct struct_name`, looking into anonymous structs and unions."""
    def strip(tid):
        while types[tid][0] in _BTF_MODIFIERS:
            tid = types[tid][2]
        return tid

    def find(tid, base):
        for m_name, m_type, bit in types[tid][3]:
            if m_name == member:
                return base + bit
            if m_name == "" and types[strip(m_type)][0] in (_BTF_STRUCT, _BTF_UNION):
                found = find(strip(m_type), base + bit)
                if found is not None:
                    return found
        return None

    for tid, t in enumerate(types):
        if t and t[0] == _BTF_STRUCT and t[1] == struct_name:
            bit = find(tid, 0)
            if bit is not None:
                assert bit % 8 == 0
                return bit // 8
    raise KeyError(f"struct {struct_name}.{member}")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(ctypes.c_long(321), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _insn(code, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


# value: u64 exe dev, u64 exe ino, u64 cgroup id, u64 ancestor id, u32 netns inum, u32 pad
_VALUE = struct.Struct("<QQQQI4x")
_FP = 10


def _program(tgid: int, map_fd: int, level: int, o: dict) -> bytes:
    body: list = []   # bytes, or (label,) marks, or ("jmp", code, dst, imm, label)

    def e(*a, **k):
        body.append(_insn(*a, **k))

    def jmp(code, dst, imm, label):
        body.append(("jmp", code, dst, imm, label))

    def read(dst_off, size, src_reg, src_add):   # bpf_probe_read_kernel(fp+dst_off, size, src+add)
        e(0xbf, 1, _FP); e(0x07, 1, imm=dst_off); e(0xb7, 2, imm=size)
        e(0xbf, 3, src_reg); e(0x07, 3, imm=src_add); e(0x85, imm=113)

    def chase(offset, label):                    # r3 = *(u64 *)(r3 + offset) via fp-56, or goto label
        read(-56, 8, 3, offset); e(0x79, 3, _FP, off=-56); jmp(0x15, 3, 0, label)

    e(0x85, imm=14); e(0x77, 0, imm=32); jmp(0x55, 0, tgid, "out")   # only the process we watch
    for off in range(-8, -72, -8):
        e(0x7a, _FP, off=off, imm=0)
    e(0x85, imm=80); e(0x7b, _FP, 0, off=-48 + 16)                    # bpf_get_current_cgroup_id
    e(0xb7, 1, imm=level); e(0x85, imm=123); e(0x7b, _FP, 0, off=-48 + 24)  # ..._ancestor_cgroup_id
    e(0x85, imm=35); e(0xbf, 6, 0)                                    # r6 = current task
    e(0xbf, 3, 6); chase(o["mm"], "net"); chase(o["exe_file"], "net"); chase(o["f_inode"], "net")
    e(0xbf, 7, 3)
    read(-48 + 8, 8, 7, o["i_ino"])
    e(0xbf, 3, 7); chase(o["i_sb"], "net")
    read(-48, 4, 3, o["s_dev"])
    body.append(("net",))
    e(0xbf, 3, 6); chase(o["nsproxy"], "store"); chase(o["net_ns"], "store")
    read(-48 + 32, 4, 3, o["ns_inum"])
    body.append(("store",))
    body.append(_insn(0x18, 1, 1, imm=map_fd) + _insn(0))              # r1 = &map
    e(0xbf, 2, _FP); e(0x07, 2, imm=-64); e(0xbf, 3, _FP); e(0x07, 3, imm=-48); e(0xb7, 4, imm=0)
    e(0x85, imm=2)                                                     # bpf_map_update_elem
    body.append(("out",))
    e(0xb7, 0, imm=0); e(0x95)

    labels, idx = {}, 0
    for item in body:
        if isinstance(item, tuple) and len(item) == 1:
            labels[item[0]] = idx
        else:
            idx += len(item) // 8 if isinstance(item, bytes) else 1
    code, idx = b"", 0
    for item in body:
        if isinstance(item, bytes):
            code += item
            idx += len(item) // 8
        elif item[0] == "jmp":
            _, op, dst, imm, label = item
            code += _insn(op, dst, off=labels[label] - idx - 1, imm=imm)
            idx += 1
    return code


class KernelView:
    """Loads the program for one tgid; read() returns what the kernel saw at that process's last
    system call: (exe ExeKey, cgroup id, ancestor id at `level`, netns inum)."""

    def __init__(self, offsets: dict, tgid: int, level: int):
        self._fds = []
        self.map_fd = _bpf(0, struct.pack("<IIIII", 2, 4, _VALUE.size, 1, 0).ljust(72, b"\0"))
        self._fds.append(self.map_fd)
        insns = _program(tgid, self.map_fd, level, offsets)
        ibuf = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(b"GPL")
        attr = bytearray(128)
        struct.pack_into("<IIQQ", attr, 0, 17, len(insns) // 8, ctypes.addressof(ibuf),  # RAW_TRACEPOINT
                         ctypes.addressof(lic))
        try:
            prog = _bpf(5, bytes(attr))
            self._fds.append(prog)
            name = ctypes.create_string_buffer(b"sys_enter")
            self._fds.append(_bpf(17, struct.pack("<QI4x", ctypes.addressof(name), prog)))
        except OSError:
            self.close()
            raise

    def read(self):
        key = ctypes.create_string_buffer(4)
        val = ctypes.create_string_buffer(_VALUE.size)
        _bpf(1, struct.pack("<I4xQQQ", self.map_fd, ctypes.addressof(key), ctypes.addressof(val), 0))
        dev, ino, cgid, ancestor, netns = _VALUE.unpack(val.raw)
        return resolve.ExeKey(dev, ino), cgid, ancestor, netns

    def close(self):
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds = []


def _kernel_offsets() -> dict:
    types = _btf_types(Path("/sys/kernel/btf/vmlinux").read_bytes())
    return {"mm": _offsetof(types, "task_struct", "mm"),
            "exe_file": _offsetof(types, "mm_struct", "exe_file"),
            "f_inode": _offsetof(types, "file", "f_inode"),
            "i_ino": _offsetof(types, "inode", "i_ino"),
            "i_sb": _offsetof(types, "inode", "i_sb"),
            "s_dev": _offsetof(types, "super_block", "s_dev"),
            "nsproxy": _offsetof(types, "task_struct", "nsproxy"),
            "net_ns": _offsetof(types, "nsproxy", "net_ns"),
            "ns_inum": _offsetof(types, "net", "ns") + _offsetof(types, "ns_common", "inum")}


@pytest.fixture(scope="module")
def kernel_offsets():
    try:
        return _kernel_offsets()
    except (OSError, KeyError) as e:
        pytest.skip(f"kernel BTF unusable here: {e}")


def kernel_view_of(offsets, argv, level=1) -> tuple:
    """Runs argv, returns what the kernel saw at its last system call (its exit)."""
    # A shell holds the pid until the view watches it, then execs argv in that same process.
    proc = subprocess.Popen(["sh", "-c", 'read _ && exec "$@"', "kernel-view", *argv],
                            stdin=subprocess.PIPE)
    try:
        try:
            view = KernelView(offsets, proc.pid, level)
        except OSError as e:
            pytest.skip(f"this kernel refuses a raw_tp BPF program: {e.strerror}")
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            assert wait_exit(proc, f"{argv[0]} to run and exit") == 0
            return view.read()
        finally:
            view.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------------
# Executables


def stat_key(path: str) -> resolve.ExeKey:
    """`stat -L -c '%d %i'`, converted to the kernel's dev_t: right on plain filesystems only."""
    out = subprocess.run(["stat", "-L", "-c", "%d %i", path], capture_output=True, text=True,
                         check=True).stdout.split()
    return resolve.ExeKey(kernel_dev(int(out[0])), int(out[1]))


def _mount_of(path: str) -> mounts.Mount:
    fd = os.open(path, os.O_PATH)
    try:
        mnt_id = int(files.parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())["mnt_id"])
    finally:
        os.close(fd)
    return next(m for m in mounts.read_mounts() if m.mount_id == mnt_id)


def test_exe_key_where_stat_reports_the_superblock_is_stat_converted(overlays):
    path = overlays["plain"]  # tmpfs
    key, real = resolve.exe_key(path)
    assert key == stat_key(path)
    assert real == path


def test_exe_key_of_a_system_binary_is_what_the_kernel_sees(kernel_offsets):
    # Natively: ext4. In the VM tier: /usr is an overlay over 9p, where stat's st_dev is not s_dev.
    seen, *_ = kernel_view_of(kernel_offsets, [SLEEP, "0"])
    key, real = resolve.exe_key(SLEEP)
    assert key == seen
    if _mount_of(real).fstype not in ("overlay", "btrfs"):
        assert key == stat_key(SLEEP)


def test_exe_symlink_is_followed_to_the_file_that_runs(tmp_path):
    link = tmp_path / "mzr-link"
    link.symlink_to(SLEEP)
    key, real = resolve.exe_key(str(link))
    assert key == resolve.exe_key(SLEEP)[0]
    assert real == os.path.realpath(SLEEP)


@pytest.fixture
def overlays(tmp_path):
    """A copy of `sleep` seen through three filesystems: a tmpfs, an overlay whose layers all live on
    that tmpfs, and an overlay whose upper layer is on a second tmpfs (like the VM tier's writable /usr
    over 9p). Layers on fresh tmpfs mounts, so this works wherever /tmp itself is (an overlay in the VM)."""
    a, b, same, cross = (tmp_path / n for n in ("a", "b", "same", "cross"))
    for d in (a, b, same, cross):
        d.mkdir()
    mounted = []

    def mount(*argv):
        r = subprocess.run(["mount", *argv], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount here: {r.stderr.strip()}")
        mounted.insert(0, argv[-1])

    try:
        mount("-t", "tmpfs", "mzr-a", str(a))
        mount("-t", "tmpfs", "mzr-b", str(b))
        for d in (a / "lower", a / "upper", a / "work", b / "upper", b / "work"):
            d.mkdir()
        shutil.copy2(SLEEP, a / "lower" / "mzr-sleep")
        mount("-t", "overlay", "overlay", "-o", f"lowerdir={a}/lower,upperdir={a}/upper,workdir={a}/work",
              str(same))
        mount("-t", "overlay", "overlay", "-o", f"lowerdir={a}/lower,upperdir={b}/upper,workdir={b}/work",
              str(cross))
        yield {"plain": str(a / "lower" / "mzr-sleep"), "same-fs overlay": str(same / "mzr-sleep"),
               "cross-fs overlay": str(cross / "mzr-sleep")}
    finally:
        for m in mounted:
            subprocess.run(["umount", m], check=True)


def test_exe_key_is_what_the_kernel_reads_from_mm_exe_file(overlays, kernel_offsets):
    for what, path in overlays.items():
        seen, *_ = kernel_view_of(kernel_offsets, [path, "0"])
        key, _ = resolve.exe_key(path)
        assert key == seen, what


def test_cross_fs_overlay_stat_st_dev_is_not_the_superblock_dev(overlays, kernel_offsets):
    """Why exe_key does not use st_dev: measured here, overlayfs with layers on different filesystems
    reports a per-layer st_dev for lower files."""
    path = overlays["cross-fs overlay"]
    seen, *_ = kernel_view_of(kernel_offsets, [path, "0"])
    st = os.stat(path)
    assert st.st_ino == seen.ino
    assert kernel_dev(st.st_dev) != seen.dev, "overlayfs now reports s_dev: simplify exe_key"


def test_policy_exe_rule_resolves_to_the_kernel_key(overlays, kernel_offsets):
    path = overlays["cross-fs overlay"]
    pol = parse_policy_text(f'[[allow]]\nexe = "{path}"\n', "/etc/mptcpize-py/policy.d/mzr.toml")
    res = resolve.resolve_policy(pol, systemd=False)
    seen, *_ = kernel_view_of(kernel_offsets, [path, "0"])
    assert res.problems == ()
    assert res.exe_map() == {(seen.dev, seen.ino): (pol.allow[0].id, 1)}


# ---------------------------------------------------------------------------------------------------
# Cgroups


@pytest.fixture(scope="module")
def cgroup2():
    found = mounts.find_cgroup2_mount(mounts.read_mounts())
    mount = found.mount_point if found else None
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    return mount


@pytest.fixture
def mzr_cgroup(cgroup2):
    """/mzr-test/mzr-child on the cgroup v2 hierarchy, removed afterwards (processes moved out)."""
    parent = Path(cgroup2) / "mzr-test"
    child = parent / "mzr-child"
    child.mkdir(parents=True, exist_ok=True)
    yield "/mzr-test/mzr-child"
    def removed(d: Path) -> bool:
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY while a killed process is still leaving
            return False
        return True

    for d in (child, parent):
        wait_for(lambda d=d: removed(d), f"{d} to be removable")


def test_cgroup2_mount_is_found_in_mountinfo(cgroup2):
    # /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones (this host)
    assert Path(cgroup2, "cgroup.procs").exists()
    own = Path("/proc/self/cgroup").read_text().splitlines()
    v2 = [line[3:] for line in own if line.startswith("0::")]
    assert v2 and Path(cgroup2 + v2[0].rstrip("/")).is_dir()


def _handle_id(path: str) -> int:
    """The cgroup id from name_to_handle_at(): an 8-byte kernfs handle (what systemd and libbpf use)."""
    class FileHandle(ctypes.Structure):
        _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                    ("f_handle", ctypes.c_ubyte * 128)]
    fh = FileHandle(128, 0)
    mount_id = ctypes.c_int()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        pytest.skip(f"name_to_handle_at on cgroupfs: {os.strerror(err)}")
    assert fh.handle_bytes == 8
    return struct.unpack("<Q", bytes(fh.f_handle[:8]))[0]


def test_cgroup_id_is_what_bpf_reports_for_a_process_in_it(cgroup2, mzr_cgroup, kernel_offsets):
    cid = resolve.cgroup_id(cgroup2, mzr_cgroup)
    parent_id = resolve.cgroup_id(cgroup2, "/mzr-test")
    assert cid == os.stat(cgroup2 + mzr_cgroup).st_ino == _handle_id(cgroup2 + mzr_cgroup)
    assert resolve.cgroup_id(cgroup2, "/") == os.stat(cgroup2).st_ino == 1

    procs = cgroup2 + mzr_cgroup + "/cgroup.procs"
    # The child moves itself into the cgroup, then execs sleep: every syscall of `sleep` is in it.
    script = f"echo $$ > {procs} && exec {SLEEP} 0"
    _exe, cur, ancestor, _netns = kernel_view_of(kernel_offsets, ["sh", "-c", script], level=1)
    assert cur == cid
    assert ancestor == parent_id  # level 1 = /mzr-test, as bpf_get_current_ancestor_cgroup_id counts


def test_proc_pid_cgroup_names_the_resolved_cgroup(cgroup2, mzr_cgroup):
    proc = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup2}{mzr_cgroup}/cgroup.procs && "
                                         "grep '^0::' /proc/self/cgroup"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=scaled(10))
    assert out.strip() == f"0::{mzr_cgroup}"
    assert os.stat(cgroup2 + out.strip()[3:]).st_ino == resolve.cgroup_id(cgroup2, mzr_cgroup)


def test_missing_cgroup_is_pending_then_resolves(cgroup2, mzr_cgroup):
    pol = parse_policy_text('[[allow]]\ncgroup = "/mzr-test/mzr-later"\n', "p.toml")
    res = resolve.resolve_policy(pol, systemd=False)
    assert res.problems == () and res.cgroups == {}
    assert [(p.kind, p.path) for p in res.pending] == [("cgroup", cgroup2 + "/mzr-test/mzr-later")]
    os.mkdir(cgroup2 + "/mzr-test/mzr-later")
    try:
        res = resolve.resolve_policy(pol, systemd=False)
        assert res.pending == ()
        assert res.cgroup_map() == {os.stat(cgroup2 + "/mzr-test/mzr-later").st_ino: (16, 1)}
    finally:
        os.rmdir(cgroup2 + "/mzr-test/mzr-later")


def test_hostile_cgroup_paths_stay_under_the_mount(cgroup2, mzr_cgroup):
    # the policy refuses '..' already; resolve must hold on its own too.
    assert resolve.cgroup_fs_path(cgroup2, "/../../../etc") == cgroup2 + "/etc"
    assert resolve.cgroup_id(cgroup2, "/../../../etc") is None      # no such cgroup: pending
    with pytest.raises(resolve.ResolveError, match="not a cgroup"):
        resolve.cgroup_id(cgroup2, "/mzr-test/cgroup.procs")
    with pytest.raises(resolve.ResolveError, match="not a cgroup"):
        resolve.cgroup_id(cgroup2, "/mzr-test/cgroup.procs/x")


def test_a_directory_that_is_not_on_cgroupfs_is_refused(cgroup2, tmp_path):
    # A bind mount inside the hierarchy would be another filesystem: refused, not keyed by a tmpfs inode.
    target = Path(cgroup2) / "mzr-bind"
    target.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "--bind", str(tmp_path), str(target)], capture_output=True, text=True)
    try:
        if r.returncode != 0:
            pytest.skip(f"cannot bind-mount into cgroupfs: {r.stderr.strip()}")
        with pytest.raises(resolve.ResolveError, match="not on the cgroup v2 filesystem"):
            resolve.cgroup_id(cgroup2, "/mzr-bind")
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", str(target)], check=True)
        target.rmdir()


def test_unit_rule_with_systemd_answer_resolves_to_that_cgroup(cgroup2, mzr_cgroup):
    pol = parse_policy_text('[[deny]]\nunit = "mzr-unit.service"\n', "p.toml")
    res = resolve.resolve_policy(pol, systemd=lambda unit: "/mzr-test/mzr-child")
    assert res.cgroup_map() == {resolve.cgroup_id(cgroup2, mzr_cgroup): (16, 2)}
    assert res.flags() & 4  # CFG_HAS_CGROUP_RULES


# ---------------------------------------------------------------------------------------------------
# Network namespaces


@pytest.fixture
def mzr_netns():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 not installed")
    subprocess.run(["ip", "netns", "del", "mzr-ns"], capture_output=True)
    subprocess.run(["ip", "netns", "add", "mzr-ns"], check=True)
    yield "mzr-ns"
    subprocess.run(["ip", "netns", "del", "mzr-ns"], check=True)


def test_named_netns_inum_is_what_processes_in_it_have(mzr_netns, kernel_offsets):
    pol = parse_policy_text(f'[netns]\nnames = ["{mzr_netns}"]\n', "p.toml")
    res = resolve.resolve_policy(pol, systemd=False)
    inum = os.stat(f"/run/netns/{mzr_netns}").st_ino
    host = os.stat("/proc/self/ns/net").st_ino
    assert res.netns == {inum, host} and not res.all_netns and res.pending == ()

    inside = subprocess.run(["ip", "netns", "exec", mzr_netns, "readlink", "/proc/self/ns/net"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert inside == f"net:[{inum}]"
    *_, seen = kernel_view_of(kernel_offsets, ["ip", "netns", "exec", mzr_netns, SLEEP, "0"])
    assert seen == inum
    *_, seen_host = kernel_view_of(kernel_offsets, [SLEEP, "0"])
    assert seen_host == host


def test_missing_netns_is_pending_until_ip_netns_add():
    subprocess.run(["ip", "netns", "del", "mzr-later"], capture_output=True)
    pol = parse_policy_text('[netns]\nnames = ["mzr-later"]\n', "p.toml")
    res = resolve.resolve_policy(pol, systemd=False)
    assert [(p.kind, p.path) for p in res.pending] == [("netns", "/run/netns/mzr-later")]
    assert res.netns == {os.stat("/proc/self/ns/net").st_ino}
    subprocess.run(["ip", "netns", "add", "mzr-later"], check=True)
    try:
        res = resolve.resolve_policy(pol, systemd=False)
        assert res.pending == ()
        assert os.stat("/run/netns/mzr-later").st_ino in res.netns
    finally:
        subprocess.run(["ip", "netns", "del", "mzr-later"], check=True)


if __name__ == "__main__":  # what the kernel sees of one command: python -m tests.host.test_resolve CMD...
    print(kernel_view_of(_kernel_offsets(), sys.argv[1:]))
