"""`mptcpize-py daemon`: the loop that keeps the program's maps in line with the policy
(policysync.py), reads its upgrade events (daemon/events.py), serves the control socket
(daemon/controller.py) and reports (daemon/snapshot.py, the journal, the metrics textfile).
start() builds a running daemon; see docs/ARCHITECTURE.md for the flows."""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mptcpize_py import metrics
from mptcpize_py.daemon import client, control, controller
from mptcpize_py.daemon.events import ProcessLog
from mptcpize_py.daemon.netns_feed import NetnsFeeder
from mptcpize_py.daemon.snapshot import Identity, Tallies, build_status
from mptcpize_py.daemon.textfile import TextFile
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host import root, systemd
from mptcpize_py.paths.manager import PathManager
from mptcpize_py.policy import DEFAULT_POLICY_DIR, Policy
from mptcpize_py.policysync import (
    RESYNC_INTERVAL,
    PolicySync,
    PolicyWatch,
    ReloadSignals,
    load_and_resolve,
)
from mptcpize_py.program.handle import ProgramHandle
from mptcpize_py.resolve import Resolved
from mptcpize_py.status import DaemonStatus

if TYPE_CHECKING:
    from mptcpize_py.daemon.http import MetricsServer

POLL_MS = 200

log = logging.getLogger("mptcpize_py.daemon")


