"""Policy sync: the policy directory -> a validated, resolved policy, kept current and pushed to the
program's maps. The daemon and `paths --apply --follow` both watch the directory with it.

Reload (SIGHUP, or a changed directory fingerprint) = load + resolve + push; a reload that fails keeps
the last good policy. Resync = re-resolve the current policy (new cgroup ids, new inodes) and push
only when the selection changed. See docs/ARCHITECTURE.md ("decision flow")."""

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mptcpize_py.display import escaped
from mptcpize_py.policy import Policy, PolicyError, load_policy
from mptcpize_py.resolve import Resolved, resolve_policy

RESYNC_INTERVAL = 2.0
# polling, not inotify: one stat per file every 2 s is cheap and needs no extra dependency

log = logging.getLogger("mptcpize_py.daemon")

Fingerprint = tuple[tuple[str, int, int, int, int, int, tuple], ...]


def check_resolved(resolved: Resolved) -> None:
    """Rules that resolve to nothing are a bad policy (at start, --check, reload)."""
    if resolved.problems:
        raise PolicyError(list(resolved.problems),
                          hint="fix or remove these rules; `mptcpize-py daemon --check` validates")


def load_and_resolve(policy_dir: Path, owner_uid: int = 0) -> tuple[Policy, Resolved]:
    policy = load_policy(policy_dir, owner_uid=owner_uid)
    resolved = resolve_policy(policy)
    check_resolved(resolved)
    return policy, resolved


def dir_fingerprint(policy_dir: Path) -> Fingerprint | None:
    """What changes when a policy file is added, removed, replaced or edited (None: unreadable). A
    symbolic link counts with what it leads to: a ConfigMap's ..data swap changes no link of the
    directory, only their targets (one fingerprint change: one reload)."""
    try:
        out = []
        with os.scandir(policy_dir) as it:
            for e in it:
                if e.name.endswith(".toml") and not e.name.startswith("."):
                    st = e.stat(follow_symlinks=False)
                    target: tuple = ()
                    if e.is_symlink():
                        try:
                            t = os.stat(e.path)   # stat only: load.py decides whether it may be read
                            target = (t.st_dev, t.st_ino, t.st_size, t.st_mtime_ns, t.st_mode, t.st_uid)
                        except OSError:
                            target = ("dangling",)
                    out.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid,
                                target))
        return tuple(sorted(out))
    except OSError:
        return None


