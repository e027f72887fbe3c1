"""Pure renderers: data in, text or JSON out. Printing is cli.py's job.

Text shows every name from the outside world (executable paths, comm, cgroup paths, unit names,
policy file names, netns and interface names, the messages that quote them) through
display.escaped(): one line each, no control character reaches the reader's terminal. JSON carries
them exact (json.dumps escapes)."""

import json
from dataclasses import asdict

from mptcpize_py.display import escaped
from mptcpize_py.status import DaemonStatus


def check_text(report) -> list[str]:
    lines = []
    for c in report.checks:
        lines.append(f"{c.status:<5} {c.name:<18} {c.detail}")
        if c.hint and c.status != "ok":
            lines.append(f"{'':<5} {'':<18} hint: {c.hint}")
    lines.extend(path_management_text(getattr(report, "path_management", None) or []))
    if getattr(report, "loader", None):
        lines.append(f"program loader: {report.loader} ({report.loader_reason})")
    if report.backend:
        lines.append(f"run backend: {report.backend} ({report.backend_reason})")
    else:
        lines.append(f"run backend: none — run cannot upgrade sockets here ({report.backend_reason})")
    return lines


def check_json(report) -> str:
    return json.dumps({
        "checks": [asdict(c) for c in report.checks],
        "backend": report.backend,
        "backend_reason": report.backend_reason,
        "loader": getattr(report, "loader", None),
        "loader_reason": getattr(report, "loader_reason", ""),
        "run_can_upgrade": report.run_can_upgrade,
        "path_management": [asdict(p) for p in getattr(report, "path_management", None) or []],
    }, indent=2)


