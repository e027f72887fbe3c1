"""The control socket for real: a server thread with stub handlers, clients as root and as nobody
(uid 65534, refused both by the file modes and by SO_PEERCRED), framing limits, slow clients, stale
sockets and a second daemon."""

import json
import logging
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import pytest

from mptcpize_py.daemon import client, control, protocol
from mptcpize_py.errors import MptcpizeError
from tests.conftest import CLI, REPO, cli_env, is_root, start_daemon
from tests.waiting import scaled, wait_exit, wait_for

needs_root = pytest.mark.skipif(not is_root(), reason="needs root (uid 0 peers, setuid to 65534)")
NOBODY = 65534


def stub_handlers(calls: list | None = None) -> dict:
    def status(req, peer):
        if calls is not None:
            calls.append((req, peer))
        return {"backend": "stub", "peer_uid": peer.uid, "peer_pid": peer.pid}

    def register(req, peer):
        control.check_registrant(req.get("pid"), peer)
        return {"registered": req["pid"]}

    def fail(req, peer):
        raise MptcpizeError("cannot do that", hint="do this instead", exit_code=69)

    def crash(req, peer):
        raise RuntimeError("boom")

    def bad(req, peer):
        return ["not", "a", "dict"]

    return {"status": status, "register": register, "fail": fail, "crash": crash, "bad": bad}


@pytest.fixture
def sock_path(tmp_path) -> Path:
    return tmp_path / "run" / "control"


@pytest.fixture
def server(sock_path):
    """A server that serves the tests' own uid (root on the host tier)."""
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}) as srv:
        yield srv


def raw_exchange(path: Path, data: bytes, timeout: float = 10.0) -> list[dict]:
    """Sends raw bytes, returns every response line until the server closes (a safety limit of
    scaled(timeout) s on each socket operation)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(scaled(timeout))
        s.connect(str(path))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


# ---------------------------------------------------------------------------------------------------
# Serving


@needs_root
def test_root_client_gets_status_and_the_socket_is_root_only(sock_path):
    calls = []
    with control.ControlServer(stub_handlers(calls), sock_path):  # defaults: uid 0, 0700, 0600
        resp = client.request({"cmd": "status"}, sock_path)
        assert resp == {"backend": "stub", "peer_uid": 0, "peer_pid": os.getpid()}
        assert calls[0][0] == {"cmd": "status"}
        d, s = os.lstat(sock_path.parent), os.lstat(sock_path)
        assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == 0
        assert stat.S_ISSOCK(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o600 and s.st_uid == 0
    assert not sock_path.exists()  # closed: the socket file is gone, the lock file stays (harmless)


def test_several_requests_on_one_connection(server, sock_path):
    out = raw_exchange(sock_path, b'{"cmd":"status"}\n{"cmd":"status"}\n')
    assert [r["backend"] for r in out] == ["stub", "stub"]


def test_handler_errors_are_answers_not_crashes(server, sock_path):
    with pytest.raises(MptcpizeError) as e:
        client.request({"cmd": "fail"}, sock_path)
    assert (e.value.message, e.value.hint, e.value.exit_code) == ("cannot do that", "do this instead", 69)
    with pytest.raises(MptcpizeError, match="internal error in crash: boom") as e:
        client.request({"cmd": "crash"}, sock_path)
    assert e.value.exit_code == 1
    with pytest.raises(MptcpizeError, match="internal error in bad: bad response"):
        client.request({"cmd": "bad"}, sock_path)
    with pytest.raises(MptcpizeError, match=r"unknown command 'nope' \(known: bad, crash, fail, "
                                            r"register, status\)"):
        client.request({"cmd": "nope"}, sock_path)
    assert client.request({"cmd": "status"}, sock_path)["backend"] == "stub"  # still serving


def test_malformed_json_gets_an_error_and_the_connection_closed(server, sock_path):
    out = raw_exchange(sock_path, b'{"cmd": status}\n{"cmd":"status"}\n')
    assert len(out) == 1 and out[0]["error"].startswith("malformed request: not JSON")
    out = raw_exchange(sock_path, b'[1, 2]\n')
    assert out == [{"error": "malformed request: expected a JSON object such as {\"cmd\": \"status\"}"}]


def test_oversized_request_is_refused(server, sock_path):
    big = json.dumps({"cmd": "status", "pad": "x" * protocol.MAX_REQUEST}).encode() + b"\n"
    out = raw_exchange(sock_path, big)
    assert out == [{"error": f"request larger than {protocol.MAX_REQUEST} bytes"}]
    with pytest.raises(MptcpizeError, match="request larger than 65536 bytes"):
        client.request({"cmd": "status", "pad": "x" * protocol.MAX_REQUEST}, sock_path)



def test_oversized_request_without_newline_is_refused_before_the_time_limit(tmp_path):
    # Refused as soon as the size limit is passed: with an hour's time limit, anything else would end
    # in the client's safety timeout.
    path = tmp_path / "run" / "control"
    with control.ControlServer(stub_handlers(), path, allowed_uids={os.geteuid()}, timeout=3600):
        try:
            got = raw_exchange(path, b"x" * (protocol.MAX_REQUEST + 10))
        except TimeoutError:
            pytest.fail("an oversized request without a newline was not refused at once")
    assert got == [{"error": f"request larger than {protocol.MAX_REQUEST} bytes"}]


def test_slow_client_is_cut_off(sock_path):
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}, timeout=0.3):
        out = raw_exchange(sock_path, b'{"cmd": "sta')  # and then nothing
        assert out == [{"error": "request not complete within 0.3 s"}]
        # an idle connection (no request at all) is simply closed
        assert raw_exchange(sock_path, b"") == []


def test_a_stalled_client_does_not_block_others(sock_path):
    # The stalled client would hold the server for an hour: another request is served meanwhile (or
    # ends in the client's own time limit).
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}, timeout=3600):
        with socket.socket(socket.AF_UNIX) as stalled:
            stalled.connect(str(sock_path))
            stalled.sendall(b'{"cmd"')
            assert client.request({"cmd": "status"}, sock_path, timeout=scaled(10))["backend"] == "stub"


def admitted_connection(path: Path) -> socket.socket:
    """A connection the server has admitted (it answered a request on it), left open and idle."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(scaled(10))
    s.connect(str(path))
    s.sendall(b'{"cmd":"status"}\n')
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = s.recv(4096)
        assert chunk, "the server closed an admitted connection without an answer"
        answer += chunk
    assert json.loads(answer)["backend"] == "stub"
    return s


