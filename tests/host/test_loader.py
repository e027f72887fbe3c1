"""The loader child and what the long-lived process keeps, natively with the dry-run build (this
host's kernel refuses the fmod_ret hook; the VM tier runs the real one through the same code):
the program stays attached after the child has exited, only as long as its holder lives (SIGKILL
included: fail-open), and the map layer (program/maps.py, libbpf without bcc) behaves as the code
relies on against real kernel maps."""

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess

import pytest

from mptcpize_py.program import layout, maps
from tests.conftest import CHECKOUT_PYTHON, cli_env, is_root
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.skipif(not is_root(), reason="loading BPF programs and maps needs root")

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
for _name in ("bpf_prog_get_fd_by_id", "bpf_link_get_fd_by_id", "bpf_map_get_fd_by_id"):
    getattr(_lib, _name).argtypes = (ctypes.c_uint32,)
_lib.bpf_map_create.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                ctypes.c_uint32, ctypes.c_void_p)
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY = 1, 6

HOLDER = """
import json, os, socket, sys
from mptcpize_py.program.rewriter import Rewriter
rw = Rewriter(all_netns=False, dry_run=True)
rw.set_netns_mptcp({os.stat("/proc/self/ns/net").st_ino: True})
rw.add_run_root(os.getpid())
events = []
rw.open_events(events.append)
socket.socket().close()
rw.poll_events(1000)
children = [c for t in os.listdir("/proc/self/task")
            for c in open(f"/proc/self/task/{t}/children").read().split()]
print(json.dumps({"held": rw.held(), "children": children, "bcc": "bcc" in sys.modules,
                  "upgraded": rw.counters()["upgraded"], "events": [e.tgid for e in events]}),
      flush=True)
sys.stdin.readline()
"""


def exists(kind: str, obj_id: int) -> bool:
    fd = getattr(_lib, f"bpf_{kind}_get_fd_by_id")(obj_id)
    if fd >= 0:
        os.close(fd)
        return True
    assert -fd == errno.ENOENT or ctypes.get_errno() == errno.ENOENT, os.strerror(-fd)
    return False


def test_the_program_outlives_its_loader_and_dies_with_its_holder():
    holder = subprocess.Popen([*CHECKOUT_PYTHON, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        line = holder.stdout.readline()
        assert line, f"the holder exited with {holder.wait()}"
        got = json.loads(line)
        # The loader child is gone, bcc never came into this process, and the program it attached
        # counted this process's socket() and reported it through the ring buffer.
        assert got["children"] == [] and got["bcc"] is False
        assert got["upgraded"] == 1 and got["events"] == [holder.pid]
        held = {name: obj_id for name, obj_id in got["held"].items() if name.split(":")[0] in ("prog", "link")}
        assert any(n.startswith("prog:tracepoint__syscalls") for n in held)
        assert sum(n.startswith("link:raw_tp:") for n in held) == 3
        assert all(exists(n.split(":")[0], i) for n, i in held.items())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=scaled(30))
        # Nothing else holds them: the kernel frees every program and link (asynchronously).
        wait_for(lambda: not any(exists(n.split(":")[0], i) for n, i in held.items()),
                 "the killed holder's programs and links to be freed", interval=0.2,
                 details=lambda: {n: i for n, i in held.items() if exists(n.split(":")[0], i)})
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_close_detaches():
    from mptcpize_py.program.rewriter import Rewriter
    rw = Rewriter(all_netns=False, dry_run=True)
    held = {n: i for n, i in rw.held().items() if n.split(":")[0] in ("prog", "link", "map")}
    rw.close()
    wait_for(lambda: not any(exists(n.split(":")[0], i) for n, i in held.items()),
             "the closed program's objects to be freed", interval=0.2)


def new_map(kind: int, key: type, value: type, entries: int) -> int:
    fd = _lib.bpf_map_create(kind, b"mzloader_test", ctypes.sizeof(key), ctypes.sizeof(value), entries, None)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd))
    return fd


def test_a_full_hash_map_refuses_a_new_key_but_updates_one_in_place():
    lay = layout.MapLayout("netns_allow", "hash", ctypes.c_uint32, ctypes.c_uint8, 2)
    fd = new_map(BPF_MAP_TYPE_HASH, lay.key, lay.value, 2)
    try:
        m = maps.BpfMap(fd, lay)
        m[m.Key(1)], m[m.Key(2)] = m.Leaf(1), m.Leaf(1)
        with pytest.raises(OSError) as e:
            m[m.Key(3)] = m.Leaf(1)
        assert e.value.errno == errno.E2BIG   # what the daemon's sync and netns refresh rely on
        m[m.Key(2)] = m.Leaf(7)
        assert m[2].value == 7 and m.lookup(3) is None
        assert sorted(k.value for k in m.keys()) == [1, 2]
        with pytest.raises(KeyError):
            del m[m.Key(3)]
        maps.sync_map(m, [(m.Key(3), m.Leaf(1)), (m.Key(4), m.Leaf(1))])
        assert sorted((k.value, v.value) for k, v in m.items()) == [(3, 1), (4, 1)]
    finally:
        os.close(fd)


