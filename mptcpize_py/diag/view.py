"""The connection view of `status --connections` and metrics: MPTCP connections (sock_diag) joined
with the processes that hold them (/proc) and the daemon's upgraded processes."""

import os

from mptcpize_py.diag.sockdiag import Connection, dump_netns
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs
from mptcpize_py.host.netns import netns_names
from mptcpize_py.status import DaemonStatus, ProcessRow


def _open_netns_of(pids: list[int], inum: int, proc: str) -> int | None:
    for pid in pids:
        try:
            fd = os.open(f"{proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_ino == inum:
            return fd
        os.close(fd)  # the pid was reused meanwhile
    return None


def _label(inum: int | None, names: dict[int, str], host_inum: int | None) -> str:
    if inum is None:
        return "?"
    if inum == host_inum:
        return "host"
    return names.get(inum) or f"inum:{inum}"


def _totals(rows: list[dict]) -> dict[str, int]:
    conns = [c for c in rows if c["state"] != "LISTEN"]
    return {"connections": len(conns), "listeners": len(rows) - len(conns),
            "subflows": sum(c["subflows"] or 0 for c in conns),
            "fallback": sum(1 for c in conns if c["fallback"])}


def _collect(status: DaemonStatus | None, ns_fd: int | None, proc: str, read,
             rows_by_pid: dict[int, ProcessRow]) -> None:
    """Reads the namespaces connection_view() needs: the one of ns_fd (or the caller's) without a
    daemon; with one, those of its upgraded, alive processes (only ns_fd's, when given)."""
    if status is None:
        read(ns_fd, os.fstat(ns_fd).st_ino if ns_fd is not None else procfs.netns_inum("thread-self", proc),
             strict=True)
        return
    want = os.fstat(ns_fd).st_ino if ns_fd is not None else None
    by_ns: dict[int, list[int]] = {}   # netns inum -> the upgraded processes living there
    for r in status.processes:
        if not r.alive:
            continue
        inum = procfs.netns_inum(r.pid, proc)
        if inum is None or (want is not None and inum != want):
            continue
        rows_by_pid[r.pid] = r
        by_ns.setdefault(inum, []).append(r.pid)
    for inum, pids in sorted(by_ns.items()):
        fd = _open_netns_of(pids, inum, proc)  # the first that has not exited meanwhile
        if fd is None:
            continue
        try:
            read(fd, inum)
        finally:
            os.close(fd)


def connection_view(status: DaemonStatus | None, netns: str | None = None,
                    proc: str = "/proc") -> dict:
    """What `status --connections` shows, as one JSON-able dict.

    With the daemon's `status` answer: the MPTCP connections of its upgraded processes that are
    alive, and of their descendants (a forked worker accepts on the listener its parent made), each
    looked up in that process's own network namespace; `netns` (a path) keeps only processes there.
    Without (status None): every MPTCP connection of the namespace at `netns` (None: the caller's),
    each with the processes holding it.
    """
    names = netns_names()
    host_inum = procfs.netns_inum(1, proc)
    namespaces: list[dict] = []
    found: list[tuple[str, Connection]] = []
    rows_by_pid: dict[int, ProcessRow] = {}

    def read(path: str | int | None, inum: int | None, strict: bool = False) -> None:
        """Dumps one namespace; a failure is recorded for it (strict: raised, e.g. the only one)."""
        label = _label(inum, names, host_inum)
        try:
            conns = dump_netns(path, label)
        except MptcpizeError as e:
            if strict:
                raise
            namespaces.append({"name": label, "inum": inum, "error": e.message})
            return
        namespaces.append({"name": label, "inum": inum, "error": None})
        found.extend((label, c) for c in conns)

    ns_fd = None
    if netns is not None:  # held open: the namespace we name is the one we read
        try:
            ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise MptcpizeError(f"cannot open the network namespace {netns}: {e.strerror}",
                                hint="see 'ip netns list'") from None
    try:
        _collect(status, ns_fd, proc, read, rows_by_pid)
    finally:
        if ns_fd is not None:
            os.close(ns_fd)
    owners = procfs.socket_owners((c.inode for _, c in found if c.inode), proc)
    ancestry: dict[int, int | None] = {}

    def upgraded_ancestor(pid: int) -> int | None:
        """pid itself or its nearest ancestor that is an upgraded process of the status."""
        chain: list[int] = []
        p: int | None = pid
        while p and p not in ancestry and p not in rows_by_pid and len(chain) < 4096:
            chain.append(p)
            p = procfs.parent_pid(p)
        result = (p if p in rows_by_pid else ancestry.get(p)) if p else None
        for q in chain:
            ancestry[q] = result
        return result

    rows = []
    for label, c in found:
        pids = owners.get(c.inode, []) if c.inode else []
        row = {"netns": label, "pid": pids[0] if pids else None, "pids": pids,
               "exe": procfs.exe(pids[0], proc) if pids else None}
        if status is not None:
            process = next((a for a in map(upgraded_ancestor, pids) if a is not None), None)
            if process is None:
                continue
            rec = rows_by_pid[process]
            row.update({"process": process, "process_exe": rec.exe, "rule": rec.rule, "unit": rec.unit})
        row.update(c.as_dict())
        rows.append(row)
    rows.sort(key=lambda r: (r["netns"], r.get("process") or 0, r["pid"] or 0, r["state"] == "LISTEN",
                             r["local"], r["remote"]))
    if status is None:
        label = namespaces[0]["name"]
        scope = (f"no daemon is running: every MPTCP connection of network namespace {label}, "
                 "whoever made it")
    else:
        scope = (f"MPTCP connections of the processes the daemon (pid {status.pid}) "
                 "upgraded, and of their descendants")
    return {"daemon": status is not None, "scope": scope, "namespaces": namespaces,
            "connections": rows, "totals": _totals(rows)}