def test_a_connection_beyond_the_limit_waits_for_one(sock_path):
    # Both connections the server may hold are in a handler that does not return until released: a
    # third connection waits in the accept queue (it is not told "busy") and is served as soon as one
    # of them is done. (Idle connections hold no thread: test_500_idle_connections_hold_no_slot.)
    handlers, release = stub_handlers(), threading.Event()
    handlers["block"] = lambda req, peer: {"released": release.wait(scaled(60))}
    with control.ControlServer(handlers, sock_path, allowed_uids={os.geteuid()},
                               max_connections=2, max_open=2, timeout=3600):
        held = []
        try:
            for _ in range(2):
                s = socket.socket(socket.AF_UNIX)
                held.append(s)
                s.settimeout(scaled(10))
                s.connect(str(sock_path))
                s.sendall(b'{"cmd":"block"}\n')
            with socket.socket(socket.AF_UNIX) as waiting:
                waiting.settimeout(scaled(10))
                waiting.connect(str(sock_path))          # queued: connect() returns at once
                waiting.sendall(b'{"cmd":"status"}\n')
                # Nothing comes back while both are held (an earlier server said "busy" at once;
                # this short look only lets that show).
                readable, _, _ = select.select([waiting], [], [], 0.5)
                assert not readable, f"answered while every slot was held: {waiting.recv(200)!r}"
                release.set()
                with waiting.makefile("rb") as answer:
                    assert json.loads(answer.readline())["backend"] == "stub"
            for s in held:
                with s.makefile("rb") as answer:
                    assert json.loads(answer.readline()) == {"released": True}
        finally:
            release.set()
            for s in held:
                s.close()


