"""`mptcpize-py run --backend bpf` on a real kernel with the hook. Each run compiles the program
(~20-30 s under TCG), so each test makes one run do several checks."""

import json
import os
import re
import shutil
import signal
import subprocess
import textwrap

import pytest

from tests.conftest import CLI, PROGS, PYTHON, cli_env, mptcpize
from tests.progs import sockmatrix
from tests.waiting import wait_exit, wait_for

pytestmark = pytest.mark.vm

UPGRADABLE = sum(1 for c in sockmatrix.CASES.values() if c[3])


def plain_matrix(netns: str | None = None) -> dict:
    cmd = [PYTHON, str(PROGS / "sockmatrix.py")]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def verbose_rows(stderr: str) -> dict[int, tuple[str, int]]:
    rows = {}
    for m in re.finditer(r"pid=(\d+) exe=(\S+) upgraded=(\d+)", stderr):
        rows[int(m.group(1))] = (m.group(2), int(m.group(3)))
    return rows


def test_check_reports_bpf_backend(bpf_backend):
    proc = mptcpize("check", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    assert report["backend"] == "bpf" and report["run_can_upgrade"]
    assert {c["name"]: c["status"] for c in report["checks"]}["bpf trampoline"] == "ok"


def test_matrix_shell_descendants_and_static_binary(bpf_backend, static_rawsock, tmp_path):
    baseline = plain_matrix()
    script = (f'"{PYTHON}" "{PROGS / "sockmatrix.py"}" > "{tmp_path}/matrix.json" && '
              f'"{static_rawsock}" > "{tmp_path}/raw4" && "{static_rawsock}" 6 > "{tmp_path}/raw6"')
    proc = mptcpize("run", "-v", "--backend", "bpf", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "matrix.json").read_text())
    assert sockmatrix.mismatches(baseline, result) == []
    # A static binary calling the raw syscall: nothing for an LD_PRELOAD wrapper to catch.
    assert (tmp_path / "raw4").read_text().strip() == "262"
    assert (tmp_path / "raw6").read_text().strip() == "262"
    # -v: one row per upgraded process with its executable and exact count.
    rows = verbose_rows(proc.stderr)
    by_exe = {os.path.basename(exe): n for exe, n in rows.values()}
    assert by_exe.get("rawsock") == 1, proc.stderr  # two processes, one socket each
    assert sum(n for exe, n in rows.values() if exe.endswith("rawsock")) == 2
    assert any(n == UPGRADABLE and "python" in exe for exe, n in rows.values()), proc.stderr
    assert "backend bpf" in proc.stderr


def test_a_recycled_pid_is_another_process(bpf_backend, static_rawsock, tmp_path):
    """Two processes of the run tree with the same pid (forced through ns_last_pid): `run -v` shows
    each with its own count and executable, not one process with both counts."""
    first, second = str(tmp_path / "rawsock-first"), str(tmp_path / "rawsock-second")
    for path in (first, second):
        shutil.copy2(static_rawsock, path)
    proc = mptcpize("run", "-v", "--backend", "bpf", PYTHON, str(PROGS / "samepid.py"), first, second)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    pid = out["pids"][0]
    assert out["pids"] == [pid, pid] and out["outputs"] == ["262", "262"]
    assert f"pid={pid} exe={first} upgraded=1" in proc.stderr
    assert f"pid={pid} exe={second} upgraded=1" in proc.stderr


UNRELATED_CHILD = textwrap.dedent("""
    import os, signal, socket, sys
    d = sys.argv[1]
    s = socket.socket()
    proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    def on_term(_sig, _frame):
        sys.exit(42)
    signal.signal(signal.SIGTERM, on_term)
    with open(os.path.join(d, "first"), "w") as f:
        f.write(str(proto))
    while True:
        signal.pause()
""")


def bpf_prog_names() -> list[str]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True)
    return [p.get("name", "") for p in json.loads(out.stdout)]


def test_unrelated_processes_stay_tcp_signals_and_detach(bpf_backend, tmp_path):
    run = subprocess.Popen([*CLI, "run", "--backend", "bpf", PYTHON, "-c", UNRELATED_CHILD,
                            str(tmp_path)], stderr=subprocess.PIPE, text=True, env=cli_env())

    def child_started() -> bool:
        assert run.poll() is None, run.stderr.read()
        return (tmp_path / "first").exists()

    try:
        # `run` compiles the program first.
        wait_for(child_started, "the child's first socket under `run --backend bpf`", timeout=60)
        # The very first socket() after exec was upgraded.
        assert (tmp_path / "first").read_text() == "262"
        assert any(n.startswith("kmod_ret__upd") for n in bpf_prog_names())
        # While the run is active, this (unrelated) process and a fresh one of its own stay TCP.
        import socket
        with socket.socket() as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == 6
        out = subprocess.run([PYTHON, "-c", "import socket; print(socket.socket(socket.AF_INET6)"
                              ".getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"],
                             check=True, capture_output=True, text=True).stdout
        assert out.strip() == "6"
        # SIGTERM to `run` is forwarded; the child's exit status comes back.
        run.send_signal(signal.SIGTERM)
        assert wait_exit(run, "run to exit after SIGTERM") == 42
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # `run` returned: the program is detached.
    assert not any(n.startswith("kmod_ret__upd") for n in bpf_prog_names())


@pytest.fixture
def netns_pair():
    names = {"on": "mzv-on", "off": "mzv-off"}
    for ns in names.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "netns", "exec", names["off"], "sysctl", "-qw", "net.mptcp.enabled=0"],
                   check=True)
    yield names
    for ns in names.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_mptcp_disabled_netns_gets_working_tcp(bpf_backend, netns_pair, tmp_path):
    baseline_off = plain_matrix(netns_pair["off"])
    baseline_on = plain_matrix(netns_pair["on"])
    # A blind rewrite would fail with ENOPROTOOPT in the disabled namespace: show that it would.
    probe = subprocess.run(["ip", "netns", "exec", netns_pair["off"], PYTHON, "-c",
                            "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)"],
                           capture_output=True, text=True)
    assert "Protocol not available" in probe.stderr
    script = (f'ip netns exec {netns_pair["off"]} "{PYTHON}" "{PROGS / "sockmatrix.py"}" > '
              f'"{tmp_path}/off.json" && ip netns exec {netns_pair["on"]} "{PYTHON}" '
              f'"{PROGS / "sockmatrix.py"}" > "{tmp_path}/on.json"')
    proc = mptcpize("run", "-v", "--backend", "bpf", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    off = json.loads((tmp_path / "off.json").read_text())
    on = json.loads((tmp_path / "on.json").read_text())
    assert sockmatrix.mismatches(baseline_off, off, upgraded=False) == []
    assert sockmatrix.mismatches(baseline_on, on) == []
    # Every upgradable socket() of the disabled namespace was seen and deliberately left alone.
    assert f"mptcp_disabled={UPGRADABLE}" in proc.stderr, proc.stderr


def test_two_path_transfer_uses_both_paths(bpf_backend):
    from tests import netlab
    lab = netlab.TwoPathLab("mzv")
    lab.setup()
    try:
        # Each `run` compiles the program (~30 s under TCG): generous, bounded timeouts.
        res = lab.transfer([*CLI, "run", "--backend", "bpf"], python=PYTHON, timeout=100, env=cli_env())
    finally:
        lab.teardown()
    netlab.assert_multipath(res)
