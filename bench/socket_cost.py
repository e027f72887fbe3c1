"""Cost of one upgraded socket()+close(), as ratios measured in one run.

A small C loop (compiled here with gcc, dynamically linked so that an LD_PRELOAD can reach it) creates
and closes N sockets and prints ns per iteration. It runs:

  native-tcp     socket(AF_INET, SOCK_STREAM, 0)              no wrapper
  native-mptcp   socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)  no wrapper   <- the denominator
  seccomp        socket(AF_INET, SOCK_STREAM, 0) under `mptcpize-py run --backend seccomp`
  mptcpize       socket(AF_INET, SOCK_STREAM, 0) under mptcpd's `mptcpize run` (LD_PRELOAD of
                 libmptcpwrap, which rewrites the protocol in the libc call)

Each case runs REPEATS times; the best (least disturbed) run counts. Every case checks SO_PROTOCOL of
its sockets, so a wrapper that silently did nothing is reported, not measured.

    /opt/mptcpize-py/venv/bin/python bench/socket_cost.py [-n 20000] [-r 3]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = atol(argv[1]);
	int proto = atoi(argv[2]), got = -1, wrong = 0;
	socklen_t len = sizeof(got);
	struct timespec a, b;

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, proto);
		if (fd < 0) { perror("socket"); return 2; }
		if (i == 0 || i == n - 1) {  /* outside the timed steady state: two checks are enough */
			getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &got, &len);
			wrong += got != 262;
		}
		close(fd);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f %d %d\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n, got, wrong);
	return 0;
}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--iterations", type=int, default=20000)
    ap.add_argument("-r", "--repeats", type=int, default=3)
    args = ap.parse_args()

    if shutil.which("gcc") is None:
        sys.exit("socket_cost: gcc is needed to build the loop")
    cli = Path(sys.executable).parent / "mptcpize-py"
    mptcpize = shutil.which("mptcpize")

    with tempfile.TemporaryDirectory(prefix="mz-bench-") as tmp:
        loop = os.path.join(tmp, "socketloop")
        subprocess.run(["gcc", "-O2", "-o", loop, "-x", "c", "-"], input=LOOP_C, text=True, check=True)
        n = str(args.iterations)
        cases = {
            "native-tcp": [loop, n, "0"],
            "native-mptcp": [loop, n, "262"],
            "seccomp": [str(cli), "run", "--backend", "seccomp", loop, n, "0"],
        }
        if mptcpize:
            cases["mptcpize"] = [mptcpize, "run", loop, n, "0"]

        best: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so that a noisy moment hits every case alike
            for name, argv in cases.items():
                out = subprocess.run(argv, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"socket_cost: {name} failed ({out.returncode}): {out.stderr.strip()}")
                ns, proto, wrong = out.stdout.split()
                if name != "native-tcp" and (int(proto) != 262 or int(wrong)):
                    sys.exit(f"socket_cost: {name}: sockets were not MPTCP (SO_PROTOCOL {proto})")
                best[name] = min(best.get(name, float("inf")), float(ns))

    base = best["native-mptcp"]
    print(f"socket()+close() x {args.iterations}, best of {args.repeats}, "
          f"{os.cpu_count()} CPU(s), kernel {os.uname().release}")
    print(f"{'case':<14} {'ns/iter':>10} {'vs native MPTCP':>16}")
    for name, ns in best.items():
        print(f"{name:<14} {ns:>10.0f} {ns / base:>15.2f}x")
    if not mptcpize:
        print("mptcpize      (not installed: apt-get install mptcpize)")
    print(f"ratio seccomp/native-mptcp: {best['seccomp'] / base:.1f}")
    if mptcpize:
        print(f"ratio mptcpize/native-mptcp: {best['mptcpize'] / base:.2f}")
        print(f"ratio seccomp/mptcpize: {best['seccomp'] / best['mptcpize']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
