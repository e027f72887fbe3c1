import struct

from mptcpize_py.diag import mptcpinfo


def test_parse_full_struct():
    data = bytearray(mptcpinfo.STRUCT_SIZE)
    data[0] = 1                                   # subflows
    struct.pack_into("<I", data, 8, 0b10)         # flags: remote key received, no fallback
    struct.pack_into("<Q", data, 56, 12345)       # bytes_sent
    struct.pack_into("<Q", data, 64, 678)         # bytes_received
    data[80] = 2                                  # subflows_total
    info = mptcpinfo.parse(bytes(data))
    assert (info.subflows, info.fallback, info.bytes_sent, info.bytes_received, info.subflows_total) \
        == (1, False, 12345, 678, 2)


def test_fallback_flag_and_short_struct():
    data = bytearray(16)
    struct.pack_into("<I", data, 8, mptcpinfo.MPTCP_INFO_FLAG_FALLBACK)
    info = mptcpinfo.parse(bytes(data))
    assert info.fallback and info.bytes_sent == 0  # fields past the end default to 0
