"""MPTCP sock_diag: every MPTCP connection of a network namespace as the kernel sees it, with its owner.

This is what `ss -M` reads (net/mptcp/mptcp_diag.c, Linux >= 5.9): a NETLINK_SOCK_DIAG dump with
SOCK_DIAG_BY_FAMILY. `inet_diag_req_v2.sdiag_protocol` is a u8, so IPPROTO_MPTCP (262) travels in the
INET_DIAG_REQ_PROTOCOL attribute, which the kernel prefers over the u8 (added with mptcp_diag in
Linux 5.9; this package needs 5.14 anyway).
Each answer is an `inet_diag_msg` (addresses, ports, uid, socket inode) followed by attributes; asked for
with ext bit INET_DIAG_INFO, the kernel adds `struct mptcp_info` (mptcpinfo.py decodes it) of the MPTCP
socket itself: subflows, the fallback flag, bytes sent and received.

Plain sockets and `struct`, not pyroute2: pyroute2's DiagSocket cannot ask for protocol 262, building the
request on its message classes needs as much code as the ~40 lines below, and those lines depend only on
the kernel's fixed ABI, not on which pyroute2 (0.7 to 0.9) is installed. It also keeps pyroute2 in
mptcp.py alone.

sock_diag answers for the network namespace the netlink socket was created in. `in_netns()` runs a
function in a short-lived thread that first setns()es to another namespace: CLONE_NEWNET is per thread,
so the rest of the process stays where it is. Owners come from /proc/PID/fd (a socket's fd links to
"socket:[INODE]"), which needs root for other users' processes.
"""

import ctypes
import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from . import mptcpinfo
from .errors import MptcpizeError, PermissionDenied, Unavailable
from .status import DaemonStatus, ProcessRow

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2            # enum inet_diag_attr (include/uapi/linux/inet_diag.h)
INET_DIAG_REQ_PROTOCOL = 3    # enum of request attributes: u32 protocol, for protocols > 255
IPPROTO_MPTCP = 262
ALL_STATES = 0xFFFFFFFF
CLONE_NEWNET = 0x40000000

_NLMSGHDR = struct.Struct("=IHHII")                       # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol (u8), ext, pad, states; then inet_diag_sockid (48 bytes, zeroes).
_REQ_V2 = struct.Struct("=BBBBI48x")
# inet_diag_msg: family, state, timer, retrans; sockid: sport, dport (be16), src[16], dst[16], if,
# cookie[2]; expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBBHH16s16sI8xIIIII")  # ports in network byte order
_RTA = struct.Struct("=HH")

# include/net/tcp_states.h: MPTCP sockets use the TCP state numbers.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
              6: "TIME-WAIT", 7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN", 11: "CLOSING"}


@dataclass(frozen=True)
class Connection:
    """One MPTCP socket from the dump. `info` is None when the kernel sent no INET_DIAG_INFO;
    `info_len` is how many bytes of struct mptcp_info it sent (older kernels send a shorter struct:
    the fields it lacks are None in as_dict(), not 0)."""
    family: int
    state: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    uid: int
    inode: int
    info: mptcpinfo.MptcpInfo | None = None
    info_len: int = 0

    @property
    def listening(self) -> bool:
        return self.state == "LISTEN"

    @property
    def fallback(self) -> bool | None:
        """True when the connection fell back to plain TCP; None for a listener (no peer yet)."""
        return None if self.info is None or self.listening else self.info.fallback

    @property
    def subflows(self) -> int | None:
        """All subflows, the initial one included: mptcpi_subflows_total (Linux >= 6.10), else
        mptcpi_subflows (the additional ones) + 1, which is one too many once the initial subflow
        has closed. None for a listener (it has no subflows of its own) or without INET_DIAG_INFO."""
        if self.info is None or self.listening:
            return None
        if self._has("subflows_total"):
            return self.info.subflows_total
        return self.info.subflows + 1

    def _has(self, field: str) -> bool:
        return field in mptcpinfo.fields_present(self.info_len)

    def field(self, name: str) -> int | None:
        """A struct mptcp_info field, or None when this kernel's struct does not have it."""
        if self.info is None or not self._has(name):
            return None
        return getattr(self.info, name)

    def as_dict(self) -> dict:
        return {
            "family": "inet6" if self.family == socket.AF_INET6 else "inet",
            "state": self.state,
            "local": endpoint_text(self.family, self.local_address, self.local_port),
            "remote": endpoint_text(self.family, self.remote_address, self.remote_port),
            "local_address": self.local_address, "local_port": self.local_port,
            "remote_address": self.remote_address, "remote_port": self.remote_port,
            "uid": self.uid, "inode": self.inode,
            "subflows": self.subflows,
            "fallback": self.fallback,
            "bytes_sent": self.field("bytes_sent"),
            "bytes_received": self.field("bytes_received"),
            "bytes_acked": self.field("bytes_acked"),
            "bytes_retrans": self.field("bytes_retrans"),
            "token": self.field("token"),
            "flags": self.field("flags"),
        }


