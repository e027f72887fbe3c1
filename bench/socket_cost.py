"""Cost of one socket()+close(), as ratios measured in one run (library for native_bench/vm_bench, and
a quick standalone table).

bench/socketloop.c (built here with gcc, dynamically linked so that an LD_PRELOAD can reach it) creates
and closes N sockets and prints ns per iteration. Cases run in rounds; each round runs every case once,
and every other round in the reverse order (A B C, C B A, ...), so slow drift and a neighbour's load hit
all cases alike. The best (least disturbed) run of each case counts; the median is kept too. Every case
states the protocol its sockets must have (SO_PROTOCOL of the first and last socket), so a wrapper that
silently did nothing is reported, not measured.

Standalone (native): native TCP, native MPTCP (the denominator), `mptcpize-py run --backend seccomp`,
mptcpd's `mptcpize run` (LD_PRELOAD of libmptcpwrap):

    /opt/mptcpize-py/venv/bin/python bench/socket_cost.py [-n 20000] [-r 5]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOP_SRC = HERE / "socketloop.c"
IPPROTO_TCP, IPPROTO_MPTCP = 6, 262


class BenchError(Exception):
    """A benchmark could not measure what it claims to (a wrapper did nothing, a program failed)."""


def build_loop(dest_dir: str) -> str:
    """Compiles bench/socketloop.c into dest_dir; returns the executable's path."""
    if shutil.which("gcc") is None:
        raise BenchError("gcc is needed to build bench/socketloop.c (apt-get install gcc)")
    out = os.path.join(dest_dir, "socketloop")
    subprocess.run(["gcc", "-O2", "-o", out, str(LOOP_SRC)], check=True)
    return out


def build_static_loop(dest_dir: str) -> str:
    """bench/socketloop.c as a static binary calling syscall(SYS_socket): what no LD_PRELOAD reaches."""
    out = os.path.join(dest_dir, "socketloop-static")
    subprocess.run(["gcc", "-O2", "-static", "-DRAW_SYSCALL", "-o", out, str(LOOP_SRC)], check=True)
    return out


@dataclass
class Case:
    argv: list[str]
    proto: int                              # the SO_PROTOCOL its sockets must have
    before: Callable[[], None] | None = None  # e.g. attach or detach the program
    env: dict | None = None


@dataclass
class Result:
    runs: list[float] = field(default_factory=list)   # ns per iteration, one per round

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def run_loop(name: str, case: Case) -> float:
    """One run of the loop; returns ns per iteration."""
    if case.before is not None:
        case.before()
    out = subprocess.run(case.argv, capture_output=True, text=True, env=case.env)
    if out.returncode != 0:
        raise BenchError(f"{name}: {case.argv[0]} failed ({out.returncode}): {out.stderr.strip()}")
    try:
        ns, proto, wrong = out.stdout.split()[-3:]
    except ValueError:
        raise BenchError(f"{name}: unexpected output {out.stdout!r}") from None
    if int(proto) != case.proto or (case.proto == IPPROTO_MPTCP and int(wrong)):
        raise BenchError(f"{name}: sockets had SO_PROTOCOL {proto}, expected {case.proto}")
    return float(ns)


def measure(cases: dict[str, Case], rounds: int, progress: Callable[[str], None] | None = None
            ) -> dict[str, Result]:
    """Runs every case once per round, alternating the order; returns every run of every case."""
    results = {name: Result() for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else reversed(names)):
            results[name].runs.append(run_loop(name, cases[name]))
        if progress:
            progress(f"round {r + 1}/{rounds}: " +
                     ", ".join(f"{n} {results[n].runs[-1]:.0f}" for n in names) + " ns")
    return results


def native_cases(loop: str, n: int, static_loop: str | None = None) -> dict[str, Case]:
    """The standalone set: what a process pays per socket with each way of getting MPTCP here.
    seccomp: a dynamically linked loop (libc's socket(), reached by the preloaded shim);
    seccomp-static: a static one calling syscall(SYS_socket) (answered by the supervisor)."""
    cli = str(Path(sys.executable).parent / "mptcpize-py")
    cases = {
        "native-tcp": Case([loop, str(n), "0"], IPPROTO_TCP),
        "native-mptcp": Case([loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP),
        "seccomp": Case([cli, "run", "--backend", "seccomp", loop, str(n), "0"], IPPROTO_MPTCP),
    }
    if static_loop:
        cases["static-mptcp"] = Case([static_loop, str(n), str(IPPROTO_MPTCP)], IPPROTO_MPTCP)
        cases["seccomp-static"] = Case([cli, "run", "--backend", "seccomp", static_loop, str(n), "0"],
                                       IPPROTO_MPTCP)
    mptcpize = shutil.which("mptcpize")
    if mptcpize:
        cases["mptcpize"] = Case([mptcpize, "run", loop, str(n), "0"], IPPROTO_MPTCP)
    return cases


def main() -> int:
    import tempfile
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--iterations", type=int, default=20000)
    ap.add_argument("-r", "--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mzb-") as tmp:
        cases = native_cases(build_loop(tmp), args.iterations, build_static_loop(tmp))
        res = measure(cases, args.rounds, progress=lambda m: print(m, file=sys.stderr))
    base = res["native-mptcp"].best
    print(f"socket()+close() x {args.iterations}, best of {args.rounds} alternating rounds, "
          f"{os.cpu_count()} CPU(s), kernel {os.uname().release}")
    print(f"{'case':<14} {'best ns':>9} {'median ns':>10} {'best / native MPTCP':>20}")
    for name, r in res.items():
        print(f"{name:<14} {r.best:>9.0f} {r.median:>10.0f} {r.best / base:>19.2f}x")
    if "mptcpize" not in res:
        print("mptcpize: not installed (apt-get install mptcpize)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"socket_cost: {e}")
