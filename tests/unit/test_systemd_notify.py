"""sd_notify as systemd sees it: datagrams on $NOTIFY_SOCKET."""

import importlib
import os
import socket

import pytest

from mptcpize_py.host import systemd

try:
    importlib.import_module("systemd.daemon")  # distro package python3-systemd
    _NO_SYSTEMD_PYTHON = None
except ImportError as e:
    _NO_SYSTEMD_PYTHON = str(e)

# Only sending goes through systemd-python; the rest of host/systemd.py is plain Python.
needs_systemd_python = pytest.mark.skipif(_NO_SYSTEMD_PYTHON is not None,
                                          reason=f"python3-systemd not importable: {_NO_SYSTEMD_PYTHON}")


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


@needs_systemd_python
def test_ready_status_watchdog(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = systemd.Notifier()
    assert n.enabled and n.watchdog_interval == 15.0
    n.ready("2 allow rules; 0 sockets upgraded")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=2 allow rules; 0 sockets upgraded"
    n.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    n.reloading()
    assert notify_socket.recv(4096) == b"RELOADING=1"


def test_watchdog_for_another_pid_is_not_ours(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.Notifier().watchdog_interval is None


def test_no_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = systemd.Notifier()
    assert not n.enabled
    n.ready("x")   # nothing to send to, nothing raised


def test_notify_socket_without_systemd_python_is_an_error(notify_socket, monkeypatch):
    monkeypatch.setattr(systemd, "_systemd", lambda: (None, None))
    with pytest.raises(RuntimeError, match=r"python3-systemd is not importable"):
        systemd.Notifier().ready("x")


def test_fields_are_journald_names():
    assert systemd.fields(pid=12, unit=None, rule="allow exe=/x") == {
        "MPTCPIZE_PID": "12", "MPTCPIZE_RULE": "allow exe=/x"}


def test_fields_carry_undecodable_names_exact():
    # os.readlink() gives a lone surrogate for a byte that is not UTF-8; python-systemd would refuse
    # to encode it (and drop the record): the field is the name's bytes instead.
    assert systemd.fields(exe="/tmp/a\udcff\n\x1b", comm="\x1b]0;x") == {
        "MPTCPIZE_EXE": b"/tmp/a\xff\n\x1b", "MPTCPIZE_COMM": "\x1b]0;x"}


def test_stderr_is_not_a_journal_stream_here(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert systemd.stderr_is_journal() is False
