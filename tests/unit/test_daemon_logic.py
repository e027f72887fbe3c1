"""The daemon's loop logic without BPF: a fake Rewriter records what the maps would hold."""

import dataclasses
import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from mptcpize_py import abi
from mptcpize_py.daemon import events, netns_feed, protocol, service
from mptcpize_py.host import procfs
from mptcpize_py.policy import PolicyError
from mptcpize_py.program.handle import ProcStats, ProgramHandle, UpgradeEvent
from mptcpize_py.status import DaemonStatus
from tests.waiting import wait_for


class FakeRewriter(ProgramHandle):
    reads_netns_from_kernel = True
    netns_capacity = abi.MAX_NETNS   # the netns_mptcp map's size: more is E2BIG, as a full BPF hash map

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
        if len(enabled) > self.netns_capacity:
            raise OSError(errno.E2BIG, os.strerror(errno.E2BIG))
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
                out[s.rule_id] = out.get(s.rule_id, 0) + s.upgraded
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
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                serve=False)
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
    answer = json.loads(protocol.encode(dm.handlers["status"]({"cmd": "status"}, None)))
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
    monkeypatch.setattr(events, "MAX_PROC_RECORDS", 1)
    dm.procs.prune(fake.proc_stats)
    assert sorted(dm.procs.records) == [(ME, OLD_START), (ME, MY_START)]


class Peer:
    pid = ME
    uid = 0


def test_run_report_one_row_per_process(daemon):
    """`run -v` via the daemon: two processes of the run with the same pid are two rows, each with its
    own count and executable; another run's processes are not in it."""
    dm, fake, _ = daemon
    run_id = dm.handlers["register"]({"pid": ME}, Peer())["run_id"]
    fake.exe_names[(ME, OLD_START)] = "/usr/bin/first"
    fake.stats = [ProcStats(ME, 5, "run", run_id, MY_START), ProcStats(ME, 2, "run", run_id, OLD_START),
                  ProcStats(ME, 9, "run", run_id + 1, OLD_START - TICK_NS)]
    report = dm.handlers["run_report"]({"run_id": run_id}, None)
    assert report["processes"] == [
        {"pid": ME, "start_ns": OLD_START, "upgraded": 2, "exe": "/usr/bin/first"},
        {"pid": ME, "start_ns": MY_START, "upgraded": 5, "exe": EXE},
    ]


def test_standalone_run_reports_one_row_per_process(monkeypatch):
    """`run -v --backend bpf` with its own program: the same, from the program's map."""
    from mptcpize_py.program import rewriter
    from mptcpize_py.run.backend import ProcessReport
    from mptcpize_py.run.bpf import BpfRunBackend
    fake = FakeRewriter()
    monkeypatch.setattr(rewriter, "Rewriter", lambda all_netns: fake)
    backend = BpfRunBackend()
    fake.callback(event(ME, start_ns=OLD_START, kind="run", rule_id=1))   # gone: its comm only
    fake.callback(event(ME, kind="run", rule_id=1))
    fake.stats = [ProcStats(ME, 5, "run", 1, MY_START), ProcStats(ME, 2, "run", 1, OLD_START)]
    assert backend.finish() == [ProcessReport(ME, "[python]", 2), ProcessReport(ME, EXE, 5)]
    backend.close()


def test_reload_applies_a_good_policy(daemon):
    dm, fake, d = daemon
    (d / "20.toml").write_text(f'[[deny]]\nexe = "{EXE}"\n')
    assert dm.sync.reload("test") is True
    exe, _, _ = fake.selections[-1]
    assert list(exe.values()) == [(17, abi.ACTION_DENY)]   # deny beats allow for the same file
    assert dm.sync.policy.summary().startswith("1 allow, 1 deny")


def test_bad_reload_keeps_the_last_good_policy(daemon, caplog):
    dm, fake, d = daemon
    before = fake.selections[-1]
    (d / "30.toml").write_text("[[allow]]\nexe = 'relative'\n[[allow]]\nexe = '/nonexistent/x'\n")
    caplog.set_level(logging.ERROR, logger="mptcpize_py.daemon")
    assert dm.sync.reload("test") is False
    assert fake.selections[-1] == before
    assert dm.sync.failed_reloads == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert any("30.toml:2: exe:" in m and "not an absolute path" in m for m in msgs)
    assert any("keeping the last good policy" in m for m in msgs)
    (d / "30.toml").write_text("[[allow]]\nexe = '/nonexistent/x'\n")   # valid TOML, unresolvable
    assert dm.sync.reload("test") is False
    assert fake.selections[-1] == before