def test_the_header_structs_go_in_and_out_whole():
    lay = layout.maps()["exe_rules"]
    fd = new_map(BPF_MAP_TYPE_HASH, lay.key, lay.value, 4)
    try:
        m = maps.BpfMap(fd, lay)
        m[m.Key(dev=(8 << 20) | 1, ino=2 ** 40 + 3)] = m.Leaf(rule_id=17, action=2)
        [(k, v)] = m.items()
        assert (k.dev, k.ino, v.rule_id, v.action) == ((8 << 20) | 1, 2 ** 40 + 3, 17, 2)
    finally:
        os.close(fd)


def test_a_per_cpu_value_is_one_per_possible_cpu():
    lay = layout.maps()["counters"]
    fd = new_map(BPF_MAP_TYPE_PERCPU_ARRAY, lay.key, lay.value, lay.max_entries)
    try:
        m = maps.BpfMap(fd, lay)
        values = m[m.Key(0)]
        assert len(values) == maps.possible_cpus() >= os.cpu_count()
        assert sum(v.value for v in values) == 0
    finally:
        os.close(fd)


def test_a_map_whose_sizes_differ_from_the_header_is_refused():
    fd = new_map(BPF_MAP_TYPE_HASH, ctypes.c_uint64, ctypes.c_uint8, 2)
    try:
        with pytest.raises(Exception, match=r"key/value sizes 8/1 are not those .* \(4/1\)"):
            maps.BpfMap(fd, layout.maps()["netns_allow"])
    finally:
        os.close(fd)


def test_a_socket_of_an_unselected_process_is_not_counted():
    """The dry-run program, loaded in this process: an unselected socket() stays out of the counts."""
    from mptcpize_py.program.rewriter import Rewriter
    rw = Rewriter(all_netns=False, dry_run=True)
    try:
        socket.socket().close()
        assert rw.counters()["upgraded"] == 0 and rw.proc_stats() == []
    finally:
        rw.close()


def test_the_hook_detaches_and_attaches_again():
    """What benchmarks switch between runs: the dry run's socket() tracepoint off, then on again."""
    from mptcpize_py.program.rewriter import Rewriter
    rw = Rewriter(all_netns=False, dry_run=True)
    try:
        rw.set_netns_mptcp({os.stat("/proc/self/ns/net").st_ino: True})
        rw.add_run_root(os.getpid())
        socket.socket().close()
        rw.detach_hook()
        socket.socket().close()
        assert rw.counters()["upgraded"] == 1
        rw.attach_hook()
        socket.socket().close()
        assert rw.counters()["upgraded"] == 2
    finally:
        rw.close()


# --- the compiler's output: kept out of stderr, except the errors of a failed compile --------------

def toolchain_or_skip():
    from mptcpize_py.program import loader
    status = loader.toolchain_status(compile_test=False)
    if not status.ok:
        pytest.skip(f"bcc cannot compile here: {status.detail}")
    return loader


def test_a_failed_compile_reports_the_compiler_errors(capfd):
    loader = toolchain_or_skip()
    bcc = loader._import_bcc()
    with pytest.raises(loader.CompileFailed) as e:
        loader.compile_program(bcc, text=b"int probe(void *ctx) { return mzb_undeclared; }")
    assert len(e.value.errors) == 1, e.value.errors
    assert "error: use of undeclared identifier 'mzb_undeclared'" in e.value.errors[0]
    assert "warning:" in e.value.output          # kept whole, for whoever reports it in full
    assert capfd.readouterr().err == ""          # nothing reached our stderr meanwhile


BROKEN_LOADER = """
import json, os, socket, sys
from pathlib import Path
from mptcpize_py import abi
from mptcpize_py.program import loader
abi.PROGRAM = Path(sys.argv[1])              # a copy of the program with an error in it
parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
me = os.getpid()
pid = os.fork()
if pid == 0:
    os.dup2(child.fileno(), loader.CHILD_FD)
    loader.child_main([str(me), "--dry-run"])
child.close()
msg = parent.recv(1 << 20)
os.waitpid(pid, 0)
print(msg.decode())
"""


def test_the_loader_child_reports_a_failed_compile_in_its_message_and_in_full(tmp_path):
    """What the daemon's journal then holds: one error naming the compiler's error line (the
    message the parent raises), and the compiler's whole output on the child's stderr."""
    toolchain_or_skip()
    from mptcpize_py import abi
    broken = tmp_path / "mptcpize.bpf.c"
    broken.write_text(abi.PROGRAM.read_text() + "\nstatic int mzb_broken(void) { return mzb_nope; }\n")
    proc = subprocess.run([*CHECKOUT_PYTHON, "-c", BROKEN_LOADER, str(broken)], capture_output=True,
                          text=True, env=cli_env(), timeout=scaled(300))
    assert proc.returncode == 0, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["message"].startswith("bcc could not compile mptcpize.bpf.c against "), error
    assert "error: use of undeclared identifier 'mzb_nope'" in error["message"], error
    assert "error: use of undeclared identifier 'mzb_nope'" in proc.stderr
    assert "1 error generated." in proc.stderr


def test_a_working_compile_leaves_stderr_alone(capfd):
    loader = toolchain_or_skip()
    status = loader.toolchain_status(compile_test=True)   # the smallest program: clang warns here
    assert status.ok, status.detail
    assert capfd.readouterr().err == ""
