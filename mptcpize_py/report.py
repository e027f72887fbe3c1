"""Pure renderers: data in, text or JSON out. Printing is cli.py's job."""

import json
from dataclasses import asdict


def check_text(report) -> list[str]:
    lines = []
    for c in report.checks:
        lines.append(f"{c.status:<5} {c.name:<18} {c.detail}")
        if c.hint and c.status != "ok":
            lines.append(f"{'':<5} {'':<18} hint: {c.hint}")
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
        "run_can_upgrade": report.run_can_upgrade,
    }, indent=2)


def run_verbose(backend_name: str, reports, counters: dict[str, int] | None) -> list[str]:
    lines = [f"mptcpize-py: backend {backend_name}: "
             f"{sum(r.upgraded for r in reports)} socket(s) upgraded in {len(reports)} process(es)"]
    for r in reports:
        lines.append(f"mptcpize-py: pid={r.pid} exe={r.exe} upgraded={r.upgraded}")
    if counters:
        skipped = {k: v for k, v in counters.items() if k != "upgraded" and v}
        if skipped:
            lines.append("mptcpize-py: not upgraded: "
                         + " ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    return lines
