"""sockdiag's pure parts: the request it sends and its decoding of the kernel's answer, on bytes
captured once from the real kernel (6.18, this machine): a dump of AF_INET MPTCP sockets in a netns
with an MPTCP listener on 127.0.0.1:7001, a client 127.0.0.1:40001 connected to it that sent 1000 bytes
(and the accepted end), and an MPTCP client 127.0.0.1:40002 that fell back to TCP against a plain TCP
server on 7002 after sending 500 bytes. tests/host/test_connections.py checks the same against the
live kernel."""

import socket
import struct

import pytest

from mptcpize_py import report
from mptcpize_py.diag import mptcpinfo, sockdiag
from mptcpize_py.diag import view as diag_view
from mptcpize_py.host import netns

CAPTURE = bytes.fromhex(
    "e0000000140002000700000020780000020100009c411b597f0000010000000000000000000000007f00000100000000"
    "0000000000000000000000001e100000000000000000000000000000000000000000000090881e000500080000000000"
    "08000f00000000000c0015000100000000000000060016005200000064000200000000020000000002000000144476e4"
    "89f0c17c127d487389f0c17c127d48734674a8548732838c00000000000000000000000000000000e803000000000000"
    "0000000000000000e803000000000000010000002c0100002c0100002c010000e0000000140002000700000020780000"
    "020100001b599c417f0000010000000000000000000000007f000001000000000000000000000000000000001f100000"
    "000000000000000000000000000000000000000092881e00050008000000000008000f00000000000c00150001000000"
    "0000000006001600520000006400020000000002000000000200000008c8c7cd4674a8548732838c4674a8548732838c"
    "89f0c17c127d4873000000000000000000000000000000000000000000000000e8030000000000000000000000000000"
    "010000002c0100002c0100002c010000e0000000140002000700000020780000020100009c421b5a7f00000100000000"
    "00000000000000007f000001000000000000000000000000000000002010000000000000000000000000000000000000"
    "0000000093881e00050008000000000008000f00000000000c0015000100000000000000060016005200000064000200"
    "000000020000000001000000797ed5dd3bb382f4fc31c0c53bb382f4fc31c0c500000000000000000000000000000000"
    "0000000000000000f4010000000000000000000000000000f501000000000000010000002c0100002c0100002c010000"
    "e0000000140002000700000020780000020a00001b5900007f0000010000000000000000000000000000000000000000"
    "0000000000000000000000002110000000000000000000000000000080000000000000008d881e000500080000000000"
    "08000f00000000000c001500010000000000000006001600520000006400020000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000014000000030002000700000020780000"
    "00000000"
)
# Socket inodes the capture script printed with the dump.
INODES = {"c1": 2001040, "c2": 2001043, "ls": 2001037, "a1": 2001042}
SEQ = 7


def test_request_asks_for_mptcp_info_of_every_state():
    req = sockdiag.build_request(socket.AF_INET6, seq=9)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, seq, pid) == (len(req), 20, 9, 0)
    assert flags == 0x301                                   # NLM_F_REQUEST | NLM_F_DUMP
    family, proto, ext, pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, ext, pad, states) == (socket.AF_INET6, 262 & 0xFF, 2, 0, 0xFFFFFFFF)
    assert len(req) == 16 + 56 + 8
    # INET_DIAG_REQ_PROTOCOL (3) carries the real protocol number, which does not fit sdiag_protocol.
    assert struct.unpack_from("=HHI", req, 16 + 56) == (8, 3, 262)


def test_capture_decodes():
    conns, done = sockdiag.parse_messages(CAPTURE, SEQ)
    assert done
    by_ino = {c.inode: c for c in conns}
    assert set(by_ino) == set(INODES.values())
    c1, a1, c2, ls = (by_ino[INODES[k]] for k in ("c1", "a1", "c2", "ls"))
    assert (c1.local_address, c1.local_port, c1.remote_address, c1.remote_port) == \
        ("127.0.0.1", 40001, "127.0.0.1", 7001)
    assert c1.state == "ESTABLISHED" and c1.uid == 0 and c1.info_len == mptcpinfo.STRUCT_SIZE
    assert c1.fallback is False and c1.subflows == 1
    assert c1.field("bytes_sent") == 1000 and a1.field("bytes_received") == 1000
    assert c2.fallback is True and c2.field("bytes_sent") == 500 and c2.remote_port == 7002
    assert ls.listening and ls.fallback is None and ls.subflows is None
    d = c1.as_dict()
    assert d["local"] == "127.0.0.1:40001" and d["remote"] == "127.0.0.1:7001" and d["family"] == "inet"


def test_other_sequence_numbers_are_ignored():
    assert sockdiag.parse_messages(CAPTURE, SEQ + 1) == ([], False)


