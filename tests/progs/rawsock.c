/* Statically linked: calls the socket syscall directly (no libc wrapper an LD_PRELOAD could catch) and
 * prints SO_PROTOCOL of the result, e.g. "262". Argument "6" uses AF_INET6. */
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int family = (argc > 1 && argv[1][0] == '6') ? AF_INET6 : AF_INET;
	long fd = syscall(SYS_socket, family, SOCK_STREAM, 0);
	int proto = -1;
	socklen_t len = sizeof(proto);

	if (fd < 0) {
		perror("socket");
		return 2;
	}
	if (getsockopt((int)fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0) {
		perror("getsockopt");
		return 3;
	}
	printf("%d\n", proto);
	return 0;
}
