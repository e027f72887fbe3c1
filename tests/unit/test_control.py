"""control.py pure parts: struct ucred, request/response framing, /proc parsing for `register`."""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mptcpize_py.daemon import client, control, protocol
from mptcpize_py.daemon.control import LineReader, RequestError, TooLarge, Ucred
from mptcpize_py.errors import MptcpizeError

# ---------------------------------------------------------------------------------------------------
from mptcpize_py.host import procfs
from tests.waiting import scaled, wait_for

# struct ucred


def test_parse_ucred():
    assert protocol.parse_ucred(struct.pack("=iII", 1234, 0, 0)) == Ucred(1234, 0, 0)
    assert protocol.parse_ucred(struct.pack("=iII", 7, 65534, 65534)) == Ucred(7, 65534, 65534)
    assert protocol.parse_ucred(struct.pack("=iII", 7, 4294967294, 1)).uid == 4294967294  # uid_t is unsigned


@pytest.mark.parametrize("size", [0, 8, 11, 13, 16])
def test_parse_ucred_wrong_size(size):
    with pytest.raises(ValueError):
        protocol.parse_ucred(b"\0" * size)


def test_peer_cred_of_a_socketpair_is_ourselves():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert protocol.peer_cred(a) == Ucred(os.getpid(), os.geteuid(), os.getegid())


# ---------------------------------------------------------------------------------------------------
# Framing


@pytest.mark.parametrize("obj", [
    {"cmd": "status"},
    {"text": "line\nbreak\r\u2028\u2029 and NUL \0"},
    {"nested": {"list": [1, 2.5, None, True]}, "unicode": "é€😀"},
])
def test_encode_is_one_ascii_line(obj):
    data = protocol.encode(obj)
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and b"\r" not in data
    assert data.isascii()
    assert json.loads(data) == obj


def test_encode_falls_back_to_str_for_odd_values():
    assert json.loads(protocol.encode({"path": Path("/x")})) == {"path": "/x"}


def test_decode_request_ok():
    assert protocol.decode_request(b'{"cmd": "register", "pid": 42}') == {"cmd": "register", "pid": 42}


