"""One pass over one watched namespace: look (netlink), plan (plan.py, pure), change, record (state.py),
and say what changed. manager.py decides when a namespace gets a pass."""

import errno
import logging
from dataclasses import dataclass, field

from mptcpize_py.display import escaped
from mptcpize_py.errors import MptcpizeError
from mptcpize_py.host.netns import in_netns
from mptcpize_py.paths import netlink, others, plan
from mptcpize_py.paths.state import NetnsRecord, PathsState
from mptcpize_py.paths.watch import Netns
from mptcpize_py.status import PathsStatus

log = logging.getLogger("mptcpize_py.paths")


@dataclass
class PassResult:
    """What one pass over a namespace saw and did (for `paths --apply`'s output)."""
    netns: str
    changes: list[str] = field(default_factory=list)
    other: str | None = None
    problems: list[str] = field(default_factory=list)


def run_pass(ns: Netns, state: PathsState, procs: list, why: str) -> PassResult:
    """A pass over `ns` (`procs`: others.processes()); its problems are logged when they change."""
    record = state.records.setdefault(ns.key, NetnsRecord(ns.name))
    record.name = ns.name
    res = PassResult(ns.name)
    if not ns.settings.manages and record.empty:   # role none, nothing of ours there: not even a look
        ns.status = PathsStatus(ns.name, ns.settings.role, "nobody (role none)", (), None)
        return res
    failed = None
    try:
        in_netns(ns.path, lambda: _pass_here(ns, record, res, procs, why))
    except MptcpizeError as e:
        failed = e.message
    except Exception as e:  # a bug or an odd namespace: the daemon's upgrades must go on
        failed = f"pass failed: {e!r}"
        if failed not in ns.problems:   # the traceback once, not at every event
            log.exception("paths: netns %s: pass failed", escaped(ns.name))
    if failed is not None:
        res.problems.append(failed)
        # status says so, beside what the last good pass left (not that list as if all were well)
        old = ns.status or PathsStatus(ns.name, ns.settings.role, "mptcpize-py", (), None)
        ns.status = PathsStatus(old.netns, ns.settings.role, old.managed_by, old.endpoints, old.limits,
                                (failed,))
    state.save()
    problems = tuple(res.problems)
    if problems != ns.problems:
        for p in problems:
            log.warning("paths: netns %s: %s", escaped(ns.name), escaped(p))
        ns.problems = problems
    return res


def _pass_here(ns: Netns, record: NetnsRecord, res: PassResult, procs: list, why: str) -> None:
    """In the namespace: look, plan, change, record."""
    settings = ns.settings if ns.settings.manages else None
    other, note = (None, None)
    if settings is not None:
        other, note = others.other_manager(ns.inum, procs, others.read_path_manager())
    if (other.line() if other else None) != ns.other:
        if other is not None:
            log.info("paths: netns %s: %s", escaped(ns.name), other.line())
        elif ns.other is not None:
            log.info("paths: netns %s: no other manager any more: managing endpoints", escaped(ns.name))
        ns.other = other.line() if other else None
    res.other = ns.other
    view = netlink.read_view()
    # Ours are those we added that were there, exactly so, at every look since: one that is
    # missing or different now was removed or changed by someone else, and is forgotten.
    record.endpoints = plan.still_ours(view, record.endpoints)
    managing = settings is not None and not other
    p = plan.plan(view, settings if managing else None, frozenset(record.endpoints),
                  record.limits_set, record.limits_before)
    ours = _carry_out(ns, record, res, view, p, why)
    if p.limits is not None and _set_limits(ns, res, view, p.limits):
        if managing:
            if record.limits_before is None:
                record.limits_before = view.limits
            record.limits_set = p.limits
        else:
            record.limits_before = record.limits_set = None
    elif not managing and record.limits_set is not None and p.limits is None:
        record.limits_before = record.limits_set = None   # changed by someone else: theirs now
    res.problems.extend(plan_problems(p, note))
    ns.status = pass_status(ns.name, ns.settings.role,
                            ns.other or ("mptcpize-py" if settings else "nobody (role none)"),
                            view, [*p.keep, *ours], p.limits or view.limits, res.problems)


def _carry_out(ns: Netns, record: NetnsRecord, res: PassResult, view: plan.KernelView, p: plan.Plan,
               why: str) -> list[plan.KernelEndpoint]:
    """Removes and adds the plan's endpoints; the ones it added."""
    ours: list[plan.KernelEndpoint] = []
    for e in p.remove:
        try:
            netlink.delete_endpoint(e.id, e.address)
        except OSError as err:
            res.problems.append(f"cannot remove endpoint {e.address} id {e.id}: {err.strerror}")
            continue
        record.endpoints.discard(e.key)
        _change(ns, res, f"removed endpoint {e.address} id {e.id} dev "
                f"{view.ifname_text(e.ifindex)} {' '.join(plan.flag_names(e.flags))} ({why})")
    for w in p.add:
        try:
            added = netlink.add_endpoint(w.address, w.ifindex, w.flags)
        except OSError as err:
            what = ("no room: the namespace holds 8 endpoints" if err.errno == errno.ERANGE
                    else err.strerror)
            res.problems.append(f"cannot add endpoint {w.describe()}: {what}")
            continue
        record.endpoints.add(added.key)
        ours.append(added)
        _change(ns, res, f"added endpoint {w.address} id {added.id} dev "
                f"{plan.ifname_text(w.ifname)} {' '.join(plan.flag_names(w.flags))} ({why})")
    return ours


def _set_limits(ns: Netns, res: PassResult, view: plan.KernelView, limits: plan.Limits) -> bool:
    try:
        netlink.set_limits(limits)
    except OSError as err:
        res.problems.append(f"cannot set limits subflows={limits.subflows} add_addr_accepted="
                            f"{limits.add_addr_accepted}: {err.strerror}")
        return False
    _change(ns, res, f"limits subflows={limits.subflows} add_addr_accepted="
            f"{limits.add_addr_accepted} (were subflows={view.limits.subflows} "
            f"add_addr_accepted={view.limits.add_addr_accepted})")
    return True


def plan_problems(p: plan.Plan, note: str | None) -> list[str]:
    """What a plan leaves undone, in the words a pass reports (pure)."""
    out = p.left_undone()
    out += [f"interfaces pattern {pattern!r} matches no interface (yet)" for pattern in p.unmatched]
    if note:
        out.append(note)
    return out


def pass_status(netns: str, role: str, managed_by: str, view: plan.KernelView,
                endpoints: list[plan.KernelEndpoint], limits: plan.Limits,
                problems: list[str]) -> PathsStatus:
    """A namespace's status after a pass (pure)."""
    return PathsStatus(
        netns=netns, role=role, managed_by=managed_by,
        endpoints=tuple(f"{e.address} id {e.id} dev {view.ifname_text(e.ifindex)} "
                        f"{' '.join(plan.flag_names(e.flags))}"
                        for e in sorted(endpoints, key=lambda e: (e.id, e.address))),
        limits=f"subflows={limits.subflows} add_addr_accepted={limits.add_addr_accepted}",
        problems=tuple(problems))


def _change(ns: Netns, res: PassResult, text: str) -> None:
    """`text` carries interface names as plan.ifname_text() gives them: escaped for the log here,
    by the renderer for `paths --apply`'s output."""
    res.changes.append(text)
    log.info("paths: netns %s: %s", escaped(ns.name), escaped(text))
