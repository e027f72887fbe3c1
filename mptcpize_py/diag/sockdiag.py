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
paths.py alone.

sock_diag answers for the network namespace the netlink socket was created in: dump_netns() dumps
another one through host.netns.in_netns().
"""

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mptcpize_py.abi import IPPROTO_MPTCP
from mptcpize_py.diag import mptcpinfo
from mptcpize_py.errors import MptcpizeError, Unavailable
from mptcpize_py.host.netns import in_netns

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2            # enum inet_diag_attr (include/uapi/linux/inet_diag.h)
INET_DIAG_REQ_PROTOCOL = 3    # enum of request attributes: u32 protocol, for protocols > 255
ALL_STATES = 0xFFFFFFFF

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


def dump(families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
         timeout: float = 5.0) -> list[Connection]:
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
                except TimeoutError:
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


def dump_netns(path: str | int | None, label: str | None = None) -> list[Connection]:
    """dump() in the namespace at `path` (None: the caller's)."""
    return in_netns(path, dump, label)
