"""The daemon with a policy as large as the kernel's exe map, every file of it replaced by rename (as a
package upgrade does), then a resync: every rule follows its new inode (the map change fits however
large), and nothing logs "policy sync failed". A daemon of its own, so the other daemon tests keep
their small policy; the files are mostly tiny scripts (an exe rule only needs an executable regular
file), plus a few copies of the static probe to ask the kernel (SO_PROTOCOL) at both ends of the
rule order."""

import os
import shutil
import subprocess

import pytest

from mptcpize_py import abi
from tests.conftest import cli_env, mptcpize, start_daemon
from tests.waiting import scaled, wait_for

pytestmark = pytest.mark.vm

N_RULES = abi.MAX_EXE_RULES             # the policy's real limit: one more is refused at validation
PROBES = (0, 1, N_RULES // 2, N_RULES - 2, N_RULES - 1)   # rule indexes that are real binaries
KEPT = 1                                # a probe never replaced: its key is in the old and the new map
SCRIPT = "#!/bin/sh\nexit 0\n"


def proto(path: str) -> str:
    return subprocess.run([path], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def big(bpf_backend, static_rawsock, tmp_path_factory):
    base = tmp_path_factory.mktemp("capacity")
    os.chmod(base, 0o755)
    bins = base / "bin"
    bins.mkdir(mode=0o755)
    paths = [str(bins / f"e{i:04d}") for i in range(N_RULES)]
    for i, p in enumerate(paths):
        if i in PROBES:
            shutil.copy2(static_rawsock, p)
        else:
            with open(p, "w") as f:
                f.write(SCRIPT)
            os.chmod(p, 0o755)
    policy_dir = base / "policy.d"
    policy_dir.mkdir(mode=0o755)
    rules = policy_dir / "10-many.toml"
    rules.write_text("".join(f'[[allow]]\nexe = "{p}"\n' for p in paths))
    rules.chmod(0o644)
    control = base / "run" / "control"
    log_path = base / "daemon.log"
    with open(log_path, "w") as log:
        proc = start_daemon(policy_dir, control, log, log_path)
        try:
            yield paths, static_rawsock, log_path, cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(control)))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=scaled(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_every_executable_replaced_at_capacity_is_followed(big):
    paths, static_rawsock, log_path, environ = big
    for i in PROBES:
        assert proto(paths[i]) == "262", paths[i]
    for i, p in enumerate(paths):     # a package upgrade: a new file renamed over each old one
        if i == KEPT:
            continue
        new = p + ".new"
        if i in PROBES:
            shutil.copy2(static_rawsock, new)
        else:
            with open(new, "w") as f:
                f.write(SCRIPT)
            os.chmod(new, 0o755)
        os.rename(new, p)

    def followed() -> int:            # logged per rule once the maps took the new selection
        text = log_path.read_text()
        if "policy sync failed" in text:   # no point waiting: it retries, and fails, every 2 s
            pytest.fail("the daemon could not sync the new selection: "
                        + text[text.index("policy sync failed"):][:2000])
        return sum(" now resolves to " in line for line in text.splitlines())

    # The daemon's own resync (every 2 s) follows them; each pass re-resolves N_RULES files (slow
    # under TCG), so wait generously.
    wait_for(lambda: followed() >= N_RULES - 1, f"the daemon to log {N_RULES - 1} rules following "
             "their new inode", timeout=90, interval=1, details=lambda: f"{followed()} logged")
    res = mptcpize("resync", env=environ)           # and one asked for: nothing left to change
    assert res.returncode == 0, res.stderr
    for i in PROBES:
        assert proto(paths[i]) == "262", paths[i]
    assert "policy sync failed" not in log_path.read_text()
