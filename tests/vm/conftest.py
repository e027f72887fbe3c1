"""The VM tier: tests that need a kernel where the BPF backend really works (Linux >= 6.6 that allows
fmod_ret). scripts/vm.sh runs them inside a 6.12 guest with MPTCPIZE_REQUIRE_BPF=1, which turns
"BPF unusable" from a skip into a failure, so the tier can never pass by skipping."""

import json
import os

import pytest

from tests.conftest import mptcpize


@pytest.fixture(scope="session")
def bpf_backend():
    if os.geteuid() != 0:
        reason = "VM tier needs root"
    else:
        proc = mptcpize("check", "--json")
        report = json.loads(proc.stdout)
        reason = None if report["backend"] == "bpf" else report["backend_reason"]
    if reason:
        if os.environ.get("MPTCPIZE_REQUIRE_BPF") == "1":
            pytest.fail(f"BPF backend required here but unusable: {reason}")
        pytest.skip(f"BPF backend unusable on this kernel ({reason}); runs in the VM tier")
    return "bpf"
