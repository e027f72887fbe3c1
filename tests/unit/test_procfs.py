"""host.procfs: a process's identity across pid reuse, as the BPF program keys it (tgid, start_ns); the
facts psutil gives, under the package's psutil (Debian's) and the test interpreter's."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from mptcpize_py.host import procfs
from tests.conftest import REPO
from tests.waiting import scaled, wait_for

# A child that names itself (comm), says so, then waits for its stdin to close.
NAMED_CHILD = ("import sys; open('/proc/self/comm', 'w').write(sys.argv[1]); print('ready', flush=True); "
               "sys.stdin.read()")


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


# The package's psutil (Debian 12: python3-psutil 5.9.4, for /usr/bin/python3) and the test interpreter's.
DEBIAN_PYTHON = "/usr/bin/python3"


def debian_has_psutil() -> bool:
    return os.path.exists(DEBIAN_PYTHON) and subprocess.run(
        [DEBIAN_PYTHON, "-c", "import psutil"], capture_output=True, timeout=scaled(60)).returncode == 0


INTERPRETERS = [
    pytest.param(DEBIAN_PYTHON, id="debian-python3-psutil",
                 marks=pytest.mark.skipif(not debian_has_psutil(),
                                          reason=f"{DEBIAN_PYTHON} cannot import psutil (apt install python3-psutil)")),
    pytest.param(sys.executable, id="test-interpreter"),
]


def ask(python: str, code: str):
    """procfs as `python` sees it: code's last expression, as JSON."""
    res = subprocess.run([python, "-P", "-c", "import json\nfrom mptcpize_py.host import procfs\n"
                          f"print(json.dumps({code}))"], capture_output=True, text=True, timeout=scaled(60),
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("python", INTERPRETERS)
def test_processes_named_confirms_the_name_by_the_exe(tmp_path, python):
    name = "mzfakemgr"
    (tmp_path / "kept").mkdir(); (tmp_path / "gone").mkdir()
    for d in ("kept", "gone"):
        shutil.copy2("/bin/sleep", tmp_path / d / name)
    procs = [subprocess.Popen([tmp_path / "kept" / name, "600"]),
             subprocess.Popen([tmp_path / "gone" / name, "600"]),   # its file removed: "(deleted)"
             # called the same, but another program: not it
             subprocess.Popen([sys.executable, "-c", NAMED_CHILD, name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)]
    try:
        assert procs[2].stdout.readline() == "ready\n"
        wait_for(lambda: all(procfs.exe(p.pid) and procfs.exe(p.pid).endswith(name) for p in procs[:2]),
                 "both copies to have exec'd")
        (tmp_path / "gone" / name).unlink()
        inum = os.stat("/proc/self/ns/net").st_ino
        found = ask(python, f"procfs.processes_named([{name!r}])")
        assert found == sorted([[procs[0].pid, name, inum], [procs[1].pid, name, inum]])
        assert ask(python, f"[procfs.parent_pid(p) for p in {[p.pid for p in procs]}]") == [os.getpid()] * 3
    finally:
        procs[2].stdin.close()
        for p in procs:
            p.kill()
            p.wait()
    gone = procs[0].pid
    assert ask(python, f"procfs.parent_pid({gone})") is None   # reaped (pids are not reused this soon)