def test_resync_follows_a_replaced_executable(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    exe = tmp_path / "prog"
    exe.write_bytes(b"#!/bin/sh\n")
    exe.chmod(0o755)
    (d / "10.toml").write_text(f'[[allow]]\nexe = "{exe}"\n')
    fake = FakeRewriter()
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                serve=False)
    n = len(fake.selections)
    dm.sync.resync()
    assert len(fake.selections) == n          # nothing changed: the maps are not rewritten
    new = tmp_path / "prog.new"
    new.write_bytes(b"#!/bin/sh\n")
    new.chmod(0o755)
    os.rename(new, exe)                        # a package upgrade: same path, new inode
    dm.sync.resync()
    assert len(fake.selections) == n + 1
    assert fake.selections[-1][0] != fake.selections[n - 1][0]
    dm.close()


def test_start_with_bad_policy_loads_nothing(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    (d / "10.toml").write_text("[[allow]]\nexe = '/nonexistent/x'\n")
    made = []
    with pytest.raises(PolicyError) as e:
        service.start(d, tmp_path / "control", owner_uid=os.geteuid(),
                      rewriter_factory=lambda: made.append(1), serve=False)
    assert e.value.exit_code == 78 and "10.toml:1: exe=/nonexistent/x: does not exist" in e.value.errors[0]
    assert made == []


def test_loop_reloads_on_directory_change_and_stops(daemon):
    dm, fake, d = daemon
    dm.sync.watch.interval = 0
    polls = []

    def poll(_ms):
        polls.append(1)
        if len(polls) == 1:
            (d / "20.toml").write_text(f'[[deny]]\nexe = "{EXE}"\n')
        if len(polls) == 3:
            dm.signals.stop = True   # what SIGTERM's handler does

    fake.poll_events = poll
    dm.run()
    assert dm.sync.reloads == 1
    assert list(fake.selections[-1][0].values()) == [(17, abi.ACTION_DENY)]


def test_loop_survives_a_failing_sync(daemon, caplog):
    dm, fake, d = daemon
    dm.sync.watch.interval = 0
    polls = []

    def poll(_ms):
        polls.append(1)
        if len(polls) == 3:
            dm.signals.stop = True

    def broken():
        raise OSError("odd filesystem")

    fake.poll_events = poll
    dm.sync.resync = broken
    dm.run()
    assert len(polls) == 3
    assert any("policy sync failed" in r.getMessage() for r in caplog.records)


def netns_dir_with(tmp_path, n: int):
    """A stand-in /run/netns with n names, each its own inode (a namespace to the daemon's eyes)."""
    d = tmp_path / "netns"
    d.mkdir()
    for i in range(n):
        (d / f"ns{i:04d}").touch()
    return d


@pytest.fixture
def dry_run_daemon(tmp_path, monkeypatch):
    """A dry run on a kernel whose net.mptcp.enabled the program cannot read: the daemon tells it."""
    policy_d = tmp_path / "policy.d"
    policy_d.mkdir(mode=0o755)
    (policy_d / "10.toml").write_text(f'[[allow]]\nexe = "{EXE}"\n')
    read = []
    monkeypatch.setattr(netns_feed, "read_sysctl_in_netns", lambda p, _name: read.append(p) or "1")
    fake = FakeRewriter()
    fake.reads_netns_from_kernel = False
    started = []

    def start():
        started.append(service.start(policy_d, tmp_path / "control", owner_uid=os.geteuid(),
                                     rewriter_factory=lambda: fake, serve=False, dry_run=True))
        return started[-1]

    yield start, fake, read
    for dm in started:
        dm.close()


def run_passes(dm, fake, passes: int, between=lambda n: None) -> list[str]:
    """Runs the loop for `passes` resync passes; returns the STATUS= lines it sent (the last work of a
    pass, after the netns refresh)."""
    sent = []
    dm.notifier.status = sent.append
    dm.sync.watch.interval = 0
    polls = []

    def poll(_ms):
        polls.append(1)
        between(len(polls))
        if len(polls) > passes:
            dm.signals.stop = True

    fake.poll_events = poll
    dm.run()
    return sent


def test_dry_run_netns_refresh_fills_what_fits_and_warns_once(dry_run_daemon, tmp_path, monkeypatch,
                                                               caplog):
    """/run/netns names more namespaces than netns_mptcp holds: the host's and as many others as fit go
    in, one warning says how many were left out, and the rest of each loop pass still runs."""
    start, fake, read = dry_run_daemon
    extra = 6
    netns = netns_dir_with(tmp_path, abi.MAX_NETNS - 1 + extra)   # + the host's: `extra` too many
    monkeypatch.setattr(netns_feed, "named_netns_dir", lambda: str(netns))
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    dm = start()
    read.clear()

    def shrink(n):
        if n == 3:   # namespaces deleted: all fit again, said once
            for i in range(extra):
                (netns / f"ns{i:04d}").unlink()

    sent = run_passes(dm, fake, 4, shrink)
    assert len(sent) == 4                                   # every pass got past the refresh
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "policy sync failed" in m]
    assert not [r for r in caplog.records if r.exc_info]    # no traceback
    left_out = [r for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 1 and left_out[0].levelno == logging.WARNING     # at start, not per pass
    assert left_out[0].getMessage().startswith(f"dry run: {extra} network namespaces left out of the "
                                               f"netns_mptcp map (it holds {abi.MAX_NETNS}")
    assert sum("fits the netns_mptcp map again" in m for m in messages) == 1
    assert len(fake.netns_mptcp) == abi.MAX_NETNS
    assert os.stat("/proc/self/ns/net").st_ino in fake.netns_mptcp
    # The namespaces left out were not even entered: MAX_NETNS per pass, before and after the shrink.
    assert len(read) == 4 * abi.MAX_NETNS


def test_dry_run_netns_refresh_keeps_the_policys_namespaces(dry_run_daemon, tmp_path, monkeypatch):
    """When they do not all fit, a namespace the policy selects goes before one it does not."""
    start, fake, _read = dry_run_daemon
    netns = netns_dir_with(tmp_path, abi.MAX_NETNS + 1)
    (netns / "zz-selected").touch()        # sorts last
    monkeypatch.setattr(netns_feed, "named_netns_dir", lambda: str(netns))
    dm = start()
    selected = os.stat(netns / "zz-selected").st_ino
    dm.sync.resolved = dataclasses.replace(dm.sync.resolved, netns=dm.sync.resolved.netns | {selected})
    dm._refresh_netns()
    assert len(fake.netns_mptcp) == abi.MAX_NETNS
    assert selected in fake.netns_mptcp and os.stat("/proc/self/ns/net").st_ino in fake.netns_mptcp


# A selected executable named by an unprivileged user: its path forges a log line of its own (LF),
# sets root's terminal title (OSC) and holds a byte that is not UTF-8.
FORGED = "mptcpize-py: info: upgraded pid=1 exe=/usr/sbin/sshd rule=FORGED"


@pytest.fixture
def hostile_process(tmp_path):
    """A running process whose executable's path holds LF, ESC, BEL and the byte 0xff."""
    where = tmp_path / f"evil\n{FORGED.rpartition('/usr/sbin/')[0]}" / "usr" / "sbin"
    where.mkdir(parents=True)
    exe = where / "sshd rule=FORGED\x1b]0;pwned\x07\udcff"
    shutil.copy2(shutil.which("sleep"), exe)
    proc = subprocess.Popen([exe, "600"])
    try:
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe") == str(exe), "the copy of sleep to run")
        yield proc.pid, str(exe)
    finally:
        proc.kill()
        proc.wait()


def upgrade_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("upgraded pid=")]