def burst(n: int, one) -> list:
    """Runs one(i) in n threads released at the same moment; returns what went wrong, as strings."""
    gate, failures = threading.Barrier(n), []

    def run(i):
        gate.wait()
        try:
            one(i)
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            failures.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def test_200_concurrent_clients_are_all_served(sock_path):
    # A boot starting many enabled units at once: each unit's ExecStartPre asks for a `resync`, which
    # takes the daemon a while (handlers run one at a time); `status` callers come in between. Every
    # client gets its answer, within the time limits the CLI gives them (resync 30 s, status 10 s).
    handlers = stub_handlers()
    served = []

    def resync(req, peer):
        time.sleep(0.005)   # one re-resolution of the policy, done one at a time
        served.append(peer.pid)
        return {"ok": True}

    handlers["resync"] = resync
    with control.ControlServer(handlers, sock_path, allowed_uids={os.geteuid()}):
        def one(i):
            if i % 4:
                assert client.request({"cmd": "resync"}, sock_path, timeout=scaled(30)) == {"ok": True}
            else:
                assert client.request({"cmd": "status"}, sock_path, timeout=scaled(10))["backend"] == "stub"

        assert burst(200, one) == []
    assert len(served) == 150


def test_idle_and_slow_peers_do_not_starve_a_client(sock_path):
    # Every slot is held by a peer that went idle after its request, more such peers and slow writers
    # (a byte at a time, never a whole line) keep reconnecting: a well-behaved client is still served
    # within its time limit, because no peer keeps a slot longer than the server's `timeout` (2 s) and
    # the accept queue is first come, first served. With the default limits.
    stop = threading.Event()

    def idle_peer():
        while not stop.is_set():
            try:
                s = admitted_connection(sock_path)
            except (OSError, AssertionError):
                continue
            with s:
                try:
                    while not stop.is_set() and s.recv(1):   # until the server cuts it off
                        pass
                except OSError:
                    pass

    def slow_writer():
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(sock_path))
                    s.sendall(b'{"cmd":')
                    while not stop.is_set():
                        s.sendall(b" ")
                        time.sleep(0.05)  # the slow writer's pace
                except OSError:
                    pass                  # cut off: come back

    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}) as srv:
        slots = srv.max_connections
        held = [admitted_connection(sock_path) for _ in range(slots)]   # every slot, at first
        # more attackers than slots: the slots stay taken, the accept queue never empties
        attackers = [threading.Thread(target=idle_peer) for _ in range(slots)] + \
                    [threading.Thread(target=slow_writer) for _ in range(slots // 4)]
        try:
            for t in attackers:
                t.start()
            for _ in range(3):
                assert client.request({"cmd": "status"}, sock_path, timeout=scaled(10))["backend"] == "stub"
        finally:
            stop.set()
            for s in held:
                s.close()
            for t in attackers:
                t.join()


@pytest.fixture
def fake_daemon(sock_path):
    """A listening socket served by serve_one(conn, n) for the n-th connection, from a thread, once
    start() is called (until then connections queue up)."""
    sock_path.parent.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(0)   # AF_UNIX: one connection queues, the next connect() fails with EAGAIN
    stop = threading.Event()
    threads = []

    def start(serve_one):
        def loop():
            n = 0
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn, conn.makefile("rb") as reader:
                    conn.settimeout(scaled(10))
                    try:
                        if not reader.readline():
                            continue      # a client that gave up (or a queue filler) closed it
                        serve_one(conn, n)
                    except OSError:
                        continue
                    n += 1

        t = threading.Thread(target=loop)
        t.start()
        threads.append(t)

    yield listener, start
    stop.set()
    for t in threads:
        t.join()
    listener.close()


def test_client_waits_while_the_accept_queue_is_full(sock_path, fake_daemon, monkeypatch):
    listener, start = fake_daemon
    queued = []
    while True:   # fill the accept queue
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(str(sock_path))
        except BlockingIOError:
            s.close()
            break
        queued.append(s)
    retrying = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds):   # the client pauses before a retry: it has met the full queue
        retrying.set()
        real_sleep(seconds)

    monkeypatch.setattr(client, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    outcome = []

    def ask():
        try:
            outcome.append(client.request({"cmd": "status"}, sock_path, timeout=scaled(30)))
        except MptcpizeError as e:
            outcome.append(e)

    asker = threading.Thread(target=ask)
    asker.start()
    wait_for(lambda: retrying.is_set() or outcome, "the client to meet the full accept queue")
    for s in queued:
        s.close()
    start(lambda conn, n: conn.sendall(b'{"ok":true}\n'))
    asker.join()
    assert outcome == [{"ok": True}]


def test_client_retries_busy_answers(sock_path, fake_daemon):
    # Daemons of earlier versions answered "busy" when their slots were full.
    listener, start = fake_daemon
    busy = b'{"error":"busy: too many control connections, try again"}\n'
    start(lambda conn, n: conn.sendall(busy if n < 3 else b'{"ok":true}\n'))
    assert client.request({"cmd": "status"}, sock_path, timeout=scaled(30)) == {"ok": True}


def test_client_gives_up_on_a_daemon_that_stays_busy(sock_path, fake_daemon):
    listener, start = fake_daemon
    start(lambda conn, n: conn.sendall(b'{"error":"busy: too many control connections, try again"}\n'))
    with pytest.raises(MptcpizeError) as e:
        client.request({"cmd": "status"}, sock_path, timeout=0.5)
    assert (e.value.message, e.value.exit_code) == ("busy: too many control connections, try again", 1)


def test_40_concurrent_resync_commands(sock_path):
    # The CLI as units' ExecStartPre runs it: 40 `mptcpize-py resync` at once all exit 0.
    handlers = stub_handlers()

    def resync(req, peer):
        time.sleep(0.05)   # a slow re-resolution keeps the later ones waiting
        return {"ok": True}

    handlers["resync"] = resync
    with control.ControlServer(handlers, sock_path, allowed_uids={os.geteuid()}):
        env = cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(sock_path)))
        procs = [subprocess.Popen([*CLI, "resync"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(40)]
        results = [(p.communicate(timeout=scaled(120))[0], p.returncode) for p in procs]
    assert [r for r in results if r[1] != 0] == []


@pytest.fixture(scope="module")
def dry_daemon(tmp_path_factory):
    """The daemon itself, as a dry run (no fmod_ret needed), on a private control socket:
    (control socket, policy directory, log file)."""
    if not is_root():
        pytest.skip("the daemon needs root")
    base = tmp_path_factory.mktemp("control-daemon")
    policy_dir = base / "policy.d"
    policy_dir.mkdir(mode=0o755)
    (policy_dir / "10-burst.toml").write_text(f'[[allow]]\nexe = "{os.path.realpath(sys.executable)}"\n')
    (policy_dir / "10-burst.toml").chmod(0o644)
    control_path = base / "run" / "control"
    log_path = base / "daemon.log"
    with open(log_path, "w") as log:
        daemon = start_daemon(policy_dir, control_path, log, log_path, "--dry-run")
        try:
            yield control_path, policy_dir, log_path
        finally:
            daemon.terminate()
            try:
                wait_exit(daemon, "the daemon to exit after SIGTERM")
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()


def test_a_burst_of_200_clients_of_the_real_daemon(dry_daemon):
    # The daemon's real handlers, and the CLI as a unit's ExecStartPre runs it: 40 `mptcpize-py resync`
    # processes and 160 threads asking for `resync` and `status` at the same time. Every one is answered.
    control_path, _, _ = dry_daemon
    env = cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(control_path)))
    procs = [subprocess.Popen([*CLI, "resync"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(40)]

    def one(i):
        if i % 2:
            assert client.request({"cmd": "resync"}, control_path, timeout=scaled(30)) == {"ok": True}
        else:
            assert client.request({"cmd": "status"}, control_path, timeout=scaled(10))["backend"] == "dry-run"

    failures = burst(160, one)
    results = [(p.communicate(timeout=scaled(120))[0], p.returncode) for p in procs]
    assert failures == []
    assert [r for r in results if r[1] != 0] == []


def test_a_hostile_policy_is_refused_without_stalling_the_daemon(dry_daemon):
    # 120 KB of one dotted key took tomllib 97 s, in the daemon's loop or (here, as `resync` finds the
    # directory changed) with the control socket's handlers held. Now it is refused before parsing.
    control_path, policy_dir, log_path = dry_daemon
    hostile = policy_dir / "20-hostile.toml"
    hostile.write_text(".".join(["a"] * 60000) + " = 1\n")
    hostile.chmod(0o644)
    try:
        assert client.request({"cmd": "resync"}, control_path, timeout=scaled(10)) == {"ok": True}
        assert f"{hostile}:1: a dotted key of more than 8 parts" in log_path.read_text()
        status = client.request({"cmd": "status"}, control_path, timeout=scaled(10))
        assert status["policy"]["failed_reloads"] >= 1
        assert status["policy"]["files"] == [str(policy_dir / "10-burst.toml")]   # the last good policy
    finally:
        hostile.unlink()


def test_register_accepts_our_child_and_refuses_others(server, sock_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # killed below
    try:
        assert client.request({"cmd": "register", "pid": child.pid}, sock_path) == \
            {"registered": child.pid}
        with pytest.raises(MptcpizeError, match="is not a child of the caller"):
            client.request({"cmd": "register", "pid": os.getppid()}, sock_path)
        with pytest.raises(MptcpizeError, match="pid must be an integer"):
            client.request({"cmd": "register", "pid": "1"}, sock_path)
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------------------------
# Who may talk to it

CLIENT = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from mptcpize_py.daemon import client
from mptcpize_py.errors import MptcpizeError
try:
    client.request({{"cmd": "status"}}, sys.argv[1])
except MptcpizeError as e:
    print(e.message)
    print(e.hint)
    sys.exit(e.exit_code)
print("served")
"""


def as_nobody(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLIENT, str(path)], user=NOBODY, group=NOBODY,
                          extra_groups=[], capture_output=True, text=True, timeout=scaled(30),
                          env=cli_env(any_user=True), cwd="/")


@pytest.fixture
def open_dir():
    """A directory anyone may enter (tmp_path's parents are 0700), removed afterwards."""
    d = tempfile.mkdtemp(prefix="mzr-control-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d)


@needs_root
def test_nobody_is_refused_by_the_file_modes_with_exit_77(open_dir):
    path = open_dir / "run" / "control"
    with control.ControlServer(stub_handlers(), path):   # 0700 directory, 0600 socket
        r = as_nobody(path)
    assert r.returncode == 77, r.stderr
    assert r.stdout.splitlines() == [f"permission denied: the daemon's control socket {path} is root-only",
                                     "run it as root, e.g. with sudo"]


@needs_root
def test_nobody_is_refused_by_so_peercred_and_it_is_logged(open_dir, caplog):
    # The file modes let everyone in here: only the SO_PEERCRED check stands in the way.
    path = open_dir / "run" / "control"
    calls = []
    caplog.set_level(logging.WARNING, logger="mptcpize_py.control")
    with control.ControlServer(stub_handlers(calls), path, socket_mode=0o666, dir_mode=0o755):
        r = as_nobody(path)
        assert r.returncode == 77, r.stderr
        assert r.stdout.splitlines()[0].startswith("permission denied")
        # the raw answer is one JSON line, then the server closes
        out = subprocess.run([sys.executable, "-c",
                              "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                              "print(s.makefile().read(), end='')", str(path)],
                             user=NOBODY, group=NOBODY, capture_output=True, text=True,
                             timeout=scaled(30))
        assert json.loads(out.stdout) == {"error": "permission denied", "exit_code": 77}
        assert client.request({"cmd": "status"}, path)["peer_uid"] == 0  # root still served
    assert [(req, peer.uid) for req, peer in calls] == [({"cmd": "status"}, 0)]  # nobody: no handler
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2 and all(f"uid={NOBODY}" in r.getMessage() for r in refused)
    # For journald: the record is about the peer (OBJECT_PID=, from which journald adds its unit, exe).
    assert [f"refused pid={getattr(r, 'OBJECT_PID', None)} " in r.getMessage() for r in refused] == [True] * 2


@needs_root
def test_allowed_uids_can_admit_another_user(open_dir):
    path = open_dir / "run" / "control"
    with control.ControlServer(stub_handlers(), path, allowed_uids={0, NOBODY}, socket_mode=0o666,
                               dir_mode=0o755):
        r = as_nobody(path)
    assert (r.returncode, r.stdout.strip()) == (0, "served")


# ---------------------------------------------------------------------------------------------------
# Start-up: no daemon, stale socket, second daemon


def test_no_daemon_exit_3_after_a_clean_shutdown(sock_path):
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}):
        pass
    with pytest.raises(MptcpizeError) as e:
        client.request({"cmd": "status"}, sock_path)
    assert e.value.exit_code == 3 and "no daemon is running" in e.value.message


def test_stale_socket_of_a_dead_daemon_is_replaced(sock_path):
    # A daemon killed with SIGKILL leaves its socket file behind (and its flock is gone with it).
    script = ("import os, signal, sys\nsys.path.insert(0, sys.argv[2])\nfrom mptcpize_py.daemon import control\n"
              "control.ControlServer({}, sys.argv[1], allowed_uids={os.geteuid()}).start()\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", script, str(sock_path), str(REPO)], timeout=scaled(30))
    assert r.returncode == -9
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with pytest.raises(MptcpizeError) as e:
        client.request({"cmd": "status"}, sock_path)
    assert e.value.exit_code == 3  # ECONNREFUSED counts as "no daemon"

    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}) as srv:
        assert srv.replaced_stale
        assert client.request({"cmd": "status"}, sock_path)["backend"] == "stub"


def test_second_server_is_refused_and_the_first_keeps_serving(server, sock_path):
    with pytest.raises(MptcpizeError) as e:
        control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}).start()
    assert e.value.message == f"another mptcpize-py daemon is already running (it serves {sock_path})"
    assert client.request({"cmd": "status"}, sock_path)["backend"] == "stub"