@pytest.mark.parametrize("line, why", [
    (b"", "not JSON"),
    (b"status", "not JSON"),
    (b'{"cmd": "status"', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'["status"]', "JSON object"),
    (b'"status"', "JSON object"),
    (b"{}", 'no "cmd"'),
    (b'{"cmd": 1}', 'no "cmd"'),
    (b'{"cmd": ""}', 'no "cmd"'),
    (b'{"cmd": null}', 'no "cmd"'),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_decode_request_malformed(line, why):
    with pytest.raises(RequestError, match=why):
        protocol.decode_request(line)


def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b


def test_line_reader_lines_across_and_within_chunks():
    a, b = pair()
    with a, b:
        r = LineReader(a, 100)
        b.sendall(b'{"a":1}\n{"b"')
        deadline = time.monotonic() + scaled(10)
        assert r.readline(deadline) == b'{"a":1}'

        def later():
            time.sleep(0.05)  # the rest of the line in a later chunk, while readline waits for it
            b.sendall(b':2}\n\n')
            b.shutdown(socket.SHUT_WR)

        threading.Thread(target=later).start()
        assert r.readline(deadline) == b'{"b":2}'
        assert r.readline(deadline) == b""
        assert r.readline(deadline) is None


def safety_deadline() -> float:
    """A deadline no test here is meant to reach: the data is already in the socket, so readline()
    returns at once; the bound only keeps a broken reader from hanging the run."""
    return time.monotonic() + scaled(60)


def test_line_reader_partial_last_line_at_eof_is_dropped():
    a, b = pair()
    with a, b:
        b.sendall(b'{"cmd":"status"}')
        b.shutdown(socket.SHUT_WR)
        assert LineReader(a, 100).readline(safety_deadline()) is None


def test_line_reader_size_limit():
    a, b = pair()
    with a, b:
        b.sendall(b"x" * 101)
        with pytest.raises(TooLarge, match="larger than 100 bytes"):
            LineReader(a, 100).readline(safety_deadline())
    a, b = pair()
    with a, b:  # a newline that comes too late does not make it acceptable
        b.sendall(b"x" * 150 + b"\n")
        with pytest.raises(TooLarge):
            LineReader(a, 100).readline(safety_deadline())
    a, b = pair()
    with a, b:  # exactly at the limit is fine
        b.sendall(b"x" * 100 + b"\n")
        assert LineReader(a, 100).readline(safety_deadline()) == b"x" * 100


def test_line_reader_deadline_holds_against_a_trickle():
    # A byte every 20 ms keeps each recv() busy; only the deadline can end this read.
    a, b = pair()
    with a, b:
        stop, outcome = threading.Event(), []

        def trickle():
            while not stop.is_set():
                try:
                    b.send(b"x")
                except OSError:
                    return
                time.sleep(0.02)  # the trickle under test

        def read():
            try:
                LineReader(a, 1 << 20).readline(time.monotonic() + 0.3)
                outcome.append("returned")
            except Exception as e:
                outcome.append(e)

        threads = [threading.Thread(target=trickle), threading.Thread(target=read)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: outcome, "readline to give up at its deadline despite the trickle")
        finally:
            stop.set()
            b.shutdown(socket.SHUT_RDWR)  # ends a readline that ignored its deadline
            for t in threads:
                t.join()
        assert isinstance(outcome[0], TimeoutError), outcome


# ---------------------------------------------------------------------------------------------------
# register: the pid must be the caller's child process


def test_parse_status_field():
    text = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4243\nPPid:\t7\n"
    assert procfs.parse_status_field(text, "Tgid") == "4242"
    assert procfs.parse_status_field(text, "PPid") == "7"
    assert procfs.parse_status_field(text, "Missing") is None


# A child that names itself (comm, as /proc/PID/stat shows it between parentheses), then waits.
NAMED_CHILD = ("import sys; open('/proc/self/comm', 'w').write(sys.argv[1]); print('ready', flush=True); "
               "sys.stdin.read()")


@pytest.mark.parametrize("comm", ["sleep", "a b", "x) S 1 (y", "))", "(", "with\nnewline"])
def test_check_registrant_child_with_hostile_comm(comm):
    child = subprocess.Popen([sys.executable, "-c", NAMED_CHILD, comm], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        with open(f"/proc/{child.pid}/comm") as f:
            assert f.read() == comm + "\n"
        control.check_registrant(child.pid, Ucred(os.getpid(), 0, 0))
        with pytest.raises(MptcpizeError, match=rf"process {child.pid} is not a child of the caller "
                                                rf"\(pid {os.getpid() + 1}\); its parent is {os.getpid()}$"):
            control.check_registrant(child.pid, Ucred(os.getpid() + 1, 0, 0))
    finally:
        child.stdin.close()
        child.wait()


def test_check_registrant_refuses_a_thread_and_a_gone_process():
    started, done = threading.Event(), threading.Event()
    tid = []

    def body():
        tid.append(threading.get_native_id())
        started.set()
        done.wait()

    t = threading.Thread(target=body)
    t.start()
    try:
        assert started.wait(scaled(30))
        with pytest.raises(MptcpizeError, match=f"{tid[0]} is a thread of process {os.getpid()}, not a process"):
            control.check_registrant(tid[0], Ucred(os.getppid(), 0, 0))
    finally:
        done.set()
        t.join()
    gone = subprocess.Popen(["true"])
    gone.wait()   # reaped: its pid names no process (until the kernel hands it out again, pids apart)
    with pytest.raises(MptcpizeError, match=f"register: no process {gone.pid}$"):
        control.check_registrant(gone.pid, Ucred(os.getpid(), 0, 0))


@pytest.mark.parametrize("pid", [True, False, "12", 1.0, None, 0, -1, (1 << 22) + 1, [1]])
def test_check_registrant_bad_pid_values(pid):
    with pytest.raises(MptcpizeError, match="pid must be an integer"):
        control.check_registrant(pid, Ucred(1, 0, 0))


def test_check_registrant_real_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # killed below
    try:
        me = Ucred(os.getpid(), os.geteuid(), os.getegid())
        control.check_registrant(child.pid, me)
        with pytest.raises(MptcpizeError, match="not a child of the caller"):
            control.check_registrant(child.pid, Ucred(os.getppid(), 0, 0))
        with pytest.raises(MptcpizeError, match="not a child of the caller"):
            control.check_registrant(os.getpid(), me)  # ourselves: our parent is not us
    finally:
        child.kill()
        child.wait()


def test_check_registrant_thread_id_is_refused():
    tid = []
    ready, done = threading.Event(), threading.Event()

    def run():
        tid.append(threading.get_native_id())
        ready.set()
        done.wait()   # set below, whatever happens

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(ready.is_set, "the thread to report its id")
        with pytest.raises(MptcpizeError, match="is a thread of process"):
            control.check_registrant(tid[0], Ucred(os.getppid(), 0, 0))
    finally:
        done.set()
        t.join()


# ---------------------------------------------------------------------------------------------------
# Client errors without any server


def test_no_daemon_is_exit_3(tmp_path):
    with pytest.raises(MptcpizeError) as e:
        client.request({"cmd": "status"}, tmp_path / "control")
    assert e.value.exit_code == 3
    assert e.value.message == f"no daemon is running (cannot connect to {tmp_path}/control)"
    assert e.value.hint == "start it: systemctl start mptcpize-py"


def test_refused_connection_is_exit_3(tmp_path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "control"))
    s.close()  # a dead daemon's socket file: connect() -> ECONNREFUSED
    with pytest.raises(MptcpizeError) as e:
        client.request({"cmd": "status"}, tmp_path / "control")
    assert e.value.exit_code == 3


def test_default_path():
    assert protocol.DEFAULT_PATH == Path("/run/mptcpize-py/control")
    assert client.no_daemon_error().message == \
        "no daemon is running (cannot connect to /run/mptcpize-py/control)"
