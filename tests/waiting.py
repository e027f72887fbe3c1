"""Waiting in tests: poll for a condition, never sleep a fixed time, never assert a duration.

Every limit here is a safety net given in seconds on a native machine and multiplied by time_scale():
  MPTCPIZE_TEST_TIME_SCALE   when set (a positive number), e.g. 2 on a loaded machine;
  else 4                     when MPTCPIZE_REQUIRE_BPF=1: both VM tiers (scripts/vm.sh, vm-systemd.sh)
                             set it, and their guests run under qemu without KVM;
  else 1.
No pytest import: programs the tests start (tests/netlab.py) use this too."""

import os
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SCALE_ENV = "MPTCPIZE_TEST_TIME_SCALE"
VM_SCALE = 4.0
DEFAULT_TIMEOUT = 30.0


class WaitTimeout(AssertionError):
    """What waited for did not happen in time: a test failure, with what it waited for."""


def time_scale() -> float:
    raw = os.environ.get(SCALE_ENV)
    if raw:
        try:
            scale = float(raw)
        except ValueError:
            scale = 0.0
        if not scale > 0:
            raise ValueError(f"{SCALE_ENV}={raw!r}: expected a positive number")
        return scale
    return VM_SCALE if os.environ.get("MPTCPIZE_REQUIRE_BPF") == "1" else 1.0


def scaled(seconds: float) -> float:
    """A safety limit for this machine (for timeout= arguments of subprocess and friends)."""
    return seconds * time_scale()


def wait_for(predicate: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT,
             interval: float = 0.1, details: Callable[[], object] | None = None) -> T:
    """Calls predicate until it returns something true, and returns that. After scaled(timeout)
    seconds fails with "timed out after N s waiting for <what>" (plus details(), when given).
    The predicate may raise to stop waiting early, e.g. when the process it waits on has died."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            message = f"timed out after {limit:g} s waiting for {what}"
            if details is not None:
                message += f": {details()}"
            raise WaitTimeout(message)
        time.sleep(interval)


def wait_exit(proc: subprocess.Popen, what: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """proc's exit status, once it exits; fails like wait_for if it has not within scaled(timeout)."""
    limit = scaled(timeout)
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        raise WaitTimeout(f"timed out after {limit:g} s waiting for {what}") from None
