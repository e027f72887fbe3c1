"""SeccompRunBackend: the seccomp supervisor behind `run`'s backend interface, and the hand-off of
descendants that outlive CMD to a detached supervisor."""

import logging
import os
import select
import signal
import socket
import threading

from mptcpize_py.host import libc, procfs
from mptcpize_py.run.backend import ProcessReport, ProcessSummary, RunBackend
from mptcpize_py.run.seccomp.filter import FilterInstaller
from mptcpize_py.run.seccomp.notify import Listener, recv_listener, send_listener
from mptcpize_py.run.seccomp.probe import probe
from mptcpize_py.run.seccomp.shim import ENV as SHIM_ENV
from mptcpize_py.run.seccomp.shim import Counters, library
from mptcpize_py.run.seccomp.supervisor import Supervisor, foreign_proc

log = logging.getLogger(__name__)
HINT = logging.ERROR - 1   # a level of its own, so that the hint reads `mptcpize-py: hint: ...`
logging.addLevelName(HINT, "hint")
# The detached supervisor's comm, what `pgrep -x`, ps and top show: the kernel keeps 15 bytes of it,
# so a longer name would match no exact search.
DETACHED_NAME = "mptcpize-sup"


class SeccompRunBackend(RunBackend):
    """CMD's tree under the seccomp filter, answered by a Supervisor thread of this process."""

    name = "seccomp"

    # After CMD exits, how long to wait for its remaining descendants before handing them over.
    LINGER_S = 0.2
    # How long stopping the supervisor thread may take before `run` goes on without it (it never
    # blocks for long by design: see Supervisor._exec; this is the bound if it ever does).
    STOP_WAIT_S = 5.0

    def __init__(self) -> None:
        probe()
        # Checked here, before CMD starts, to say it once; the Supervisor refuses on its own too.
        why = foreign_proc()
        if why is not None:
            log.error("cannot upgrade sockets: %s: the sockets of CMD's tree stay plain TCP", why)
            log.log(HINT, "give mptcpize-py a /proc of its own pid namespace "
                          "(e.g. `unshare -pf --mount-proc`), or run it outside that namespace")
        self._summarized: list[ProcessSummary] = []
        # The kernel lets a task install a filter without no_new_privs only with CAP_SYS_ADMIN. We
        # avoid no_new_privs when we can: it would make every setuid/setgid/file-capability program
        # in the tree (sudo, ping, su) run without its privilege, an EPERM the program would not get
        # otherwise. Without CAP_SYS_ADMIN it is mandatory, and exec of such programs is reported.
        self.no_new_privs = bool(procfs.missing_capabilities(("CAP_SYS_ADMIN",)))
        self._installer = FilterInstaller(self.no_new_privs, notify_exec=self.no_new_privs)
        # Dynamically linked programs make their MPTCP sockets themselves through the preloaded shim
        # (shim/mptcpize-shim.c) and count them in a memfd they inherit; the filter still sends the
        # supervisor whatever the shim cannot reach (static programs, raw syscalls, Go, setuid exec).
        self._shim_lib = library()
        self._shim: Counters | None = None
        if self._shim_lib is None:
            log.debug("seccomp: no preloaded shim (%s not built): every socket() is answered by "
                      "the supervisor", "mptcpize_py/lib/libmptcpize-shim.so")
        else:
            self._shim = Counters()
        self._parent_sock, self._child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._supervisor: Supervisor | None = None
        self._settled = threading.Event()  # the listener arrived, or never will
        self._handed_off: int | None = None
        # Running before the fork: under no_new_privs CMD's own execve is already a notification.
        self._thread = _start_thread(self._run, "mptcpize-seccomp")

    # child side
    def child_setup(self) -> None:
        try:
            fd = self._installer.install()
            send_listener(self._child_sock, fd)
            os.close(fd)  # the listener lives in the parent only: CMD cannot answer for itself
            self._child_sock.close()
        except OSError as e:
            os.write(2, f"mptcpize-py: error: cannot install the seccomp filter: {e.strerror}\n".encode())
            os._exit(126)

    def spawn_env(self, env: dict[str, str]) -> dict[str, str]:
        """CMD's environment: the shim preloaded (before any LD_PRELOAD of the user's), its counters."""
        if self._shim is None or self._shim_lib is None:
            return env
        old = env.get("LD_PRELOAD")
        return {**env, "LD_PRELOAD": f"{self._shim_lib} {old}" if old else self._shim_lib,
                SHIM_ENV: self._shim.env_value()}

    def pass_fds(self) -> tuple[int, ...]:
        return (self._shim.fd,) if self._shim is not None else ()

    # parent side
    def started(self, pid: int) -> None:
        self._child_sock.close()  # so that the supervisor sees EOF if the child never sent anything

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._parent_sock.fileno(), select.POLLIN)
            poller.register(self._stop_r, select.POLLIN)
            if any(fd == self._stop_r for fd, _ev in poller.poll()):
                return
            try:
                listener_fd = recv_listener(self._parent_sock)  # None: EOF, CMD never got that far
            except OSError:
                listener_fd = None
            if listener_fd is None:
                return
            self._supervisor = Supervisor(Listener(listener_fd), shim=self._shim)
        finally:
            self._settled.set()
        self._supervisor.serve(self._stop_r)

    def finish(self) -> list[ProcessReport]:
        # CMD ran, so it sent the listener before its exec (or died trying, and then started()
        # closed our copy of its end: EOF). Either way the thread settles promptly.
        self._settled.wait(5)
        sup = self._supervisor
        if sup is not None and not sup.hung_up.wait(self.LINGER_S):
            # Descendants outlive CMD (a daemon, `cmd &`). If the listener closed now, their next TCP
            # socket() would fail with ENOSYS (kernel/seccomp.c: no listener): keep answering for them
            # from a detached process until the last one exits.
            if self._stop_thread() and not sup.hung_up.is_set():
                self._handed_off = _hand_off(sup)
        if not self._stop_thread() or sup is None:
            return []   # a wedged supervisor's tallies are being written: report none
        rows, self._summarized = sup.report()
        log.debug("seccomp supervisor: %d live process(es) tracked at most", sup.peak_live)
        return rows

    def summarized(self) -> list[ProcessSummary]:
        return self._summarized

    def counters(self) -> dict[str, int]:
        return dict(self._supervisor.counters) if self._supervisor else {}

    @property
    def handed_off_pid(self) -> int | None:
        return self._handed_off

    def _stop_thread(self) -> bool:
        """Stops the supervisor thread; False if it did not stop within STOP_WAIT_S (then `run`
        ends without it: the listener closes with us, as after SIGKILL)."""
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(self.STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("the seccomp supervisor did not stop: leaving it behind")
                return False
        return True

    def close(self) -> None:
        if not self._stop_thread():
            return   # it still uses the listener and its fds: process exit releases them
        if self._supervisor is not None:
            self._supervisor.close()
            os.close(self._supervisor.listener.fd)
            self._supervisor = None
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stop_r = self._stop_w = -1
        self._parent_sock.close()
        self._child_sock.close()
        if self._shim is not None:
            self._shim.close()
            self._shim = None


def _start_thread(target, name: str) -> threading.Thread:
    """Starts a thread that blocks every signal: process-directed ones (SIGTERM to forward, SIGCHLD)
    must reach spawn's sigwaitinfo() in the main thread, and a thread inherits its creator's mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK,
                                 signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
    try:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return t


def _hand_off(sup: Supervisor) -> int | None:
    """Forks a detached process (double fork, own session, stdio on /dev/null) that keeps answering
    `sup`'s listener until POLLHUP. Returns its pid; None if it could not be started."""
    sup.close()  # no helper thread across fork
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # pragma: no cover (runs in the forked child)
        try:
            os.close(r)
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(w, str(grandchild).encode())
                os._exit(0)
            os.close(w)
            _detach_from(sup.listener.fd)
            try:
                libc.set_thread_name(DETACHED_NAME.encode())
            except OSError:
                pass
            fresh = Supervisor(sup.listener, track=False)   # no report to give: keep nothing
            never_r, _never_w = os.pipe()
            fresh.serve(never_r)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return int(data) if data else None


def _detach_from(keep_fd: int) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)
    logging.disable(logging.CRITICAL)
