"""Sums that never decrease, for the metrics' `_total` counters, from kernel tables that renumber or forget.

- The kernel counts upgrades per rule *id*, and a reload renumbers ids (they follow the rules' order in
  the policy): RuleTally keeps, per rule identity (policy.Rule.series: file + name, or what it
  matches), what earlier policies counted plus what the current one counted since it came in.
- The per-process table (proc_stats) is an LRU: a process it forgets takes its count with it.
  ProcessTally keeps, per unit (and for `run` trees), the last count it saw of every process that is
  gone from the table. What a process upgraded between the last look and its eviction is not seen: the
  LRU forgets the processes that upgraded least recently, and the daemon looks at every metrics
  refresh (15 s) and every `status`.

Pure: counts in, counts out; the daemon holds the lock.
"""

from collections.abc import Iterable
from dataclasses import dataclass

# Systemd unit names cannot hold parentheses: no unit's series can be this one.
OTHER_UNIT = "(other)"
MAX_UNITS = 16384   # units remembered after all their processes left the table; the rest: OTHER_UNIT

Series = tuple[str, str]   # (policy file's base name, rule name or KIND=VALUE)


class RuleTally:
    def __init__(self) -> None:
        self._rules: dict[int, Series] = {}   # the current policy's allow rules, by id
        self._base: dict[int, int] = {}       # the kernel's count per id when that policy came in
        self._carried: dict[Series, int] = {}

    def switch(self, rules: dict[int, Series], stats: dict[int, int]) -> None:
        """A policy with allow rules `rules` {id: series} takes over when the kernel's per-id counts
        are `stats`: what the outgoing one counted stays with its rules' identities."""
        for rid, series in self._rules.items():
            n = stats.get(rid, 0) - self._base.get(rid, 0)
            if n > 0:
                self._carried[series] = self._carried.get(series, 0) + n
        self._rules, self._base = dict(rules), dict(stats)

    def counts(self, stats: dict[int, int]) -> dict[Series, int]:
        out = dict(self._carried)
        for rid, series in self._rules.items():
            out[series] = out.get(series, 0) + max(0, stats.get(rid, 0) - self._base.get(rid, 0))
        return out


@dataclass(frozen=True)
class Seen:
    unit: str | None
    run: bool           # a process of a `run` tree (counted as rule "run")
    upgraded: int


class ProcessTally:
    def __init__(self, max_units: int = MAX_UNITS) -> None:
        self._seen: dict[tuple[int, int], Seen] = {}
        self._units_gone: dict[str, int] = {}
        self._run_gone = 0
        self._max_units = max_units

    def _fold(self, s: Seen) -> None:
        if s.run:
            self._run_gone += s.upgraded
        if s.unit is not None:
            unit = s.unit if (s.unit in self._units_gone or len(self._units_gone) < self._max_units) \
                else OTHER_UNIT
            self._units_gone[unit] = self._units_gone.get(unit, 0) + s.upgraded

    def observe(self, rows: Iterable[tuple[tuple[int, int], Seen]]) -> tuple[dict[str, int], int]:
        """The table now: ((tgid, start_ns), Seen) per process. Returns ({unit: sockets upgraded},
        sockets upgraded by run trees), counting the processes the table forgot."""
        current = dict(rows)
        for key, old in self._seen.items():
            new = current.get(key)
            # Gone, or evicted and counted afresh since (a lower count): keep what it had.
            if new is None or new.upgraded < old.upgraded:
                self._fold(old)
        self._seen = current
        per_unit = dict(self._units_gone)
        run = self._run_gone
        for s in current.values():
            if s.run:
                run += s.upgraded
            if s.unit is not None:
                per_unit[s.unit] = per_unit.get(s.unit, 0) + s.upgraded
        return per_unit, run
