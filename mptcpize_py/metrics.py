"""Prometheus text exposition format (0.0.4) for node_exporter's textfile collector; `render()` is
pure; the daemon writes it to its textfile and serves it at /metrics with
`--metrics-listen` (daemon/http.py). Design notes: docs/ARCHITECTURE.md ("metrics")."""

from mptcpize_py.display import utf8_text
from mptcpize_py.status import DaemonStatus


def escape_label(value: object) -> str:
    """A label value for the text format: valid UTF-8 (other bytes as \\xNN), then \\\\, \\" and \\n."""
    # os.readlink() & co. decode undecodable bytes to lone surrogates (surrogateescape): make them text
    # (\xNN; any other lone surrogate \uNNNN), which the file's UTF-8 can hold.
    text = "" if value is None else utf8_text(str(value))
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, mtype: str, help_text: str,
               samples: list[tuple[dict[str, object], int | float]]) -> None:
        if not samples:
            return   # no HELP/TYPE without a sample: a family appears with its first series
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {mtype}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(status: DaemonStatus | None, view: dict | None = None) -> str:
    """The metrics. status None: no daemon answered (only mptcpize_daemon_up 0). view: what
    `status --connections --json` prints (connections of the upgraded processes), or None."""
    w = _Writer()
    w.family("mptcpize_daemon_up", "gauge",
             "1 when the mptcpize-py daemon answered on its control socket, 0 when none runs.",
             [({}, 1 if status is not None else 0)])
    if status is None:
        return w.text()
    if status.version is not None:
        w.family("mptcpize_build_info", "gauge",
                 "Always 1; the running daemon's mptcpize-py version as a label.",
                 [({"version": status.version}, 1)])
    w.family("mptcpize_dry_run", "gauge",
             "1 when the daemon runs with --dry-run: its counts are sockets that would have been upgraded.",
             [({}, 1 if status.dry_run else 0)])
    totals, rows = status.totals, status.processes
    w.family("mptcpize_upgraded_sockets_total", "counter",
             "Sockets the daemon's program upgraded to MPTCP since it was loaded (exact kernel counter).",
             [({}, totals.get("upgraded", 0))])
    w.family("mptcpize_not_upgraded_sockets_total", "counter",
             "TCP sockets of selected processes deliberately left TCP, by reason.",
             [({"reason": k}, v) for k, v in sorted(totals.items())
              if k not in ("upgraded", "events_dropped")])
    w.family("mptcpize_rule_upgraded_sockets_total", "counter",
             "Sockets upgraded, per allow rule: file (policy file) and rule (its name, else KIND=VALUE), "
             "summed across reloads; rule=\"run\" without file: `mptcpize-py run` trees served by "
             "the daemon.",
             [(_rule_labels(c.file, c.rule), c.upgraded) for c in status.rule_upgrades])
    w.family("mptcpize_unit_upgraded_sockets_total", "counter",
             "Sockets upgraded, per systemd unit, including processes that exited or that the kernel's "
             "per-process table forgot.",
             [({"unit": k}, v) for k, v in sorted(status.unit_upgrades.items())])
    alive = sum(1 for r in rows if r.alive)
    w.family("mptcpize_upgraded_processes", "gauge",
             "Processes with upgraded sockets that the daemon tracks, alive or exited.",
             [({"alive": "true"}, alive), ({"alive": "false"}, len(rows) - alive)])
    w.family("mptcpize_events_dropped_total", "counter",
             "Upgrade events the kernel could not hand to the daemon (ring buffer full).",
             [({}, status.events_dropped)])
    w.family("mptcpize_policy_reloads_total", "counter",
             "Policy reloads (SIGHUP, a change in the policy directory), by result: failure keeps "
             "the last good policy.",
             [({"result": "success"}, status.policy.reloads),
              ({"result": "failure"}, status.policy.failed_reloads)])
    if view is not None:
        _connection_families(w, view)
    return w.text()


def _rule_labels(file: str | None, rule: str) -> dict[str, object]:
    return {"rule": rule} if file is None else {"file": file, "rule": rule}


def _connection_families(w: _Writer, view: dict) -> None:
    per_ns: dict[str, dict[str, int]] = {}
    for ns in view.get("namespaces") or []:
        if not ns.get("error"):
            per_ns.setdefault(ns["name"], {"connections": 0, "subflows": 0, "fallback": 0, "listeners": 0})
    for c in view.get("connections") or []:
        n = per_ns.setdefault(c.get("netns") or "?",
                              {"connections": 0, "subflows": 0, "fallback": 0, "listeners": 0})
        if c.get("state") == "LISTEN":
            n["listeners"] += 1
            continue
        n["connections"] += 1
        n["subflows"] += int(c.get("subflows") or 0)
        n["fallback"] += 1 if c.get("fallback") else 0
    for key, name, help_text in (
            ("connections", "mptcpize_mptcp_connections",
             "MPTCP connections (listeners excluded) of upgraded processes, per network namespace."),
            ("subflows", "mptcpize_mptcp_subflows",
             "Subflows of those connections, the initial one included."),
            ("fallback", "mptcpize_fallback_connections",
             "Those connections that fell back to plain TCP (the peer or a middlebox refused MPTCP)."),
            ("listeners", "mptcpize_mptcp_listeners",
             "MPTCP listening sockets of upgraded processes, per network namespace.")):
        w.family(name, "gauge", help_text, [({"netns": ns}, v[key]) for ns, v in sorted(per_ns.items())])
    errors = [ns for ns in view.get("namespaces") or [] if ns.get("error")]
    w.family("mptcpize_netns_scrape_errors", "gauge",
             "Network namespaces whose MPTCP connections could not be read this time.",
             [({}, len(errors))])


