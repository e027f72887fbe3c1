"""Bad input through the real CLI: one clear line each and the documented exit code."""

import os
import signal
import subprocess
import textwrap

import pytest

from tests.conftest import CHECKOUT_PYTHON, CLI, REPO, cli_env, code_any_user_can_import, mptcpize
from tests.waiting import scaled

CHECKOUT_INIT = str(REPO / "mptcpize_py" / "__init__.py")


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("mptcpize-py: error:")]


def assert_one_error(proc, code, needle):
    assert proc.returncode == code, proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def decoy(tmp_path):
    """Another mptcpize_py package, which must never be the one run: a directory holding it is both
    the working directory and on the caller's PYTHONPATH."""
    pkg = tmp_path / "mptcpize_py"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent("""
        import sys
        print("decoy mptcpize_py")
        sys.exit(99)
    """))
    return tmp_path


def imported_from(env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Where the CLI's interpreter, flags and environment import mptcpize_py from."""
    kw.setdefault("env", cli_env(env))
    return subprocess.run([*CHECKOUT_PYTHON, "-c", "import mptcpize_py; print(mptcpize_py.__file__)"],
                          capture_output=True, text=True, timeout=scaled(60), **kw)


def test_cli_helper_runs_this_checkout(decoy):
    env = dict(os.environ, PYTHONPATH=str(decoy))
    proc = mptcpize("--version", cwd=decoy, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("mptcpize-py "), (proc.stdout, proc.stderr)
    where = imported_from(env, cwd=decoy)
    assert (where.returncode, where.stdout.strip()) == (0, CHECKOUT_INIT), where.stderr


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


@pytest.fixture
def as_nobody() -> dict:
    """subprocess arguments that run the CLI as uid 65534, when that user can run it at all."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    kw = {"user": 65534, "group": 65534, "extra_groups": [], "cwd": "/",
          "env": cli_env({**os.environ, "HOME": "/"}, any_user=True)}
    try:
        where = imported_from(**kw)
    except PermissionError as e:
        pytest.skip(f"uid 65534 cannot run {e.filename}")
    code = code_any_user_can_import() / "mptcpize_py" / "__init__.py"
    assert (where.returncode, where.stdout.strip()) == (0, str(code)), where.stderr
    return kw


def test_run_bpf_backend_as_non_root_is_refused(as_nobody):
    proc = mptcpize("run", "--backend", "bpf", "true", **as_nobody)
    assert_one_error(proc, 77, "needs root")


# --- --debug after the command ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [("status", "--debug"), ("--debug", "status")])
def test_debug_before_or_after_the_command_means_the_same(tmp_path, args):
    proc = mptcpize(*args, env={**os.environ, "MPTCPIZE_CONTROL": str(tmp_path / "no-daemon")})
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" in proc.stderr                     # what --debug adds
    assert error_lines(proc) == [f"mptcpize-py: error: no daemon is running (cannot connect to "
                                 f"{tmp_path / 'no-daemon'})"]


def test_run_takes_debug_before_cmd():
    proc = mptcpize("run", "--debug", "--backend", "seccomp", "--", "sh", "-c", "exit 7")
    assert proc.returncode == 7, proc.stderr


# --- output into a pipe whose reader has gone (`mptcpize-py ... | head -1`) --------------------------

def into_closed_pipe(*args, env=None) -> subprocess.CompletedProcess:
    """The CLI with its standard output a pipe whose reader has already gone, as `| head -1` is once
    head has its line: every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([*CLI, *args], stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              env=cli_env(env), timeout=scaled(120))
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [
    ("--version",), ("--help",), ("status", "--help"),   # argparse prints, then exits
    ("daemon", "--example-policy"),                      # buffered, flushed at exit
    ("metrics",),                                        # no daemon: one line
    ("check",),
    ("paths",),
])
def test_a_reader_that_goes_away_ends_it_quietly_by_sigpipe(tmp_path, args):
    """As ip and systemctl: killed by SIGPIPE, nothing on stderr (before: a BrokenPipeError traceback,
    or "Exception ignored ... BrokenPipeError" and exit 120)."""
    proc = into_closed_pipe(*args, env={**os.environ, "MPTCPIZE_CONTROL": str(tmp_path / "no-daemon")})
    assert (proc.returncode, proc.stderr.decode()) == (-signal.SIGPIPE, "")


def test_errors_into_a_closed_pipe_end_quietly_too(tmp_path):
    """`mptcpize-py status 2>&1 | head -0`: the error message itself meets the closed pipe."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([*CLI, "status"], stdout=w, stderr=w, timeout=scaled(120),
                              env=cli_env({**os.environ, "MPTCPIZE_CONTROL": str(tmp_path / "none")}))
    finally:
        os.close(w)
    assert proc.returncode == -signal.SIGPIPE


# --- every command's --help: what it does, and examples ---------------------------------------------

def subcommand_names() -> list[str]:
    from mptcpize_py import cli
    sub = next(a for a in cli._build_parser()._actions if a.dest == "command")
    return list(sub.choices)


@pytest.mark.parametrize("command", subcommand_names())
def test_every_command_help_has_a_description_and_examples(command):
    proc = mptcpize(command, "--help", env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    usage, description = proc.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: mptcpize-py {command} ")
    assert not description.startswith(("positional arguments:", "options:")) and len(description) > 40
    examples = proc.stdout.split("\nexamples:\n", 1)[1].splitlines()
    assert any(line.startswith(f"  mptcpize-py {command}") for line in examples), proc.stdout
    assert max(map(len, proc.stdout.splitlines())) <= 80, proc.stdout
