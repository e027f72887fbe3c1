"""Every implementation of a protocol provides each of its members itself (not the protocol's empty
stub): the run backends, the loaded program and the tests' fakes of them."""

from typing import Protocol

import pytest

from mptcpize_py.program.handle import ProgramHandle
from mptcpize_py.run.backend import RunBackend
from mptcpize_py.run.bpf import BpfRunBackend, DaemonRunBackend
from mptcpize_py.run.seccomp.backend import SeccompRunBackend
from tests.unit.test_daemon_logic import FakeRewriter
from tests.unit.test_run import NoUpgradeBackend


def members(cls: type) -> set[str]:
    """Public names cls declares itself or inherits from a class that is not a protocol: methods,
    properties, class attributes and annotated attributes."""
    out = set()
    for klass in cls.__mro__:
        if klass is object or klass is Protocol or getattr(klass, "_is_protocol", False):
            continue
        out |= set(vars(klass)) | set(vars(klass).get("__annotations__", {}))
    return {name for name in out if not name.startswith("_")}


def protocol_members(proto: type) -> set[str]:
    return {name for name in set(vars(proto)) | set(proto.__annotations__) if not name.startswith("_")}


def test_protocols_are_not_empty():
    assert {"name", "child_setup", "finish", "counters", "handed_off_pid", "close"} \
        <= protocol_members(RunBackend)
    assert {"reads_netns_from_kernel", "set_selection", "add_run_root", "poll_events", "close"} \
        <= protocol_members(ProgramHandle)


@pytest.mark.parametrize("cls", [BpfRunBackend, DaemonRunBackend, SeccompRunBackend, NoUpgradeBackend])
def test_run_backends_provide_every_member(cls):
    assert RunBackend in cls.__mro__   # declared, not only shaped alike
    assert protocol_members(RunBackend) - members(cls) == set()


def test_fake_rewriter_provides_every_member():
    assert ProgramHandle in FakeRewriter.__mro__
    assert protocol_members(ProgramHandle) - members(FakeRewriter) == set()


def test_rewriter_provides_every_member():
    from mptcpize_py.program.rewriter import Rewriter
    assert protocol_members(ProgramHandle) - members(Rewriter) == set()
