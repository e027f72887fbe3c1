"""The control socket's handlers: each request is a short function of the request, the peer and the
collaborators it needs (passed in), as tuned's controller is. handlers() maps the commands to them."""

import logging
import os
import threading
from collections.abc import Callable
from functools import partial
from typing import cast

from mptcpize_py.daemon.control import Handler, check_registrant
from mptcpize_py.daemon.protocol import Ucred
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import procfs
from mptcpize_py.policy import check_unit_name
from mptcpize_py.policysync import PolicySync
from mptcpize_py.program.handle import ProgramHandle
from mptcpize_py.status import DaemonStatus

MAX_RUN_RECORDS = 4096     # registered runs waiting for their run_report

log = logging.getLogger("mptcpize_py.daemon")


class Runs:
    """Registered `run` trees: run id -> the pid registered, until its run_report."""

    def __init__(self) -> None:
        self._next = 1
        self.pids: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, pid: int) -> int:
        with self._lock:
            run_id = self._next
            self._next = run_id + 1 if run_id < 0xFFFFFFFF else 1
            self.pids[run_id] = pid
            while len(self.pids) > MAX_RUN_RECORDS:   # runs killed before asking for their report
                del self.pids[next(iter(self.pids))]
        return run_id

    def pop(self, run_id: int) -> None:
        with self._lock:
            self.pids.pop(run_id, None)


def hello(backend: str, _req: dict, _peer: Ucred) -> dict:
    return {"ok": True, "pid": os.getpid(), "backend": backend}


def register(runs: Runs, rw: ProgramHandle, dry_run: bool, req: dict, peer: Ucred) -> dict:
    """`run`'s fast path: the process `pid` (the peer itself, before it execs CMD, or a child of the
    peer that has not been reaped) and everything it forks from now on is upgraded."""
    if dry_run:
        raise MptcpizeError("register: this daemon is a dry run and upgrades nothing")
    pid = req.get("pid")
    if pid != peer.pid:
        check_registrant(pid, peer)
    elif type(pid) is not int:
        raise MptcpizeError(f"register: pid must be an integer, not {pid!r}")
    pid = cast(int, pid)   # checked above
    run_id = runs.add(pid)
    rw.add_run_root(pid, run_id)
    log.debug("run %d: registered pid %d (peer pid %d)", run_id, pid, peer.pid)
    return {"ok": True, "run_id": run_id}


def run_report(runs: Runs, rw: ProgramHandle, req: dict, _peer: Ucred) -> dict:
    """Per-process counts of one registered run (for `run -v`)."""
    run_id = req.get("run_id")
    if type(run_id) is not int or run_id not in runs.pids:
        raise MptcpizeError(f"run_report: unknown run id {run_id!r}")
    rows = [{"pid": s.tgid, "start_ns": s.start_ns, "upgraded": s.upgraded,
             "exe": (procfs.exe_of_process(s.tgid, s.start_ns)
                     or rw.exe_name(s.tgid, s.start_ns))}
            for s in rw.proc_stats() if s.kind == "run" and s.rule_id == run_id]
    runs.pop(run_id)
    return {"ok": True, "processes": sorted(rows, key=lambda r: (r["pid"], r["start_ns"]))}


def resync(sync: PolicySync, req: dict, _peer: Ucred) -> dict:
    """Re-resolves now. With "unit": answers once the unit's current cgroup is in the maps, or
    says why it cannot be (not in the policy; no cgroup: the unit is not running)."""
    unit = req.get("unit")
    if unit is not None:
        problem = check_unit_name(unit)
        if problem:
            raise MptcpizeError(f"resync: {problem}")
    # `enable --now` writes the unit's policy record and restarts the unit at once: its
    # ExecStartPre asks here before the 2 s poll has seen the new file, so look at the directory.
    sync.sync_now("resync request: policy directory changed")
    if unit is None:
        return {"ok": True}
    policy, resolved = sync.snapshot()
    rules = [r for r in policy.rules if r.kind == "unit" and r.value == unit]
    if not rules:
        raise MptcpizeError(f"resync: {unit} is not in the policy ({sync.policy_dir})",
                            hint=f"mptcpize-py enable {unit}")
    selected = [r for r in rules if any(rr.id == r.id for rr in resolved.cgroups.values())]
    if not selected:
        raise MptcpizeError(f"resync: {unit} has no cgroup now ({resolved.targets.get(rules[0].id)})",
                            hint="it is selected as soon as it runs")
    return {"ok": True, "unit": unit, "rules": [{"id": r.id, "action": r.action,
                                                 "target": resolved.targets.get(r.id)}
                                                for r in selected]}


def status(build: Callable[[], DaemonStatus], _req: dict, _peer: Ucred) -> dict:
    """`status`: the typed status in its wire format."""
    return build().to_json_dict()


def handlers(*, backend: str, dry_run: bool, runs: Runs, rw: ProgramHandle, sync: PolicySync,
             build_status: Callable[[], DaemonStatus]) -> dict[str, Handler]:
    return {"hello": partial(hello, backend), "status": partial(status, build_status),
            "register": partial(register, runs, rw, dry_run),
            "run_report": partial(run_report, runs, rw), "resync": partial(resync, sync)}
