"""What the daemon counts for Prometheus and what it tells journald, without BPF (a fake program):
the metrics file it keeps, read back with Prometheus' own parser; rule series that survive edits of
the policy; unit counters that survive the kernel's LRU forgetting processes; OBJECT_PID= and
MESSAGE_ID= on the records about upgraded processes, as python-systemd would send them."""

import logging
import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mptcpize_py import __version__
from mptcpize_py.daemon import events, service
from mptcpize_py.daemon.records import ProcRecord
from mptcpize_py.daemon.tally import OTHER_UNIT, ProcessTally, Seen
from mptcpize_py.host import systemd
from mptcpize_py.program.handle import ProcStats
from tests.unit.test_daemon_logic import EXE, ME, MY_START, FakeRewriter, event

SH = os.path.realpath("/bin/sh")


class LruRewriter(FakeRewriter):
    """The kernel's two tables apart: per-rule counters by rule id (never forgotten), and the
    per-process LRU (self.stats), which may forget a process while its rule's counter keeps it."""

    def __init__(self):
        super().__init__()
        self.rules: dict[int, int] = {}

    def rule_stats(self):
        return dict(self.rules)

    def counters(self):
        return super().counters() | {"upgraded": sum(self.rules.values())}


def samples(text: str) -> dict:
    """{(family, frozenset(labels)): value}"""
    return {(f.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def family(s: dict, name: str) -> dict:
    return {k: v for (n, k), v in s.items() if n == name}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A daemon with one named and one unnamed rule in 10.toml, its metrics in tmp_path/textfile,
    and every upgraded process recorded as a process of web.service."""
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    (d / "10.toml").write_text(f'[[allow]]\nname = "py"\nexe = "{EXE}"\n')
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    fake = LruRewriter()
    monkeypatch.setattr(events, "learn", lambda ev, rule: ProcRecord(
        ev.tgid, ev.start_ns, EXE, "/system.slice/web.service", "web.service", ev.rule_id, rule, ev.kind))
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                serve=False, metrics_dir=textfile)
    yield dm, fake, d, textfile / "mptcpize.prom"
    dm.close()


def test_start_writes_the_textfile(setup):
    dm, fake, d, prom = setup
    assert stat.S_IMODE(os.stat(prom).st_mode) == 0o644     # node_exporter's user reads it
    assert os.listdir(prom.parent) == ["mptcpize.prom"]      # no temporary file left behind
    s = samples(prom.read_text())
    assert s[("mptcpize_daemon_up", frozenset())] == 1
    assert s[("mptcpize_build_info", frozenset({("version", __version__)}))] == 1
    assert s[("mptcpize_policy_reloads", frozenset({("result", "success")}))] == 0
    assert s[("mptcpize_policy_reloads", frozenset({("result", "failure")}))] == 0


def test_rule_series_survive_edits_that_renumber_rules(setup):
    dm, fake, d, prom = setup
    fake.rules = {16: 5}
    dm.write_metrics(0)
    assert family(samples(prom.read_text()), "mptcpize_rule_upgraded_sockets") == \
        {frozenset({("file", "10.toml"), ("rule", "py")}): 5}
    # An edit: a comment, and an unnamed rule before "py", which becomes rule 17 on line 6. The
    # kernel's counter of id 16 keeps what "py" counted; from now on it counts the new rule.
    (d / "10.toml").write_text(f'# web\n[[allow]]\nexe = "{SH}"\n\n[[allow]]\nname = "py"\nexe = "{EXE}"\n')
    assert dm.sync.reload("test") is True
    fake.rules = {16: 5 + 2, 17: 3}
    (d / "20.toml").write_text("[[allow]]\nexe = 'relative'\n")   # a failed reload counts too
    assert dm.sync.reload("test") is False
    dm.write_metrics(1)
    s = samples(prom.read_text())
    assert family(s, "mptcpize_rule_upgraded_sockets") == {
        frozenset({("file", "10.toml"), ("rule", "py")}): 5 + 3,
        frozenset({("file", "10.toml"), ("rule", f"exe={SH}")}): 2}
    assert s[("mptcpize_policy_reloads", frozenset({("result", "success")}))] == 1
    assert s[("mptcpize_policy_reloads", frozenset({("result", "failure")}))] == 1
    # The policy directory removed (disable of the last unit): no rules, the counts stay.
    (d / "20.toml").unlink()
    (d / "10.toml").unlink()
    d.rmdir()
    assert dm.sync.reload("test") is True
    fake.rules = {16: 100, 17: 100}
    dm.write_metrics(2)
    assert sum(family(samples(prom.read_text()), "mptcpize_rule_upgraded_sockets").values()) == 10


def test_unit_counters_survive_the_lru(setup):
    dm, fake, d, prom = setup
    other, run_pid = 2 ** 22 + 7, 2 ** 22 + 8
    fake.callback(event(ME))
    fake.callback(event(other, start_ns=10 ** 9))
    fake.stats = [ProcStats(ME, 10, "exe", 16, MY_START), ProcStats(other, 20, "exe", 16, 10 ** 9),
                  ProcStats(run_pid, 4, "run", 1, 10 ** 9)]

    def units_and_run() -> tuple[dict, float]:
        dm.write_metrics(0)
        s = samples(prom.read_text())
        return family(s, "mptcpize_unit_upgraded_sockets"), s[("mptcpize_rule_upgraded_sockets", frozenset({("rule", "run")}))]

    assert units_and_run() == ({frozenset({("unit", "web.service")}): 30}, 4)
    # The LRU forgets ME and the run-tree process; `other` upgrades 5 more.
    fake.stats = [ProcStats(other, 25, "exe", 16, 10 ** 9)]
    assert units_and_run() == ({frozenset({("unit", "web.service")}): 35}, 4)
    # ME upgrades again: the kernel counts it afresh from 1.
    fake.stats = [ProcStats(ME, 1, "exe", 16, MY_START), ProcStats(other, 25, "exe", 16, 10 ** 9)]
    assert units_and_run() == ({frozenset({("unit", "web.service")}): 36}, 4)
    # Forgotten and counted afresh between two looks: what it had is kept.
    fake.stats = [ProcStats(ME, 1, "exe", 16, MY_START), ProcStats(other, 2, "exe", 16, 10 ** 9)]
    assert units_and_run() == ({frozenset({("unit", "web.service")}): 38}, 4)


def test_process_tally_folds_units_beyond_its_limit_into_other():
    t = ProcessTally(max_units=1)
    t.observe([((1, 1), Seen("a.service", False, 3)), ((2, 1), Seen("b.service", False, 4))])
    assert t.observe([]) == ({"a.service": 3, OTHER_UNIT: 4}, 0)


def test_loop_writes_on_change_and_says_when_it_stops(setup):
    """The main loop writes the file when a process is first upgraded (not only every 15 s), and a
    clean stop leaves mptcpize_daemon_up 0."""
    dm, fake, d, prom = setup
    dm.textfile.min_gap = 0
    seen = []

    def poll(_ms):
        if not seen:
            fake.rules = {16: 9}
            fake.stats = [ProcStats(ME, 9, "exe", 16, MY_START)]
            fake.callback(event(ME))
        seen.append(samples(prom.read_text()))
        if len(seen) == 2:
            dm.signals.stop = True

    fake.poll_events = poll
    dm.run()
    assert seen[1][("mptcpize_unit_upgraded_sockets", frozenset({("unit", "web.service")}))] == 9
    assert samples(prom.read_text()) == {("mptcpize_daemon_up", frozenset()): 0}


def test_no_directory_no_file_and_no_error(tmp_path, caplog):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    (d / "10.toml").write_text(f'[[allow]]\nexe = "{EXE}"\n')
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=FakeRewriter,
                serve=False, metrics_dir=tmp_path / "missing")
    dm.write_metrics(1)
    dm.close()
    assert not (tmp_path / "missing").exists()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics:")]
    assert said == [f"metrics: {tmp_path / 'missing'} does not exist (no node_exporter textfile "
                    "collector?): not writing metrics"]   # once


@pytest.mark.parametrize("dry_run,message_id", [(False, systemd.MESSAGE_ID_UPGRADED),
                                                (True, systemd.MESSAGE_ID_WOULD_UPGRADE)])
def test_journal_fields_of_an_upgrade(tmp_path, dry_run, message_id):
    """What python-systemd would send to journald for a process's first upgrade: OBJECT_PID= (journald
    adds that process's OBJECT_SYSTEMD_UNIT=, OBJECT_EXE=, ...) and the record's fixed MESSAGE_ID=."""
    pytest.importorskip("systemd.journal")
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    (d / "10.toml").write_text(f'[[allow]]\nexe = "{EXE}"\n')
    fake = FakeRewriter()
    dm = service.start(d, tmp_path / "control", owner_uid=os.geteuid(), rewriter_factory=lambda: fake,
                serve=False, dry_run=dry_run)
    sent = []
    handler = systemd.journal_handler(sender=lambda MESSAGE, **f: sent.append((MESSAGE, f)))
    logger = logging.getLogger("mptcpize_py.daemon")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        fake.callback(event(ME))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        dm.close()
    [(message, f)] = [(m, f) for m, f in sent if "upgrade pid=" in m or "upgraded pid=" in m]
    assert f["OBJECT_PID"] == str(ME)
    assert f["MESSAGE_ID"] == message_id
    assert f["MPTCPIZE_PID"] == str(ME) and f["MPTCPIZE_EXE"] == EXE
    assert len(bytes.fromhex(message_id)) == 16   # a 128-bit id, as journald's MESSAGE_ID= is


def test_the_two_message_ids_differ():
    # `journalctl MESSAGE_ID=` of real upgrades never finds a dry run's
    assert systemd.MESSAGE_ID_UPGRADED != systemd.MESSAGE_ID_WOULD_UPGRADE
