"""`check` tells the truth about this host: what it reports is what `run` then does."""

import json
import os
import sys

import pytest

from tests.conftest import mptcpize

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF probes, seccomp as root)")

PROTO = [sys.executable, "-c", "import socket; print(socket.socket().getsockopt(socket.SOL_SOCKET, "
                               "socket.SO_PROTOCOL))"]


def test_check_matches_what_run_does():
    proc = mptcpize("check", "--json")
    report = json.loads(proc.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert proc.returncode == (0 if report["run_can_upgrade"] else 69)
    assert all(c["status"] in ("ok", "warn", "fail") for c in report["checks"])

    # The backend check names is the one `run` uses, and it really upgrades.
    if report["backend"]:
        run = mptcpize("run", "-v", *PROTO)
        assert run.returncode == 0 and run.stdout.strip() == "262", run.stderr
        assert f"backend {report['backend']}" in run.stderr
    # A BPF path check calls broken is one `run --backend bpf` refuses: exit 69, one error line.
    if statuses["bpf trampoline"] == "fail":
        run = mptcpize("run", "--backend", "bpf", *PROTO)
        assert run.returncode == 69, run.stderr
        assert len([line for line in run.stderr.splitlines() if "error:" in line]) == 1
        assert "Traceback" not in run.stderr


def test_check_text_has_a_hint_for_each_failure():
    proc = mptcpize("check")
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("fail "):
            assert i + 1 < len(lines) and "hint:" in lines[i + 1], line
    assert lines[-1].startswith("run backend:")


def test_check_prints_no_compiler_warnings():
    """bcc's clang warns about the kernel headers (~25 lines on stderr before the table, before):
    `check --loader bcc` compiles a probe program in-process, with clang's output kept out of stderr."""
    proc = mptcpize("check", "--loader", "bcc")
    assert proc.returncode in (0, 69), proc.stderr
    assert "bcc " in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if "warning:" in line], proc.stderr
    assert proc.stderr == ""
