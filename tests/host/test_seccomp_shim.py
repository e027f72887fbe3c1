"""The seccomp backend's preloaded shim (shim/mptcpize-shim.c), seen from outside: the MPTCP socket a
dynamically linked program makes itself (SO_PROTOCOL from inside it), its TCP fallback where the
namespace refuses MPTCP, the sockets it leaves alone, and `run -v`'s exact counts, whether the shim
or the supervisor made the sockets."""

import shutil
import subprocess
import textwrap

import pytest

from mptcpize_py.run.seccomp.shim import library
from tests.conftest import PROGS, PYTHON
from tests.host.test_seccomp import _UNAVAILABLE, _netns, needs_root, not_upgraded, reports, run

pytestmark = [
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"seccomp backend unavailable here: {_UNAVAILABLE}"),
    pytest.mark.skipif(library() is None, reason="the shim is not built (make shim)"),
]


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> str:
    """tests/progs/shimprobe.c, dynamically linked (the shim reaches its libc socket())."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("progs") / "shimprobe"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(PROGS / "shimprobe.c")], check=True)
    return str(out)


def kinds(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.strip().splitlines())


def test_shim_makes_mptcp_sockets_and_leaves_the_others_alone(probe):
    plain = kinds(subprocess.run([probe, "kinds"], capture_output=True, text=True, check=True).stdout)
    assert plain["shim"] == "absent" and plain["tcp4"] == "6"
    r = run(probe, "kinds", verbose=True)
    got = kinds(r.stdout)
    assert r.returncode == 0, r.stderr
    assert got["shim"] == "mapped"
    for tcp in ("tcp4", "tcp6", "tcp4-proto6", "tcp4-flags"):
        assert got[tcp] == "262", tcp
    # UDP and AF_UNIX exactly as without us; an explicit MPTCP socket stays MPTCP (not counted).
    assert (got["udp4"], got["unix-stream"], got["mptcp4"]) == (plain["udp4"], plain["unix-stream"], "262")
    (exe, count), = reports(r.stderr).values()
    assert (exe, count) == (probe, 4)


def test_counts_are_exact_per_process_across_fork(probe):
    r = run(probe, "fork", "5", "7", verbose=True)
    assert r.returncode == 0, r.stderr
    printed = {int(pid): int(n) for pid, n in (line.split() for line in r.stdout.split("\n") if line)}
    assert {pid: n for pid, (_exe, n) in reports(r.stderr).items()} == printed
    assert sorted(printed.values()) == [5, 7]
    assert "12 socket(s) upgraded in 2 process(es)" in r.stderr


def test_counts_are_exact_where_the_shim_stands_aside(probe):
    # Python's subprocess closes inherited fds: the child's shim finds no counters and stands aside,
    # so the supervisor upgrades its sockets. The parent's own TCP sockets go through its shim.
    r = run(PYTHON, "-c", textwrap.dedent(f"""
        import socket, subprocess
        for _ in range(3):
            s = socket.socket(); assert s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == 262; s.close()
        subprocess.run([{probe!r}, "fork", "2", "4"], check=True)
    """), verbose=True)
    assert r.returncode == 0, r.stderr
    printed = {int(pid): int(n) for pid, n in (line.split() for line in r.stdout.split("\n") if line)}
    counts = {pid: n for pid, (_exe, n) in reports(r.stderr).items()}
    assert sorted(counts.values()) == [2, 3, 4]
    assert {pid: counts[pid] for pid in printed} == printed
    assert "9 socket(s) upgraded in 3 process(es)" in r.stderr


@pytest.fixture
def netns_off():
    name = _netns("mzshim-off", mptcp_enabled=False)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_root
def test_fallback_gives_a_working_tcp_socket_where_mptcp_is_refused(probe, netns_off):
    # net.mptcp.enabled=0: the shim's MPTCP socket fails (ENOPROTOOPT), the caller gets its own TCP
    # socket, which listens, connects and carries a byte; both counted as refused.
    r = run("ip", "netns", "exec", netns_off, probe, "connect", verbose=True)
    assert (r.returncode, r.stdout.strip()) == (0, "6 6 ok"), r.stderr
    assert not_upgraded(r.stderr) == {"mptcp_disabled": 2}
    assert reports(r.stderr) == {}


def test_static_binary_is_still_upgraded_by_the_supervisor(static_rawsock):
    r = run(static_rawsock, "4", verbose=True)
    assert (r.returncode, r.stdout.strip()) == (0, "262"), r.stderr
    (exe, count), = reports(r.stderr).values()
    assert (exe, count) == (static_rawsock, 1)


@needs_root
def test_supervisor_reads_credentials_afresh_for_each_socket_of_a_thread():
    # The shim stands aside (no MPTCPIZE_SHIM in the program's environment), so the supervisor makes
    # every socket, with the files of this thread kept open between calls: the credentials it changes
    # between two sockets must be those the next socket carries (its owner: the inode's uid and gid).
    prog = textwrap.dedent("""
        import os, socket
        def one():
            s = socket.socket()
            st = os.fstat(s.fileno())
            print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), st.st_uid, st.st_gid)
        one()
        os.setegid(65534); os.seteuid(65534)
        one()
        os.seteuid(0); os.setegid(0)
        one()
    """)
    r = run("env", "-u", "MPTCPIZE_SHIM", PYTHON, "-c", prog, verbose=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["262 0 0", "262 65534 65534", "262 0 0"]
    (_exe, count), = reports(r.stderr).values()
    assert count == 3


PASS_SRC = r"""
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	long pass = argc > 1 ? 0x6d707470L : 0;   /* SHIM_PASS in the 4th argument, or nothing */
	long fd = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0, pass, 0, 0);
	int p = -1;
	socklen_t len = sizeof(p);
	if (fd < 0 || getsockopt((int)fd, SOL_SOCKET, SO_PROTOCOL, &p, &len) < 0)
		return 2;
	printf("%d\n", p);
	return 0;
}
"""


def test_the_shims_fallback_call_passes_the_filter_untouched(tmp_path):
    # The shim's TCP fallback carries SHIM_PASS in socket()'s unused 4th argument: the filter lets
    # it run as the caller's own call (no supervisor, no upgrade). A static binary shows it: the
    # same call without it is upgraded by the supervisor.
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    src, exe = tmp_path / "pass.c", tmp_path / "pass"
    src.write_text(PASS_SRC)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(exe), str(src)], check=True)
    assert run(str(exe)).stdout.strip() == "262"
    r = run(str(exe), "pass", verbose=True)
    assert (r.returncode, r.stdout.strip()) == (0, "6"), r.stderr
    assert reports(r.stderr) == {} and not_upgraded(r.stderr) == {}