class ReloadSignals:
    """SIGHUP asks for a reload, SIGTERM/SIGINT for a stop: the handlers only set these flags."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def install(self) -> None:
        def on_hup(_sig: int, _frm: object) -> None:
            self.reload = True

        def on_term(_sig: int, _frm: object) -> None:
            self.stop = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)


class PolicyWatch:
    """When to look at the policy directory again, and whether it changed since the last load."""

    def __init__(self, policy_dir: Path, interval: float = RESYNC_INTERVAL) -> None:
        self.policy_dir = Path(policy_dir)
        self.interval = interval
        self.fingerprint = dir_fingerprint(self.policy_dir)
        self.next_check = time.monotonic() + interval

    def mark(self) -> None:
        """The directory as it is now is the one loaded."""
        self.fingerprint = dir_fingerprint(self.policy_dir)

    def changed(self) -> bool:
        return dir_fingerprint(self.policy_dir) != self.fingerprint

    def restart(self) -> None:
        self.next_check = time.monotonic() + self.interval

    def due(self) -> bool:
        """True once every `interval` seconds."""
        if time.monotonic() < self.next_check:
            return False
        self.restart()
        return True


class PolicySync:
    """The current policy and its resolution; `push` gets every new selection (the program's maps),
    `on_reload` every policy a reload applied, `on_refused` each refused reload."""

    def __init__(self, watch: PolicyWatch, policy: Policy, resolved: Resolved, *, owner_uid: int = 0,
                 push: Callable[[Resolved], None], on_reload: Callable[[Policy], None] = lambda _p: None,
                 on_refused: Callable[[], None] = lambda: None) -> None:
        self.watch = watch
        self.policy_dir = watch.policy_dir
        self.owner_uid = owner_uid
        self.policy = policy
        self.resolved = resolved
        self.push = push
        self.on_reload = on_reload
        self.on_refused = on_refused
        self.reloads = 0
        self.failed_reloads = 0
        self._logged_problems: tuple[str, ...] = ()
        self._lock = threading.Lock()        # the policy/resolved pair vs. the control thread
        self._sync_lock = threading.Lock()   # reload/resync from the main loop vs. a `resync` request

    @classmethod
    def load(cls, policy_dir: Path, owner_uid: int = 0, interval: float = RESYNC_INTERVAL,
             ) -> tuple[PolicyWatch, Policy, Resolved]:
        """The first load (raises PolicyError: at start a bad policy is an error)."""
        watch = PolicyWatch(policy_dir, interval)
        policy, resolved = load_and_resolve(watch.policy_dir, owner_uid)
        return watch, policy, resolved

    def snapshot(self) -> tuple[Policy, Resolved]:
        with self._lock:
            return self.policy, self.resolved

    def rule_desc(self, rule_id: int) -> str:
        for r in self.policy.rules:
            if r.id == rule_id:
                return r.description
        return f"rule {rule_id}" if rule_id else "none"

    def log_resolution(self, resolved: Resolved) -> None:
        self._logged_problems = resolved.problems
        for p in resolved.pending:   # messages quoting paths found on the filesystem: escaped
            log.info("%s", escaped(p.message))
        for n in resolved.notes:
            log.info("%s", escaped(n))

    # --- what the loops call -------------------------------------------------------------------
    def reload(self, why: str) -> bool:
        with self._sync_lock:
            return self._reload_locked(why)

    def resync(self) -> None:
        """Re-resolves the current policy: new cgroup ids, pending things that appeared, new inodes."""
        with self._sync_lock:
            self._resync_locked()

    def refresh(self, why: str = "policy directory changed") -> None:
        """The periodic look: a reload when the directory changed, else a resync."""
        if self.watch.changed():
            self.reload(why)
        else:
            self.resync()

    def sync_now(self, why: str) -> None:
        """refresh() as one step (a `resync` request must not interleave with the loop's)."""
        with self._sync_lock:
            if self.watch.changed():
                self._reload_locked(why)
            else:
                self._resync_locked()

    # --- under _sync_lock ----------------------------------------------------------------------
    def _reload_locked(self, why: str) -> bool:
        self.watch.mark()
        try:
            if not os.path.lexists(self.policy_dir):
                # Removed on purpose (e.g. `disable` of the last enabled unit removes the directory
                # it created): no rules, rather than the last policy forever. At start it is an error.
                log.warning("policy directory %s is gone: no rules until it is back", self.policy_dir)
                policy = Policy()
                resolved = resolve_policy(policy)
            else:
                policy, resolved = load_and_resolve(self.policy_dir, self.owner_uid)
        except PolicyError as e:
            self.failed_reloads += 1
            self.on_refused()
            for line in e.errors:
                log.error("reload (%s) refused: %s", why, line)
            log.error("reload refused: keeping the last good policy (%s)", self.policy.summary())
            return False
        self.push(resolved)
        with self._lock:
            self.policy, self.resolved = policy, resolved
        self.reloads += 1
        log.info("reloaded (%s): %s", why, policy.summary())
        self.log_resolution(resolved)
        self.on_reload(policy)
        return True

    def _resync_locked(self) -> None:
        resolved = resolve_policy(self.policy)
        if resolved.problems != self._logged_problems:
            for line in resolved.problems:
                log.warning("%s (the rule matches nothing until this is fixed)", escaped(line))
            self._logged_problems = resolved.problems
        old = self.resolved
        if resolved.selection() == old.selection():
            return
        self.push(resolved)
        with self._lock:
            self.resolved = resolved
        for rid, target in resolved.targets.items():
            if old.targets.get(rid) != target:
                log.info("rule %s now resolves to %s", escaped(self.rule_desc(rid)), escaped(target))
