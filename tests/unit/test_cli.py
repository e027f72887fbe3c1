"""Bad input through the real CLI: one clear line each and the documented exit code."""

import os

import pytest

from tests.conftest import mptcpize


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("mptcpize-py: error:")]


def assert_one_error(proc, code, needle):
    assert proc.returncode == code, proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_subcommand():
    assert_one_error(mptcpize(), 2, "no command given")


def test_run_without_command():
    assert_one_error(mptcpize("run"), 2, "run: no command given")
    assert_one_error(mptcpize("run", "-v", "--"), 2, "run: no command given")


def test_run_unknown_option():
    proc = mptcpize("run", "--frobnicate", "true")
    assert_one_error(proc, 2, "unknown option --frobnicate")
    assert "hint:" in proc.stderr


def test_run_bad_backend():
    assert_one_error(mptcpize("run", "--backend", "ebpf", "true"), 2, "--backend must be one of")


def test_run_missing_executable():
    assert_one_error(mptcpize("run", "no-such-command-xyz"), 127, "command not found")
    assert_one_error(mptcpize("run", "/nonexistent/prog"), 127, "No such file or directory")


def test_run_not_executable(tmp_path):
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    assert_one_error(mptcpize("run", str(f)), 126, "Permission denied")
    assert_one_error(mptcpize("run", str(tmp_path)), 126, "Is a directory")


def test_run_command_starting_with_dash_after_double_dash():
    # "--" ends run's options: "-x" is then the command (not found), not an option.
    assert_one_error(mptcpize("run", "--", "-x"), 127, "-x: command not found")


def test_unknown_subcommand():
    assert_one_error(mptcpize("frobnicate"), 2, "invalid choice")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_run_bpf_backend_as_non_root_is_refused():
    proc = mptcpize("run", "--backend", "bpf", "true", user=65534, group=65534,
                    env={**os.environ, "HOME": "/"})
    assert_one_error(proc, 77, "needs root")
