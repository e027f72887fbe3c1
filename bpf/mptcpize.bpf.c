// SPDX-License-Identifier: GPL-2.0
/*
 * mptcpize kernel side (bcc). Linux >= 6.6 (commit 0dd061a6a115) calls
 * update_socket_protocol(family, type, protocol) from socket(); an fmod_ret program there may return
 * IPPROTO_MPTCP instead of 0/IPPROTO_TCP. The hook is global, so selection lives here, in maps that
 * userspace fills: a `run` process tree (tgids, inherited at fork), executable identities, cgroup ids
 * (the cgroup and its ancestors), deny entries that beat allow entries, and a netns allow set.
 * Whatever happens, a namespace where net.mptcp.enabled=0 is left alone: socket(..., IPPROTO_MPTCP)
 * fails there with ENOPROTOOPT, so rewriting would break a working TCP socket().
 */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/nsproxy.h>
#include <linux/fs.h>
#include <linux/mm_types.h>
#include <linux/binfmts.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>
#include "mptcpize.h"

#define AF_INET_ 2
#define AF_INET6_ 10
#define SOCK_STREAM_ 1
#define SOCK_TYPE_MASK_ 0xf
#define IPPROTO_TCP_ 6

BPF_ARRAY(config, struct mptcpize_config, 1);
BPF_HASH(run_tgids, u32, struct mptcpize_run_entry, MPTCPIZE_MAX_RUN_TGIDS);
BPF_HASH(exe_rules, struct mptcpize_exe_key, struct mptcpize_rule, MPTCPIZE_MAX_EXE_RULES);
BPF_HASH(cgroup_rules, u64, struct mptcpize_rule, MPTCPIZE_MAX_CGROUP_RULES);
BPF_HASH(netns_allow, u32, u8, MPTCPIZE_MAX_NETNS);
BPF_TABLE("lru_hash", u32, struct mptcpize_proc_stats, proc_stats, MPTCPIZE_MAX_PROCS);
BPF_TABLE("lru_hash", u32, struct mptcpize_exe_name, exe_names, MPTCPIZE_MAX_PROCS);
BPF_PERCPU_ARRAY(counters, u64, MPTCPIZE_CNT_MAX);
BPF_RINGBUF_OUTPUT(events, MPTCPIZE_RINGBUF_PAGES);

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/*
 * net.mptcp.enabled of the namespace, read where the kernel keeps it: net->gen->ptr[mptcp_pernet_id]
 * is a struct mptcp_pernet (net/mptcp/ctrl.c, private, so its offset comes from BTF at load time).
 * Returns 1/0, or -1 when it cannot be read (then we do not rewrite: fail towards plain TCP).
 */
static __always_inline int netns_mptcp_enabled(struct net *net, struct mptcpize_config *cfg)
{
	unsigned int id = 0;
	struct net_generic *gen = NULL;
	void *pernet = NULL;
	u8 enabled = 0;

	if (!cfg->pernet_id_addr)
		return -1;
	if (bpf_probe_read_kernel(&id, sizeof(id), (void *)cfg->pernet_id_addr))
		return -1;
	if (bpf_probe_read_kernel(&gen, sizeof(gen), &net->gen) || !gen)
		return -1;
	if (bpf_probe_read_kernel(&pernet, sizeof(pernet), &gen->ptr[id]) || !pernet)
		return -1;
	if (bpf_probe_read_kernel(&enabled, sizeof(enabled), pernet + cfg->enabled_offset))
		return -1;
	return enabled ? 1 : 0;
}

