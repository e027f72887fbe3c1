"""struct mptcp_info (include/uapi/linux/mptcp.h), as returned by getsockopt(SOL_MPTCP, MPTCP_INFO)
and by MPTCP sock_diag in INET_DIAG_INFO. Pure decoding; fields a shorter (older) struct lacks are 0."""

import struct
from dataclasses import dataclass

SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_INFO_FLAG_FALLBACK = 1 << 0
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 1 << 1

# Layout up to mptcpi_subflows_total (Linux 6.10+); the natural alignment of each field.
_FIELDS = (  # (name, offset, struct format)
    ("subflows", 0, "B"), ("add_addr_signal", 1, "B"), ("add_addr_accepted", 2, "B"),
    ("subflows_max", 3, "B"), ("flags", 8, "I"), ("token", 12, "I"), ("write_seq", 16, "Q"),
    ("snd_una", 24, "Q"), ("rcv_nxt", 32, "Q"), ("local_addr_used", 40, "B"),
    ("local_addr_max", 41, "B"), ("csum_enabled", 42, "B"), ("retransmits", 44, "I"),
    ("bytes_retrans", 48, "Q"), ("bytes_sent", 56, "Q"), ("bytes_received", 64, "Q"),
    ("bytes_acked", 72, "Q"), ("subflows_total", 80, "B"),
)
STRUCT_SIZE = 96


@dataclass(frozen=True)
class MptcpInfo:
    subflows: int = 0           # additional subflows (the initial one not counted)
    add_addr_signal: int = 0
    add_addr_accepted: int = 0
    subflows_max: int = 0
    flags: int = 0
    token: int = 0
    write_seq: int = 0
    snd_una: int = 0
    rcv_nxt: int = 0
    local_addr_used: int = 0
    local_addr_max: int = 0
    csum_enabled: int = 0
    retransmits: int = 0
    bytes_retrans: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_acked: int = 0
    subflows_total: int = 0     # all subflows, initial included (0 on kernels before 6.10)

    @property
    def fallback(self) -> bool:
        return bool(self.flags & MPTCP_INFO_FLAG_FALLBACK)


def parse(data: bytes) -> MptcpInfo:
    values = {}
    for name, off, fmt in _FIELDS:
        if off + struct.calcsize(fmt) <= len(data):
            values[name] = struct.unpack_from("<" + fmt, data, off)[0]
    return MptcpInfo(**values)


def fields_present(length: int) -> frozenset[str]:
    """The fields a struct of `length` bytes holds: an older kernel sends a shorter struct (e.g. no
    bytes_sent before 6.5, no subflows_total before 6.10), and parse() reads those as 0, not absent."""
    return frozenset(name for name, off, fmt in _FIELDS if off + struct.calcsize(fmt) <= length)


def of_socket(sock) -> MptcpInfo:
    """MPTCP_INFO of an MPTCP socket object (raises OSError for a plain TCP one)."""
    return parse(sock.getsockopt(SOL_MPTCP, MPTCP_INFO, STRUCT_SIZE))
