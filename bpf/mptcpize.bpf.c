// SPDX-License-Identifier: GPL-2.0
/*
 * mptcpize kernel side, for two loaders (bpf/loaders.h): compiled once at build time with clang and
 * loaded with libbpf (CO-RE), or compiled at start-up by bcc. Linux >= 6.6 (commit 0dd061a6a115) calls
 * update_socket_protocol(family, type, protocol) from socket(); an fmod_ret program there may return
 * IPPROTO_MPTCP instead of 0/IPPROTO_TCP. The hook is global, so selection lives here, in maps that
 * userspace fills: a `run` process tree (tgids, inherited at fork), executable identities, cgroup ids
 * (the cgroup and its ancestors), deny entries that beat allow entries, and a netns allow set.
 * Whatever happens, a namespace where net.mptcp.enabled=0 is left alone: socket(..., IPPROTO_MPTCP)
 * fails there with ENOPROTOOPT, so rewriting would break a working TCP socket().
 */
#include "loaders.h"   /* bcc or libbpf: see there */
#include "mptcpize.h"

/*
 * Kernel structs are read at offsets of the running kernel, never from a headers tree: bcc gets them
 * from its BTF as -DOFF_* (mptcpize_py/program/btf.py STRUCT_FIELDS), libbpf relocates the same
 * OFF_* names (bpf/loaders.h) against it at load time. So the same source reads the right bytes on
 * every kernel, and bcc may compile it against whatever headers are installed.
 * MPTCPIZE_DRY_RUN builds the same decision on the socket() syscall tracepoint instead of the
 * fmod_ret hook: it counts and reports what would be upgraded and changes nothing.
 */
#ifndef OFF_TASK_MM
#error "bcc: compile with the -DOFF_* offsets from mptcpize_py/program/btf.py"
#endif