def test_second_server_in_another_process_is_refused(server, sock_path):
    script = ("import sys\nsys.path.insert(0, sys.argv[2])\nfrom mptcpize_py.daemon import control\n"
              "from mptcpize_py.errors import MptcpizeError\n"
              "try:\n    control.ControlServer({}, sys.argv[1]).start()\n"
              "except MptcpizeError as e:\n    print(e.message); sys.exit(e.exit_code)\n")
    r = subprocess.run([sys.executable, "-c", script, str(sock_path), str(REPO)], capture_output=True,
                       text=True, timeout=scaled(30))
    assert r.returncode == 1 and "already running" in r.stdout


def test_live_socket_without_the_lock_is_not_replaced(sock_path):
    # e.g. a daemon of a version before the lock: it answers, so it is alive.
    sock_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(sock_path))
        other.listen(1)
        with pytest.raises(MptcpizeError, match="already running"):
            control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}).start()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)  # left alone
    # and the refused start released its lock: once the other one is gone we can start
    os.unlink(sock_path)
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}):
        pass


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_text("not a socket"), "exists and is not a socket"),
    (lambda p: p.symlink_to("/etc/passwd"), "exists and is not a socket"),
])
def test_something_else_at_the_socket_path_is_refused(sock_path, make, why):
    sock_path.parent.mkdir(mode=0o700)
    make(sock_path)
    with pytest.raises(MptcpizeError, match=why):
        control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}).start()


