/* Statically linked: calls the socket syscall directly (no libc wrapper an LD_PRELOAD could catch) and
 * prints SO_PROTOCOL of the result, e.g. "262". Argument "6" uses AF_INET6 ("4": AF_INET); a second
 * argument "wait" keeps it alive until its stdin closes, so a test can look at it while it lives. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int family = (argc > 1 && argv[1][0] == '6') ? AF_INET6 : AF_INET;
	long fd = syscall(SYS_socket, family, SOCK_STREAM, 0);
	int proto = -1;
	socklen_t len = sizeof(proto);
	char buf[64];

	if (fd < 0) {
		perror("socket");
		return 2;
	}
	if (getsockopt((int)fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0) {
		perror("getsockopt");
		return 3;
	}
	printf("%d\n", proto);
	fflush(stdout);
	if (argc > 2 && strcmp(argv[2], "wait") == 0)
		while (read(0, buf, sizeof(buf)) > 0)
			;
	return 0;
}
