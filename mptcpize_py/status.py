"""The daemon's `status` answer as types: built by the daemon, sent as JSON over the control socket,
parsed back by the clients (`status`, `metrics`, `status --connections`).

Pure: no I/O. `to_json_dict()` gives the wire format (key order included); `from_json_dict()` checks
every field's type, so a malformed or mismatched answer (e.g. a daemon of another version still running
after a package upgrade) is one error line naming the field, not a traceback in a renderer. Keys it
does not know are ignored: a newer daemon may add some.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mptcpize_py.errors import MptcpizeError

T = TypeVar("T")


class StatusFormatError(MptcpizeError):
    """The daemon's status answer does not have the shape this version expects."""


@dataclass(frozen=True)
class RuleStatus:
    """One policy rule as the daemon applies it."""
    id: int
    description: str        # policy.Rule.description: `allow exe=/usr/bin/x "name" (10-web.toml:3)`
    action: str             # "allow" | "deny"
    kind: str               # "exe" | "cgroup" | "unit"
    value: str
    target: str | None      # what it resolved to; None: nothing yet
    upgraded: int           # sockets upgraded through this rule (the kernel's exact counter)

    def comes_from(self, file_name: str) -> bool:
        """Whether the rule was read from the policy file named `file_name` (a base name): the
        description ends with ` (FILE:LINE)`, the only place the status carries a rule's file."""
        head, colon, line = self.description.removesuffix(")").rpartition(":")
        return (self.description.endswith(")") and bool(colon) and line.isdigit()
                and head.endswith(f" ({file_name}"))

    def to_json_dict(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "action": self.action,
                "kind": self.kind, "value": self.value, "target": self.target,
                "upgraded": self.upgraded}

    @classmethod
    def from_json_dict(cls, d: object, where: str = "rule") -> "RuleStatus":
        f = _Fields(d, where)
        return cls(id=f.integer("id"), description=f.text("description"), action=f.text("action"),
                   kind=f.text("kind"), value=f.text("value"), target=f.opt_text("target"),
                   upgraded=f.integer("upgraded"))


@dataclass(frozen=True)
class PolicyStatus:
    dir: str
    summary: str
    files: tuple[str, ...]       # paths of the policy files read
    rules: tuple[RuleStatus, ...]
    pending: tuple[str, ...]     # things rules name that do not exist yet
    problems: tuple[str, ...]    # `file:line: reason` of rules that resolve to nothing
    reloads: int
    failed_reloads: int

    def to_json_dict(self) -> dict[str, Any]:
        return {"dir": self.dir, "summary": self.summary, "files": list(self.files),
                "rules": [r.to_json_dict() for r in self.rules], "pending": list(self.pending),
                "problems": list(self.problems), "reloads": self.reloads,
                "failed_reloads": self.failed_reloads}

    @classmethod
    def from_json_dict(cls, d: object, where: str = "policy") -> "PolicyStatus":
        f = _Fields(d, where)
        return cls(dir=f.text("dir"), summary=f.text("summary"), files=f.text_array("files"),
                   rules=f.array("rules", RuleStatus.from_json_dict), pending=f.text_array("pending"),
                   problems=f.text_array("problems"), reloads=f.integer("reloads"),
                   failed_reloads=f.integer("failed_reloads"))