def test_hostile_exe_name_cannot_forge_a_log_line(daemon, hostile_process, caplog):
    dm, fake, _ = daemon
    pid, exe = hostile_process
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    fake.callback(event(pid))
    rec, = upgrade_lines(caplog)
    line = caplog.handler.format(rec)
    assert len(line.splitlines()) == 1 and line.isprintable()
    assert f"pid={pid} exe={tmp_escaped(exe)} rule=allow exe={EXE}" in line
    assert "\\nmptcpize-py: info: upgraded pid=1 exe=/usr/sbin/sshd rule=FORGED\\x1b]0;pwned\\x07\\xff " in line
    # journald's field carries the name exact: its bytes, the undecodable one included.
    assert rec.MPTCPIZE_EXE == os.fsencode(exe)


def tmp_escaped(path: str) -> str:
    """The path as the log line must show it (tmp_path itself is printable)."""
    head, sep, tail = path.partition("/evil\n")
    return head + sep.replace("\n", "\\n") + tail.replace("\x1b", "\\x1b").replace("\x07", "\\x07") \
        .replace("\udcff", "\\xff")


def test_hostile_comm_and_cgroup_are_escaped_in_the_log(daemon, caplog, monkeypatch):
    # The `?(COMM)` fallback (no exe readable) shows a name anyone sets with prctl(PR_SET_NAME); a
    # cgroup in a delegated subtree is named by its user.
    dm, fake, _ = daemon
    live = subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: procfs.starttime(live.pid) is not None, "the sleep to show in /proc")
        hostile_cgroup = "/user.slice/x\x1b[2J\ny.scope"
        monkeypatch.setattr(procfs, "exe", lambda _pid, proc=procfs.PROC: None)
        monkeypatch.setattr(procfs, "cgroup", lambda _pid, proc=procfs.PROC: hostile_cgroup)
        caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
        fake.callback(dataclasses.replace(event(live.pid), comm="\x1b]0;x\x07\nrule=F"))
    finally:
        live.kill()
        live.wait()
    rec, = upgrade_lines(caplog)
    assert rec.getMessage() == (f"upgraded pid={live.pid} exe=?(\\x1b]0;x\\x07\\nrule=F) rule=allow "
                                f"exe={EXE} \"py\" (10.toml:1) cgroup=/user.slice/x\\x1b[2J\\ny.scope")
    assert rec.MPTCPIZE_COMM == "\x1b]0;x\x07\nrule=F" and rec.MPTCPIZE_CGROUP == hostile_cgroup


