"""Two processes with the same pid, one after the other: what a busy machine does by itself once its
pids wrap (pid_max), forced here as root through /proc/sys/kernel/ns_last_pid (the last pid this pid
namespace handed out: the next fork gets the one after it, if it is free).

Importable (popen_at) and a program: `samepid.py FIRST SECOND` runs the executable FIRST, waits for it,
then runs SECOND as the same pid, and prints {"pids": [..], "outputs": [..]} as JSON. A test runs it
under `mptcpize-py run -v` to see what the report says about the two. Needs nothing but the stdlib: it
runs under whatever interpreter the test chooses, outside the checkout's sys.path."""

import json
import os
import subprocess
import sys

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
ATTEMPTS = 500   # other processes fork too; each attempt costs one short-lived fork


class PidTaken(RuntimeError):
    pass


def popen_at(pid: int, argv: list[str], before_exec=None, **kw) -> subprocess.Popen:
    """subprocess.Popen(argv, **kw) whose process is `pid` (which must be free: its previous owner
    reaped). before_exec() runs in the child, as preexec_fn would. Retries while other processes take
    the pid first; raises PidTaken when they always do."""
    def only_as_pid():
        if os.getpid() != pid:
            raise OSError("not the wanted pid")   # the child exits: Popen raises SubprocessError
        if before_exec is not None:
            before_exec()

    for _ in range(ATTEMPTS):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        try:
            return subprocess.Popen(argv, preexec_fn=only_as_pid, **kw)
        except subprocess.SubprocessError:
            continue
    raise PidTaken(f"could not start {argv[0]} as pid {pid} in {ATTEMPTS} attempts")


def main(first: str, second: str) -> int:
    outputs, pids = [], []
    p = subprocess.Popen([first], stdout=subprocess.PIPE, text=True)
    outputs.append(p.communicate()[0].strip())
    pids.append(p.pid)
    p = popen_at(pids[0], [second], stdout=subprocess.PIPE, text=True)
    outputs.append(p.communicate()[0].strip())
    pids.append(p.pid)
    print(json.dumps({"pids": pids, "outputs": outputs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