@dataclass(frozen=True)
class ProcessRow:
    """A process with upgraded sockets, from the kernel's per-process table (an LRU). A process is
    (pid, start_ns): a recycled pid is another row."""
    pid: int
    start_ns: int           # when it started, ns after boot (its leader's start_boottime: what
                            # /proc/PID/stat field 22 shows in clock ticks)
    exe: str | None         # None: exited before the daemon could read /proc/PID/exe
    rule: str               # the rule's description when its first upgrade was seen
    rule_id: int            # policy rule id, or the run id for kind "run"
    kind: str               # "exe" | "cgroup" | "run"
    unit: str | None
    cgroup: str | None
    upgraded: int
    alive: bool

    def to_json_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ns": self.start_ns, "exe": self.exe, "rule": self.rule,
                "rule_id": self.rule_id, "kind": self.kind, "unit": self.unit, "cgroup": self.cgroup,
                "upgraded": self.upgraded, "alive": self.alive}

    @classmethod
    def from_json_dict(cls, d: object, where: str = "process") -> "ProcessRow":
        f = _Fields(d, where)
        return cls(pid=f.integer("pid"), start_ns=f.integer("start_ns"), exe=f.opt_text("exe"),
                   rule=f.text("rule"), rule_id=f.integer("rule_id"), kind=f.text("kind"),
                   unit=f.opt_text("unit"), cgroup=f.opt_text("cgroup"), upgraded=f.integer("upgraded"),
                   alive=f.boolean("alive"))


@dataclass(frozen=True)
class PathsStatus:
    """One namespace the [paths] table names, as the daemon's path manager left it."""
    netns: str
    role: str                        # client / server / both / none
    managed_by: str                  # "mptcpize-py", or why another manager has it (one line)
    endpoints: tuple[str, ...]       # ours: "10.0.0.1 id 3 dev eth1 subflow"
    limits: str | None               # "subflows=2 add_addr_accepted=2"
    problems: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {"netns": self.netns, "role": self.role, "managed_by": self.managed_by,
                "endpoints": list(self.endpoints), "limits": self.limits, "problems": list(self.problems)}

    @classmethod
    def from_json_dict(cls, d: object, where: str = "paths") -> "PathsStatus":
        f = _Fields(d, where)
        return cls(netns=f.text("netns"), role=f.text("role"), managed_by=f.text("managed_by"),
                   endpoints=f.text_array("endpoints"), limits=f.opt_text("limits"),
                   problems=f.text_array("problems"))


@dataclass(frozen=True)
class RuleCount:
    """Sockets upgraded under one rule identity (policy.Rule.series) since the daemon started, summed
    over every policy it ran (a reload renumbers rule ids; the identity stays): never decreases."""
    file: str | None        # the policy file's base name; None for `run` trees served by the daemon
    rule: str               # the rule's name, else `KIND=VALUE`; "run" for run trees
    upgraded: int

    def to_json_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rule": self.rule, "upgraded": self.upgraded}

    @classmethod
    def from_json_dict(cls, d: object, where: str = "rule_upgrades") -> "RuleCount":
        f = _Fields(d, where)
        return cls(file=f.opt_text("file"), rule=f.text("rule"), upgraded=f.integer("upgraded"))


@dataclass(frozen=True)
class DaemonStatus:
    backend: str            # "bpf" | "dry-run"
    dry_run: bool
    pid: int
    uptime_s: float
    policy: PolicyStatus
    totals: dict[str, int]  # the kernel's counters by name (abi.COUNTERS)
    processes: tuple[ProcessRow, ...]
    events_dropped: int
    paths: tuple[PathsStatus, ...] = ()   # empty: no [paths] table
    version: str | None = None            # the daemon's mptcpize-py version (None: an older daemon)
    # Monotonic sums for metrics counters (the kernel's per-rule counters are by rule id, which a
    # reload renumbers; its per-process table is an LRU that forgets): kept by the daemon.
    rule_upgrades: tuple[RuleCount, ...] = ()
    unit_upgrades: dict[str, int] = field(default_factory=dict)   # unit -> sockets upgraded
    loader: str | None = None             # "libbpf" or "bcc": what loaded the program (None: older)

    def to_json_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "dry_run": self.dry_run, "pid": self.pid,
                "uptime_s": self.uptime_s, "policy": self.policy.to_json_dict(),
                "totals": dict(self.totals), "processes": [p.to_json_dict() for p in self.processes],
                "events_dropped": self.events_dropped, "paths": [p.to_json_dict() for p in self.paths],
                "version": self.version, "rule_upgrades": [r.to_json_dict() for r in self.rule_upgrades],
                "unit_upgrades": dict(self.unit_upgrades), "loader": self.loader}

    @classmethod
    def from_json_dict(cls, d: object) -> "DaemonStatus":
        """Raises StatusFormatError naming the first field that is missing or of the wrong type."""
        f = _Fields(d, "")
        return cls(backend=f.text("backend"), dry_run=f.boolean("dry_run"), pid=f.integer("pid"),
                   uptime_s=f.number("uptime_s"), policy=f.obj("policy", PolicyStatus.from_json_dict),
                   totals=f.counters("totals"), processes=f.array("processes", ProcessRow.from_json_dict),
                   events_dropped=f.integer("events_dropped"),
                   paths=f.array("paths", PathsStatus.from_json_dict) if "paths" in f.d else (),
                   version=f.opt_text("version") if "version" in f.d else None,
                   rule_upgrades=(f.array("rule_upgrades", RuleCount.from_json_dict)
                                  if "rule_upgrades" in f.d else ()),
                   unit_upgrades=f.counters("unit_upgrades") if "unit_upgrades" in f.d else {},
                   loader=f.opt_text("loader") if "loader" in f.d else None)


