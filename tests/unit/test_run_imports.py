"""`run` through a running daemon (the fast path) imports only what it uses: every `run` pays for its
imports at start-up, and the daemon already does the work. A stand-in daemon (a thread answering
hello, register and run_report on a Unix socket) lets the real `mptcpize-py run true` take that
path in a subprocess, which then lists the modules it imported beyond what the interpreter's own
start-up (site) had loaded."""

import json
import os
import socket
import subprocess
import textwrap
import threading

import pytest

from tests.conftest import CHECKOUT_PYTHON, cli_env
from tests.waiting import scaled

# What the fast path may import from this package: the command line, the run driver, the daemon's
# client and the wire format it speaks.
ALLOWED_OURS = {
    "mptcpize_py", "mptcpize_py.__main__", "mptcpize_py.cli", "mptcpize_py.errors",
    "mptcpize_py.locations", "mptcpize_py.run", "mptcpize_py.run.backend", "mptcpize_py.run.spawn",
    "mptcpize_py.run.bpf", "mptcpize_py.daemon", "mptcpize_py.daemon.client",
    "mptcpize_py.daemon.protocol",
}
# Never on the fast path: the compiler, the policy and what serves other commands (status and its
# renderers, systemd, /proc parsing, kernel probes), and the heavier standard modules they pull in.
FORBIDDEN = {"bcc", "psutil", "pyroute2", "systemd", "argparse", "logging", "dataclasses",
             "mptcpize_py.report", "mptcpize_py.status", "mptcpize_py.display",
             "mptcpize_py.support", "mptcpize_py.resolve", "mptcpize_py.host.systemd",
             "mptcpize_py.host.procfs", "mptcpize_py.program.loader", "mptcpize_py.program.btf",
             "mptcpize_py.daemon.service", "mptcpize_py.daemon.control"}
FORBIDDEN_PREFIXES = ("mptcpize_py.policy", "mptcpize_py.program", "mptcpize_py.diag", "bcc.")

# Runs in the subprocess: the real CLI, `run ARGS...`, then the modules it added to those site loaded.
PROBE = textwrap.dedent("""
    import os, sys
    before = set(sys.modules)
    os.geteuid = lambda: 0   # daemon_backend() wants root; the stand-in daemon checks no one
    from mptcpize_py.cli import main
    rc = main(sys.argv[1:])
    sys.stderr.write("MODULES " + " ".join(sorted(set(sys.modules) - before)) + "\\n")
    sys.exit(rc)
""")


class StandInDaemon:
    """Answers the control socket's fast-path requests the way the daemon does; records them."""

    def __init__(self, path: str):
        self.path = path
        self.seen: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                cmd = json.loads(data)["cmd"]
                self.seen.append(cmd)
                resp = {"hello": {"ok": True, "pid": os.getpid(), "backend": "bpf"},
                        "register": {"ok": True, "run_id": 7},
                        "run_report": {"ok": True, "processes": []}}[cmd]
                conn.sendall(json.dumps(resp).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def standin(tmp_path):
    d = StandInDaemon(str(tmp_path / "control"))
    yield d
    d.close()


def run_fast_path(standin, *args) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = cli_env({**os.environ, "MPTCPIZE_CONTROL": standin.path})
    res = subprocess.run([*CHECKOUT_PYTHON, "-c", PROBE, "run", *args], env=env, capture_output=True,
                         text=True, timeout=scaled(60))
    lines = [line for line in res.stderr.splitlines() if line.startswith("MODULES ")]
    assert lines, res.stderr
    return res, set(lines[-1].split()[1:])


def test_run_via_the_daemon_imports_only_what_it_uses(standin):
    res, modules = run_fast_path(standin, "true")
    assert res.returncode == 0, res.stderr
    assert standin.seen == ["hello", "register", "run_report"]   # it did take the fast path
    ours = {m for m in modules if m == "mptcpize_py" or m.startswith("mptcpize_py.")}
    assert ours <= ALLOWED_OURS, f"the fast path imported {sorted(ours - ALLOWED_OURS)}"
    heavy = {m for m in modules if m in FORBIDDEN or m.startswith(FORBIDDEN_PREFIXES)}
    assert not heavy, f"the fast path imported {sorted(heavy)}"


def test_run_verbose_via_the_daemon_adds_only_the_report(standin):
    res, modules = run_fast_path(standin, "-v", "true")
    assert res.returncode == 0, res.stderr
    assert "via the daemon" in res.stderr
    heavy = {m for m in modules if m.startswith(FORBIDDEN_PREFIXES) or m in
             {"bcc", "psutil", "pyroute2", "systemd", "mptcpize_py.host.systemd",
              "mptcpize_py.support", "mptcpize_py.daemon.service"}}
    assert not heavy, f"`run -v` via the daemon imported {sorted(heavy)}"


def test_the_probe_sees_what_another_command_imports(tmp_path):
    # The measure itself: `status` (no daemon here: exit 3) imports the status model.
    env = cli_env({**os.environ, "MPTCPIZE_CONTROL": str(tmp_path / "none")})
    res = subprocess.run([*CHECKOUT_PYTHON, "-c", PROBE, "status"], env=env, capture_output=True,
                         text=True, timeout=scaled(60))
    assert res.returncode == 3, res.stderr
    line = [x for x in res.stderr.splitlines() if x.startswith("MODULES ")][-1]
    assert "mptcpize_py.status" in line.split()
