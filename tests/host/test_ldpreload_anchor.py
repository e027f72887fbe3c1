"""The README's claim against the LD_PRELOAD anchor (mptcpd's `mptcpize run`): a static binary calling
the socket syscall directly stays TCP under it, and is upgraded under mptcpize-py."""

import shutil
import subprocess

import pytest

from tests.conftest import mptcpize


@pytest.mark.skipif(shutil.which("mptcpize") is None, reason="mptcpd's mptcpize not installed")
def test_static_binary_missed_by_ldpreload_but_upgraded_by_us(static_rawsock):
    theirs = subprocess.run(["mptcpize", "run", static_rawsock], capture_output=True, text=True)
    ours = mptcpize("run", static_rawsock)
    assert theirs.stdout.strip() == "6", theirs
    assert ours.returncode == 0 and ours.stdout.strip() == "262", ours.stderr
