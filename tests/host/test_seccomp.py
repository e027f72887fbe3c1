"""`mptcpize-py run --backend seccomp`, natively on this host, seen from outside: SO_PROTOCOL, socket
flags, the namespace and owner of the sockets, exit statuses, bytes through a two-path connection."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from mptcpize_py import errors as _errors
from mptcpize_py.run.seccomp.probe import probe as seccomp_probe
from tests import netlab
from tests.conftest import CLI, PROGS, PYTHON, cli_env, is_root
from tests.progs import sockmatrix
from tests.waiting import scaled, wait_exit, wait_for

SOCKMATRIX = str(PROGS / "sockmatrix.py")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

try:
    seccomp_probe()
    _UNAVAILABLE = None
except _errors.MptcpizeError as e:
    _UNAVAILABLE = e.message

pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None,
                                reason=f"seccomp backend unavailable here: {_UNAVAILABLE}")
needs_root = pytest.mark.skipif(not is_root(),
                                reason="needs root (network namespaces, setpriv, setuid binaries)")


def run(*argv, verbose=False, timeout=30, **kw) -> subprocess.CompletedProcess:
    """CMD under the real CLI with the seccomp backend."""
    opts = ["-v"] if verbose else []
    kw["env"] = cli_env(kw.get("env"))
    return subprocess.run([*CLI, "run", *opts, "--backend", "seccomp", *argv],
                          capture_output=True, text=True, timeout=scaled(timeout), **kw)


def plain(*argv, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=scaled(timeout))


def reports(stderr: str) -> dict[int, tuple[str, int]]:
    """-v lines 'pid=P exe=E upgraded=N' -> {P: (E, N)}."""
    return {int(m[1]): (m[2], int(m[3]))
            for m in re.finditer(r"pid=(\d+) exe=(\S+) upgraded=(\d+)", stderr)}


def not_upgraded(stderr: str) -> dict[str, int]:
    m = re.search(r"not upgraded: (.*)", stderr)
    return {k: int(v) for k, v in (kv.split("=") for kv in m[1].split())} if m else {}


def matrix(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


UPGRADABLE = {name: case[3] for name, case in sockmatrix.CASES.items()}


def assert_matrix(base: dict, under: dict, upgraded: bool) -> None:
    """Upgradable cases: 6 -> 262 (or 6 -> 6 when not upgraded), same nonblock/cloexec; every other
    case exactly as in the plain run."""
    assert base.keys() == under.keys()
    for name, want in base.items():
        got = under[name]
        if UPGRADABLE[name]:
            assert want["protocol"] == 6, (name, want)
            assert got == {**want, "protocol": 262 if upgraded else 6}, name
        else:
            assert got == want, name


SO_PROTOCOL_PY = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), flush=True)
""")


# --- what gets upgraded ---------------------------------------------------------------------------
def test_sockmatrix_only_tcp_stream_is_upgraded_with_flags_kept():
    base = matrix(plain(PYTHON, SOCKMATRIX))
    r = run(PYTHON, SOCKMATRIX, verbose=True)
    assert_matrix(base, matrix(r), upgraded=True)
    (exe, count), = reports(r.stderr).values()
    assert count == sum(UPGRADABLE.values()) and exe == os.path.realpath(PYTHON)


def test_descendant_of_a_shell_is_upgraded():
    r = run("sh", "-c", f"{PYTHON} -c '{SO_PROTOCOL_PY}'; echo done", verbose=True)
    assert r.returncode == 0 and r.stdout.split() == ["262", "done"]
    (exe, count), = reports(r.stderr).values()  # the python process, not sh (which made no socket)
    assert count == 1 and "python" in exe


def test_static_binary_is_upgraded(static_rawsock):
    for arg in ("4", "6"):
        assert plain(static_rawsock, arg).stdout.strip() == "6"
        r = run(static_rawsock, arg)
        assert (r.returncode, r.stdout.strip()) == (0, "262"), r.stderr


