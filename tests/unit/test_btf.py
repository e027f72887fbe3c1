import os
import struct

import pytest

from mptcpize_py.host import files, procfs
from mptcpize_py.program import btf, kallsyms


def build_btf(types: list[bytes], strings: list[str]) -> tuple[bytes, dict[str, int]]:
    """A minimal raw BTF blob: header, type section, string section. Returns (blob, name -> str offset)."""
    strtab, offsets = b"\0", {}
    for s in strings:
        offsets[s] = len(strtab)
        strtab += s.encode() + b"\0"
    type_sec = b"".join(types)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(type_sec), len(type_sec), len(strtab))
    return hdr + type_sec + strtab, offsets


def btf_type(name_off: int, kind: int, vlen: int, size_or_type: int, kflag: int = 0) -> bytes:
    return struct.pack("<III", name_off, (kflag << 31) | (kind << 24) | vlen, size_or_type)


def test_hook_facts_from_synthetic_btf():
    names = ["int", "mptcp_pernet", "ctl_table_hdr", "mptcp_enabled", "update_socket_protocol", "other"]
    _, off = build_btf([], names)
    types = [
        btf_type(off["int"], btf.BTF_KIND_INT, 0, 4) + struct.pack("<I", 32),           # id 1
        btf_type(0, btf.BTF_KIND_FUNC_PROTO, 2, 1) + struct.pack("<IIII", 0, 1, 0, 1),  # id 2
        btf_type(off["other"], btf.BTF_KIND_FUNC, 0, 2),                                # id 3
        btf_type(off["mptcp_pernet"], btf.BTF_KIND_STRUCT, 2, 48)                       # id 4
        + struct.pack("<III", off["ctl_table_hdr"], 1, 0)
        + struct.pack("<III", off["mptcp_enabled"], 1, 40 * 8),
        btf_type(off["update_socket_protocol"], btf.BTF_KIND_FUNC, 0, 2),               # id 5
    ]
    blob, _ = build_btf(types, names)
    facts = btf.hook_facts(blob)
    assert facts.update_socket_protocol_id == 5
    assert facts.mptcp_enabled_offset == 40


def test_hook_facts_absent():
    blob, off = build_btf([], ["x"])
    blob, _ = build_btf([btf_type(off["x"], btf.BTF_KIND_FUNC, 0, 0)], ["x"])
    facts = btf.hook_facts(blob)
    assert facts.update_socket_protocol_id is None and facts.mptcp_enabled_offset is None


def test_bad_btf_rejected():
    with pytest.raises(btf.BtfError):
        btf.hook_facts(b"\0" * 64)


@pytest.mark.skipif(not btf.VMLINUX_BTF.exists(), reason="kernel has no /sys/kernel/btf/vmlinux")
def test_running_kernel_btf_parses():
    # Every kernel with BTF parses; the answer (hook present or not) depends on the kernel.
    facts = btf.read_hook_facts()
    assert facts.update_socket_protocol_id is None or facts.update_socket_protocol_id > 0


def test_kallsyms_lookup():
    text = ("ffffffff81000000 T _stext\n"
            "ffffffff83a1b2c4 b mptcp_pernet_id\n"
            "0000000000000000 b hidden_sym\n")
    assert kallsyms.kallsyms_address(text, "mptcp_pernet_id") == 0xFFFFFFFF83A1B2C4
    assert kallsyms.kallsyms_address(text, "hidden_sym") is None  # kptr_restrict shows zeros
    assert kallsyms.kallsyms_address(text, "missing") is None


def test_kernel_dev_encoding():
    # Userspace st_dev 8:1 (sda1) is MKDEV(8, 1) = 8 << 20 | 1 inside the kernel.
    assert files.kernel_dev(os.makedev(8, 1)) == (8 << 20) | 1
    assert files.kernel_dev(os.makedev(259, 70000)) == (259 << 20) | 70000


def test_missing_capabilities_reads_cap_eff():
    status = "Name:\tx\nCapEff:\t000000c000000000\n"   # CAP_PERFMON (38) and CAP_BPF (39) only
    assert procfs.missing_capabilities(("CAP_BPF", "CAP_PERFMON"), status) == []
    assert procfs.missing_capabilities(("CAP_BPF", "CAP_SYSLOG"), status) == ["CAP_SYSLOG"]
    assert procfs.missing_capabilities(("CAP_BPF",), "CapEff:\t0000008000000000\n") == []
    assert procfs.missing_capabilities(("CAP_PERFMON",), "CapEff:\t0000008000000000\n") == ["CAP_PERFMON"]