class Daemon:
    """A started daemon: the program loaded and filled, every part built. start() makes one."""

    def __init__(self, loaded: tuple[PolicyWatch, Policy, Resolved], rw: ProgramHandle, path: Path, *,
                 owner_uid: int, dry_run: bool, metrics_dir: Path | None, signals: ReloadSignals,
                 metrics_listen: tuple[str, int] | None = None):
        watch, policy, _resolved = loaded
        self.rw = rw
        self.path = path
        self.dry_run = dry_run
        self.backend = "dry-run" if dry_run else "bpf"
        self.signals = signals
        self.notifier = systemd.Notifier()
        self.textfile = TextFile(metrics_dir)
        self.paths = PathManager(path.parent)   # [paths]: endpoints, beside the control socket
        self.tallies = Tallies(rw)
        self.sync = PolicySync(*loaded, owner_uid=owner_uid, push=self._push,
                               on_reload=self._policy_changed, on_refused=self.textfile.changed)
        self.procs = ProcessLog(dry_run, self.sync.rule_desc, self.textfile.changed)
        self.feeder = NetnsFeeder(rw) if dry_run and not rw.reads_netns_from_kernel else None
        self.identity = Identity(self.backend, dry_run, time.time(), str(watch.policy_dir),
                                 getattr(rw, "loader", None))
        self.handlers = controller.handlers(backend=self.backend, dry_run=dry_run, runs=controller.Runs(),
                                            rw=rw, sync=self.sync, build_status=self.status)
        self.server: control.ControlServer | None = None   # None: not serving (tests)
        self.metrics_listen = metrics_listen   # (host, port): /metrics over HTTP (daemon/http.py)
        self.http: MetricsServer | None = None
        self._closed = False

    def _begin(self, serve: bool) -> None:
        """Fills the maps, then starts the events, the control socket and the path manager."""
        policy, resolved = self.sync.snapshot()
        self._push(resolved)
        self.tallies.switch(policy)
        self._refresh_netns()
        self.rw.open_events(self.procs.on_event)
        if serve:
            self.server = control.ControlServer(self.handlers, self.path).start()
        if self.metrics_listen is not None:
            from mptcpize_py.daemon.http import MetricsServer  # http.server and ssl: only when asked
            self.http = MetricsServer(self.metrics_listen, lambda: metrics.render(self.status())).start()
        self._apply_paths(policy)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.paths.close()   # removes the endpoints it added
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.server is not None:
            self.server.close()
            self.server = None
        self.rw.close()   # detaches: new sockets are plain TCP again

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        sig, watch = self.signals, self.sync.watch
        watch.restart()
        wd = self.notifier.watchdog_interval
        next_ping = time.monotonic()
        while not sig.stop:
            self.rw.poll_events(POLL_MS)
            if sig.stop:
                break
            try:
                if sig.reload:
                    sig.reload = False
                    self.notifier.reloading()
                    self.sync.reload("SIGHUP")
                    self.notifier.ready(self.status_line())
                if watch.due():
                    self.sync.refresh()
                    self._refresh_netns()
                    self.procs.prune(self.rw.proc_stats)
                    self.notifier.status(self.status_line())
            except Exception:  # a bug or an odd filesystem must not stop the upgrades: log, go on
                log.exception("policy sync failed; keeping the current selection")
            now = time.monotonic()
            if self.textfile.due(now):
                try:
                    self.write_metrics(now)
                except Exception:   # neither may a metrics bug
                    log.exception("metrics: writing the textfile failed")
            # The watchdog vouches for this loop: events read, policy kept in sync.
            if wd and time.monotonic() >= next_ping:
                self.notifier.watchdog()
                next_ping = time.monotonic() + wd
        self.notifier.stopping()
        self.rw.drain_events()
        log.info("stopping: detaching the program (new sockets are plain TCP)")
        # A stopped daemon says so, rather than leaving its last counts to look current.
        self.textfile.write(time.monotonic(), lambda: metrics.render(None))

    # --- what a policy change does -----------------------------------------------------------------
    def _push(self, resolved: Resolved) -> None:
        self.rw.set_selection(*resolved.selection())

    def _policy_changed(self, policy: Policy) -> None:
        self.tallies.switch(policy)
        self.textfile.changed()
        self._apply_paths(policy)

    def _apply_paths(self, policy: Policy) -> None:
        """The [paths] table: netlink only, so it works whatever the program could attach to."""
        try:
            self.paths.apply(policy)
        except MptcpizeError as e:
            log.error("paths: %s: the [paths] table is not applied", e.message)

    def _refresh_netns(self) -> None:
        if self.feeder is not None:
            self.feeder.refresh(self.sync.resolved.netns)

    # --- reports -----------------------------------------------------------------------------------
    def status(self) -> DaemonStatus:
        policy, resolved = self.sync.snapshot()
        return build_status(self.identity, policy, resolved, self.procs.copy(), self.tallies,
                            reloads=self.sync.reloads, failed_reloads=self.sync.failed_reloads,
                            paths=self.paths.statuses(), rule_desc=self.sync.rule_desc)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: the policy and the volume so far."""
        c = self.rw.counters()
        return (f"{'DRY RUN: ' if self.dry_run else ''}{self.sync.policy.summary()}; "
                f"{c.get('upgraded', 0)} sockets {self.procs.verb} in {len(self.procs)} processes; "
                f"{c.get('events_dropped', 0)} events dropped")

    def write_metrics(self, now: float) -> None:
        self.textfile.write(now, lambda: metrics.render(self.status()))


def start(policy_dir: Path = DEFAULT_POLICY_DIR, path: Path | None = None,
          resync_interval: float = RESYNC_INTERVAL, *, owner_uid: int = 0,
          rewriter_factory: Callable[[], ProgramHandle] | None = None, serve: bool = True,
          dry_run: bool = False, metrics_dir: Path | None = None,
          metrics_listen: tuple[str, int] | None = None, signals: ReloadSignals | None = None) -> Daemon:
    """Loads and resolves the policy (PolicyError: exit 78), loads the program, fills its maps and
    starts serving. owner_uid, rewriter_factory (() -> a rewriter.Rewriter look-alike) and
    serve=False are for tests that drive the daemon without BPF or a control socket. metrics_dir:
    where to keep the textfile collector's mptcpize.prom (None: nowhere); metrics_listen: where to
    serve /metrics over HTTP (None: nowhere)."""
    loaded = PolicySync.load(Path(policy_dir), owner_uid, resync_interval)
    policy = loaded[1]
    log.info("policy ok (%s); loading the BPF program", policy.summary())
    t0 = time.monotonic()
    if rewriter_factory is None:
        from mptcpize_py.program.rewriter import Rewriter
        rw: ProgramHandle = Rewriter(all_netns=False, dry_run=dry_run)
    else:
        rw = rewriter_factory()
    control_path = Path(path) if path else client.control_path()
    d: Daemon | None = None
    try:
        d = Daemon(loaded, rw, control_path, owner_uid=owner_uid, dry_run=dry_run,
                   metrics_dir=metrics_dir, signals=signals or ReloadSignals(),
                   metrics_listen=metrics_listen)
        d._begin(serve)
    except BaseException:
        if d is not None:
            d.close()
        else:
            rw.close()
        raise
    log.info("program loaded by %s (%s)", getattr(rw, "loader", "?"),
             getattr(rw, "detail", "a test's program"))
    log.info("started in %.1f s%s: %s; control socket %s", time.monotonic() - t0,
             " as a DRY RUN (syscalls:sys_enter_socket tracepoint: reports what would be "
             "upgraded, changes no socket)" if dry_run else "", policy.summary(), control_path)
    blind = root.blind_spot()
    if blind:
        log.warning("%s", blind)
    d.sync.log_resolution(loaded[2])
    d.write_metrics(time.monotonic())
    d.notifier.ready(d.status_line())
    return d


def check(policy_dir: Path) -> tuple[Policy, Resolved]:
    """`daemon --check`: validates and resolves without loading BPF; raises PolicyError."""
    return load_and_resolve(Path(policy_dir))


def run_daemon(policy_dir: Path = DEFAULT_POLICY_DIR, dry_run: bool = False,
               metrics_dir: Path | None = None, metrics_listen: tuple[str, int] | None = None) -> int:
    systemd.use_journal_if_under_systemd()
    # Installed before start() so that a signal during the (slow) compile does not kill the process
    # with the default action; it is acted on after.
    signals = ReloadSignals()
    signals.install()
    d = start(policy_dir, dry_run=dry_run, metrics_dir=metrics_dir, metrics_listen=metrics_listen,
              signals=signals)
    try:
        d.run()
    finally:
        d.close()
    return 0
