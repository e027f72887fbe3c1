"""host.procfs: a process's identity across pid reuse, as the BPF program keys it (tgid, start_ns)."""

import os

from mptcpize_py.host import procfs


def test_boottime_to_ticks_is_the_kernels_nsec_to_clock_t():
    # kernel/time/time.c nsec_to_clock_t(): ns / (NSEC_PER_SEC / USER_HZ), rounded down.
    tick = 1_000_000_000 // procfs.CLOCK_TICKS
    assert procfs.CLOCK_TICKS == 100   # USER_HZ on x86_64
    assert procfs.boottime_to_ticks(0) == 0
    assert procfs.boottime_to_ticks(tick - 1) == 0
    assert procfs.boottime_to_ticks(123 * tick) == 123
    assert procfs.boottime_to_ticks(123 * tick + tick - 1) == 123


def test_is_process_compares_the_start(tmp_path):
    me = os.getpid()
    ticks = procfs.starttime(me)
    tick = 1_000_000_000 // procfs.CLOCK_TICKS
    assert procfs.is_process(me, ticks * tick) and procfs.is_process(me, ticks * tick + tick - 1)
    assert not procfs.is_process(me, (ticks - 1) * tick)   # an earlier owner of this pid
    assert procfs.exe_of_process(me, ticks * tick) == os.readlink("/proc/self/exe")
    assert procfs.exe_of_process(me, (ticks - 1) * tick) is None
    # A comm with ") " and spaces does not shift field 22.
    pid_dir = tmp_path / "4242"
    pid_dir.mkdir()
    (pid_dir / "stat").write_text("4242 (a) b 1 2) S 1 " + " ".join(["0"] * 17) + " 777 0 0\n")
    assert procfs.starttime(4242, str(tmp_path)) == 777
    assert procfs.is_process(4242, 777 * tick, str(tmp_path))
    assert not procfs.is_process(4243, 777 * tick, str(tmp_path))   # no such process
