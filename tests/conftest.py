import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# netlab's assert_multipath() is shared by tiers: give its asserts pytest's detailed messages.
pytest.register_assert_rewrite("tests.netlab")

REPO = Path(__file__).resolve().parent.parent
PROGS = REPO / "tests" / "progs"
# The CLI installed next to the interpreter running the tests (the project's venv).
MPTCPIZE = str(Path(sys.executable).parent / "mptcpize-py")
PYTHON = sys.executable


def mptcpize(*args, **kw) -> subprocess.CompletedProcess:
    """Runs the real CLI; returns the completed process (text mode, output captured)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run([MPTCPIZE, *args], **kw)


@pytest.fixture(scope="session")
def static_rawsock(tmp_path_factory) -> str:
    """tests/progs/rawsock.c built statically (no dynamic loader, so no LD_PRELOAD can reach it)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("progs") / "rawsock"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(PROGS / "rawsock.c")], check=True)
    with open(out, "rb") as f:
        elf = f.read()
    # A static executable has no PT_INTERP program header (type 3).
    import struct
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types, "rawsock is not statically linked"
    return str(out)


def is_root() -> bool:
    return os.geteuid() == 0
