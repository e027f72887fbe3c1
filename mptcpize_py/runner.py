"""`mptcpize-py run`: start CMD with a backend that upgrades its sockets, forward signals, keep its status.

A backend provides:
  name            "bpf", "bpf (via the daemon, pid N)" or "seccomp"
  child_setup()   runs in the child between fork and exec (so the very first socket() is covered)
  started(pid)    runs in the parent once CMD is running
  finish()        after CMD exited: returns [ProcessReport] (one per process that got upgraded sockets)
  close()         releases everything (detaches the BPF program)
"""

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

from mptcpize_py.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    MptcpizeError,
    PermissionDenied,
    Unavailable,
)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SI_KERNEL = 0x80  # si_code of a signal the kernel raised (e.g. ^C at a terminal), not kill(2)


@dataclass(frozen=True)
class ProcessReport:
    pid: int
    exe: str
    upgraded: int


def resolve_command(name: str) -> str:
    """The path execve() will run, with env(1)'s exit codes: 127 not found, 126 not executable."""
    if "/" in name:
        path = name
        if not os.path.lexists(path):
            raise MptcpizeError(f"{name}: No such file or directory", exit_code=EXIT_NOT_FOUND)
    else:
        path = shutil.which(name)
        if path is None:
            # which() skips non-executable matches: tell "found but not executable" apart.
            for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
                candidate = os.path.join(d or ".", name)
                if os.path.isfile(candidate):
                    raise MptcpizeError(f"{candidate}: Permission denied",
                                        exit_code=EXIT_CANNOT_EXECUTE)
            raise MptcpizeError(f"{name}: command not found", hint="check the name and PATH",
                                exit_code=EXIT_NOT_FOUND)
    if os.path.isdir(path):
        raise MptcpizeError(f"{name}: Is a directory", exit_code=EXIT_CANNOT_EXECUTE)
    if not os.access(path, os.X_OK):
        raise MptcpizeError(f"{name}: Permission denied", exit_code=EXIT_CANNOT_EXECUTE)
    return path


def exit_code_of(returncode: int) -> int:
    """A shell's view of the child's end: its exit status, or 128+N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def run_command(argv: list[str], backend) -> tuple[int, list[ProcessReport]]:
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
            proc = subprocess.Popen(argv, executable=path, preexec_fn=child_setup, close_fds=True)
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


class BpfRunBackend:
    """The fmod_ret program on update_socket_protocol, selecting CMD's process tree by tgid."""

    name = "bpf"

    def __init__(self):
        import threading

        from mptcpize_py.program.loader import Rewriter
        self._rewriter = Rewriter(all_netns=True)
        self._exe: dict[int, str | None] = {}
        self._comm: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="mptcpize-events", daemon=True)
        self._rewriter.open_events(self._on_event)

    def child_setup(self) -> None:
        # In the child, before exec: it joins the run tree itself, so nothing can precede it.
        self._rewriter.add_run_root(os.getpid())

    def started(self, pid: int) -> None:
        self._thread.start()

    def _on_event(self, ev) -> None:
        # Name the executable at the first upgrade, while the process most likely still exists;
        # finish() falls back to what the kernel saw at exec, then to the command name.
        if ev.tgid not in self._exe:
            try:
                self._exe[ev.tgid] = os.readlink(f"/proc/{ev.tgid}/exe")
            except OSError:
                self._exe[ev.tgid] = None
                self._comm[ev.tgid] = ev.comm

    def _exe_of(self, tgid: int) -> str:
        return (self._exe.get(tgid) or self._rewriter.exe_name(tgid)
                or f"[{self._comm.get(tgid, '?')}]")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._rewriter.poll_events(100)

    def finish(self) -> list[ProcessReport]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._rewriter.drain_events()
        return sorted((ProcessReport(s.tgid, self._exe_of(s.tgid), s.upgraded)
                       for s in self._rewriter.proc_stats()), key=lambda r: r.pid)

    def counters(self) -> dict[str, int]:
        return self._rewriter.counters()

    def close(self) -> None:
        self._stop.set()
        self._rewriter.close()


class DaemonRunBackend:
    """The fast path: the running daemon's program already sits on the hook, so CMD only has to join
    its run tree. The child registers itself (pid == peer pid, before exec) over the control socket and
    execs only after the daemon's answer, so its first socket() is covered; nothing is compiled here.
    The run tree ignores the daemon's [netns] choice (like a standalone run) but not
    net.mptcp.enabled=0."""

    name = "bpf"

    def __init__(self, path, hello: dict):
        self.path = path
        self.daemon_pid = hello.get("pid")
        self.name = f"bpf (via the daemon, pid {self.daemon_pid})"
        self.run_id = None
        self._r, self._w = os.pipe2(os.O_CLOEXEC)  # the child reports its run id through it

    def child_setup(self) -> None:
        from mptcpize_py.daemon import control
        os.close(self._r)
        resp = control.request({"cmd": "register", "pid": os.getpid()}, self.path, timeout=10)
        os.write(self._w, str(resp["run_id"]).encode())
        os.close(self._w)

    def started(self, pid: int) -> None:
        os.close(self._w)
        with os.fdopen(self._r, "rb") as f:
            data = f.read()
        self.run_id = int(data) if data.isdigit() else None

    def finish(self) -> list[ProcessReport]:
        if self.run_id is None:
            return []
        from mptcpize_py.daemon import control
        resp = control.request({"cmd": "run_report", "run_id": self.run_id}, self.path, timeout=10)
        return [ProcessReport(r["pid"], r.get("exe") or "?", r["upgraded"]) for r in resp["processes"]]

    def counters(self) -> None:
        return None   # the daemon's counters cover every process it upgrades, not this run only

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def daemon_backend():
    """DaemonRunBackend when a daemon answers on its control socket and we may use it (root), else
    None. Costs one round trip."""
    if os.geteuid() != 0:
        return None
    from mptcpize_py.daemon import control
    path = control.control_path()
    if not os.path.exists(path):
        return None
    try:
        hello = control.request({"cmd": "hello"}, path, timeout=2)
    except MptcpizeError:
        return None
    if hello.get("backend") != "bpf":   # a dry-run daemon upgrades nothing
        return None
    return DaemonRunBackend(path, hello)


def make_backend(choice: str):
    """The backend `run --backend CHOICE` uses: bpf = the running daemon's program, else our own;
    auto = that, else seccomp."""
    if choice in ("auto", "bpf"):
        fast = daemon_backend()
        if fast is not None:
            return fast
    if choice == "bpf":
        return BpfRunBackend()
    if choice == "seccomp":
        return _seccomp_backend()
    try:
        return BpfRunBackend()
    except (Unavailable, PermissionDenied) as bpf_error:  # seccomp needs no privilege
        try:
            return _seccomp_backend()
        except Unavailable as seccomp_error:
            raise Unavailable(f"no backend can upgrade sockets here: bpf: {bpf_error.message}; "
                              f"seccomp: {seccomp_error.message}",
                              hint=bpf_error.hint or seccomp_error.hint) from None


def _seccomp_backend():
    try:
        from mptcpize_py.seccomp import SeccompRunBackend
    except ImportError:
        raise Unavailable("the seccomp backend is not part of this build") from None
    return SeccompRunBackend()
