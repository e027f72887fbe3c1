"""A process a test drives line by line, to see what the kernel side decides for a process that lives
on while its circumstances change (its cgroup, its executable, the policy). Its stdin takes "N" (make
N TCP sockets, closing each, and answer "PID PROTO": the last one's SO_PROTOCOL) or "exec PATH ARG..."
(exec PATH, e.g. a rawsock, which then answers its own line). It runs the test's interpreter (Python:
selected by no exe rule of the tests' policies)."""

import os
import subprocess
import sys

PROGRAM = """
import os, socket, sys
for line in sys.stdin:
    words = line.split()
    if words[0] == "exec":
        os.execv(words[1], words[1:])
    proto = None
    for _ in range(int(words[0])):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    print(os.getpid(), proto, flush=True)
"""


class Driven:
    def __init__(self, cgroup: str | None = None):
        """cgroup: a cgroup v2 directory to start in (before the interpreter runs)."""
        def join():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        self.proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     preexec_fn=join if cgroup else None)
        self.pid = self.proc.pid

    def ask(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()

    def answer(self) -> str:
        """The SO_PROTOCOL of the last socket of the last request."""
        pid, proto = self.proc.stdout.readline().split()
        assert int(pid) == self.pid
        return proto

    def sockets(self, n: int) -> str:
        self.ask(n)
        return self.answer()

    def exec(self, *argv: str) -> str:
        """execs argv (a rawsock: one socket, then its SO_PROTOCOL); returns that line."""
        self.proc.stdin.write("exec " + " ".join(argv) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def move_to(self, cgroup: str) -> None:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(self.pid))

    def close(self, timeout: float = 60) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
