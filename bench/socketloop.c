/*
 * The benchmarks' socket loop: socket(AF_INET, SOCK_STREAM, PROTO) + close(), as fast as it can.
 * Built by bench/socket_cost.py with gcc at bench time, dynamically linked so that an LD_PRELOAD
 * wrapper (mptcpd's `mptcpize run`) can reach the libc call.
 *
 *   socketloop N PROTO        N iterations; prints "NS_PER_ITER SO_PROTOCOL WRONG"
 *   socketloop -t SECS PROTO  for SECS seconds; prints "PID COUNT SO_PROTOCOL WRONG"
 *
 * Built with -DRAW_SYSCALL -static, it calls syscall(SYS_socket) itself: what a static binary or Go
 * does, which no preloaded library reaches.
 *
 * PROTO is 0 (what applications ask for: TCP unless something upgrades it) or 262 (IPPROTO_MPTCP).
 * SO_PROTOCOL is read from the first and the last socket only (outside the steady state); WRONG
 * counts those that were not MPTCP, so a wrapper that silently did nothing shows up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int one(int proto, int check, int *got, int *wrong)
{
#ifdef RAW_SYSCALL
	int fd = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, proto);
#else
	int fd = socket(AF_INET, SOCK_STREAM, proto);
#endif
	if (fd < 0) {
		perror("socket");
		return -1;
	}
	if (check) {
		socklen_t len = sizeof(*got);
		getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, got, &len);
		*wrong += *got != 262;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	int got = -1, wrong = 0;

	if (argc == 4 && strcmp(argv[1], "-t") == 0) {
		double secs = atof(argv[2]), end;
		int proto = atoi(argv[3]);
		long n = 0;

		if (one(proto, 1, &got, &wrong))
			return 2;
		n++;
		end = now() + secs;
		for (;;) {
			/* the clock is read once per 256 sockets: cheap next to 256 socket() calls */
			for (int i = 0; i < 256; i++, n++)
				if (one(proto, 0, &got, &wrong))
					return 2;
			if (now() >= end)
				break;
		}
		if (one(proto, 1, &got, &wrong))
			return 2;
		n++;
		printf("%d %ld %d %d\n", (int)getpid(), n, got, wrong);
		return 0;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: %s N PROTO | -t SECS PROTO\n", argv[0]);
		return 64;
	}
	long n = atol(argv[1]);
	int proto = atoi(argv[2]);
	double a = now();
	for (long i = 0; i < n; i++)
		if (one(proto, i == 0 || i == n - 1, &got, &wrong))
			return 2;
	double b = now();
	printf("%.1f %d %d\n", (b - a) * 1e9 / n, got, wrong);
	return 0;
}