def test_run_directory_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MptcpizeError, match="is not a directory"):
        control.ControlServer(stub_handlers(), tmp_path / "run" / "control").start()


def test_run_directory_mode_is_tightened(sock_path):
    sock_path.parent.mkdir()
    os.chmod(sock_path.parent, 0o755)  # e.g. systemd's RuntimeDirectoryMode default
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}):
        assert stat.S_IMODE(os.lstat(sock_path.parent).st_mode) == 0o700


def test_close_does_not_remove_a_socket_that_is_not_ours(sock_path):
    srv = control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}).start()
    os.unlink(sock_path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(sock_path))
        srv.close()
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_close_returns_promptly_with_clients_connected(sock_path):
    # The idle client could hold its connection for an hour: close() must not wait for it.
    srv = control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}, timeout=3600)
    srv.start()
    with socket.socket(socket.AF_UNIX) as idle:
        idle.settimeout(scaled(10))
        idle.connect(str(sock_path))
        idle.sendall(b'{"cmd":"status"}\n')   # answered: admitted, now idle between requests
        with idle.makefile("rb") as reader:
            assert json.loads(reader.readline())["backend"] == "stub"
            closer = threading.Thread(target=srv.close)
            closer.start()
            wait_for(lambda: not closer.is_alive(), "close() to return with an idle client connected")
            assert reader.read(10) == b""  # shut down by close()
    assert threading.active_count() < 50


