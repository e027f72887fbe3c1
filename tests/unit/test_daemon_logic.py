"""The daemon's loop logic without BPF: a fake Rewriter records what the maps would hold."""

import dataclasses
import json
import logging
import os
import sys

import pytest

from mptcpize_py import abi
from mptcpize_py.daemon import protocol, service
from mptcpize_py.daemon.service import Daemon
from mptcpize_py.host import procfs
from mptcpize_py.policy import PolicyError
from mptcpize_py.program.handle import ProgramHandle
from mptcpize_py.program.loader import ProcStats, UpgradeEvent
from mptcpize_py.status import DaemonStatus


class FakeRewriter(ProgramHandle):
    reads_netns_from_kernel = True

    def __init__(self):
        self.selections = []
        self.netns_mptcp = None
        self.run_roots = []
        self.callback = None
        self.stats = []
        self.exe_names = {}   # (tgid, start_ns) -> what the kernel saw a run-tree process exec
        self.closed = False

    def set_selection(self, exe, cgroups, netns):
        self.selections.append((exe, cgroups, netns))

    def set_netns_mptcp(self, enabled):
        self.netns_mptcp = dict(enabled)

    def add_run_root(self, pid, run_id=1):
        self.run_roots.append((pid, run_id))

    def exe_name(self, tgid, start_ns):
        return self.exe_names.get((tgid, start_ns))

    def open_events(self, cb):
        self.callback = cb

    def poll_events(self, _ms):
        pass

    def drain_events(self):
        pass

    def counters(self):
        return {name: 0 for name in abi.COUNTERS} | {"upgraded": sum(s.upgraded for s in self.stats)}

    def proc_stats(self):
        return list(self.stats)

    def rule_stats(self):
        out = {}
        for s in self.stats:
            if s.kind != "run":
                out[(s.kind, s.rule_id)] = out.get((s.kind, s.rule_id), 0) + s.upgraded
        return out

    def close(self):
        self.closed = True


EXE = os.path.realpath(sys.executable)


