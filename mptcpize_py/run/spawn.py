"""Starts CMD under a backend, forwards signals to it, keeps its exit status."""

import os
import shutil
import signal
import subprocess

from mptcpize_py.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, MptcpizeError
from mptcpize_py.run.backend import ProcessReport, RunBackend

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SI_KERNEL = 0x80  # si_code of a signal the kernel raised (e.g. ^C at a terminal), not kill(2)


def resolve_command(name: str) -> str:
    """The path execve() will run, with env(1)'s exit codes: 127 not found, 126 not executable."""
    if "/" in name:
        path = name
        if not os.path.lexists(path):
            raise MptcpizeError(f"{name}: No such file or directory", exit_code=EXIT_NOT_FOUND)
    else:
        found = shutil.which(name)
        if found is None:
            # which() skips non-executable matches: tell "found but not executable" apart.
            for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
                candidate = os.path.join(d or ".", name)
                if os.path.isfile(candidate):
                    raise MptcpizeError(f"{candidate}: Permission denied",
                                        exit_code=EXIT_CANNOT_EXECUTE)
            raise MptcpizeError(f"{name}: command not found", hint="check the name and PATH",
                                exit_code=EXIT_NOT_FOUND)
        path = found
    if os.path.isdir(path):
        raise MptcpizeError(f"{name}: Is a directory", exit_code=EXIT_CANNOT_EXECUTE)
    if not os.access(path, os.X_OK):
        raise MptcpizeError(f"{name}: Permission denied", exit_code=EXIT_CANNOT_EXECUTE)
    return path


def exit_code_of(returncode: int) -> int:
    """A shell's view of the child's end: its exit status, or 128+N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def run_command(argv: list[str], backend: RunBackend) -> tuple[int, list[ProcessReport]]:
    """Runs argv under `backend` until it exits. Returns (exit status, per-process reports)."""
    path = resolve_command(argv[0])
    # Block the signals we forward (and SIGCHLD) so that one sigwaitinfo() loop sees them all, with
    # their si_code; the child gets the original mask back before exec.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED_SIGNALS, signal.SIGCHLD})

    def child_setup():
        backend.child_setup()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    try:
        try:
            # A backend may add to CMD's environment and inherited fds (the seccomp backend's
            # preloaded shim).
            proc = subprocess.Popen(argv, executable=path, preexec_fn=child_setup, close_fds=True,
                                    env=backend.spawn_env(dict(os.environ)),
                                    pass_fds=backend.pass_fds())
        except FileNotFoundError as e:
            raise MptcpizeError(f"{argv[0]}: {e.strerror}", exit_code=EXIT_NOT_FOUND) from None
        except OSError as e:
            raise MptcpizeError(f"{argv[0]}: {e.strerror}", exit_code=EXIT_CANNOT_EXECUTE) from None
        except subprocess.SubprocessError:  # child_setup raised in the child: CMD did not start
            raise MptcpizeError(f"{argv[0]} was not started: the {backend.name} backend could not "
                                f"prepare it", hint="see `mptcpize-py check`; retry with --debug"
                                ) from None
        backend.started(proc.pid)
        try:
            returncode = _wait_forwarding(proc)
        finally:
            if proc.returncode is None:  # we are failing: do not leave CMD behind
                proc.kill()
                proc.wait()
        return exit_code_of(returncode), backend.finish()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _wait_forwarding(proc: subprocess.Popen) -> int:
    waited = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    while True:
        rc = proc.poll()
        if rc is not None:
            return rc
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            continue
        # A terminal's ^C/hang-up reaches CMD directly (same process group): forwarding it would
        # deliver it twice. kill(2) from elsewhere reaches only us, so pass it on.
        if info.si_code != _SI_KERNEL:
            try:
                os.kill(proc.pid, info.si_signo)
            except ProcessLookupError:
                pass
