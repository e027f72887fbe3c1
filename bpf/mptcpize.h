/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ABI shared by bpf/mptcpize.bpf.c (kernel side) and mptcpize_py (user side).
 * mptcpize_py/abi.py reads the "#define MPTCPIZE_* <integer>" lines below, and bcc hands the structs
 * to Python as ctypes types, so both sides always agree. Keep one define per line.
 */
#ifndef MPTCPIZE_H
#define MPTCPIZE_H

#define MPTCPIZE_IPPROTO_MPTCP 262

/* Map sizes. */
#define MPTCPIZE_MAX_RUN_TGIDS 65536
#define MPTCPIZE_MAX_EXE_RULES 4096
#define MPTCPIZE_MAX_CGROUP_RULES 4096
#define MPTCPIZE_MAX_NETNS 1024
#define MPTCPIZE_MAX_PROCS 16384
/* Per rule id: ids run from 16 (policy/validate.py FIRST_RULE_ID) over every exe and cgroup rule. */
#define MPTCPIZE_MAX_RULE_STATS 8208
#define MPTCPIZE_RINGBUF_PAGES 64
/* Bytes of an executed file name kept for reports (exe_names map). */
#define MPTCPIZE_EXE_NAME_LEN 256
/* Deepest cgroup level looked at for cgroup rules (the root is level 0). */
#define MPTCPIZE_CGROUP_MAX_DEPTH 16
/* How long a thread's selection verdict is reused (see verdicts in mptcpize.bpf.c), in jiffies (the
 * one clock tracing programs may read cheaply: 25 is 100 ms at Debian's HZ=250, 25 ms at HZ=1000):
 * the longest a policy change (reload, resync, a `register` of a running process) waits to reach a
 * thread that has already created a TCP socket. An exec or a move to another cgroup counts at once. */
#define MPTCPIZE_VERDICT_TTL_JIFFIES 25

/* mptcpize_rule.action */
#define MPTCPIZE_ACTION_ALLOW 1
#define MPTCPIZE_ACTION_DENY 2

/* Which kind of rule selected a socket (event.kind, proc_stats.kind). */
#define MPTCPIZE_KIND_NONE 0
#define MPTCPIZE_KIND_RUN 1
#define MPTCPIZE_KIND_EXE 2
#define MPTCPIZE_KIND_CGROUP 3

/* mptcpize_config.flags */
#define MPTCPIZE_CFG_ALL_NETNS 1
#define MPTCPIZE_CFG_HAS_EXE_RULES 2
#define MPTCPIZE_CFG_HAS_CGROUP_RULES 4

/* Indexes of the per-CPU counters array. */
#define MPTCPIZE_CNT_UPGRADED 0
#define MPTCPIZE_CNT_DENIED 1
#define MPTCPIZE_CNT_NETNS_NOT_SELECTED 2
#define MPTCPIZE_CNT_MPTCP_DISABLED 3
#define MPTCPIZE_CNT_NETNS_UNREADABLE 4
#define MPTCPIZE_CNT_EVENTS_DROPPED 5
#define MPTCPIZE_CNT_RUN_TABLE_FULL 6
#define MPTCPIZE_CNT_MAX 8

struct mptcpize_config {
	u64 pernet_id_addr;  /* address of the kernel's mptcp_pernet_id (from /proc/kallsyms) */
	u32 enabled_offset;  /* offsetof(struct mptcp_pernet, mptcp_enabled) (from kernel BTF) */
	u32 flags;           /* MPTCPIZE_CFG_* */
};

/* An allow or deny entry of the exe or cgroup maps. rule_id is userspace's number for the rule. */
struct mptcpize_rule {
	u32 rule_id;
	u32 action;
};

/* Executable identity: the kernel's dev_t (MKDEV: major << 20 | minor) and inode number. */
struct mptcpize_exe_key {
	u64 dev;
	u64 ino;
};

/* A process (tgid) of a `run` tree; children inherit the entry at fork. */
struct mptcpize_run_entry {
	u32 run_id;
	u32 pad;
};

/* A process: its tgid and when it started, so that a recycled pid is another key. start_ns is the
 * thread-group leader's start_boottime (ns after boot, CLOCK_BOOTTIME), the value /proc/PID/stat
 * field 22 shows in clock ticks. Keys of proc_stats and exe_names. */
struct mptcpize_proc_key {
	u64 start_ns;
	u32 tgid;
	u32 pad;   /* 0: hash keys compare every byte */
};

/* Exact per-process totals (the ring buffer may drop events; these never do). */
struct mptcpize_proc_stats {
	u64 upgraded;
	u32 rule_id;
	u32 kind;
};

/* The file name a run-tree process last exec'd (bprm->filename), for reports about processes that
 * exited before userspace could read /proc/PID/exe. */
struct mptcpize_exe_name {
	char path[MPTCPIZE_EXE_NAME_LEN];
};

/* One per process, at its first upgraded socket (the proc_stats insert): what the first-upgrade log
 * line and `run -v` need. pid and family are that socket's thread and address family. */
/* A thread's cached selection verdict (task storage; see mptcpize.bpf.c). */
struct mptcpize_verdict {
	u64 cgroup_id;    /* the thread's cgroup when the verdict was made */
	u64 expires;      /* bpf_jiffies64() from which it is made again */
	u64 start_ns;     /* the process's start (proc_key), for a selected thread; 0: not read yet */
	u32 rule_id;
	u16 kind;
	u16 denied;
	u32 netns;        /* with netns_ok: the [netns] verdict for this namespace (a thread may setns()) */
	u32 netns_ok;     /* 0 not known, 1 selected, 2 not selected */
};

struct mptcpize_event {
	u64 ts_ns;
	u64 cgroup_id;
	u64 start_ns;   /* with tgid, the process (struct mptcpize_proc_key) */
	u32 pid;
	u32 tgid;
	u32 uid;
	u32 rule_id;
	u32 netns;
	u16 family;
	u16 kind;
	char comm[16];
};

#endif /* MPTCPIZE_H */
