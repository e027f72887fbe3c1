"""The only systemd-python user: journald logging with structured fields, and sd_notify.

Under systemd the daemon's stderr is a journal stream ($JOURNAL_STREAM names its device:inode); then
log records go to journald directly, so extra fields (MPTCPIZE_PID=, MPTCPIZE_RULE=, …) stay
searchable: `journalctl -u mptcpize-py MPTCPIZE_RULE=…`. Elsewhere logging keeps its stderr format.
Without python3-systemd, notify() is a no-op unless systemd asked for notifications ($NOTIFY_SOCKET),
which is then an error the caller reports.
"""

import logging
import os
import sys

IDENTIFIER = "mptcpize-py"


def _systemd():
    try:
        from systemd import daemon, journal  # distro package python3-systemd
        return daemon, journal
    except ImportError:
        return None, None


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd connected (its documented check)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def use_journal_if_under_systemd() -> bool:
    """Sends the root logger's records to journald when stderr is the journal stream."""
    if not stderr_is_journal():
        return False
    _, journal = _systemd()
    if journal is None:
        return False
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = journal.JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    return True


def fields(**values) -> dict:
    """`extra=` for a log call: journald fields MPTCPIZE_<NAME>=value (None values left out). The
    stderr formatter ignores them."""
    return {f"MPTCPIZE_{k.upper()}": str(v) for k, v in values.items() if v is not None}


class Notifier:
    """sd_notify for a Type=notify service: READY/RELOADING/STATUS and watchdog pings."""

    def __init__(self):
        self.socket = os.environ.get("NOTIFY_SOCKET")
        self._daemon, _ = _systemd()
        usec = os.environ.get("WATCHDOG_USEC")
        wpid = os.environ.get("WATCHDOG_PID")
        try:
            interval = int(usec) / 1e6 if usec and (not wpid or int(wpid) == os.getpid()) else None
        except ValueError:
            interval = None
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = interval / 2 if interval else None

    @property
    def enabled(self) -> bool:
        return bool(self.socket)

    def notify(self, *lines: str) -> None:
        if not self.socket:
            return
        if self._daemon is None:
            raise RuntimeError("systemd asked for notifications ($NOTIFY_SOCKET) but python3-systemd "
                               "is not importable")
        self._daemon.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: detaching the program")
