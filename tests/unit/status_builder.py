"""Daemon status fixtures built from the types the daemon and the renderers use (mptcpize_py.status):
a field renamed, added or retyped there breaks the tests that use them. Defaults keep each test to the
fields it is about."""

from mptcpize_py import abi
from mptcpize_py.policy import Rule
from mptcpize_py.status import DaemonStatus, PolicyStatus, ProcessRow, RuleCount, RuleStatus

POLICY_DIR = "/etc/mptcpize-py/policy.d"
VERSION = "0.1.0"
_SERIES: dict[RuleStatus, tuple[str, str]] = {}   # each rule() made: its policy.Rule.series


def rule(id: int = 16, action: str = "allow", kind: str = "exe", value: str = "/usr/bin/iperf3", *,
         name: str | None = None, file: str = "10.toml", line: int = 1, target: str | None = None,
         upgraded: int = 0) -> RuleStatus:
    """A rule as the daemon reports it; its description is policy.Rule's own."""
    r = Rule(id=id, action=action, kind=kind, value=value, name=name, source_file=f"{POLICY_DIR}/{file}",
             line=line)
    status = RuleStatus(id=id, description=r.description, action=action, kind=kind, value=value,
                        target=target, upgraded=upgraded)
    _SERIES[status] = r.series
    return status


def process(pid: int = 100, rule: RuleStatus | None = None, *, exe: str | None = "/usr/bin/iperf3",
            unit: str | None = None, cgroup: str | None = None, upgraded: int = 0,
            alive: bool = True, start_ns: int = 5_000_000_000) -> ProcessRow:
    """A process upgraded under `rule`; without one, a process of `run` tree 1."""
    if rule is None:
        return ProcessRow(pid=pid, start_ns=start_ns, exe=exe, rule="rule 1", rule_id=1, kind="run",
                          unit=unit, cgroup=cgroup, upgraded=upgraded, alive=alive)
    return ProcessRow(pid=pid, start_ns=start_ns, exe=exe, rule=rule.description, rule_id=rule.id,
                      kind="cgroup" if rule.kind == "unit" else rule.kind, unit=unit, cgroup=cgroup,
                      upgraded=upgraded, alive=alive)


def policy(rules: tuple[RuleStatus, ...] | list[RuleStatus] = (), *, files: tuple[str, ...] | None = None,
           summary: str | None = None, dir: str = POLICY_DIR, pending: tuple[str, ...] = (),
           problems: tuple[str, ...] = (), reloads: int = 0, failed_reloads: int = 0) -> PolicyStatus:
    """files: the rules' files unless given (base names are put in `dir`)."""
    if files is None:
        files = tuple(sorted({r.description.rpartition(" (")[2].rpartition(":")[0] for r in rules}))
    files = tuple(f if "/" in f else f"{dir}/{f}" for f in files)
    if summary is None:
        allow = sum(1 for r in rules if r.action == "allow")
        summary = (f"{allow} allow, {len(rules) - allow} deny rules from {len(files)} "
                   f"{'file' if len(files) == 1 else 'files'}; netns: host")
    return PolicyStatus(dir=dir, summary=summary, files=files, rules=tuple(rules), pending=tuple(pending),
                        problems=tuple(problems), reloads=reloads, failed_reloads=failed_reloads)


def counters(**values: int) -> dict[str, int]:
    """Every kernel counter (abi.COUNTERS), 0 unless given."""
    unknown = set(values) - set(abi.COUNTERS)
    assert not unknown, f"not kernel counters: {unknown}"
    return {name: values.get(name, 0) for name in abi.COUNTERS}


def daemon_status(policy_status: PolicyStatus | None = None,
                  processes: tuple[ProcessRow, ...] | list[ProcessRow] = (), *,
                  totals: dict[str, int] | None = None, backend: str | None = None, dry_run: bool = False,
                  pid: int = 42, uptime_s: float = 12.5, version: str | None = VERSION,
                  rule_upgrades: tuple[RuleCount, ...] | None = None,
                  unit_upgrades: dict[str, int] | None = None) -> DaemonStatus:
    """totals: counters() with `upgraded` the rows' sum unless given; events_dropped is its counter.
    rule_upgrades, unit_upgrades: as a daemon that ran one policy and forgot no process reports them
    unless given: each allow rule's count under its identity, the run trees' rows as "run", the rows
    summed per unit."""
    if totals is None:
        totals = counters(upgraded=sum(p.upgraded for p in processes))
    policy_status = policy_status or policy()
    if rule_upgrades is None:
        counts: dict[tuple[str | None, str], int] = {}
        for r in policy_status.rules:
            if r.action == "allow":
                counts[_SERIES[r]] = counts.get(_SERIES[r], 0) + r.upgraded
        runs = [p.upgraded for p in processes if p.kind == "run"]
        rule_upgrades = tuple(RuleCount(f, n, v) for (f, n), v in sorted(counts.items())) + \
            ((RuleCount(None, "run", sum(runs)),) if runs else ())
    if unit_upgrades is None:
        unit_upgrades = {}
        for p in processes:
            if p.unit is not None:
                unit_upgrades[p.unit] = unit_upgrades.get(p.unit, 0) + p.upgraded
    return DaemonStatus(backend=backend or ("dry-run" if dry_run else "bpf"), dry_run=dry_run, pid=pid,
                        uptime_s=uptime_s, policy=policy_status, totals=totals,
                        processes=tuple(processes), events_dropped=totals.get("events_dropped", 0),
                        version=version, rule_upgrades=rule_upgrades, unit_upgrades=unit_upgrades)