# ---------------------------------------------------------------------------------------------------
# Hardening (issue 23): floods of refused peers, idle connections

REFUSED_FLOOD = """
import socket, sys
for _ in range(int(sys.argv[2])):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sys.argv[1])
        s.makefile("rb").read()      # the refusal, then EOF
"""


@needs_root
def test_a_flood_of_refused_peers_is_logged_with_a_summary(open_dir, caplog):
    # Issue 23 item 10: 2,000 connections of a refused peer gave 2,000 warning lines in 0.2 s, which
    # under journald's rate limit can push real upgrade records out. Now, per rate-limit window (1 s
    # here), a few lines one by one, then a summary per uid ("N more refused from uid U") when the window
    # ends. Every refusal is counted in one or the other.
    path = open_dir / "run" / "control"
    caplog.set_level(logging.WARNING, logger="mptcpize_py.control")
    n = 2000
    summary = re.compile(rf"control socket: (\d+) more refused from uid {NOBODY} in the last 1 s "
                         r"\(not logged one by one\)")

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

    def accounted() -> int:
        return sum(int(m[1]) if (m := summary.fullmatch(line)) else 1 for line in refusals())

    with control.ControlServer(stub_handlers(), path, socket_mode=0o666, dir_mode=0o755,
                               refusal_window=1.0):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", REFUSED_FLOOD, str(path), str(n)], user=NOBODY,
                       group=NOBODY, extra_groups=[], check=True, timeout=scaled(120), cwd="/")
        windows = int(time.monotonic() - started) + 2   # the windows the flood can have touched
        wait_for(lambda: accounted() == n, f"all {n} refusals to be logged or summed up",
                 details=lambda: (accounted(), refusals()[-3:]))
        assert client.request({"cmd": "status"}, path)["peer_uid"] == 0     # root still served
    lines = refusals()
    one_by_one = [m for m in lines if m.startswith("control socket: refused pid=") and f"uid={NOBODY}" in m]
    summaries = [m for m in lines if summary.fullmatch(m)]
    assert len(one_by_one) + len(summaries) == len(lines), lines
    assert 1 <= len(summaries) <= windows and len(one_by_one) <= control.REFUSALS_LOGGED * windows, \
        (windows, lines)


