"""seccomp user-notification backend for `run`: works where BPF trampolines are refused (Linux >= 5.14).

The child installs, before exec, a classic-BPF seccomp filter (filter.py) that sends only
`socket(AF_INET|AF_INET6, SOCK_STREAM[|flags], 0|IPPROTO_TCP)` to a supervisor thread in this process
(supervisor.py), through the filter's listener (notify.py). The supervisor creates an MPTCP socket in
the caller's network namespace, with the caller's uid/gid/groups/effective capabilities (caller.py),
and installs it into the caller with SECCOMP_IOCTL_NOTIF_ADDFD + SECCOMP_ADDFD_FLAG_SEND (Linux 5.14):
the caller's socket() returns that fd atomically. Anything unusual (MPTCP disabled in that netns,
another cgroup or LSM label, any error) is answered with SECCOMP_USER_NOTIF_FLAG_CONTINUE: the caller's
own socket() runs and it gets plain TCP (fail-open).

Filters are inherited across fork/clone/exec and cannot be removed, so the whole tree is covered,
static binaries included, and nothing outside the tree is touched. Pure ctypes: nothing compiled.
backend.py puts it together for `run`; probe.py tries it all once in a throwaway child.
"""
