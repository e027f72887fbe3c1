import atexit
import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.waiting import scaled, wait_for

# netlab's assert_multipath() is shared by tiers: give its asserts pytest's detailed messages.
pytest.register_assert_rewrite("tests.netlab")

REPO = Path(__file__).resolve().parent.parent
PROGS = REPO / "tests" / "progs"
PYTHON = sys.executable
# The interpreter running this checkout's code: -P keeps the working directory off sys.path, so only
# cli_env()'s PYTHONPATH decides where mptcpize_py comes from (not the venv's install, not a cwd).
CHECKOUT_PYTHON = (PYTHON, "-P")
# The CLI of the checkout these tests live in; run it with env=cli_env(...).
CLI = (*CHECKOUT_PYTHON, "-m", "mptcpize_py")


def _others_can_enter(path: Path) -> bool:
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in (*reversed(path.parents), path))


@functools.cache
def code_any_user_can_import() -> Path:
    """A directory holding this checkout's mptcpize_py that any user can import from, for tests that run
    the CLI as another user: REPO itself, or, when others cannot enter it (a clone under /root, mode
    0700, where users clone), a copy of the package in a world-readable temporary directory, removed at
    exit."""
    if _others_can_enter(REPO):
        return REPO
    d = Path(tempfile.mkdtemp(prefix="mptcpize-code-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    shutil.copytree(REPO / "mptcpize_py", d / "mptcpize_py", ignore=shutil.ignore_patterns("__pycache__"))
    for p in (d, *d.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return d


def cli_env(env: Mapping[str, str] | None = None, any_user: bool = False) -> dict[str, str]:
    """env (default os.environ) with REPO first on PYTHONPATH, so that CLI imports this checkout.
    any_user: for a CLI run as another user (code_any_user_can_import())."""
    out = dict(os.environ if env is None else env)
    code = code_any_user_can_import() if any_user else REPO
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), out.get("PYTHONPATH")) if p)
    return out


def mptcpize(*args, **kw) -> subprocess.CompletedProcess:
    """Runs this checkout's CLI; returns the completed process (text mode, output captured)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", scaled(120))
    kw["env"] = cli_env(kw.get("env"))
    return subprocess.run([*CLI, *args], **kw)


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


DAEMON_START_TIMEOUT = 60   # bcc compiles the program first


def start_daemon(policy_dir, control_path, log_file, log_path, *extra_args, environ=None, wrapper=(),
                 while_starting=None):
    """Starts `mptcpize-py daemon [extra_args] --policy-dir DIR` on a private control socket and
    returns the Popen once `status` answers there; fails the test if it exits or is not ready in time.
    wrapper: a command that execs the rest (e.g. into a mount namespace; the Popen's pid stays the
    daemon's); while_starting(pid): called at each poll while the daemon starts.
    Polls in-process (not `mptcpize-py status`): a Python start per poll would slow bcc's compile down
    on the VM's 2 CPUs."""
    from mptcpize_py.daemon import client
    from mptcpize_py.errors import MptcpizeError
    env = cli_env(dict(environ or os.environ, MPTCPIZE_CONTROL=str(control_path)))
    if not {"--metrics-dir", "--no-metrics"} & set(extra_args):
        extra_args = (*extra_args, "--no-metrics")   # never the host's node_exporter directory
    proc = subprocess.Popen([*wrapper, *CLI, "daemon", *extra_args, "--policy-dir", str(policy_dir)],
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode}: {Path(log_path).read_text()}")
        if while_starting is not None:
            while_starting(proc.pid)
        try:
            client.request({"cmd": "status"}, control_path, timeout=scaled(10))
            return True
        except MptcpizeError as err:
            if err.exit_code != 3:
                raise
            return False

    try:
        wait_for(answers, f"the daemon to answer on {control_path}", timeout=DAEMON_START_TIMEOUT,
                 interval=0.5, details=lambda: Path(log_path).read_text())
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return proc
