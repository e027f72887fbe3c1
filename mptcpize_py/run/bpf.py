"""The BPF backends of `run`: our own program (BpfRunBackend), or the running daemon's
(DaemonRunBackend, the fast path). The fast path imports this module and the control socket's
client only: what BpfRunBackend needs (the loader, /proc, a thread) is imported when it is made."""

import os
from typing import TYPE_CHECKING

from mptcpize_py.errors import MptcpizeError
from mptcpize_py.run.backend import ProcessReport, ProcessSummary, RunBackend

if TYPE_CHECKING:
    from pathlib import Path

    from mptcpize_py.program.handle import ProgramHandle


class BpfRunBackend(RunBackend):
    """The fmod_ret program on update_socket_protocol, selecting CMD's process tree by tgid."""

    name = "bpf"
    handed_off_pid = None   # the link dies with us: nothing outlives CMD's run

    def __init__(self) -> None:
        import threading

        from mptcpize_py.program.rewriter import Rewriter  # BPF maps (libbpf): only for this backend
        rewriter = Rewriter(all_netns=True)
        self.loader = getattr(rewriter, "loader", None)   # "libbpf" or "bcc", for `run -v`
        self._rewriter: ProgramHandle = rewriter
        # By process, (tgid, start_ns) as the kernel counts them: a pid recycled within the run is
        # another process, with its own row.
        self._exe: dict[tuple[int, int], str | None] = {}
        self._comm: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="mptcpize-events", daemon=True)
        self._rewriter.open_events(self._on_event)

    def spawn_env(self, env: dict[str, str]) -> dict[str, str] | None:
        return None

    def pass_fds(self) -> tuple[int, ...]:
        return ()

    def child_setup(self) -> None:
        # In the child, before exec: it joins the run tree itself, so nothing can precede it.
        self._rewriter.add_run_root(os.getpid())

    def started(self, pid: int) -> None:
        self._thread.start()

    def _on_event(self, ev) -> None:
        # Name the executable at the first upgrade, while the process most likely still exists;
        # finish() falls back to what the kernel saw at exec, then to the command name.
        from mptcpize_py.host import procfs
        key = (ev.tgid, ev.start_ns)
        if key not in self._exe:
            self._exe[key] = procfs.exe_of_process(ev.tgid, ev.start_ns)
            if self._exe[key] is None:
                self._comm[key] = ev.comm

    def _exe_of(self, tgid: int, start_ns: int) -> str:
        return (self._exe.get((tgid, start_ns)) or self._rewriter.exe_name(tgid, start_ns)
                or f"[{self._comm.get((tgid, start_ns), '?')}]")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._rewriter.poll_events(100)

    def finish(self) -> list[ProcessReport]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._rewriter.drain_events()
        return [ProcessReport(s.tgid, self._exe_of(s.tgid, s.start_ns), s.upgraded)
                for s in sorted(self._rewriter.proc_stats(), key=lambda s: (s.tgid, s.start_ns))]

    def summarized(self) -> list[ProcessSummary]:
        return []   # every process has its row

    def counters(self) -> dict[str, int]:
        return self._rewriter.counters()

    def close(self) -> None:
        self._stop.set()
        self._rewriter.close()


class DaemonRunBackend(RunBackend):
    """The fast path: the running daemon's program already sits on the hook, so CMD only has to join
    its run tree. The child registers itself (pid == peer pid, before exec) over the control socket and
    execs only after the daemon's answer, so its first socket() is covered; nothing is compiled here.
    The run tree ignores the daemon's [netns] choice (like a standalone run) but not
    net.mptcp.enabled=0."""

    name = "bpf"
    handed_off_pid = None   # the daemon keeps serving the tree: no process of ours to report

    def __init__(self, path: "Path", hello: dict):
        self.path = path
        self.daemon_pid = hello.get("pid")
        self.name = f"bpf (via the daemon, pid {self.daemon_pid})"
        self.run_id: int | None = None
        self._r, self._w = os.pipe2(os.O_CLOEXEC)  # the child reports its run id through it

    def spawn_env(self, env: dict[str, str]) -> dict[str, str] | None:
        return None

    def pass_fds(self) -> tuple[int, ...]:
        return ()

    def child_setup(self) -> None:
        from mptcpize_py.daemon import client
        os.close(self._r)
        resp = client.request({"cmd": "register", "pid": os.getpid()}, self.path, timeout=10)
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
        from mptcpize_py.daemon import client
        resp = client.request({"cmd": "run_report", "run_id": self.run_id}, self.path, timeout=10)
        return [ProcessReport(r["pid"], r.get("exe") or "?", r["upgraded"]) for r in resp["processes"]]

    def summarized(self) -> list[ProcessSummary]:
        return []   # every process has its row

    def counters(self) -> None:
        return None   # the daemon's counters cover every process it upgrades, not this run only

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def daemon_backend() -> DaemonRunBackend | None:
    """DaemonRunBackend when a daemon answers on its control socket and we may use it (root), else
    None. Costs one round trip."""
    if os.geteuid() != 0:
        return None
    from mptcpize_py.daemon import client
    path = client.control_path()
    if not os.path.exists(path):
        return None
    try:
        hello = client.request({"cmd": "hello"}, path, timeout=2)
    except MptcpizeError:
        return None
    if hello.get("backend") != "bpf":   # a dry-run daemon upgrades nothing
        return None
    return DaemonRunBackend(path, hello)