/* Sets *rule_id and *kind to the allow rule that selects the task; returns 1 when a deny entry matches. */
static __always_inline int select_task(struct task_struct *task, u32 tgid, u32 flags,
				       u32 *rule_id, u32 *kind)
{
	struct mptcpize_rule *r;
	int denied = 0;

	struct mptcpize_run_entry *run = run_tgids.lookup(&tgid);
	if (run) {
		*rule_id = run->run_id;
		*kind = MPTCPIZE_KIND_RUN;
	}

	if (flags & MPTCPIZE_CFG_HAS_EXE_RULES) {
		struct mptcpize_exe_key key = {};
		struct mm_struct *mm = NULL;
		struct file *exe = NULL;
		struct inode *inode = NULL;
		struct super_block *sb = NULL;
		dev_t dev = 0;

		bpf_probe_read_kernel(&mm, sizeof(mm), &task->mm);
		if (mm)
			bpf_probe_read_kernel(&exe, sizeof(exe), &mm->exe_file);
		if (exe)
			bpf_probe_read_kernel(&inode, sizeof(inode), &exe->f_inode);
		if (inode) {
			bpf_probe_read_kernel(&key.ino, sizeof(key.ino), &inode->i_ino);
			bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
			if (sb)
				bpf_probe_read_kernel(&dev, sizeof(dev), &sb->s_dev);
			key.dev = dev;
			r = exe_rules.lookup(&key);
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
			r = cgroup_rules.lookup(&id);
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

KMOD_RET(update_socket_protocol, int family, int type, int protocol, int ret)
{
	/* Another fmod_ret program already chose a protocol: keep it. */
	if (ret)
		return ret;
	if (family != AF_INET_ && family != AF_INET6_)
		return 0;
	/* type arrives unmasked: SOCK_NONBLOCK|SOCK_CLOEXEC are still set. */
	if ((type & SOCK_TYPE_MASK_) != SOCK_STREAM_)
		return 0;
	if (protocol != 0 && protocol != IPPROTO_TCP_)
		return 0;

	u32 zero = 0;
	struct mptcpize_config *cfg = config.lookup(&zero);
	if (!cfg)
		return 0;

	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	u32 rule_id = 0, kind = MPTCPIZE_KIND_NONE;

	if (select_task(task, tgid, cfg->flags, &rule_id, &kind)) {
		count(MPTCPIZE_CNT_DENIED);
		return 0;
	}
	if (kind == MPTCPIZE_KIND_NONE)
		return 0;

	struct nsproxy *nsproxy = NULL;
	struct net *net = NULL;
	u32 netns = 0;
	bpf_probe_read_kernel(&nsproxy, sizeof(nsproxy), &task->nsproxy);
	if (nsproxy)
		bpf_probe_read_kernel(&net, sizeof(net), &nsproxy->net_ns);
	if (!net) {
		count(MPTCPIZE_CNT_NETNS_UNREADABLE);
		return 0;
	}
	bpf_probe_read_kernel(&netns, sizeof(netns), &net->ns.inum);
	if (!(cfg->flags & MPTCPIZE_CFG_ALL_NETNS) && !netns_allow.lookup(&netns)) {
		count(MPTCPIZE_CNT_NETNS_NOT_SELECTED);
		return 0;
	}
	int enabled = netns_mptcp_enabled(net, cfg);
	if (enabled <= 0) {
		count(enabled == 0 ? MPTCPIZE_CNT_MPTCP_DISABLED : MPTCPIZE_CNT_NETNS_UNREADABLE);
		return 0;
	}

	count(MPTCPIZE_CNT_UPGRADED);
	struct mptcpize_proc_stats *st = proc_stats.lookup(&tgid);
	if (st) {
		__sync_fetch_and_add(&st->upgraded, 1);
	} else {
		struct mptcpize_proc_stats init = { .upgraded = 1, .rule_id = rule_id, .kind = kind };
		/* A racing thread may have inserted it: then add to its entry. */
		if (proc_stats.insert(&tgid, &init) != 0) {
			st = proc_stats.lookup(&tgid);
			if (st)
				__sync_fetch_and_add(&st->upgraded, 1);
		}
	}

	struct mptcpize_event *ev = events.ringbuf_reserve(sizeof(struct mptcpize_event));
	if (!ev) {
		count(MPTCPIZE_CNT_EVENTS_DROPPED);
		return MPTCPIZE_IPPROTO_MPTCP;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = (u32)pid_tgid;
	ev->tgid = tgid;
	ev->uid = (u32)bpf_get_current_uid_gid();
	ev->rule_id = rule_id;
	ev->netns = netns;
	ev->family = family;
	ev->kind = kind;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	events.ringbuf_submit(ev, 0);
	return MPTCPIZE_IPPROTO_MPTCP;
}

/*
 * The run tree: a new process (not a thread) whose parent process is in run_tgids joins it. This
 * tracepoint fires in kernel_clone() before the child is first woken, so the child cannot create a
 * socket before it is covered.
 */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
	pid_t child_pid = 0, child_tgid = 0;

	struct mptcpize_run_entry *run = run_tgids.lookup(&parent_tgid);
	if (!run)
		return 0;
	bpf_probe_read_kernel(&child_pid, sizeof(child_pid), &child->pid);
	bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid), &child->tgid);
	if (child_pid != child_tgid)
		return 0;  /* a thread: its process is already covered */
	u32 key = child_tgid;
	struct mptcpize_run_entry entry = *run;
	if (run_tgids.update(&key, &entry) != 0)
		count(MPTCPIZE_CNT_RUN_TABLE_FULL);
	return 0;
}

/* Remember what a run-tree process executes: short-lived ones are gone before userspace can look. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	const char *filename = NULL;
	struct mptcpize_exe_name name = {};

	if (!run_tgids.lookup(&tgid))
		return 0;
	bpf_probe_read_kernel(&filename, sizeof(filename), &bprm->filename);
	if (!filename || bpf_probe_read_kernel_str(name.path, sizeof(name.path), filename) <= 0)
		return 0;
	exe_names.update(&tgid, &name);
	return 0;
}

/* Forget a process when its last thread exits, so a recycled pid is not upgraded by mistake. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct signal_struct *signal = NULL;
	int live = 1;

	bpf_probe_read_kernel(&signal, sizeof(signal), &task->signal);
	if (signal)
		bpf_probe_read_kernel(&live, sizeof(live), &signal->live.counter);
	/* do_exit() decrements signal->live before this tracepoint: 0 means the whole group is dead. */
	if (live == 0) {
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		run_tgids.delete(&tgid);
	}
	return 0;
}