def endpoint_text(family: int, address: str, port: int) -> str:
    return f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"


# ---------------------------------------------------------------------------------------------------
# The netlink messages (pure)


def build_request(family: int, seq: int = 1) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump of every MPTCP socket of `family`, all states, with INET_DIAG_INFO.
    sdiag_protocol carries IPPROTO_MPTCP truncated to u8 (what ss sends); the attribute is what counts."""
    proto_attr = _RTA.pack(_RTA.size + 4, INET_DIAG_REQ_PROTOCOL) + struct.pack("=I", IPPROTO_MPTCP)
    body = _REQ_V2.pack(family, IPPROTO_MPTCP & 0xFF, 1 << (INET_DIAG_INFO - 1), 0, ALL_STATES)
    length = _NLMSGHDR.size + len(body) + len(proto_attr)
    return _NLMSGHDR.pack(length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) \
        + body + proto_attr


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_diag_msg(payload: bytes) -> Connection:
    """One SOCK_DIAG_BY_FAMILY answer (inet_diag_msg + attributes) -> Connection."""
    if len(payload) < _DIAG_MSG.size:
        raise ValueError(f"inet_diag_msg is {_DIAG_MSG.size} bytes, got {len(payload)}")
    (family, state, _timer, _retrans, sport, dport, src, dst, _ifindex,
     _expires, _rqueue, _wqueue, uid, inode) = _DIAG_MSG.unpack_from(payload)
    sport, dport = socket.ntohs(sport), socket.ntohs(dport)
    if family == socket.AF_INET6:
        local, remote = socket.inet_ntop(family, src), socket.inet_ntop(family, dst)
    else:
        local, remote = socket.inet_ntop(socket.AF_INET, src[:4]), socket.inet_ntop(socket.AF_INET, dst[:4])
    info, info_len = None, 0
    off = _DIAG_MSG.size
    while off + _RTA.size <= len(payload):
        rta_len, rta_type = _RTA.unpack_from(payload, off)
        if rta_len < _RTA.size or off + rta_len > len(payload):
            raise ValueError(f"bad attribute length {rta_len} at offset {off}")
        if rta_type & 0x3FFF == INET_DIAG_INFO:  # NLA_TYPE_MASK: drop the nested/byte-order bits
            data = payload[off + _RTA.size: off + rta_len]
            info, info_len = mptcpinfo.parse(data), len(data)
        off += _align4(rta_len)
    return Connection(family, TCP_STATES.get(state, str(state)), local, sport, remote, dport, uid,
                      inode, info, info_len)


def parse_messages(data: bytes, seq: int | None = None) -> tuple[list[Connection], bool]:
    """Netlink messages of one recv() -> (connections, dump finished). Raises OSError for an error
    message (the kernel's errno), ValueError for bytes that are not netlink messages."""
    conns, done, off = [], False, 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            raise ValueError(f"bad netlink message length {length} at offset {off}")
        payload = data[off + _NLMSGHDR.size: off + length]
        off += _align4(length)
        if seq is not None and mseq != seq:
            continue  # not an answer to our request
        if mtype == NLMSG_ERROR or mtype == NLMSG_DONE:
            code = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
            if code < 0:
                raise OSError(-code, os.strerror(-code))
            if mtype == NLMSG_DONE:
                done = True
            continue  # NLMSG_ERROR with 0 is an ACK
        if mtype == SOCK_DIAG_BY_FAMILY:
            conns.append(parse_diag_msg(payload))
    return conns, done


# ---------------------------------------------------------------------------------------------------
# Talking to the kernel


def dump(families: Iterable[int] = (socket.AF_INET, socket.AF_INET6), timeout: float = 5.0) -> list[Connection]:
    """Every MPTCP socket (listeners included) of the calling thread's network namespace.

    Raises Unavailable when the kernel has no MPTCP sock_diag (CONFIG_INET_MPTCP_DIAG, the mptcp_diag
    module), MptcpizeError for other failures."""
    conns: list[Connection] = []
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as e:
        raise MptcpizeError(f"cannot open a sock_diag netlink socket: {e.strerror}") from None
    with sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        for seq, family in enumerate(families, 1):
            sock.sendto(build_request(family, seq), (0, 0))
            done = False
            while not done:
                try:
                    data = sock.recv(1 << 17)
                    got, done = parse_messages(data, seq)
                except socket.timeout:
                    raise MptcpizeError(f"MPTCP sock_diag: no answer from the kernel within {timeout:g} s") \
                        from None
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP):
                        raise Unavailable(
                            f"MPTCP sock_diag unavailable: {e.strerror} (the kernel lacks "
                            "CONFIG_INET_MPTCP_DIAG or its mptcp_diag module is not loaded)",
                            hint="modprobe mptcp_diag") from None
                    raise MptcpizeError(f"MPTCP sock_diag failed: {e.strerror}") from None
                conns.extend(got)
    return conns