def idle_connections(path: Path, n: int) -> list[socket.socket]:
    """n connections that send nothing (half-open from the server's point of view)."""
    out = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            out.append(s)
            s.connect(str(path))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def test_500_idle_connections_hold_no_slot(sock_path):
    # Issue 23 item 11: idle connections used to hold one of the max_connections slots each, for the
    # connection's whole budget (here an hour): the 65th client waited for the first of them to end.
    # An idle connection now waits for its request without a slot, so `status` is answered.
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}, timeout=3600):
        idle = idle_connections(sock_path, 500)
        try:
            assert client.request({"cmd": "status"}, sock_path, timeout=scaled(10))["backend"] == "stub"
            # and an idle connection is still served when its request comes
            idle[0].sendall(b'{"cmd":"status"}\n')
            idle[0].settimeout(scaled(10))
            with idle[0].makefile("rb") as answer:
                assert json.loads(answer.readline())["backend"] == "stub"
        finally:
            for s in idle:
                s.close()


def test_when_every_open_connection_is_idle_the_longest_waiting_makes_room(sock_path):
    # max_open connections, all idle for an hour's budget: the next client is still served, and the
    # connection that had waited longest is the one cut off (EOF), the others stay open.
    with control.ControlServer(stub_handlers(), sock_path, allowed_uids={os.geteuid()}, timeout=3600,
                               max_connections=2, max_open=4):
        idle = []
        try:
            idle = idle_connections(sock_path, 4)   # accepted in this order: the queue is FIFO
            assert client.request({"cmd": "status"}, sock_path, timeout=scaled(10))["backend"] == "stub"
            idle[0].settimeout(scaled(10))
            assert idle[0].recv(1) == b""   # the oldest was cut off for the status client
            for s in idle[1:]:
                s.sendall(b'{"cmd":"status"}\n')
                s.settimeout(scaled(10))
                with s.makefile("rb") as answer:
                    assert json.loads(answer.readline())["backend"] == "stub"
        finally:
            for s in idle:
                s.close()


def test_500_idle_root_connections_do_not_make_status_time_out(dry_daemon):
    # Issue 23 item 11, as reported: 500 half-open connections from root to the real daemon, then
    # `mptcpize-py status` (its own limit: 10 s) exits 0, twice.
    control_path, _, _ = dry_daemon
    env = cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(control_path)))
    idle = idle_connections(control_path, 500)
    try:
        for _ in range(2):
            r = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True,
                               timeout=scaled(60))
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("DRY RUN:")
    finally:
        for s in idle:
            s.close()