def test_journald_gets_the_record_of_an_undecodable_exe(daemon, hostile_process):
    # python-systemd encodes str fields as strict UTF-8: a surrogate there lost the whole record.
    journal = pytest.importorskip("systemd.journal")
    dm, fake, _ = daemon
    pid, exe = hostile_process
    sent = []

    def sendv_like(MESSAGE, **fields):
        # what journal.send() hands to sendv(), which encodes each str as strict UTF-8
        lines = [journal._make_line("MESSAGE", MESSAGE)]
        lines += [journal._make_line(k, v) for k, v in fields.items() if k.startswith("MPTCPIZE_")]
        sent.append({ln.partition(b"=" if isinstance(ln, bytes) else "=")[0]: ln for ln in
                     (x if isinstance(x, bytes) else x.encode("utf-8") for x in lines)})

    handler = journal.JournalHandler(sender_function=sendv_like)
    handler.handleError = lambda record: pytest.fail(f"the journal handler failed on {record.msg!r}")
    logger = logging.getLogger("mptcpize_py.daemon")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        fake.callback(event(pid))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    fields, = (s for s in sent if b"upgraded pid=" in s[b"MESSAGE"])
    assert fields[b"MPTCPIZE_EXE"] == b"MPTCPIZE_EXE=" + os.fsencode(exe)
    assert b"\n" not in fields[b"MESSAGE"] and b"\xff" not in fields[b"MESSAGE"]


def test_resolution_of_a_symlink_to_a_hostile_name_is_logged_escaped(tmp_path, caplog):
    # The policy names a path; where its symlink leads is the filesystem's (a user's) choice.
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    for name in ("a", "b\nmptcpize-py: info: forged\x1b[2J"):
        (tmp_path / name).write_bytes(b"#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (d / "10.toml").write_text(f'[[allow]]\nexe = "{tmp_path / "link"}"\n')
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=FakeRewriter,
                serve=False)
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    (tmp_path / "link.new").symlink_to(tmp_path / "b\nmptcpize-py: info: forged\x1b[2J")
    os.rename(tmp_path / "link.new", tmp_path / "link")
    dm.sync.resync()
    dm.close()
    msg, = [r.getMessage() for r in caplog.records if "now resolves to" in r.getMessage()]
    assert msg.isprintable()
    assert f" -> {tmp_path}/b\\nmptcpize-py: info: forged\\x1b[2J (dev " in msg


def test_configmap_swap_is_one_reload_and_a_bad_one_keeps_the_last_good_policy(tmp_path, caplog):
    """The kubelet's ConfigMap update (a new ..TIMESTAMP directory, then ..data renamed over) changes no
    link of the policy directory, only where they lead: the loop sees it, reloads once; an update that
    does not validate is refused with its file:line, the selection stays."""
    from tests.configmap import write_configmap
    from tests.unit.test_policy import configmap_dir
    d = configmap_dir(tmp_path, {"10.toml": f'[[allow]]\nexe = "{EXE}"\n'})
    fake = FakeRewriter()
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                       serve=False)
    dm.sync.watch.interval = 0
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    updates = [f'[[deny]]\nexe = "{EXE}"\n', "[[allow]]\nexe = 'relative'\n"]
    polls = []

    def poll(_ms):
        polls.append(1)
        if len(polls) in (1, 4):   # an update, then polls with nothing new
            write_configmap(d, {"10.toml": updates.pop(0)}, f"..2026_12_07_21_0{len(polls)}_00.{len(polls)}")
        if len(polls) == 7:
            dm.signals.stop = True

    fake.poll_events = poll
    dm.run()
    dm.close()
    assert (dm.sync.reloads, dm.sync.failed_reloads) == (1, 1)
    assert list(fake.selections[-1][0].values()) == [(16, abi.ACTION_DENY)]
    msgs = [r.getMessage() for r in caplog.records]
    assert any("10.toml:2: exe:" in m and "not an absolute path" in m for m in msgs), msgs
    assert any("keeping the last good policy" in m for m in msgs)
