import os
import shutil
import subprocess
import sys
import time
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


DAEMON_START_TIMEOUT = 240   # bcc compiles for ~30-60 s under TCG


def start_daemon(policy_dir, control_path, log_file, log_path, *extra_args, environ=None):
    """Starts `mptcpize-py daemon [extra_args] --policy-dir DIR` on a private control socket and
    returns the Popen once `status` answers there; fails the test if it exits or is not ready in time.
    Polls in-process (not `mptcpize-py status`): a Python start per poll would slow bcc's compile down
    on the VM's 2 CPUs."""
    from mptcpize_py.daemon import client
    from mptcpize_py.errors import MptcpizeError
    env = dict(environ or os.environ, MPTCPIZE_CONTROL=str(control_path))
    proc = subprocess.Popen([MPTCPIZE, "daemon", *extra_args, "--policy-dir", str(policy_dir)],
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode}: {Path(log_path).read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"daemon not ready after {DAEMON_START_TIMEOUT} s: {Path(log_path).read_text()}")
        try:
            client.request({"cmd": "status"}, control_path, timeout=10)
            return proc
        except MptcpizeError as err:
            if err.exit_code != 3:
                proc.kill()
                proc.wait()
                raise
        time.sleep(0.5)