@pytest.fixture
def daemon(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    (d / "10.toml").write_text(f'[[allow]]\nname = "py"\nexe = "{EXE}"\n')
    fake = FakeRewriter()
    dm = Daemon(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                serve=False)
    dm.start()
    yield dm, fake, d
    dm.close()
    assert fake.closed


# When this process started, as the kernel's start_boottime (ns after boot) that /proc shows in ticks.
TICK_NS = 1_000_000_000 // procfs.CLOCK_TICKS
ME = os.getpid()
MY_START = procfs.starttime(ME) * TICK_NS
# An earlier process that had this pid: it started before this one and has exited.
OLD_START = MY_START - 3 * TICK_NS


def event(tgid, rule_id=16, start_ns=None, kind="exe"):
    """An upgrade event of process (tgid, start_ns); start_ns defaults to that of the live process."""
    if start_ns is None:
        start_ns = procfs.starttime(tgid) * TICK_NS
    return UpgradeEvent(tgid, tgid, 0, "python", 1, 1, 2, kind, rule_id, start_ns)


def test_start_fills_the_maps(daemon):
    dm, fake, _ = daemon
    exe, cgroups, netns = fake.selections[-1]
    assert list(exe.values()) == [(16, abi.ACTION_ALLOW)]
    assert cgroups == {}
    assert netns == {os.stat("/proc/self/ns/net").st_ino}   # the host's namespace only


def test_first_upgrade_logged_once(daemon, caplog):
    dm, fake, _ = daemon
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    for _ in range(3):
        fake.callback(event(os.getpid()))
    lines = [r.getMessage() for r in caplog.records if "upgraded pid=" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(f"upgraded pid={os.getpid()} exe={EXE} rule=allow exe={EXE} \"py\" "
                               "(10.toml:1)")
    assert " unit=" in lines[0] or " cgroup=" in lines[0]


def test_status_rows(daemon):
    dm, fake, _ = daemon
    fake.callback(event(os.getpid()))
    fake.stats = [ProcStats(ME, 500, "exe", 16, MY_START), ProcStats(2 ** 22 + 5, 3, "exe", 16, 10**9)]
    st = dm.status()
    assert st.backend == "bpf"
    assert st.totals["upgraded"] == 503
    rows = {r.pid: r for r in st.processes}
    me = rows[os.getpid()]
    assert me.upgraded == 500 and me.alive is True and me.exe == EXE
    assert me.rule.startswith(f"allow exe={EXE}")
    gone = rows[2 ** 22 + 5]
    assert gone.alive is False and gone.upgraded == 3
    assert st.policy.summary == "1 allow, 0 deny rules from 1 file; netns: host"
    assert [(r.id, r.upgraded) for r in st.policy.rules] == [(16, 503)]
    assert st.events_dropped == 0


def test_status_answer_on_the_wire_parses_back(daemon):
    """What the control socket sends for `status` is the typed status, field for field."""
    dm, fake, _ = daemon
    fake.callback(event(os.getpid()))
    fake.stats = [ProcStats(ME, 500, "exe", 16, MY_START), ProcStats(2 ** 22 + 6, 2, "run", 1, 10**9)]
    answer = json.loads(protocol.encode(dm.status_request({"cmd": "status"}, None)))
    parsed = DaemonStatus.from_json_dict(answer)
    assert parsed.to_json_dict() == answer
    assert dataclasses.replace(parsed, uptime_s=0) == dataclasses.replace(dm.status(), uptime_s=0)


def test_a_recycled_pid_is_another_process(daemon, caplog):
    """The kernel counts per (tgid, start): an earlier process that had this pid is its own row and
    its own first-upgrade line, and what /proc says about the pid now is not put on it."""
    dm, fake, _ = daemon
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    fake.callback(event(ME, start_ns=OLD_START))   # read late: the pid is already this process's
    fake.callback(event(ME))
    fake.callback(event(ME))
    lines = [r.getMessage() for r in caplog.records if f"upgraded pid={ME} " in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith(f"upgraded pid={ME} exe=?(python) ")   # not this process's exe
    assert lines[1].startswith(f"upgraded pid={ME} exe={EXE} ")
    fake.stats = [ProcStats(ME, 7, "exe", 16, MY_START), ProcStats(ME, 3, "exe", 16, OLD_START)]
    rows = dm.status().processes
    assert [(r.pid, r.start_ns, r.upgraded, r.alive, r.exe) for r in rows] == \
        [(ME, OLD_START, 3, False, None), (ME, MY_START, 7, True, EXE)]
    assert rows[0].cgroup is None and rows[1].cgroup == procfs.cgroup(ME)
    assert [r.upgraded for r in dm.status().policy.rules] == [10]


def test_status_row_without_a_record_checks_the_start(daemon):
    """A row the daemon has no record of (its event was dropped) names an exe only if the pid is still
    that process."""
    dm, fake, _ = daemon
    fake.stats = [ProcStats(ME, 1, "exe", 16, OLD_START), ProcStats(ME, 1, "exe", 16, MY_START)]
    assert [(r.exe, r.alive) for r in dm.status().processes] == [(None, False), (EXE, True)]


def test_prune_keeps_the_live_process_of_a_recycled_pid(daemon, monkeypatch):
    """Over the limit, records of exited processes the kernel no longer counts go; the live process of
    the same pid stays, and so does an exited one that still has its row."""
    dm, fake, _ = daemon
    older = OLD_START - TICK_NS
    for start in (older, OLD_START, None):
        fake.callback(event(ME, start_ns=start))
    fake.stats = [ProcStats(ME, 1, "exe", 16, OLD_START)]   # the LRU forgot (ME, older)
    monkeypatch.setattr(service, "MAX_PROC_RECORDS", 1)
    dm._prune()
    assert sorted(dm._procs) == [(ME, OLD_START), (ME, MY_START)]


class Peer:
    pid = ME
    uid = 0


def test_run_report_one_row_per_process(daemon):
    """`run -v` via the daemon: two processes of the run with the same pid are two rows, each with its
    own count and executable; another run's processes are not in it."""
    dm, fake, _ = daemon
    run_id = dm.register({"pid": ME}, Peer())["run_id"]
    fake.exe_names[(ME, OLD_START)] = "/usr/bin/first"
    fake.stats = [ProcStats(ME, 5, "run", run_id, MY_START), ProcStats(ME, 2, "run", run_id, OLD_START),
                  ProcStats(ME, 9, "run", run_id + 1, OLD_START - TICK_NS)]
    report = dm.run_report({"run_id": run_id})
    assert report["processes"] == [
        {"pid": ME, "start_ns": OLD_START, "upgraded": 2, "exe": "/usr/bin/first"},
        {"pid": ME, "start_ns": MY_START, "upgraded": 5, "exe": EXE},
    ]


def test_standalone_run_reports_one_row_per_process(monkeypatch):
    """`run -v --backend bpf` with its own program: the same, from the program's map."""
    from mptcpize_py.program import loader
    from mptcpize_py.run.backend import ProcessReport
    from mptcpize_py.run.bpf import BpfRunBackend
    fake = FakeRewriter()
    monkeypatch.setattr(loader, "Rewriter", lambda all_netns: fake)
    backend = BpfRunBackend()
    fake.callback(event(ME, start_ns=OLD_START, kind="run", rule_id=1))   # gone: its comm only
    fake.callback(event(ME, kind="run", rule_id=1))
    fake.stats = [ProcStats(ME, 5, "run", 1, MY_START), ProcStats(ME, 2, "run", 1, OLD_START)]
    assert backend.finish() == [ProcessReport(ME, "[python]", 2), ProcessReport(ME, EXE, 5)]
    backend.close()


def test_reload_applies_a_good_policy(daemon):
    dm, fake, d = daemon
    (d / "20.toml").write_text(f'[[deny]]\nexe = "{EXE}"\n')
    assert dm.reload("test") is True
    exe, _, _ = fake.selections[-1]
    assert list(exe.values()) == [(17, abi.ACTION_DENY)]   # deny beats allow for the same file
    assert dm.policy.summary().startswith("1 allow, 1 deny")


def test_bad_reload_keeps_the_last_good_policy(daemon, caplog):
    dm, fake, d = daemon
    before = fake.selections[-1]
    (d / "30.toml").write_text("[[allow]]\nexe = 'relative'\n[[allow]]\nexe = '/nonexistent/x'\n")
    caplog.set_level(logging.ERROR, logger="mptcpize_py.daemon")
    assert dm.reload("test") is False
    assert fake.selections[-1] == before
    assert dm.failed_reloads == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert any("30.toml:2: exe:" in m and "not an absolute path" in m for m in msgs)
    assert any("keeping the last good policy" in m for m in msgs)
    (d / "30.toml").write_text("[[allow]]\nexe = '/nonexistent/x'\n")   # valid TOML, unresolvable
    assert dm.reload("test") is False
    assert fake.selections[-1] == before


def test_resync_follows_a_replaced_executable(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    exe = tmp_path / "prog"
    exe.write_bytes(b"#!/bin/sh\n")
    exe.chmod(0o755)
    (d / "10.toml").write_text(f'[[allow]]\nexe = "{exe}"\n')
    fake = FakeRewriter()
    dm = Daemon(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                serve=False)
    dm.start()
    n = len(fake.selections)
    dm.resync()
    assert len(fake.selections) == n          # nothing changed: the maps are not rewritten
    new = tmp_path / "prog.new"
    new.write_bytes(b"#!/bin/sh\n")
    new.chmod(0o755)
    os.rename(new, exe)                        # a package upgrade: same path, new inode
    dm.resync()
    assert len(fake.selections) == n + 1
    assert fake.selections[-1][0] != fake.selections[n - 1][0]
    dm.close()


def test_start_with_bad_policy_loads_nothing(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    (d / "10.toml").write_text("[[allow]]\nexe = '/nonexistent/x'\n")
    made = []
    dm = Daemon(d, tmp_path / "control", owner_uid=os.geteuid(),
                rewriter_factory=lambda: made.append(1), serve=False)
    with pytest.raises(PolicyError) as e:
        dm.start()
    assert e.value.exit_code == 78 and "10.toml:1: exe=/nonexistent/x: does not exist" in e.value.errors[0]
    assert made == []


def test_loop_reloads_on_directory_change_and_stops(daemon):
    dm, fake, d = daemon
    dm.resync_interval = 0
    polls = []

    def poll(_ms):
        polls.append(1)
        if len(polls) == 1:
            (d / "20.toml").write_text(f'[[deny]]\nexe = "{EXE}"\n')
        if len(polls) == 3:
            dm._stop = True   # what SIGTERM's handler does

    fake.poll_events = poll
    dm.run()
    assert dm.reloads == 1
    assert list(fake.selections[-1][0].values()) == [(17, abi.ACTION_DENY)]


def test_loop_survives_a_failing_sync(daemon, caplog):
    dm, fake, d = daemon
    dm.resync_interval = 0
    polls = []

    def poll(_ms):
        polls.append(1)
        if len(polls) == 3:
            dm._stop = True

    def broken():
        raise OSError("odd filesystem")

    fake.poll_events = poll
    dm.resync = broken
    dm.run()
    assert len(polls) == 3
    assert any("policy sync failed" in r.getMessage() for r in caplog.records)