# ---------------------------------------------------------------------------------------------------
# Checked reading of a decoded JSON object


def _json_type(v: object) -> str:
    return {dict: "object", list: "array", str: "str", int: "int", float: "float", bool: "bool",
            type(None): "null"}.get(type(v), type(v).__name__)


def _error(where: str, expected: str, got: object = None, missing: bool = False) -> StatusFormatError:
    field = f"field {where}: " if where else ""
    why = "missing" if missing else f"expected {expected}, got {_json_type(got)}"
    return StatusFormatError(f"daemon status: {field}{why}",
                             hint="the daemon may be another version of mptcpize-py: restart it "
                                  "(systemctl restart mptcpize-py)")


class _Fields:
    """The fields of one JSON object, each read with a type check; `where` names the object."""

    def __init__(self, d: object, where: str):
        if not isinstance(d, dict):
            raise _error(where, "object", d)
        self.d, self.where = d, where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, check: Callable[[object], bool], expected: str) -> Any:
        if key not in self.d:
            raise _error(self._path(key), expected, missing=True)
        v = self.d[key]
        if not check(v):
            raise _error(self._path(key), expected, v)
        return v

    # type(v) is ...: a JSON true is not an int here, nor 1 a bool.
    def integer(self, key: str) -> int:
        return self._get(key, lambda v: type(v) is int, "int")

    def number(self, key: str) -> float:
        return float(self._get(key, lambda v: type(v) in (int, float), "number"))

    def boolean(self, key: str) -> bool:
        return self._get(key, lambda v: type(v) is bool, "bool")

    def text(self, key: str) -> str:
        return self._get(key, lambda v: type(v) is str, "str")

    def opt_text(self, key: str) -> str | None:
        return self._get(key, lambda v: v is None or type(v) is str, "str or null")

    def obj(self, key: str, parse: Callable[[object, str], T]) -> T:
        return parse(self._get(key, lambda v: True, "object"), self._path(key))

    def array(self, key: str, parse: Callable[[object, str], T]) -> tuple[T, ...]:
        items = self._get(key, lambda v: type(v) is list, "array")
        return tuple(parse(item, f"{self._path(key)}[{i}]") for i, item in enumerate(items))

    def text_array(self, key: str) -> tuple[str, ...]:
        def one(v: object, where: str) -> str:
            if type(v) is not str:
                raise _error(where, "str", v)
            return v
        return self.array(key, one)

    def counters(self, key: str) -> dict[str, int]:
        d = self._get(key, lambda v: type(v) is dict, "object")
        for k, v in d.items():
            if type(v) is not int:
                raise _error(f"{self._path(key)}.{k}", "int", v)
        return dict(d)
