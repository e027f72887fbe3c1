/*
 * libmptcpize-shim.so: preloaded by `mptcpize-py run --backend seccomp` into dynamically linked
 * programs, so that their TCP sockets are made as MPTCP sockets by the caller itself, with no round
 * trip through the seccomp supervisor. A socket made here carries exactly the caller's credentials,
 * cgroup, LSM label and network namespace: the supervisor's checks are not needed for it.
 *
 * It touches AF_INET/AF_INET6 SOCK_STREAM sockets of protocol 0 or IPPROTO_TCP only, with valid type
 * flags; every other call goes to the kernel unchanged. Where the namespace refuses MPTCP
 * (net.mptcp.enabled=0: ENOPROTOOPT; no MPTCP at all: EPROTONOSUPPORT) the caller gets its own TCP
 * socket.
 *
 * Counting, so that `run -v` stays exact: the supervisor shares a memfd (its fd number and a random
 * token in MPTCPIZE_SHIM="FD:TOKEN") holding one slot of counters per registered process. A process
 * registers at its first candidate socket(): a socket() syscall carrying SHIM_REGISTER and its slot in
 * the unused 4th/5th arguments, which the filter sends to the supervisor as any TCP socket(). The
 * supervisor records the process as it would at an upgrade (pid, start, exe, read from /proc) and
 * answers EALREADY (go ahead) or EXDEV (the supervisor decides each call: e.g. another user
 * namespace). Without the fd or the token (a program that closed it, a setuid exec), or without a
 * slot left, the shim stands aside and the supervisor answers every call, as for a static program.
 * The counters are written by the program itself: they are its own word about its sockets.
 *
 * A child made by fork() registers again (pthread_atfork); one made by a raw clone() syscall shares
 * its parent's slot, so its sockets count for the parent (totals stay exact).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <netinet/in.h>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

/* Shared with mptcpize_py/run/seccomp/shim.py (and the filter, for SHIM_PASS). */
#define SHIM_REGISTER 0x6d707472UL   /* 4th syscall argument: register, slot in the 5th */
#define SHIM_PASS     0x6d707470UL   /* 4th syscall argument: the caller's own TCP socket, not notified */
#define SHIM_GO       EALREADY       /* the supervisor's answers to SHIM_REGISTER */
#define SHIM_STAND_ASIDE EXDEV
#define SOCK_TYPE_MASK 0xf

struct shim_header {
	uint64_t token;
	uint32_t nslots;
	uint32_t next;       /* the next free slot, taken with an atomic add */
	uint64_t reserved[6];
};

struct shim_slot {
	uint64_t upgraded;   /* MPTCP sockets made here */
	uint64_t fallback;   /* TCP sockets made here because the namespace refused MPTCP */
};

enum { OFF, UNKNOWN, REGISTERING, ON };

static struct shim_header *hdr;
static struct shim_slot *slots;
static int state = OFF;
static uint32_t myslot;

static void after_fork_child(void)
{
	myslot = 0;
	__atomic_store_n(&state, hdr ? UNKNOWN : OFF, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void shim_init(void)
{
	const char *env = getenv("MPTCPIZE_SHIM");
	char *end;
	struct stat st;
	void *map;

	if (!env)
		return;
	long fd = strtol(env, &end, 10);
	if (end == env || *end != ':' || fd < 0 || fd > 0x7fffffff)
		return;
	uint64_t token = strtoull(end + 1, &end, 16);
	if (*end != '\0')
		return;
	if (fstat((int)fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(*hdr))
		return;
	map = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
	if (map == MAP_FAILED)
		return;
	hdr = map;
	if (hdr->token != token ||
	    sizeof(*hdr) + (uint64_t)hdr->nslots * sizeof(struct shim_slot) > (uint64_t)st.st_size) {
		munmap(map, st.st_size);
		hdr = NULL;
		return;
	}
	slots = (struct shim_slot *)(hdr + 1);
	if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
		hdr = NULL;
		return;
	}
	state = UNKNOWN;
}

static int upgrade(int domain, int type, int protocol)
{
	long fd = syscall(SYS_socket, domain, type, IPPROTO_MPTCP);   /* the filter lets MPTCP through */

	if (fd >= 0) {
		__atomic_add_fetch(&slots[myslot].upgraded, 1, __ATOMIC_RELAXED);
		return (int)fd;
	}
	if (errno == ENOPROTOOPT || errno == EPROTONOSUPPORT) {
		fd = syscall(SYS_socket, domain, type, protocol, SHIM_PASS, 0, 0);
		if (fd >= 0)
			__atomic_add_fetch(&slots[myslot].fallback, 1, __ATOMIC_RELAXED);
		return (int)fd;
	}
	/* Anything else (EMFILE, an LSM's EACCES): the call as without the shim, answered by the supervisor. */
	return (int)syscall(SYS_socket, domain, type, protocol);
}

static int register_then(int domain, int type, int protocol)
{
	int expected = UNKNOWN;

	if (!__atomic_compare_exchange_n(&state, &expected, REGISTERING, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return (int)syscall(SYS_socket, domain, type, protocol);  /* another thread registers */
	uint32_t slot = __atomic_fetch_add(&hdr->next, 1, __ATOMIC_RELAXED);
	if (slot >= hdr->nslots) {
		__atomic_store_n(&state, OFF, __ATOMIC_RELEASE);
		return (int)syscall(SYS_socket, domain, type, protocol);
	}
	long r = syscall(SYS_socket, domain, type, protocol, SHIM_REGISTER, (long)slot, 0);
	if (r >= 0) {
		/* The kernel made the socket itself: no supervisor answers this filter. Stand aside. */
		__atomic_store_n(&state, OFF, __ATOMIC_RELEASE);
		return (int)r;
	}
	if (errno == SHIM_GO) {
		myslot = slot;
		__atomic_store_n(&state, ON, __ATOMIC_RELEASE);
		return upgrade(domain, type, protocol);
	}
	if (errno == SHIM_STAND_ASIDE) {
		__atomic_store_n(&state, OFF, __ATOMIC_RELEASE);
		return (int)syscall(SYS_socket, domain, type, protocol);
	}
	__atomic_store_n(&state, UNKNOWN, __ATOMIC_RELEASE);   /* e.g. EINTR: try again next time */
	return -1;
}

int socket(int domain, int type, int protocol)
{
	if ((domain == AF_INET || domain == AF_INET6) && (type & SOCK_TYPE_MASK) == SOCK_STREAM &&
	    !(type & ~(SOCK_TYPE_MASK | SOCK_NONBLOCK | SOCK_CLOEXEC)) &&
	    (protocol == 0 || protocol == IPPROTO_TCP)) {
		int st = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
		if (st == ON)
			return upgrade(domain, type, protocol);
		if (st == UNKNOWN)
			return register_then(domain, type, protocol);
	}
	return (int)syscall(SYS_socket, domain, type, protocol);
}
