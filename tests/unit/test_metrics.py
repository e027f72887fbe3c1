"""metrics.render() read back with Prometheus' own parser (prometheus_client), hostile label values
included; write_atomic() and `metrics --output` through the real CLI."""

import dataclasses
import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mptcpize_py import metrics
from mptcpize_py.host import files
from mptcpize_py.status import RuleCount
from tests.conftest import mptcpize
from tests.unit.status_builder import counters, daemon_status, policy, process, rule

HOSTILE_EXE = '/opt/we"ird\\dir/new\nline\udcffexe'      # quote, backslash, newline, a non-UTF-8 byte
HOSTILE_UNIT = 'a\\x2d"b.service'

PERF = rule(16, "allow", "exe", "/usr/bin/iperf3", name="perf", file="10-a.toml", line=2, upgraded=600)
HOSTILE = rule(17, "allow", "exe", HOSTILE_EXE, file="10-a.toml", line=5, upgraded=4)
STATUS = daemon_status(
    # The kernel's exact per-rule counters; the rows below are the processes still tracked (LRU).
    policy((PERF, HOSTILE, rule(18, "deny", "unit", "x.service", file="10-a.toml", line=8))),
    [process(10, PERF, unit="iperf3.service", upgraded=500),
     process(11, HOSTILE, exe=HOSTILE_EXE, unit=HOSTILE_UNIT, upgraded=4, alive=False),
     process(12, PERF, exe="/usr/bin/curl", upgraded=3),
     process(13, None, exe="/usr/bin/nc", upgraded=2)],   # a `run` tree's
    totals=counters(upgraded=507, denied=3, mptcp_disabled=1, events_dropped=2))
VIEW = {
    "namespaces": [{"name": "host", "inum": 1, "error": None}, {"name": 'ns"1', "inum": 2, "error": None},
                   {"name": "gone", "inum": 3, "error": "no network namespace"}],
    "connections": [
        {"netns": "host", "state": "ESTABLISHED", "subflows": 2, "fallback": False},
        {"netns": "host", "state": "ESTABLISHED", "subflows": 1, "fallback": True},
        {"netns": "host", "state": "LISTEN", "subflows": None, "fallback": None},
        {"netns": 'ns"1', "state": "ESTABLISHED", "subflows": 3, "fallback": False},
    ],
}


def parse(text: str) -> dict[str, dict]:
    """{family: {frozenset(labels.items()) or sample name: value}}"""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {frozenset(s.labels.items()): s.value for s in fam.samples}
    return out


def value(fams, family, **labels):
    return fams[family][frozenset(labels.items())]


def test_render_parses_and_counts_match_the_status():
    text = metrics.render(STATUS, VIEW)
    fams = parse(text)
    assert value(fams, "mptcpize_daemon_up") == 1
    assert value(fams, "mptcpize_dry_run") == 0
    assert value(fams, "mptcpize_upgraded_sockets") == 507          # the parser drops _total
    assert value(fams, "mptcpize_not_upgraded_sockets", reason="denied") == 3
    # Per rule: the exact counters (not the 503 its tracked processes add up to), labelled by file and
    # the rule's name, else what it matches (no line: editing other lines keeps the series); deny
    # rules upgrade nothing and are left out; run trees are one series, without a file.
    assert fams["mptcpize_rule_upgraded_sockets"] == {
        frozenset({("file", "10-a.toml"), ("rule", "perf")}): 600,
        frozenset({("file", "10-a.toml"), ("rule", f"exe={HOSTILE_EXE}".replace("\udcff", "\\xff"))}): 4,
        frozenset({("rule", "run")}): 2}
    assert value(fams, "mptcpize_build_info", version="0.1.0") == 1
    assert value(fams, "mptcpize_policy_reloads", result="success") == 0
    assert value(fams, "mptcpize_policy_reloads", result="failure") == 0
    assert value(fams, "mptcpize_unit_upgraded_sockets", unit="iperf3.service") == 500
    assert value(fams, "mptcpize_events_dropped") == 2
    assert value(fams, "mptcpize_upgraded_processes", alive="true") == 3
    assert value(fams, "mptcpize_mptcp_connections", netns="host") == 2
    assert value(fams, "mptcpize_mptcp_subflows", netns="host") == 3
    assert value(fams, "mptcpize_fallback_connections", netns="host") == 1
    assert value(fams, "mptcpize_mptcp_listeners", netns="host") == 1
    assert value(fams, "mptcpize_mptcp_connections", netns='ns"1') == 1
    assert value(fams, "mptcpize_netns_scrape_errors") == 1
    # Every family has HELP and TYPE, and every sample line belongs to a declared family.
    lines = text.splitlines()
    declared = {ln.split()[2] for ln in lines if ln.startswith("# TYPE ")}
    assert {ln.split()[2] for ln in lines if ln.startswith("# HELP ")} == declared
    assert all(ln.split("{")[0].split(" ")[0] in declared for ln in lines if not ln.startswith("#"))


