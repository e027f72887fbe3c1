"""The parent's side of the loader child (program/rewriter.py run_loader), with stand-in children: what
they send arrives close-on-exec, their errors arrive with their class, words, hint and exit code, and
a child that dies without a word is an error that says so. The real child runs in tests/host and the
VM tier."""

import fcntl
import os

import pytest

from mptcpize_py.errors import EXIT_UNAVAILABLE, MptcpizeError, PermissionDenied, Unavailable
from mptcpize_py.program import rewriter

SEND = """import json, os, socket, sys
sock = socket.socket(fileno=3)
argv = sys.argv[2:]
"""


def with_child(monkeypatch, body: str) -> None:
    monkeypatch.setattr(rewriter, "_CHILD_CODE", SEND + body)


def test_descriptors_arrive_close_on_exec(monkeypatch):
    with_child(monkeypatch, """
r, w = os.pipe()
os.set_inheritable(r, True)
msg = {"argv": argv, "stdin": os.readlink("/proc/self/fd/0")}
socket.send_fds(sock, [json.dumps(msg).encode()], [r, w])
""")
    msg, fds = rewriter.run_loader(dry_run=True)
    try:
        assert msg["argv"] == [str(os.getpid()), "--dry-run"]
        assert msg["stdin"] == os.devnull
        assert len(fds) == 2
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds)
        os.write(fds[1], b"x")
        assert os.read(fds[0], 1) == b"x"    # the child's pipe, alive after the child exited
    finally:
        for fd in fds:
            os.close(fd)


def test_a_child_error_keeps_its_class_words_and_hint(monkeypatch):
    with_child(monkeypatch, """
err = {"class": "Unavailable", "message": "bcc is not importable: no", "hint": "apt-get it",
       "exit_code": 69}
socket.send_fds(sock, [json.dumps({"error": err}).encode()], [])
""")
    with pytest.raises(Unavailable) as e:
        rewriter.run_loader(dry_run=False)
    assert (e.value.message, e.value.hint, e.value.exit_code) == \
        ("bcc is not importable: no", "apt-get it", EXIT_UNAVAILABLE)


def test_a_child_that_dies_silently_is_an_error(monkeypatch):
    with_child(monkeypatch, "os._exit(3)\n")
    with pytest.raises(MptcpizeError, match=r"exited with status 3 before handing the program over"):
        rewriter.run_loader(dry_run=False)


def test_a_child_killed_by_a_signal_is_an_error(monkeypatch):
    with_child(monkeypatch, "import signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(MptcpizeError, match=r"killed by signal 9"):
        rewriter.run_loader(dry_run=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the refusal to non-root")
def test_non_root_is_refused_before_any_child():
    with pytest.raises(PermissionDenied):
        rewriter.Rewriter(dry_run=True)


def test_the_child_starts_with_no_signal_blocked(monkeypatch):
    import signal
    with_child(monkeypatch, """
blocked = [l.split()[1] for l in open("/proc/self/status") if l.startswith("SigBlk:")][0]
socket.send_fds(sock, [json.dumps({"blocked": blocked}).encode()], [])
""")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        msg, _fds = rewriter.run_loader(dry_run=False)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert int(msg["blocked"], 16) == 0