T = TypeVar("T")
_libc = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(path: str | int | None, fn: Callable[[], T], label: str | None = None) -> T:
    """fn() run in the network namespace bound at `path` (/proc/PID/ns/net, /run/netns/NAME, or an
    open descriptor of one), in a
    short-lived thread: setns(CLONE_NEWNET) affects only the calling thread, and that thread ends with
    fn, so no other code of this process ever runs in the other namespace. Sockets fn creates belong to
    that namespace; so does what fn reads under /proc/thread-self/net or /proc/sys/net. path None: fn()
    here. Raises what fn raises; MptcpizeError when the namespace cannot be entered (named `label`
    in the message, default: the path)."""
    if path is None:
        return fn()
    what = label or (path if isinstance(path, str) else f"fd {path}")
    result: list = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            failure.append(MptcpizeError(f"no network namespace at {what}",
                                         hint="see 'ip netns list'"))
            return
        except OSError as e:
            failure.append(_enter_error(what, e))
            return
        try:
            _setns(fd, CLONE_NEWNET)
        except OSError as e:
            failure.append(_enter_error(what, e))
            return
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    t = threading.Thread(target=target, name="mptcpize-netns", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return result[0]


def _enter_error(path: str, e: OSError) -> MptcpizeError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"cannot enter the network namespace {path}: {e.strerror}",
                                hint="run it as root")
    if e.errno == errno.EINVAL:
        return MptcpizeError(f"{path} is not a network namespace")
    return MptcpizeError(f"cannot enter the network namespace {path}: {e.strerror}")


def dump_netns(path: str | int | None, label: str | None = None) -> list[Connection]:
    """dump() in the namespace at `path` (None: the caller's)."""
    return in_netns(path, dump, label)


# ---------------------------------------------------------------------------------------------------
# Owners: socket inode -> processes, from /proc


