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

The directory is not trusted further than its owner: Debian's prometheus-node-exporter makes the
parent, /var/lib/prometheus, the prometheus user's, who could swap node-exporter/ for a symbolic link
to a root-only directory. So each write opens the directory without following any link
(openat2 RESOLVE_NO_SYMLINKS, host.files.open_dir_no_symlinks), checks the descriptor (owned by us,
root, and writable by nobody else: as the policy loader checks its directory, and as mptcpd refuses a
world-writable configuration) and writes relative to it. A refusal is one error line, logged once.
"""

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mptcpize_py.host.files import open_dir_no_symlinks, others_may_write, write_atomic_at

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
        directory = self.path.parent
        try:
            dfd = open_dir_no_symlinks(directory.absolute())
        except OSError as e:
            if e.errno == errno.ENOENT:
                self._say(f"metrics: {directory} does not exist (no node_exporter textfile "
                          "collector?): not writing metrics", logging.INFO)
            elif e.errno in (errno.ELOOP, errno.ENOTDIR):   # O_NOFOLLOW's answers at a link
                self._say(f"metrics: refused {directory}: a symbolic link is in the path, or it is not "
                          "a directory (give --metrics-dir the real directory): not writing metrics",
                          logging.ERROR)
            else:
                self._say(f"metrics: cannot open {directory}: {e.strerror or e}", logging.WARNING)
            return False
        try:
            problem = others_may_write(os.fstat(dfd), os.geteuid())
            if problem:
                self._say(f"metrics: refused {directory}: {problem}; others than root could replace "
                          "the file: not writing metrics", logging.ERROR)
                return False
            write_atomic_at(dfd, self.path.name, render())
        except OSError as e:
            self._say(f"metrics: cannot write {self.path}: {e.strerror or e}", logging.WARNING)
            return False
        finally:
            os.close(dfd)
        if self._problem is not None:
            log.info("metrics: writing %s again", self.path)
            self._problem = None
        return True

    def _say(self, message: str, level: int) -> None:
        if message != self._problem:
            log.log(level, "%s", message)
            self._problem = message