def run_verbose(backend_name: str, reports, counters: dict[str, int] | None,
                summarized=()) -> list[str]:
    """reports: one per process; summarized: processes without a row, by executable (ProcessSummary)."""
    sockets = sum(r.upgraded for r in reports) + sum(s.upgraded for s in summarized)
    processes = len(reports) + sum(s.processes for s in summarized)
    lines = [f"mptcpize-py: backend {backend_name}: "
             f"{sockets} socket(s) upgraded in {processes} process(es)"]
    for r in reports:
        lines.append(f"mptcpize-py: pid={r.pid} exe={escaped(r.exe)} upgraded={r.upgraded}")
    for s in summarized:
        lines.append(f"mptcpize-py: {s.processes} more process(es): exe={escaped(s.exe)} "
                     f"upgraded={s.upgraded}")
    if counters:
        skipped = {k: v for k, v in counters.items() if k != "upgraded" and v}
        if skipped:
            lines.append("mptcpize-py: not upgraded: "
                         + " ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    return lines


def policy_check_text(policy, resolved) -> list[str]:
    """`daemon --check` on a good policy: the summary, what each rule resolved to, what is pending."""
    lines = [f"policy ok: {policy.summary()}"]
    for r in policy.rules:
        lines.append(f"  {escaped(r.description)} -> {escaped(resolved.targets.get(r.id, '?'))}")
    lines.extend(f"  pending: {escaped(p.message)}" for p in resolved.pending)
    lines.extend(f"  note: {escaped(n)}" for n in resolved.notes)
    return lines


def status_json(status: DaemonStatus) -> str:
    return json.dumps(status.to_json_dict(), indent=2, sort_keys=True)


def status_text(status: DaemonStatus) -> list[str]:
    """`status` for people: the daemon's answer (control protocol, see daemon.Daemon.status)."""
    pol, totals, rows = status.policy, status.totals, status.processes
    loader = f", loaded by {status.loader}" if status.loader else ""
    lines = [f"backend: {status.backend} (daemon pid {status.pid}, up {status.uptime_s} s{loader})",
             f"policy: {escaped(pol.summary)} in {escaped(pol.dir)} "
             f"(reloads {pol.reloads}, refused {pol.failed_reloads})"]
    for r in pol.rules:
        count = f" [{r.upgraded} upgraded]" if r.action == "allow" else ""
        lines.append(f"  {escaped(r.description)} -> {escaped(r.target or '?')}{count}")
    lines.extend(f"  pending: {escaped(p)}" for p in pol.pending)
    lines.extend(f"  problem: {escaped(p)}" for p in pol.problems)
    skipped = " ".join(f"{k}={v}" for k, v in sorted(totals.items()) if k != "upgraded" and v)
    verb = "would be upgraded" if status.dry_run else "upgraded"
    if status.dry_run:
        lines.insert(0, "DRY RUN: counts are sockets that would have been upgraded; none was changed")
    lines.append(f"totals: {totals.get('upgraded', 0)} socket(s) {verb} in {len(rows)} process(es)"
                 + (f"; not upgraded: {skipped}" if skipped else ""))
    lines.append(f"events dropped: {status.events_dropped}")
    if rows:
        lines.append(f"{'PID':>8} {'UPGRADED':>9} {'ALIVE':<5} {'UNIT/CGROUP':<30} {'EXE':<30} RULE")
        for p in rows:
            where = escaped(p.unit or p.cgroup or "-")
            lines.append(f"{p.pid:>8} {p.upgraded:>9} "
                         f"{'yes' if p.alive else 'no':<5} {where:<30} "
                         f"{escaped(p.exe or '?'):<30} {escaped(p.rule or '-')}")
    lines.extend(enabled_units_text(status))
    lines.extend(paths_status_text(status))
    return lines


def paths_status_text(status: DaemonStatus) -> list[str]:
    """`status`: the [paths] table's namespaces as the daemon's path manager left them."""
    if not status.paths:
        return []
    lines = ["paths ([paths] table):"]
    for p in status.paths:
        head = f"  netns {escaped(p.netns)}: role {p.role}"
        if p.managed_by != "mptcpize-py":
            head += f"; {escaped(p.managed_by)}"
        elif p.limits:
            head += f"; limits {p.limits}"
        lines.append(head)
        lines.extend(f"    endpoint {escaped(e)}" for e in p.endpoints)
        lines.extend(f"    note: {escaped(n)}" for n in p.problems)
    return lines


def enabled_units_text(status: DaemonStatus) -> list[str]:
    """`status`: the units `mptcpize-py enable` selected (their policy records, unit-UNIT.toml, among the
    daemon's policy files) with the sockets upgraded in their processes (the rows whose unit is it)."""
    # The wire format carries a rule's file only in its description.
    from mptcpize_py.policy.names import enabled_unit_of_file
    pol = status.policy
    enabled = []
    for path in pol.files:
        unit = enabled_unit_of_file(path)
        if unit is not None:
            enabled.append((unit, path.rsplit("/", 1)[-1]))
    if not enabled:
        return ["enabled units (mptcpize-py enable): none"]
    lines = ["enabled units (mptcpize-py enable):"]
    for unit, file_name in sorted(enabled):
        target = next((r.target for r in pol.rules
                       if r.kind == "unit" and r.value == unit and r.comes_from(file_name)), None)
        mine = [p for p in status.processes if p.unit == unit]
        alive = sum(1 for p in mine if p.alive)
        lines.append(f"  {escaped(unit)}: {sum(p.upgraded for p in mine)} socket(s) upgraded in "
                     f"{len(mine)} process(es) ({alive} alive) -> {escaped(target or 'not running')}")
    return lines


def connections_json(view: dict) -> str:
    """`status --connections --json`: diag.view.connection_view() as is."""
    return json.dumps(view, indent=2, sort_keys=True)


def _bytes(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def connections_text(view: dict) -> list[str]:
    """`status --connections` for people: one block per process (per upgraded process when the daemon
    runs), one line per MPTCP socket; a fallback to TCP says so."""
    lines = [escaped(view.get("scope", ""))]
    for ns in view.get("namespaces") or []:
        if ns.get("error"):
            lines.append(f"netns {escaped(str(ns['name']))}: cannot read its connections: "
                         f"{escaped(ns['error'])}")
    group = None
    for c in view.get("connections") or []:
        key = (c.get("netns"), c.get("process") or c.get("pid"))
        if key != group:
            group = key
            pid = key[1]
            exe = c.get("process_exe") if c.get("process") else c.get("exe")
            head = f"netns {escaped(str(c.get('netns')))}: " + (
                f"pid {pid} {escaped(exe or '?')}" if pid else "not accepted yet (no process holds it)")
            if c.get("rule"):
                head += f"  rule {escaped(c['rule'])}"
            if c.get("unit"):
                head += f"  unit {escaped(c['unit'])}"
            lines.append(head)
            lines.append(f"  {'STATE':<12} {'LOCAL':<28} {'REMOTE':<28} {'SUBFLOWS':>8}  {'MODE':<12} "
                         f"{'SENT':>10} {'RECEIVED':>10}")
        remote, sent, received = c.get("remote", "?"), _bytes(c.get("bytes_sent")), \
            _bytes(c.get("bytes_received"))
        if c.get("state") == "LISTEN":
            mode, subflows, remote, sent, received = "listening", "-", "*", "-", "-"
        else:
            mode = "fallback-TCP" if c.get("fallback") else "mptcp"
            subflows = "?" if c.get("subflows") is None else str(c["subflows"])
        owner = ""
        if c.get("process") and c.get("pid") != c.get("process"):
            owner = f"  pid {c.get('pid')} {escaped(c.get('exe') or '?')}"
        lines.append(f"  {c.get('state', '?'):<12} {c.get('local', '?'):<28} {remote:<28} "
                     f"{subflows:>8}  {mode:<12} {sent:>10} {received:>10}{owner}")
    t = view.get("totals") or {}
    lines.append(f"total: {t.get('connections', 0)} connection(s), {t.get('subflows', 0)} subflow(s), "
                 f"{t.get('fallback', 0)} fell back to TCP; {t.get('listeners', 0)} listener(s)")
    return lines


def path_management_text(entries) -> list[str]:
    """`check`'s per-namespace path-management section (probe.NetnsPaths): facts, endpoints, notes."""
    if not entries:
        return []
    lines = ["path management (per network namespace; informational, not part of the exit status):"]
    for ns in entries:
        if ns.error:
            lines.append(f"  netns {escaped(ns.name)}: {escaped(ns.error)}")
        else:
            lines.append(f"  netns {escaped(ns.name)}: net.mptcp.enabled={ns.enabled}, path manager "
                         f"{ns.path_manager or 'kernel'}, limits subflows={ns.subflows} "
                         f"add_addr_accepted={ns.add_addr_accepted}, {len(ns.endpoints)} endpoint(s)")
        for e in ns.endpoints:
            lines.append(f"    endpoint {e['address']} id {e['id']}"
                         + (f" dev {escaped(e['dev'])}" if e.get("dev") else "")
                         + (" " + " ".join(e["flags"]) if e["flags"] else " (no flags)"))
        for n in ns.notes:
            lines.append(f"    note: {n.text}")
            if n.hint:
                lines.append(f"          hint: {n.hint}")
    return lines


def paths_json(reports) -> str:
    """`paths --json`: paths.PathsReport per namespace, as is."""
    return json.dumps([asdict(r) for r in reports], indent=2)


def paths_text(reports) -> list[str]:
    """`paths`: per namespace, who manages endpoints, each endpoint (own or foreign), the limits, and
    what the policy would change."""
    lines = []
    for r in reports:
        if r.error:
            lines.append(f"netns {escaped(r.name)}: {escaped(r.error)}")
            continue
        role = f"; [paths] role {r.role}" if r.role else ""
        lines.append(f"netns {escaped(r.name)}: endpoints managed by {escaped(r.managed_by)}{role}")
        pm = f", path manager {r.path_manager}" if r.path_manager and r.path_manager != "kernel" else ""
        lines.append(f"  limits subflows={r.subflows} add_addr_accepted={r.add_addr_accepted}"
                     f"{pm}{'' if r.enabled == '1' else f', net.mptcp.enabled={r.enabled}'}")
        if not r.endpoints:
            lines.append("  no endpoint")
        for e in r.endpoints:
            lines.append(f"  {'own    ' if e.own else 'foreign'} {e.address} id {e.id}"
                         + (f" dev {escaped(e.dev)}" if e.dev else "")
                         + (" " + " ".join(e.flags) if e.flags else " (no flags)"))
        if r.changes:
            lines.append("  the policy would change:")
            lines.extend(f"    {escaped(c)}" for c in r.changes)
        elif r.role is not None:
            lines.append("  the policy would change nothing")
        lines.extend(f"  note: {escaped(n)}" for n in r.notes)
    return lines


def paths_apply_text(result) -> list[str]:
    """`paths --apply`: what one pass over a namespace did (paths.passes.PassResult)."""
    name = escaped(result.netns)
    lines = [f"netns {name}: {escaped(c)}" for c in result.changes]
    if result.other:
        lines.append(f"netns {name}: {escaped(result.other)}")
    lines.extend(f"netns {name}: note: {escaped(p)}" for p in result.problems)
    if not lines:
        lines.append(f"netns {name}: no change")
    return lines
