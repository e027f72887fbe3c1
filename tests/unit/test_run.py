"""run's process handling (exit status, signals, exec errors), with a backend that upgrades
nothing: what is under test here is what a caller of `run` sees, whatever the backend."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.run.backend import RunBackend
from mptcpize_py.run.spawn import resolve_command, run_command
from tests.waiting import wait_exit, wait_for


class NoUpgradeBackend(RunBackend):
    name = "none"
    handed_off_pid = None

    def __init__(self):
        self.child_pid_seen_in_child = None

    def spawn_env(self, env):
        return None

    def pass_fds(self):
        return ()

    def child_setup(self):
        pass

    def started(self, pid):
        self.pid = pid

    def finish(self):
        return []

    def summarized(self):
        return []

    def counters(self):
        return None

    def close(self):
        pass


def test_exit_status_is_kept():
    assert run_command(["sh", "-c", "exit 7"], NoUpgradeBackend())[0] == 7
    assert run_command(["true"], NoUpgradeBackend())[0] == 0


def test_killed_by_signal_is_128_plus_n():
    assert run_command(["sh", "-c", "kill -TERM $$"], NoUpgradeBackend())[0] == 128 + 15


def test_resolve_command_codes(tmp_path):
    with pytest.raises(MptcpizeError) as e:
        resolve_command("definitely-not-a-command-xyz")
    assert e.value.exit_code == 127
    f = tmp_path / "noexec"
    f.write_text("")
    f.chmod(0o644)
    with pytest.raises(MptcpizeError) as e:
        resolve_command(str(f))
    assert e.value.exit_code == 126


# A child that reports the signals it receives into a file, and exits 40+signo on SIGTERM (only then).
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    out = sys.argv[1]
    def on(sig, _f):
        with open(out, "a") as f:
            f.write(f"{sig}\\n")
        if sig == signal.SIGTERM:
            sys.exit(40 + sig)
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, on)
    open(out + ".ready", "w").close()
    while True:
        signal.pause()
""")

# Runs run_command() in a separate process so that signals can be sent to "run" itself.
DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from tests.unit.test_run import NoUpgradeBackend
    from mptcpize_py.run.spawn import run_command
    sys.exit(run_command(sys.argv[2:], NoUpgradeBackend())[0])
""")


def test_signals_are_forwarded_once(tmp_path):
    out = tmp_path / "signals"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, repo, sys.executable, "-c", CHILD, str(out)],
                              start_new_session=True)

    def received() -> list[str]:
        return out.read_text().split() if out.exists() else []

    def child_ready() -> bool:
        assert driver.poll() is None, f"run exited with {driver.returncode} before its child was ready"
        return (tmp_path / "signals.ready").exists()

    try:
        wait_for(child_ready, "the child to install its signal handlers")
        sent = []
        for sig in (signal.SIGHUP, signal.SIGINT):
            os.kill(driver.pid, sig)
            sent.append(str(int(sig)))
            # One at a time, so that the order they arrive in is the order they were sent in.
            wait_for(lambda: len(received()) >= len(sent), f"the child to receive {sig.name}",
                     details=received)
        os.kill(driver.pid, signal.SIGTERM)
        assert wait_exit(driver, "run to exit after SIGTERM") == 40 + signal.SIGTERM
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # run and its child
            driver.wait()
    # Each signal sent to "run" reached the child exactly once, in order.
    assert received() == [str(int(signal.SIGHUP)), str(int(signal.SIGINT)), str(int(signal.SIGTERM))]
