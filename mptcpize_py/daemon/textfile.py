"""The daemon's metrics file for node_exporter's textfile collector: DIR/mptcpize.prom.

The collector reads every `*.prom` file of its directory at each scrape, so the file is replaced, never
written in place (host.files.write_atomic: a hidden temporary name, then rename(2)), mode 0644 so that
node_exporter's user reads it. Refreshed every INTERVAL seconds and, at most once per MIN_GAP seconds,
when something changed (a process's first upgrade, a reload); at a clean stop it says
`mptcpize_daemon_up 0`, so a stopped daemon is visible, not a stale file (a killed one leaves the last
file: node_exporter's `node_textfile_mtime_seconds` shows its age).

The daemon writes it itself, inside its own sandbox (the unit allows writing that directory only), so
no privileged helper runs every 15 s. A missing directory (no node_exporter) is not an error: nothing
is written, and one log line says so.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path

from mptcpize_py.host.files import write_atomic

FILE_NAME = "mptcpize.prom"
INTERVAL = 15.0
MIN_GAP = 1.0

log = logging.getLogger("mptcpize_py.daemon")


class TextFile:
    def __init__(self, directory: Path | None, interval: float = INTERVAL, min_gap: float = MIN_GAP):
        """directory None: write nothing (daemon --no-metrics)."""
        self.path = Path(directory) / FILE_NAME if directory is not None else None
        self.interval, self.min_gap = interval, min_gap
        self._last: float | None = None
        self._changed = True
        self._problem: str | None = None   # the last failure logged, so each is logged once

    def changed(self) -> None:
        self._changed = True

    def due(self, now: float) -> bool:
        if self.path is None:
            return False
        if self._last is None:
            return True
        since = now - self._last
        return since >= self.interval or (self._changed and since >= self.min_gap)

    def write(self, now: float, render: Callable[[], str]) -> bool:
        """Writes render()'s text if the directory is there; True when written."""
        if self.path is None:
            return False
        self._last, self._changed = now, False
        if not os.path.isdir(self.path.parent):
            self._say(f"metrics: {self.path.parent} does not exist (no node_exporter textfile "
                      "collector?): not writing metrics", logging.INFO)
            return False
        try:
            write_atomic(self.path, render(), durable=False)
        except OSError as e:
            self._say(f"metrics: cannot write {self.path}: {e.strerror or e}", logging.WARNING)
            return False
        if self._problem is not None:
            log.info("metrics: writing %s again", self.path)
            self._problem = None
        return True

    def _say(self, message: str, level: int) -> None:
        if message != self._problem:
            log.log(level, "%s", message)
            self._problem = message
