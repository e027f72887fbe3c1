/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One source, two loaders: what bpf/mptcpize.bpf.c needs from bcc's helpers (compiled at run time by
 * bcc) and from libbpf (compiled once at build time with clang -target bpf -DMPTCPIZE_LIBBPF against
 * a vmlinux.h dumped from BTF, relocated at load time: CO-RE). The program uses bcc's declaration
 * macros (BPF_HASH, KMOD_RET, ...) and MAP_* calls for map methods; under libbpf they become BTF map
 * definitions, SEC() programs and plain helper calls, and the OFF_* struct offsets that bcc gets as
 * -D values from the running kernel's BTF (mptcpize_py/program/btf.py STRUCT_FIELDS) become CO-RE
 * field-offset relocations that libbpf resolves against /sys/kernel/btf/vmlinux.
 */
#ifndef MPTCPIZE_LOADERS_H
#define MPTCPIZE_LOADERS_H

#ifdef MPTCPIZE_LIBBPF

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* The members of btf.py STRUCT_FIELDS, as relocations (libbpf >= 0.8: bpf_core_field_offset). */
#define OFF_TASK_MM bpf_core_field_offset(struct task_struct, mm)
#define OFF_TASK_NSPROXY bpf_core_field_offset(struct task_struct, nsproxy)
#define OFF_TASK_SIGNAL bpf_core_field_offset(struct task_struct, signal)
#define OFF_TASK_PID bpf_core_field_offset(struct task_struct, pid)
#define OFF_TASK_TGID bpf_core_field_offset(struct task_struct, tgid)
#define OFF_TASK_GROUP_LEADER bpf_core_field_offset(struct task_struct, group_leader)
#define OFF_TASK_START_BOOTTIME bpf_core_field_offset(struct task_struct, start_boottime)
#define OFF_MM_EXE_FILE bpf_core_field_offset(struct mm_struct, exe_file)
#define OFF_FILE_INODE bpf_core_field_offset(struct file, f_inode)
#define OFF_INODE_INO bpf_core_field_offset(struct inode, i_ino)
#define OFF_INODE_SB bpf_core_field_offset(struct inode, i_sb)
#define OFF_SB_DEV bpf_core_field_offset(struct super_block, s_dev)
#define OFF_NSPROXY_NET bpf_core_field_offset(struct nsproxy, net_ns)
#define OFF_NET_INUM bpf_core_field_offset(struct net, ns.inum)
#define OFF_NET_GEN bpf_core_field_offset(struct net, gen)
#define OFF_NET_GENERIC_PTR bpf_core_field_offset(struct net_generic, ptr)
#define OFF_SIGNAL_LIVE bpf_core_field_offset(struct signal_struct, live.counter)
#define OFF_BPRM_FILENAME bpf_core_field_offset(struct linux_binprm, filename)
#define OFF_TASK_CGROUPS bpf_core_field_offset(struct task_struct, cgroups)
#define OFF_CSS_SET_DFL_CGRP bpf_core_field_offset(struct css_set, dfl_cgrp)
#define OFF_CGROUP_KN bpf_core_field_offset(struct cgroup, kn)
#define OFF_KERNFS_NODE_ID bpf_core_field_offset(struct kernfs_node, id)

#define MPTCPIZE_MAP_(_type, _key, _value, _name, _size) \
	struct { \
		__uint(type, _type); \
		__type(key, _key); \
		__type(value, _value); \
		__uint(max_entries, _size); \
	} _name SEC(".maps")
#define BPF_ARRAY(_name, _value, _size) MPTCPIZE_MAP_(BPF_MAP_TYPE_ARRAY, u32, _value, _name, _size)
#define BPF_PERCPU_ARRAY(_name, _value, _size) \
	MPTCPIZE_MAP_(BPF_MAP_TYPE_PERCPU_ARRAY, u32, _value, _name, _size)
#define BPF_HASH(_name, _key, _value, _size) MPTCPIZE_MAP_(BPF_MAP_TYPE_HASH, _key, _value, _name, _size)
#define BPF_PERCPU_HASH(_name, _key, _value, _size) \
	MPTCPIZE_MAP_(BPF_MAP_TYPE_PERCPU_HASH, _key, _value, _name, _size)
#define BPF_LRU_HASH(_name, _key, _value, _size) \
	MPTCPIZE_MAP_(BPF_MAP_TYPE_LRU_HASH, _key, _value, _name, _size)
#define BPF_RINGBUF_OUTPUT(_name, _pages) \
	struct { \
		__uint(type, BPF_MAP_TYPE_RINGBUF); \
		__uint(max_entries, (_pages) * 4096); \
	} _name SEC(".maps")
#define BPF_TASK_STORAGE(_name, _value) \
	struct { \
		__uint(type, BPF_MAP_TYPE_TASK_STORAGE); \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, int); \
		__type(value, _value); \
	} _name SEC(".maps")

/* MAP_OP(map, args...) is bcc's map.op(args...): the bcc loader renames them so (see below). */
#define MAP_LOOKUP(_map, _key) bpf_map_lookup_elem(&(_map), _key)
#define MAP_INSERT(_map, _key, _value) bpf_map_update_elem(&(_map), _key, _value, BPF_NOEXIST)
#define MAP_UPDATE(_map, _key, _value) bpf_map_update_elem(&(_map), _key, _value, BPF_ANY)
#define MAP_DELETE(_map, _key) bpf_map_delete_elem(&(_map), _key)
#define MAP_RINGBUF_RESERVE(_map, _size) bpf_ringbuf_reserve(&(_map), _size, 0)
#define MAP_RINGBUF_SUBMIT(_map, _data, _flags) bpf_ringbuf_submit(_data, _flags)
#define MAP_TASK_STORAGE_GET(_map, _task, _value, _flags) \
	bpf_task_storage_get(&(_map), (struct task_struct *)(_task), _value, _flags)
#define MAP_TASK_STORAGE_DELETE(_map, _task) \
	bpf_task_storage_delete(&(_map), (struct task_struct *)(_task))

/* The program names bcc gives (the loaders and the benchmarks find programs by these names). */
#define KMOD_RET(_event, args...) \
	SEC("fmod_ret/" #_event) int BPF_PROG(kmod_ret__##_event, ##args)
#define RAW_TRACEPOINT_PROBE(_event) \
	SEC("raw_tp/" #_event) int raw_tracepoint__##_event(struct bpf_raw_tracepoint_args *ctx)
#define TRACEPOINT_PROBE(_category, _event) \
	SEC("tracepoint/" #_category "/" #_event) \
	int tracepoint__##_category##__##_event(struct tracepoint__##_category##__##_event *args)

/* The record of the one syscall tracepoint the dry run uses, as its format file describes it (bcc
 * builds the same struct from that file at run time): the common fields, then each argument in 8 bytes. */
struct tracepoint__syscalls__sys_enter_socket {
	u64 __common;
	int __syscall_nr;
	u64 family;
	u64 type;
	u64 protocol;
};

#else /* bcc: its helpers.h is already included */

/*
 * bcc's rewriter turns map.method() calls into helper calls, but refuses one that a macro produced
 * ("cannot use map function inside a macro", bcc 0.26). So the bcc loader spells each MAP_OP(map,
 * args) call of the source as bcc's map.method(args) before compiling (mptcpize_py/program/loader.py
 * bcc_source: a textual rename, the arguments stay as written); nothing here defines them.
 */
#define BPF_LRU_HASH(_name, _key, _value, _size) BPF_TABLE("lru_hash", _key, _value, _name, _size)

#endif /* MPTCPIZE_LIBBPF */

#endif /* MPTCPIZE_LOADERS_H */