def test_hostile_label_values_round_trip():
    text = metrics.render(STATUS, VIEW)
    text.encode("utf-8")   # valid UTF-8 whatever the executable's name was
    # A line feed in a value must not start a line of its own.
    assert all(ln.startswith(("# HELP mptcpize_", "# TYPE mptcpize_", "mptcpize_")) for ln in text.splitlines())
    fams = parse(text)
    rules = {dict(k)["rule"] for k in fams["mptcpize_rule_upgraded_sockets"]}
    # The non-UTF-8 byte comes back as the text \xff; everything else exactly.
    assert f"exe={HOSTILE_EXE}".replace("\udcff", "\\xff") in rules
    units = {dict(k)["unit"] for k in fams["mptcpize_unit_upgraded_sockets"]}
    assert units == {"iperf3.service", HOSTILE_UNIT}


@pytest.mark.parametrize("raw,escaped", [
    ('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb"), ("\udcfe", "\\\\xfe"), (None, ""),
    ("\ud800\udc41", "\\\\ud800\\\\udc41"),   # lone surrogates that are no escaped byte: no crash
])
def test_escape_label(raw, escaped):
    assert metrics.escape_label(raw) == escaped


def test_the_daemons_sums_not_the_rows():
    # The per-rule and per-unit counters are the daemon's monotonic sums (rules of earlier policies,
    # processes the kernel's LRU forgot), not what the rows still add up to.
    st = dataclasses.replace(STATUS, policy=policy(reloads=4, failed_reloads=2),
                             rule_upgrades=(RuleCount("10-a.toml", "perf", 900), RuleCount(None, "run", 7)),
                             unit_upgrades={"iperf3.service": 800, "gone.service": 5})
    fams = parse(metrics.render(st))
    assert fams["mptcpize_rule_upgraded_sockets"] == {frozenset({("file", "10-a.toml"), ("rule", "perf")}): 900,
                                         frozenset({("rule", "run")}): 7}
    assert fams["mptcpize_unit_upgraded_sockets"] == {frozenset({("unit", "iperf3.service")}): 800,
                                              frozenset({("unit", "gone.service")}): 5}
    assert value(fams, "mptcpize_policy_reloads", result="success") == 4
    assert value(fams, "mptcpize_policy_reloads", result="failure") == 2


def test_an_older_daemon_has_no_build_info():
    fams = parse(metrics.render(dataclasses.replace(STATUS, version=None)))
    assert "mptcpize_build_info" not in fams and value(fams, "mptcpize_daemon_up") == 1


def test_no_daemon_only_says_so():
    fams = parse(metrics.render(None))
    assert fams == {"mptcpize_daemon_up": {frozenset(): 0}}


def test_write_atomic(tmp_path):
    out = tmp_path / "mptcpize.prom"
    out.write_text("old")
    os.chmod(out, 0o600)
    files.write_atomic(out, "mptcpize_daemon_up 0\n")
    assert out.read_text() == "mptcpize_daemon_up 0\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["mptcpize.prom"]   # no temporary file left behind


def test_cli_metrics_output(tmp_path):
    env = dict(os.environ, MPTCPIZE_CONTROL=str(tmp_path / "no-daemon"))
    out = tmp_path / "m.prom"
    proc = mptcpize("metrics", "--output", str(out), env=env)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert parse(out.read_text())["mptcpize_daemon_up"] == {frozenset(): 0}
    proc = mptcpize("metrics", "--output", str(tmp_path / "missing" / "m.prom"), env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith("mptcpize-py: error: cannot write ")
    assert "does not exist" in proc.stderr and "hint:" in proc.stderr
