"""The systemd tier: tests that need systemd as PID 1 and change /etc and systemd's state. They run only
inside scripts/vm-systemd.sh (a throwaway VM whose runner unit sets MPTCPIZE_THROWAWAY_SYSTEMD=1), never
on a developer's machine, where they would install units and restart services for real."""

import os

import pytest

from mptcpize_py.support import kernel_support

THROWAWAY = os.environ.get("MPTCPIZE_THROWAWAY_SYSTEMD") == "1"


def pytest_collection_modifyitems(config, items):
    if THROWAWAY:
        return
    skip = pytest.mark.skip(reason="changes /etc and systemd's state: runs only in scripts/vm-systemd.sh "
                                   "(make test-systemd)")
    for item in items:
        if "/tests/systemd/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def systemd_and_bpf():
    """systemd is PID 1 and the daemon's BPF path works (else fail under MPTCPIZE_REQUIRE_BPF=1)."""
    reason = None
    if not os.path.isdir("/run/systemd/system"):
        reason = "systemd is not PID 1"
    else:
        # In-process: `mptcpize-py check` compiles with bcc (~40 s under TCG).
        failed = [f"{c.name}: {c.detail}" for c in kernel_support().problems]
        if failed:
            reason = "BPF path unusable: " + "; ".join(failed)
    if reason:
        if os.environ.get("MPTCPIZE_REQUIRE_BPF") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