def socket_owners(inodes: Iterable[int] | None = None, proc: str = "/proc") -> dict[int, list[int]]:
    """{socket inode: [pids holding an fd to it]}, pids ascending. Only `inodes` when given (a socket
    inherited over fork is held by several processes). Processes we may not inspect are skipped."""
    wanted = None if inodes is None else set(inodes)
    owners: dict[int, list[int]] = {}
    if wanted is not None and not wanted:
        return owners
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return owners
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                ino = int(target[8:-1])
                if wanted is None or ino in wanted:
                    lst = owners.setdefault(ino, [])
                    if not lst or lst[-1] != pid:
                        lst.append(pid)
    return owners


def process_exe(pid: int, proc: str = "/proc") -> str | None:
    try:
        return os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return None


def process_netns(pid: int | str, proc: str = "/proc") -> int | None:
    """The inum of a process's network namespace (None: gone or not ours to see)."""
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None


def parent_pid(pid: int, proc: str = "/proc") -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
        return int(text[text.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def netns_names(netns_dir: str = "/run/netns") -> dict[int, str]:
    """{inum: NAME} of the namespaces `ip netns` names (/run/netns/NAME bind mounts)."""
    names: dict[int, str] = {}
    try:
        entries = sorted(os.listdir(netns_dir))
        nsfs_dev = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return names
    for name in entries:
        try:
            st = os.stat(os.path.join(netns_dir, name))
        except OSError:
            continue
        if st.st_dev == nsfs_dev:  # a name whose mount is gone is a plain file: not a namespace
            names.setdefault(st.st_ino, name)
    return names


# ---------------------------------------------------------------------------------------------------
# The connection view (`status --connections`, metrics)


def netns_path(name: str, netns_dir: str = "/run/netns") -> str:
    """/run/netns/NAME for a user-given NAME; UsageError for a name that is not one, MptcpizeError
    when no such namespace exists."""
    from .errors import UsageError
    if not name or name in (".", "..") or "/" in name or not name.isprintable():
        raise UsageError(f"--netns {name!r}: not a namespace name (a name of 'ip netns list')",
                         hint="see 'ip netns list'")
    path = os.path.join(netns_dir, name)
    try:
        is_netns = os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev  # on nsfs: mounted
    except OSError:
        is_netns = False
    if not is_netns:
        raise MptcpizeError(f"no network namespace {name!r} ({path} is not one)",
                            hint="see 'ip netns list'")
    return path


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
        read(ns_fd, os.fstat(ns_fd).st_ino if ns_fd is not None else process_netns("thread-self", proc),
             strict=True)
        return
    want = os.fstat(ns_fd).st_ino if ns_fd is not None else None
    by_ns: dict[int, list[int]] = {}   # netns inum -> the upgraded processes living there
    for r in status.processes:
        if not r.alive:
            continue
        inum = process_netns(r.pid, proc)
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


def connection_view(status: DaemonStatus | None, netns: str | None = None, proc: str = "/proc") -> dict:
    """What `status --connections` shows, as one JSON-able dict.

    With the daemon's `status` answer: the MPTCP connections of its upgraded processes that are
    alive, and of their descendants (a forked worker accepts on the listener its parent made), each
    looked up in that process's own network namespace; `netns` (a path) keeps only processes there.
    Without (status None): every MPTCP connection of the namespace at `netns` (None: the caller's),
    each with the processes holding it.
    """
    names = netns_names()
    host_inum = process_netns(1, proc)
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
    owners = socket_owners((c.inode for _, c in found if c.inode), proc)
    ancestry: dict[int, int | None] = {}

    def upgraded_ancestor(pid: int) -> int | None:
        """pid itself or its nearest ancestor that is an upgraded process of the status."""
        chain, p = [], pid
        while p and p not in ancestry and p not in rows_by_pid and len(chain) < 4096:
            chain.append(p)
            p = parent_pid(p, proc)
        result = (p if p in rows_by_pid else ancestry.get(p)) if p else None
        for q in chain:
            ancestry[q] = result
        return result

    rows = []
    for label, c in found:
        pids = owners.get(c.inode, []) if c.inode else []
        row = {"netns": label, "pid": pids[0] if pids else None, "pids": pids,
               "exe": process_exe(pids[0], proc) if pids else None}
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