static __always_inline u64 read_ptr(u64 base, u32 off)
{
	u64 v = 0;
	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

static __always_inline u32 read_u32(u64 base, u32 off)
{
	u32 v = 0;
	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

/*
 * The same reads for objects reached from bpf_get_current_task_btf() (Linux >= 5.11): the verifier
 * knows each pointer's type from the kernel's BTF, checks the offset against it, and the JIT turns
 * the load into a plain, fault-safe one (BPF_PROBE_MEM) instead of a bpf_probe_read_kernel() call:
 * a few ns each instead of ~10, on the path every TCP socket() of the machine takes. A NULL pointer
 * reads as 0 (the test also tells the verifier a possibly-NULL pointer is not NULL where it loads).
 */
#define TASK_PTR(base, off) ((base) ? *(u64 *)((base) + (off)) : 0)
#define TASK_U32(base, off) ((base) ? *(u32 *)((base) + (off)) : 0)

#define AF_INET_ 2
#define AF_INET6_ 10
#define SOCK_STREAM_ 1
#define SOCK_TYPE_MASK_ 0xf
#define IPPROTO_TCP_ 6

BPF_ARRAY(settings, struct mptcpize_config, 1);   /* not "config": a kernel typedef of that name is in vmlinux.h */
BPF_HASH(run_tgids, u32, struct mptcpize_run_entry, MPTCPIZE_MAX_RUN_TGIDS);
BPF_HASH(exe_rules, struct mptcpize_exe_key, struct mptcpize_rule, MPTCPIZE_MAX_EXE_RULES);
BPF_HASH(cgroup_rules, u64, struct mptcpize_rule, MPTCPIZE_MAX_CGROUP_RULES);
BPF_HASH(netns_allow, u32, u8, MPTCPIZE_MAX_NETNS);
/* net.mptcp.enabled per netns inode, filled by userspace: used only where kernel memory cannot be
 * read (no mptcp_pernet_id in /proc/kallsyms), and only by the dry run. */
BPF_HASH(netns_mptcp, u32, u8, MPTCPIZE_MAX_NETNS);
/* Per process, kept after it exits (reports come later; the LRU forgets the oldest). */
BPF_LRU_HASH(proc_stats, struct mptcpize_proc_key, struct mptcpize_proc_stats, MPTCPIZE_MAX_PROCS);
/* Exact totals per rule id: processes come and go (LRU), rules stay. An array, not a hash: its
 * lookup is an index (no hashing), there is no insert at a rule's first socket, and no atomic add:
 * each CPU counts in its own copy, userspace sums them. */
BPF_PERCPU_ARRAY(rule_stats, u64, MPTCPIZE_MAX_RULE_STATS);
BPF_LRU_HASH(exe_names, struct mptcpize_proc_key, struct mptcpize_exe_name, MPTCPIZE_MAX_PROCS);
BPF_PERCPU_ARRAY(counters, u64, MPTCPIZE_CNT_MAX);
BPF_RINGBUF_OUTPUT(events, MPTCPIZE_RINGBUF_PAGES);

/*
 * Per thread: the verdict of select_task() at its last TCP socket(), reused by its next ones. Most
 * TCP sockets of a machine come from processes nothing selects, and every one pays for the selection
 * (run tree, executable identity, the cgroup walk: ~1.2 us of a ~18 us socket()+close() under the test
 * VM's emulation, where an emulated hash lookup is dear); a verdict that holds costs one task-storage
 * lookup and the cgroup id. It holds while the thread is in the same cgroup (a cgroup rule matches
 * by the cgroup and its ancestors), until the thread execs (the executable changes: deleted at
 * sched_process_exec) and for MPTCPIZE_VERDICT_TTL_JIFFIES at most, so that a policy change, which
 * userspace makes in the maps, reaches every thread within that time. New threads and processes
 * start without one (task storage is not inherited at fork). Kernel-internal: userspace never reads it
 * (struct mptcpize_verdict is in mptcpize.h with the other layouts).
 */
BPF_TASK_STORAGE(verdicts, struct mptcpize_verdict);

/*
 * The process a task belongs to, as a key: a pid is recycled once its process is gone, its start
 * is not. The thread-group leader's start_boottime is the process's start (a thread that execs
 * takes over its leader's, fs/exec.c de_thread()); /proc/PID/stat field 22 is the same value in
 * clock ticks (fs/proc/array.c: nsec_to_clock_t(timens_add_boottime_ns(start_boottime))).
 */
static __always_inline struct mptcpize_proc_key proc_key(u64 task, u32 tgid)
{
	struct mptcpize_proc_key key = {};
	u64 leader = TASK_PTR(task, OFF_TASK_GROUP_LEADER);
	key.start_ns = TASK_PTR(leader, OFF_TASK_START_BOOTTIME);
	key.tgid = tgid;
	return key;
}

static __always_inline void count(u32 idx)
{
	u64 *c = MAP_LOOKUP(counters, &idx);
	if (c)
		(*c)++;
}

/*
 * net.mptcp.enabled of the namespace, read where the kernel keeps it: net->gen->ptr[mptcp_pernet_id]
 * is a struct mptcp_pernet (net/mptcp/ctrl.c, private, so its offset comes from BTF at load time:
 * find_netns_guard below under libbpf, program/support.py under bcc).
 * Returns 1/0, or -1 when it cannot be read (then we do not rewrite: fail towards plain TCP).
 */
static __always_inline int netns_mptcp_enabled(u64 net, u32 netns, struct mptcpize_config *cfg)
{
	unsigned int id = 0;
	u8 enabled = 0;

	if (!cfg->pernet_id_addr) {
#ifdef MPTCPIZE_DRY_RUN
		u8 *known = MAP_LOOKUP(netns_mptcp, &netns);
		return known ? (*known ? 1 : 0) : -1;
#else
		return -1;
#endif
	}
	if (bpf_probe_read_kernel(&id, sizeof(id), (void *)cfg->pernet_id_addr))
		return -1;
	u64 gen = TASK_PTR(net, OFF_NET_GEN);
	if (!gen)
		return -1;
	u64 pernet = read_ptr(gen, OFF_NET_GENERIC_PTR + id * sizeof(void *));
	if (!pernet)
		return -1;
	if (bpf_probe_read_kernel(&enabled, sizeof(enabled), (void *)(pernet + cfg->enabled_offset)))
		return -1;
	return enabled ? 1 : 0;
}

#ifdef MPTCPIZE_LIBBPF
/*
 * The netns guard's two kernel facts for the settings map, found in the kernel by the libbpf loader
 * (program/prebuilt.py runs this once after load, BPF_PROG_TEST_RUN; never attached), so that no
 * process parses /proc/kallsyms or BTF at start (bcc: userspace does, program/support.py):
 * - the address of mptcp_pernet_id (static in net/mptcp/ctrl.c): bpf_kallsyms_lookup_name() (Linux
 *   >= 5.16, syscall programs; a binary search since 6.2), which refuses (-EPERM) where /proc/kallsyms
 *   would show zeros, i.e. without CAP_SYSLOG. Not a __ksym: vmlinux BTF has no VAR for it (pahole
 *   encodes only per-CPU variables unless the kernel enables its global_var feature; Debian's 6.12
 *   uses pahole 1.24), and libbpf resolves a typeless __ksym by reading all of /proc/kallsyms, which
 *   cost more than the Python parse it replaced (0.1 s of a 0.15 s load natively).
 * - offsetof(struct mptcp_pernet, mptcp_enabled): a CO-RE relocation against a local flavour of the
 *   private struct (in vmlinux BTF wherever MPTCP is: CONFIG_MPTCP is built in or absent).
 * pernet_id_addr stays 0 when either is missing: the guard then says "unreadable". Returns 0, or the
 * lookup's -errno.
 */
struct mptcp_pernet___mptcpize {
	u8 mptcp_enabled;
} __attribute__((preserve_access_index));

SEC("syscall")
int find_netns_guard(void *ctx)
{
	u64 name[2];
	u64 addr = 0;
	u32 zero = 0;
	struct mptcpize_config *cfg = MAP_LOOKUP(settings, &zero);

	if (!cfg)
		return -22;   /* -EINVAL: never, an array's one entry is always there */
	cfg->pernet_id_addr = 0;
	if (!bpf_core_field_exists(struct mptcp_pernet___mptcpize, mptcp_enabled))
		return -2;   /* -ENOENT, as for an absent symbol */
	/* "mptcp_pernet_id" as two little-endian stores: clang puts a string, array or constant
	 * initializer in .rodata, which libbpf would create as one more map. */
	name[0] = 0x65705f706374706dULL;
	asm volatile("" ::: "memory");
	name[1] = 0x0064695f74656e72ULL;
	long err = bpf_kallsyms_lookup_name((const char *)name, sizeof(name), 0, &addr);
	if (err)
		return err;
	cfg->enabled_offset = bpf_core_field_offset(struct mptcp_pernet___mptcpize, mptcp_enabled);
	cfg->pernet_id_addr = addr;
	return 0;
}
#endif

/* Sets *rule_id and *kind to the allow rule that selects the task; returns 1 when a deny entry matches. */
static __always_inline int select_task(u64 task, u32 tgid, u32 flags,
				       u32 *rule_id, u32 *kind)
{
	struct mptcpize_rule *r;
	int denied = 0;

	struct mptcpize_run_entry *run = MAP_LOOKUP(run_tgids, &tgid);
	if (run) {
		*rule_id = run->run_id;
		*kind = MPTCPIZE_KIND_RUN;
	}

	if (flags & MPTCPIZE_CFG_HAS_EXE_RULES) {
		struct mptcpize_exe_key key = {};
		u64 mm = TASK_PTR(task, OFF_TASK_MM);
		u64 exe = TASK_PTR(mm, OFF_MM_EXE_FILE);
		u64 inode = TASK_PTR(exe, OFF_FILE_INODE);

		if (inode) {
			u64 sb = TASK_PTR(inode, OFF_INODE_SB);
			key.ino = TASK_PTR(inode, OFF_INODE_INO);
			key.dev = TASK_U32(sb, OFF_SB_DEV);
			r = MAP_LOOKUP(exe_rules, &key);
			if (r) {
				if (r->action == MPTCPIZE_ACTION_DENY)
					denied = 1;
				else if (*kind == MPTCPIZE_KIND_NONE) {
					*rule_id = r->rule_id;
					*kind = MPTCPIZE_KIND_EXE;
				}
			}
		}
	}

	if (flags & MPTCPIZE_CFG_HAS_CGROUP_RULES) {
		#pragma unroll
		for (int level = 0; level < MPTCPIZE_CGROUP_MAX_DEPTH; level++) {
			u64 id = bpf_get_current_ancestor_cgroup_id(level);
			if (!id)
				break;
			r = MAP_LOOKUP(cgroup_rules, &id);
			if (!r)
				continue;
			if (r->action == MPTCPIZE_ACTION_DENY) {
				denied = 1;
			} else if (*kind == MPTCPIZE_KIND_NONE || *kind == MPTCPIZE_KIND_CGROUP) {
				/* deepest matching cgroup wins: it names the rule most precisely */
				*rule_id = r->rule_id;
				*kind = MPTCPIZE_KIND_CGROUP;
			}
		}
	}
	return denied;
}

/*
 * The thread's cgroup (v2) id, what bpf_get_current_cgroup_id() returns (task->cgroups->dfl_cgrp->kn->id,
 * kernel/bpf/helpers.c), read with four loads instead of a helper call: the verdict's check on every
 * TCP socket(). Only cgroup rules depend on it; without any, 0 (the verdict then ignores the cgroup).
 */
static __always_inline u64 verdict_cgroup_id(u64 task, u32 flags)
{
	if (!(flags & MPTCPIZE_CFG_HAS_CGROUP_RULES))
		return 0;
	u64 cgroups = TASK_PTR(task, OFF_TASK_CGROUPS);
	u64 cgrp = TASK_PTR(cgroups, OFF_CSS_SET_DFL_CGRP);
	u64 kn = TASK_PTR(cgrp, OFF_CGROUP_KN);
	return TASK_PTR(kn, OFF_KERNFS_NODE_ID);
}

/* select_task() for the current thread, through its cached verdict when that still holds. *vp is
 * the verdict, or NULL (no memory for one, or a nested call): then decide without, as before. */
static __always_inline int select_current(u64 task, u32 tgid, u32 flags, u32 *rule_id, u32 *kind,
					  struct mptcpize_verdict **vp)
{
	u64 cgroup_id = verdict_cgroup_id(task, flags);
	u64 now = bpf_jiffies64();
	struct mptcpize_verdict *v = MAP_TASK_STORAGE_GET(verdicts, task, 0,
							       BPF_LOCAL_STORAGE_GET_F_CREATE);

	*vp = v;
	if (v && v->expires > now && v->cgroup_id == cgroup_id) {
		*rule_id = v->rule_id;
		*kind = v->kind;
		return v->denied;
	}
	int denied = select_task(task, tgid, flags, rule_id, kind);
	if (v) {
		v->cgroup_id = cgroup_id;
		v->expires = now + MPTCPIZE_VERDICT_TTL_JIFFIES;
		v->start_ns = 0;
		v->rule_id = *rule_id;
		v->kind = *kind;
		v->denied = denied;
		v->netns_ok = 0;
	}
	return denied;
}

/*
 * The decision, shared by the real hook and the dry run: 1 when this socket() of the current task is
 * (or would be) upgraded. Counts, per-process totals and the process's first-upgrade event happen
 * here too.
 */
static __always_inline int decide(int family, int type, int protocol)
{
	if (family != AF_INET_ && family != AF_INET6_)
		return 0;
	/* type arrives unmasked: SOCK_NONBLOCK|SOCK_CLOEXEC are still set. */
	if ((type & SOCK_TYPE_MASK_) != SOCK_STREAM_)
		return 0;
	if (protocol != 0 && protocol != IPPROTO_TCP_)
		return 0;

	u32 zero = 0;
	struct mptcpize_config *cfg = MAP_LOOKUP(settings, &zero);
	if (!cfg)
		return 0;

	/* The tgid is a load from the task, where bpf_get_current_pid_tgid() would be one more helper
	 * call on the path every TCP socket() takes. */
	u64 task = (u64)bpf_get_current_task_btf();
	u32 tgid = TASK_U32(task, OFF_TASK_TGID);
	u32 rule_id = 0, kind = MPTCPIZE_KIND_NONE;
	struct mptcpize_verdict *v = NULL;

	if (select_current(task, tgid, cfg->flags, &rule_id, &kind, &v)) {
		count(MPTCPIZE_CNT_DENIED);
		return 0;
	}
	if (kind == MPTCPIZE_KIND_NONE)
		return 0;

	u64 nsproxy = TASK_PTR(task, OFF_TASK_NSPROXY);
	u64 net = TASK_PTR(nsproxy, OFF_NSPROXY_NET);
	if (!net) {
		count(MPTCPIZE_CNT_NETNS_UNREADABLE);
		return 0;
	}
	u32 netns = TASK_U32(net, OFF_NET_INUM);
	/* A run tree goes wherever its command goes (as a standalone `run` would); policy rules only
	 * where the policy's [netns] says. */
	if (kind != MPTCPIZE_KIND_RUN && !(cfg->flags & MPTCPIZE_CFG_ALL_NETNS)) {
		u32 ok;
		if (v && v->netns_ok && v->netns == netns) {
			ok = v->netns_ok;
		} else {
			ok = MAP_LOOKUP(netns_allow, &netns) ? 1 : 2;
			if (v) {
				v->netns = netns;
				v->netns_ok = ok;
			}
		}
		if (ok != 1) {
			count(MPTCPIZE_CNT_NETNS_NOT_SELECTED);
			return 0;
		}
	}
	int enabled = netns_mptcp_enabled(net, netns, cfg);
	if (enabled <= 0) {
		count(enabled == 0 ? MPTCPIZE_CNT_MPTCP_DISABLED : MPTCPIZE_CNT_NETNS_UNREADABLE);
		return 0;
	}

	count(MPTCPIZE_CNT_UPGRADED);
	if (kind != MPTCPIZE_KIND_RUN) {   /* run trees: per process, see run_report */
		u64 *per_rule = MAP_LOOKUP(rule_stats, &rule_id);
		if (per_rule)
			(*per_rule)++;
	}
	struct mptcpize_proc_key pkey = {};
	if (v && v->start_ns) {
		pkey.start_ns = v->start_ns;
		pkey.tgid = tgid;
	} else {
		pkey = proc_key(task, tgid);
		if (v)
			v->start_ns = pkey.start_ns;
	}
	struct mptcpize_proc_stats *st = MAP_LOOKUP(proc_stats, &pkey);
	if (st) {   /* not the process's first upgrade: its count is all there is to do */
		__sync_fetch_and_add(&st->upgraded, 1);
		return 1;
	}
	struct mptcpize_proc_stats init = { .upgraded = 1, .rule_id = rule_id, .kind = kind };
	if (MAP_INSERT(proc_stats, &pkey, &init) != 0) {
		/* Another thread of the process inserted it first: its insert sends the event. */
		st = MAP_LOOKUP(proc_stats, &pkey);
		if (st) {
			__sync_fetch_and_add(&st->upgraded, 1);
			return 1;
		}
		/* The map refused the entry (an LRU map short of free nodes): this process has no
		 * count, so let the event say at least that it was upgraded. */
	}

	/* The process's first upgrade: the one event it sends. Userspace logs it and learns the
	 * process's exe and cgroup from it; volume is in the maps above, so a socket storm sends as
	 * many events as it has processes, not sockets. */
	struct mptcpize_event *ev = MAP_RINGBUF_RESERVE(events, sizeof(struct mptcpize_event));
	if (!ev) {
		count(MPTCPIZE_CNT_EVENTS_DROPPED);
		return 1;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->start_ns = pkey.start_ns;
	ev->pid = TASK_U32(task, OFF_TASK_PID);
	ev->tgid = tgid;
	ev->uid = (u32)bpf_get_current_uid_gid();
	ev->rule_id = rule_id;
	ev->netns = netns;
	ev->family = family;
	ev->kind = kind;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	MAP_RINGBUF_SUBMIT(events, ev, 0);
	return 1;
}

#ifndef MPTCPIZE_DRY_RUN
KMOD_RET(update_socket_protocol, int family, int type, int protocol, int ret)
{
	/* Another fmod_ret program already chose a protocol: keep it. */
	if (ret)
		return ret;
	return decide(family, type, protocol) ? MPTCPIZE_IPPROTO_MPTCP : 0;
}
#else
/* socket(2)'s arguments as update_socket_protocol() would see them; the result is not changed. */
TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
	decide((int)args->family, (int)args->type, (int)args->protocol);
	return 0;
}
#endif

/*
 * The run tree: a new process (not a thread) whose parent process is in run_tgids joins it. This
 * tracepoint fires in kernel_clone() before the child is first woken, so the child cannot create a
 * socket before it is covered.
 */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	u64 child = ctx->args[1];
	u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;

	struct mptcpize_run_entry *run = MAP_LOOKUP(run_tgids, &parent_tgid);
	if (!run)
		return 0;
	u32 child_pid = read_u32(child, OFF_TASK_PID);
	u32 child_tgid = read_u32(child, OFF_TASK_TGID);
	if (child_pid != child_tgid)
		return 0;  /* a thread: its process is already covered */
	u32 key = child_tgid;
	struct mptcpize_run_entry entry = *run;
	if (MAP_UPDATE(run_tgids, &key, &entry) != 0)
		count(MPTCPIZE_CNT_RUN_TABLE_FULL);
	return 0;
}

/* Remember what a run-tree process executes: short-lived ones are gone before userspace can look.
 * And forget the exec'ing thread's selection verdict, made for its previous executable. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u64 bprm = ctx->args[2];
	struct mptcpize_exe_name name = {};

	/* Another executable: the thread's selection verdict no longer holds. */
	MAP_TASK_STORAGE_DELETE(verdicts, bpf_get_current_task_btf());
	if (!MAP_LOOKUP(run_tgids, &tgid))
		return 0;
	u64 filename = read_ptr(bprm, OFF_BPRM_FILENAME);
	if (!filename || bpf_probe_read_kernel_str(name.path, sizeof(name.path), (void *)filename) <= 0)
		return 0;
	/* After de_thread(): current is the leader, with the process's start. */
	struct mptcpize_proc_key key = proc_key((u64)bpf_get_current_task_btf(), tgid);
	MAP_UPDATE(exe_names, &key, &name);
	return 0;
}

/* Forget a process when its last thread exits, so a recycled pid is not upgraded by mistake. Its
 * proc_stats and exe_names entries stay, for reports: their keys hold its start, a recycled pid's
 * do not match them. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	u64 signal = read_ptr(bpf_get_current_task(), OFF_TASK_SIGNAL);
	u32 live = signal ? read_u32(signal, OFF_SIGNAL_LIVE) : 1;
	/* do_exit() decrements signal->live before this tracepoint: 0 means the whole group is dead. */
	if (live == 0) {
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		MAP_DELETE(run_tgids, &tgid);
	}
	return 0;
}