def test_the_kernel_takes_synchronous_wake_ups_from_linux_6_6(static_rawsock):
    # SECCOMP_IOCTL_NOTIF_SET_FLAGS (Linux 6.6, 48a1084a8b74) takes the flags by value: the caller
    # and the supervisor then wake each other on the current CPU. A pointer passed instead is refused
    # with EINVAL, and every round trip waits for an idle CPU to wake up (3x slower on a quiet VM).
    release = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    if release < (6, 6):
        pytest.skip(f"kernel {os.uname().release} has no synchronous seccomp wake-ups")
    r = subprocess.run([*CLI, "--debug", "run", "--backend", "seccomp", static_rawsock, "4"],
                       capture_output=True, text=True, timeout=scaled(30), env=cli_env())
    assert (r.returncode, r.stdout.strip()) == (0, "262"), r.stderr
    assert "seccomp notifications: synchronous wake-ups on" in r.stderr, r.stderr[-2000:]


def test_unrelated_process_stays_tcp(tmp_path):
    go = tmp_path / "go"
    child = subprocess.Popen([*CLI, "run", "--backend", "seccomp", PYTHON, "-c", textwrap.dedent(f"""
        import os, socket, time
        s = socket.socket()
        print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
    """)], stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert child.stdout.readline().strip() == "262"  # the run is active now
        with socket.socket() as mine:
            assert mine.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == 6
        assert plain(PYTHON, "-c", SO_PROTOCOL_PY).stdout.strip() == "6"
    finally:
        go.touch()
        assert wait_exit(child, "the run to exit once told to") == 0


def test_many_threads_at_once():
    r = run(PYTHON, "-c", textwrap.dedent("""
        import socket, threading
        protos, lock = [], threading.Lock()
        def work():
            mine = []
            for _ in range(200):
                s = socket.socket()
                mine.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
                s.close()
            with lock:
                protos.extend(mine)
        ts = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(len(protos), sorted(set(protos)))
    """), verbose=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1600 [262]"
    (_exe, count), = reports(r.stderr).values()
    assert count == 1600


# --- network namespaces -------------------------------------------------------------------------
def _netns(name: str, mptcp_enabled: bool = True):
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    if not mptcp_enabled:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.mptcp.enabled=0"], check=True)
    return name


@pytest.fixture
def netns_mptcp_off():
    name = _netns("mzs-off", mptcp_enabled=False)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns_other():
    name = _netns("mzs-other")
    subprocess.run(["ip", "-n", name, "addr", "add", "10.231.99.1/32", "dev", "lo"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_root
def test_mptcp_disabled_netns_keeps_working_tcp(netns_mptcp_off):
    ns = ["ip", "netns", "exec", netns_mptcp_off]
    base = matrix(plain(*ns, PYTHON, SOCKMATRIX))
    r = run(*ns, PYTHON, SOCKMATRIX)
    assert r.stderr == ""
    assert_matrix(base, matrix(r), upgraded=False)
    r = run(*ns, PYTHON, SOCKMATRIX, verbose=True)
    assert not_upgraded(r.stderr) == {"mptcp_disabled": sum(UPGRADABLE.values())}


@needs_root
def test_socket_is_made_in_the_netns_the_caller_entered(netns_other):
    # The child enters the netns itself, after start: the socket must be created there, where
    # 10.231.99.1 exists, and SIOCGSKNS must name that netns.
    r = run(PYTHON, "-c", textwrap.dedent(f"""
        import ctypes, fcntl, os, socket
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open("/run/netns/{netns_other}", os.O_RDONLY)
        assert libc.setns(fd, 0x40000000) == 0, ctypes.get_errno()
        s = socket.socket()
        s.bind(("10.231.99.1", 0))
        sk_ns = fcntl.ioctl(s.fileno(), 0x894C)  # SIOCGSKNS: an fd of the socket's netns
        print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), os.fstat(sk_ns).st_ino)
    """))
    assert r.returncode == 0, r.stderr
    proto, ino = map(int, r.stdout.split())
    assert proto == 262 and ino == os.stat(f"/run/netns/{netns_other}").st_ino


# --- exit status and signals --------------------------------------------------------------------
def test_exit_status_is_kept():
    assert run("sh", "-c", "exit 7").returncode == 7
    assert run("sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM


def test_sigterm_is_forwarded(tmp_path):
    ready, got = tmp_path / "ready", tmp_path / "got"
    proc = subprocess.Popen([*CLI, "run", "--backend", "seccomp", PYTHON, "-c", textwrap.dedent(f"""
        import signal, socket, sys
        def bye(*_):
            open({str(got)!r}, "w").write("TERM")
            sys.exit(42)
        signal.signal(signal.SIGTERM, bye)
        socket.socket()
        open({str(ready)!r}, "w").close()
        while True:
            signal.pause()
    """)], env=cli_env())

    def child_ready() -> bool:
        assert proc.poll() is None, f"run exited with {proc.returncode} before its child was ready"
        return ready.exists()

    try:
        wait_for(child_ready, "the child to make its socket and install its SIGTERM handler")
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, "run to exit after SIGTERM") == 42
        assert got.read_text() == "TERM"
    finally:
        if proc.poll() is None:
            proc.kill()


# --- children that do unusual things ------------------------------------------------------------
def test_child_with_its_own_seccomp_filter():
    # Its filter refuses AF_INET6 sockets with EACCES, allows the rest. Both filters apply: ERRNO
    # outranks USER_NOTIF, so its refusal stands, and AF_INET still comes out MPTCP.
    r = run(PYTHON, "-c", textwrap.dedent("""
        import ctypes, errno, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        ld, jeq, ret = 0x20, 0x15, 0x06
        insns = [(ld, 0, 0, 0), (jeq, 0, 3, 41), (ld, 0, 0, 16), (jeq, 0, 1, 10),
                 (ret, 0, 0, 0x00050000 | errno.EACCES), (ret, 0, 0, 0x7FFF0000)]
        code = b"".join(struct.pack("<HBBI", c, jt, jf, k) for c, jt, jf, k in insns)
        buf = ctypes.create_string_buffer(code, len(code))
        prog = struct.pack("<H6xQ", len(insns), ctypes.addressof(buf))
        assert libc.prctl(38, 1, 0, 0, 0) == 0
        assert libc.syscall(317, 1, 0, ctypes.c_char_p(prog)) == 0, ctypes.get_errno()
        try:
            socket.socket(socket.AF_INET6)
            print("inet6-created")
        except PermissionError:
            print("inet6-EACCES")
        s = socket.socket(socket.AF_INET)
        print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["inet6-EACCES", "262"]


def test_child_that_closes_all_its_fds(tmp_path):
    out = tmp_path / "out"
    r = run(PYTHON, "-c", textwrap.dedent(f"""
        import os, socket
        os.closerange(0, 1 << 20)  # close_range(2) in CPython: stdio and anything inherited
        s = socket.socket()
        with open({str(out)!r}, "w") as f:
            f.write(str(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)))
    """))
    assert r.returncode == 0
    assert out.read_text() == "262"


@needs_root
def test_socket_carries_the_callers_uid_not_ours():
    # Made by a root supervisor for a nobody caller: the socket's owner (sk_uid, the inode's uid, what
    # `-m owner`/uid routing/ss see) must be nobody's, as if nobody had made it.
    prog = textwrap.dedent("""
        import os, socket
        s = socket.socket()
        st = os.fstat(s.fileno())
        print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), st.st_uid, st.st_gid)
    """)
    base = plain(*NOBODY, PYTHON, "-c", prog).stdout.split()
    r = run(*NOBODY, PYTHON, "-c", prog)
    assert base == ["6", "65534", "65534"]
    assert r.stdout.split() == ["262", "65534", "65534"], r.stderr


@needs_root
def test_child_in_another_cgroup_stays_tcp():
    cg2 = next((line.split()[1] for line in open("/proc/self/mounts")
                if line.split()[2] == "cgroup2"), None)
    if cg2 is None or not os.access(cg2, os.W_OK):
        pytest.skip("no writable cgroup2 hierarchy")
    group = Path(cg2) / f"mzs-test-{os.getpid()}"
    group.mkdir()
    try:
        # Moved elsewhere, its sockets would be charged and filtered (cgroup BPF) as the
        # supervisor's: it keeps plain TCP instead.
        r = run("sh", "-c", f"echo $$ > {group}/cgroup.procs && exec {PYTHON} -c '{SO_PROTOCOL_PY}'",
                verbose=True)
        assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr
        assert not_upgraded(r.stderr) == {"other_cgroup": 1}
    finally:
        group.rmdir()


# --- user namespaces ----------------------------------------------------------------------------
@needs_root
def test_caller_in_its_own_user_namespace_stays_tcp():
    # Its capabilities are relative to its own user namespace: full inside it, none in ours. A socket
    # made here with them would carry our namespace's capabilities; it gets its own TCP socket.
    cmd = [*NOBODY, "unshare", "-Ur", PYTHON, "-c", SO_PROTOCOL_PY]
    assert plain(*cmd).stdout.strip() == "6"
    r = run(*cmd, verbose=True)
    assert (r.returncode, r.stdout.strip()) == (0, "6"), r.stderr
    assert not_upgraded(r.stderr) == {"other_userns": 1}


# Starts argv[1:] in a new user namespace mapping ids 0-999 and 65534 (nobody/nogroup) only, with
# the supplementary group 4242 that it does not map: there /proc shows that group as 65534.
IN_PARTIAL_USERNS_PY = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    os.setgroups([0, 4242])
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        assert libc.unshare(0x10000000) == 0, ctypes.get_errno()  # CLONE_NEWUSER
        os.write(ready_w, b"x")
        os.read(mapped_r, 1)
        os.execvp(sys.argv[1], sys.argv[1:])
    os.read(ready_r, 1)
    for kind in ("uid", "gid"):
        with open(f"/proc/{pid}/{kind}_map", "w") as f:
            f.write("0 0 1000\\n65534 65534 1\\n")
    os.write(mapped_w, b"x")
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")


@needs_root
def test_ids_our_user_namespace_does_not_map_are_never_guessed():
    # mptcpize-py runs in a user namespace that does not map every id. A caller whose ids are all
    # mapped is upgraded with them. A caller holding the unmapped group (shown as 65534) would get a
    # socket made with the real group 65534 instead of its own: it gets its own TCP socket.
    def under(*setpriv):
        return subprocess.run([PYTHON, "-c", IN_PARTIAL_USERNS_PY, *CLI, "run", "-v", "--backend",
                               "seccomp", "--", "setpriv", *setpriv, PYTHON, "-c", SO_PROTOCOL_PY],
                              capture_output=True, text=True, timeout=scaled(30), env=cli_env())

    r = under("--reuid=5", "--regid=5", "--clear-groups")
    assert (r.returncode, r.stdout.strip()) == (0, "262"), r.stderr
    r = under("--reuid=5", "--regid=5", "--keep-groups")
    assert (r.returncode, r.stdout.strip()) == (0, "6"), r.stderr
    assert not_upgraded(r.stderr) == {"unmapped_id": 1}


@needs_root
def test_our_own_unmapped_group_is_never_replaced(tmp_path):
    # mptcpize-py's own egid is 4242, unmapped in its user namespace (read as 65534). A caller with
    # other (mapped) ids has a socket made in its credentials; then a caller with ours, in another
    # netns, has one made by the same means: it must be owned by group 4242, as its own would be,
    # not by the real group 65534 that "restoring" a gid read as 65534 would give.
    info, go = tmp_path / "info", tmp_path / "go"
    second = textwrap.dedent(f"""
        import os, socket, time
        s = socket.socket()
        with open("{info}.tmp", "w") as f:
            f.write(f"{{s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}} {{os.getpid()}} {{s.fileno()}}")
        os.rename("{info}.tmp", "{info}")
        while not os.path.exists("{go}"):
            time.sleep(0.05)
    """)   # in sh -c '...': no single quotes
    tmp_path.chmod(0o777)   # the first caller (uid 5) only reads; the second (root) writes here
    script = (f"setpriv --reuid=5 --regid=5 --clear-groups {PYTHON} -c '{SO_PROTOCOL_PY}' && "
              f"unshare -n {PYTHON} -c '{second}'")
    proc = subprocess.Popen(["setpriv", "--regid=4242", "--clear-groups", PYTHON, "-c",
                             IN_PARTIAL_USERNS_PY.replace("os.setgroups([0, 4242])", "pass"),
                             *CLI, "run", "--backend", "seccomp", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        def second_ready() -> bool:
            assert proc.poll() is None, f"exited with {proc.returncode}: {proc.communicate()}"
            return info.exists()
        wait_for(second_ready, "the second caller to make its socket")
        proto, pid, fd = info.read_text().split()
        assert proto == "262"
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        assert (st.st_uid, st.st_gid) == (0, 4242)
    finally:
        go.touch()
        out, err = proc.communicate(timeout=scaled(30))
    assert (proc.returncode, out.split()) == (0, ["262"]), err


SUID_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d %d\n", (int)getuid(), (int)geteuid()); return 0; }
"""


@pytest.fixture
def setuid_binary(tmp_path):
    """A setuid-root program printing 'ruid euid', in a directory nobody can reach."""
    src, exe = tmp_path / "suid.c", tmp_path / "suid"
    src.write_text(SUID_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    os.chown(exe, 0, 0)
    os.chmod(exe, 0o4755)
    # pytest's tmp dirs are private (0700): let nobody traverse them for this test only.
    changed = []
    for d in [tmp_path, *tmp_path.parents]:
        if d == Path("/tmp") or d == Path("/"):
            break
        mode = d.stat().st_mode & 0o7777
        if mode & 0o001 == 0:
            os.chmod(d, mode | 0o001)
            changed.append((d, mode))
    yield str(exe)
    for d, mode in changed:
        os.chmod(d, mode)


@needs_root
def test_setuid_program_keeps_its_privilege_under_a_root_run(setuid_binary):
    # As root the filter is installed without no_new_privs: a descendant that dropped to nobody still
    # gets euid 0 from a setuid-root program, exactly as without mptcpize-py.
    assert plain(*NOBODY, setuid_binary).stdout.split() == ["65534", "0"]
    r = run(*NOBODY, setuid_binary)
    assert (r.returncode, r.stdout.split()) == (0, ["65534", "0"]), r.stderr


@needs_root
def test_unprivileged_run_setuid_program_runs_unprivileged_and_is_named(setuid_binary):
    # Without CAP_SYS_ADMIN, no_new_privs is mandatory: the program runs (no hang, no error of ours)
    # without its setuid privilege, and the run says so. Sockets are still upgraded.
    r = subprocess.run([*NOBODY, *CLI, "run", "--backend", "seccomp", "sh", "-c",
                        f"{setuid_binary}; {PYTHON} -c '{SO_PROTOCOL_PY}'"],
                       capture_output=True, text=True, timeout=scaled(30), env=cli_env(any_user=True))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["65534", "65534", "262"]
    assert setuid_binary in r.stderr and "setuid" in r.stderr



# --- names other users choose ---------------------------------------------------------------------
def test_hostile_executable_name_is_one_escaped_line(tmp_path):
    # A copy of python whose path holds a line feed that forges a -v row (and a log line), an OSC
    # sequence for the terminal and a byte that is not UTF-8: each process is one line, escaped.
    where = tmp_path / "evil\nmptcpize-py: pid=1 exe=" / "usr" / "sbin"
    where.mkdir(parents=True)
    exe = where / "sshd upgraded=9\x1b]0;pwned\x07\udcff"
    shutil.copy2(os.path.realpath(PYTHON), exe)
    r = subprocess.run([*CLI, "--debug", "run", "-v", "--backend", "seccomp", exe, "-c", SO_PROTOCOL_PY],
                       capture_output=True, text=True, timeout=scaled(30), env=cli_env())
    assert (r.returncode, r.stdout.strip()) == (0, "262"), r.stderr
    shown = str(exe).replace("\n", "\\n").replace("\x1b", "\\x1b").replace("\x07", "\\x07") \
        .replace("\udcff", "\\xff")
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    rows = [ln for ln in r.stderr.splitlines() if ln.startswith("mptcpize-py: pid=")]
    assert rows == [f"mptcpize-py: pid={rows[0].split()[1][4:]} exe={shown} upgraded=1"], r.stderr
    logged = [ln for ln in r.stderr.splitlines() if ln.startswith("mptcpize-py: info: upgraded pid=")]
    assert len(logged) == 1 and logged[0].endswith(f" exe={shown} rule=run"), r.stderr


# --- the tree outlives CMD ------------------------------------------------------------------------
DETACHED_NAME = "mptcpize-sup"   # the name the README and the man page give: `pgrep -x mptcpize-sup`


def _run_leaving_a_descendant(tmp_path) -> tuple[Path, Path, str]:
    """A run whose CMD exits at once, leaving a background child that makes a socket only once `go`
    exists, after `run` returned, and writes its protocol to `out`. Returns (go, out, tag): the
    run's environment holds MZS_TEST_TAG=tag."""
    go, out, tag = tmp_path / "go", tmp_path / "out", f"mzs-{uuid.uuid4().hex}"
    background = (f"while [ ! -e {go} ]; do sleep 0.05; done; "
                  f"{PYTHON} -c '{SO_PROTOCOL_PY}' > {out}.tmp 2>&1; mv {out}.tmp {out}")
    # Its stdio is not our pipes, so only `run` waiting for it could hold this call (to its timeout).
    r = run("sh", "-c", f"({background}) </dev/null >/dev/null 2>&1 &",
            env=dict(os.environ, MZS_TEST_TAG=tag))
    assert r.returncode == 0, r.stderr
    return go, out, tag


def test_descendants_outliving_cmd_keep_working(tmp_path):
    # Had the listener been closed when `run` returned, the child's socket() would fail with ENOSYS.
    # A detached supervisor keeps answering instead, and goes away with the last descendant.
    go, out, tag = _run_leaving_a_descendant(tmp_path)
    go.touch()
    wait_for(out.exists, "the background child to report its socket's protocol")
    assert out.read_text().strip() == "262"
    wait_for(lambda: not _tagged(_detached_supervisors(), tag),
             "the detached supervisor to exit with the tree",
             details=lambda: _tagged(_detached_supervisors(), tag))


def test_detached_supervisor_is_found_by_its_name(tmp_path):
    # The name must fit the kernel's 15-byte comm, or `pgrep -x` (and ps, top) never match it.
    go, out, tag = _run_leaving_a_descendant(tmp_path)
    try:
        # It names itself just after `run` returned: wait for that.
        wait_for(lambda: _tagged(_detached_supervisors(), tag),
                 f"`pgrep -x {DETACHED_NAME}` to find this run's detached supervisor",
                 details=lambda: f"pgrep found {_detached_supervisors()}")
    finally:
        go.touch()
    wait_for(out.exists, "the background child to report its socket's protocol")
    assert out.read_text().strip() == "262"
    wait_for(lambda: not _tagged(_detached_supervisors(), tag),
             "the detached supervisor to exit with the tree")


def _detached_supervisors() -> list[int]:
    """What `pgrep -x mptcpize-sup` finds, as the README says to look for them."""
    r = subprocess.run(["pgrep", "-x", DETACHED_NAME], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr   # 1: none
    return [int(p) for p in r.stdout.split()]


def _tagged(pids: list[int], tag: str) -> list[int]:
    """Those of `pids` whose environment holds MZS_TEST_TAG=tag: this test's run, not others'."""
    out = []
    for pid in pids:
        try:
            if f"MZS_TEST_TAG={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                out.append(pid)
        except OSError:
            pass   # exited meanwhile
    return out


# --- a real two-path connection ----------------------------------------------------------------
@pytest.fixture
def lab():
    lab = netlab.TwoPathLab("mzs")
    lab.setup()
    yield lab
    lab.teardown()


@needs_root
def test_two_path_transfer(lab):
    res = lab.transfer([*CLI, "run", "--backend", "seccomp"], python=PYTHON, env=cli_env())
    netlab.assert_multipath(res)
