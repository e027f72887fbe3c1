"""One source, two loaders (bpf/loaders.h): what each loader is given says the same thing. The libbpf
build relocates exactly the struct members bcc gets as -DOFF_* offsets; the bcc loader's spelling of
the source's MAP_* calls leaves none behind and names only maps the program declares; the choice of
loader follows --loader, the environment, then whether the objects were built."""

import re
import shutil
import subprocess

import pytest

from mptcpize_py import abi
from mptcpize_py.errors import UsageError
from mptcpize_py.program import btf, layout, loader, prebuilt

LOADERS_H = abi.BPF_DIR / "loaders.h"


def test_libbpf_relocates_the_members_bcc_is_given():
    text = LOADERS_H.read_text()
    relocated = {m.group(1): (m.group(2), m.group(3).replace(" ", "")) for m in re.finditer(
        r"^#define (OFF_\w+) bpf_core_field_offset\(struct (\w+), ([\w. ]+)\)$", text, re.M)}
    given = {macro: (struct, path) for macro, struct, path, _size in btf.STRUCT_FIELDS}
    assert relocated == given


def test_the_bcc_spelling_leaves_no_map_macro_and_names_declared_maps():
    source = abi.PROGRAM.read_text()
    spelled = loader.bcc_source(source)
    assert "MAP_" not in re.sub(r"MPTCPIZE_\w+", "", spelled)
    calls = re.findall(r"\b(\w+)\.(lookup|insert|update|delete|ringbuf_reserve|ringbuf_submit|"
                       r"task_storage_get|task_storage_delete)\(", spelled)
    assert len(calls) == len(re.findall(r"\bMAP_[A-Z_]+\(", source)) > 10
    assert {name for name, _ in calls} <= set(layout.maps())


def test_the_bcc_spelling_keeps_the_arguments():
    assert loader.bcc_source("MAP_UPDATE(run_tgids, &key, &entry)") == "run_tgids.update(&key, &entry)"
    assert loader.bcc_source("MAP_RINGBUF_SUBMIT(events, ev, 0)") == "events.ringbuf_submit(ev, 0)"


def test_the_choice_of_loader(monkeypatch, tmp_path):
    monkeypatch.delenv(prebuilt.LOADER_ENV, raising=False)
    monkeypatch.setattr(prebuilt, "_requested", None)
    monkeypatch.setattr(prebuilt, "OBJECT", tmp_path / "mptcpize.bpf.o")
    monkeypatch.setattr(prebuilt, "DRY_RUN_OBJECT", tmp_path / "mptcpize-dry-run.bpf.o")
    assert prebuilt.choose()[0] == "bcc"              # nothing built: bcc compiles the source
    prebuilt.OBJECT.write_bytes(b"")
    assert prebuilt.choose()[0] == "bcc"              # both objects are needed
    prebuilt.DRY_RUN_OBJECT.write_bytes(b"")
    assert prebuilt.choose() == ("libbpf", f"prebuilt CO-RE object {prebuilt.OBJECT}")
    monkeypatch.setenv(prebuilt.LOADER_ENV, "bcc")
    assert prebuilt.choose() == ("bcc", f"chosen by {prebuilt.LOADER_ENV}")
    prebuilt.request("libbpf")
    assert prebuilt.choose() == ("libbpf", "chosen by --loader")
    with pytest.raises(UsageError):
        prebuilt.request("llvm")


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed (make bpf needs it)")
def test_make_bpf_builds_objects_with_btf_relocations(tmp_path):
    """`make bpf` into a scratch copy: the objects are BPF ELF files that carry CO-RE relocations
    (.BTF.ext) and no DWARF."""
    shutil.copy(abi.BPF_DIR.parents[1] / "Makefile", tmp_path)
    shutil.copytree(abi.BPF_DIR, tmp_path / "bpf", ignore=shutil.ignore_patterns("*.o"))
    proc = subprocess.run(["make", "-s", "-C", str(tmp_path), "bpf"], capture_output=True, text=True)
    if proc.returncode != 0 and "vmlinux" in proc.stderr:
        pytest.skip(f"no kernel BTF to dump here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    for name in ("mptcpize.bpf.o", "mptcpize-dry-run.bpf.o"):
        sections = subprocess.run(["llvm-objdump", "-h", str(tmp_path / "bpf" / name)],
                                  capture_output=True, text=True, check=True).stdout
        assert "elf64-bpf" in sections and ".BTF.ext" in sections and ".debug_info" not in sections