def _one_message() -> bytes:
    """The payload of the capture's first SOCK_DIAG_BY_FAMILY message."""
    length = struct.unpack_from("=I", CAPTURE)[0]
    return CAPTURE[16:length]


def _replace_info(payload: bytes, info: bytes) -> bytes:
    """payload with its INET_DIAG_INFO attribute replaced by one holding `info`."""
    out, off = payload[:72], 72
    while off + 4 <= len(payload):
        rlen, rtype = struct.unpack_from("=HH", payload, off)
        if rtype != sockdiag.INET_DIAG_INFO:
            out += payload[off:off + ((rlen + 3) & ~3)]
        off += (rlen + 3) & ~3
    attr = struct.pack("=HH", 4 + len(info), sockdiag.INET_DIAG_INFO) + info
    return out + attr + b"\0" * (-len(attr) % 4)


def test_shorter_struct_of_an_older_kernel_gives_none_not_zero():
    full = _one_message()
    conn = sockdiag.parse_diag_msg(full)
    assert conn.info_len == 96
    # Linux 6.1's struct mptcp_info ends after csum_enabled (43 bytes, 48 with padding).
    old = sockdiag.parse_diag_msg(_replace_info(full, _info_bytes(full)[:48]))
    assert old.info_len == 48
    assert old.field("bytes_sent") is None and old.as_dict()["bytes_received"] is None
    assert old.field("token") == conn.field("token")
    # No mptcpi_subflows_total (6.10): the additional subflows + the initial one.
    assert old.subflows == old.info.subflows + 1


def _info_bytes(payload: bytes) -> bytes:
    off = 72
    while off + 4 <= len(payload):
        rlen, rtype = struct.unpack_from("=HH", payload, off)
        if rtype == sockdiag.INET_DIAG_INFO:
            return payload[off + 4: off + rlen]
        off += (rlen + 3) & ~3
    raise AssertionError("no INET_DIAG_INFO")


def test_error_answer_raises_the_kernels_errno():
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + b"\0" * 16
    with pytest.raises(OSError) as e:
        sockdiag.parse_messages(err, 1)
    assert e.value.errno == 2


@pytest.mark.parametrize("data", [CAPTURE[:40], b"\x08\0\0\0" + CAPTURE[4:100]])
def test_truncated_or_garbled_bytes_are_refused(data):
    with pytest.raises(ValueError):
        sockdiag.parse_messages(data, SEQ)


def test_netns_name_validation():
    from mptcpize_py.errors import MptcpizeError, UsageError
    for bad in ("", ".", "..", "a/b", "x\ny"):
        with pytest.raises(UsageError):
            netns.netns_path(bad)
    with pytest.raises(MptcpizeError, match="no network namespace"):
        netns.netns_path("mzc-surely-absent", netns_dir="/nonexistent")


def test_text_view_marks_fallback_and_groups_per_process():
    conns, _ = sockdiag.parse_messages(CAPTURE, SEQ)
    rows = [dict(c.as_dict(), netns="mzc-x", pid=100 + i % 2, pids=[100 + i % 2], exe="/bin/x")
            for i, c in enumerate(conns)]
    view = {"scope": "no daemon is running: ...", "namespaces": [{"name": "mzc-x", "error": None}],
            "connections": sorted(rows, key=lambda r: r["pid"]), "totals": diag_view._totals(rows)}
    lines = report.connections_text(view)
    assert lines[0].startswith("no daemon is running")
    assert sum(1 for ln in lines if ln.startswith("netns mzc-x: pid ")) == 2
    fb = next(ln for ln in lines if "127.0.0.1:40002" in ln)
    assert "fallback-TCP" in fb
    assert lines[-1] == "total: 3 connection(s), 3 subflow(s), 1 fell back to TCP; 1 listener(s)"


@pytest.mark.parametrize("args,code,message", [
    (["status", "--netns", "x"], 2, "status: --netns only applies with --connections"),
    (["status", "--connections", "--netns", "../etc"], 2, "not a namespace name"),
    (["status", "--connections", "--netns", "a\nb"], 2, "not a namespace name"),
    (["status", "--connections", "--netns", "mzc-surely-absent"], 1, "no network namespace"),
])
def test_cli_bad_netns(tmp_path, args, code, message):
    import os

    from tests.conftest import mptcpize
    proc = mptcpize(*args, env=dict(os.environ, MPTCPIZE_CONTROL=str(tmp_path / "none")))
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert message in lines[0] and lines[0].startswith("mptcpize-py: error: ")
    assert lines[1].startswith("mptcpize-py: hint: ") and len(lines) == 2
    assert proc.stdout == ""
