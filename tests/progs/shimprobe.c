/* Dynamically linked (so that the seccomp backend's preloaded shim reaches its libc socket() calls).
 *
 *   shimprobe kinds          one socket of each kind; prints "NAME SO_PROTOCOL" per line, then
 *                            "shim mapped|absent" (whether libmptcpize-shim*.so is in /proc/self/maps)
 *   shimprobe fork N M       N TCP sockets here, M in a fork()ed child; prints "PID COUNT" for both
 *   shimprobe connect        a TCP listener on 127.0.0.1 and a connection to it, a byte through it;
 *                            prints "SO_PROTOCOL(listener) SO_PROTOCOL(client) ok"
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int proto_of(int fd)
{
	int p = -1;
	socklen_t len = sizeof(p);

	if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &p, &len) < 0)
		return -1;
	return p;
}

static void one(const char *name, int family, int type, int protocol)
{
	int fd = socket(family, type, protocol);

	printf("%s %d\n", name, fd < 0 ? -1 : proto_of(fd));
	if (fd >= 0)
		close(fd);
}

static int tcp_sockets(int n)
{
	for (int i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || proto_of(fd) != 262)
			return 1;
		close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "kinds") == 0) {
		char line[512];
		int mapped = 0;
		FILE *maps = fopen("/proc/self/maps", "r");

		one("tcp4", AF_INET, SOCK_STREAM, 0);
		one("tcp6", AF_INET6, SOCK_STREAM, 0);
		one("tcp4-proto6", AF_INET, SOCK_STREAM, IPPROTO_TCP);
		one("tcp4-flags", AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		one("udp4", AF_INET, SOCK_DGRAM, 0);
		one("unix-stream", AF_UNIX, SOCK_STREAM, 0);
		one("mptcp4", AF_INET, SOCK_STREAM, 262);
		while (maps && fgets(line, sizeof(line), maps))
			mapped |= strstr(line, "/libmptcpize-shim") != NULL;
		printf("shim %s\n", mapped ? "mapped" : "absent");
		return 0;
	}
	if (argc == 4 && strcmp(argv[1], "fork") == 0) {
		int n = atoi(argv[2]), m = atoi(argv[3]), status;
		pid_t child;

		if (tcp_sockets(n))
			return 2;
		fflush(stdout);
		child = fork();
		if (child == 0) {
			if (tcp_sockets(m))
				_exit(2);
			printf("%d %d\n", (int)getpid(), m);
			fflush(stdout);
			_exit(0);
		}
		if (child < 0 || waitpid(child, &status, 0) < 0 || status != 0)
			return 3;
		printf("%d %d\n", (int)getpid(), n);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "connect") == 0) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof(a);
		char c = 0;
		int l = socket(AF_INET, SOCK_STREAM, 0), s, acc;

		if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
		    getsockname(l, (struct sockaddr *)&a, &len)) {
			perror("listener");
			return 2;
		}
		s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) || (acc = accept(l, NULL, NULL)) < 0 ||
		    write(s, "x", 1) != 1 || read(acc, &c, 1) != 1 || c != 'x') {
			perror("connection");
			return 3;
		}
		printf("%d %d ok\n", proto_of(l), proto_of(s));
		return 0;
	}
	fprintf(stderr, "usage: %s kinds | fork N M | connect\n", argv[0]);
	return 64;
}
