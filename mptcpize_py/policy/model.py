"""What a policy is once validated (Rule, NetnsSelection, PathsSettings, PathsTable, Policy), what a
policy file is once read (PolicyFile), the error that reports every problem, and the shipped example."""

from dataclasses import dataclass
from pathlib import Path

from mptcpize_py.errors import EXIT_BAD_POLICY, MptcpizeError
from mptcpize_py.locations import POLICY_DIR

DEFAULT_POLICY_DIR = POLICY_DIR


class PolicyError(MptcpizeError):
    """Every problem found in the policy; `message` is the first, `errors` all of them (one line each)."""

    exit_code = EXIT_BAD_POLICY

    def __init__(self, errors: list[str], hint: str | None = None):
        super().__init__(errors[0], hint=hint)
        self.errors = list(errors)


@dataclass(frozen=True)
class Rule:
    id: int
    action: str        # "allow" | "deny"
    kind: str          # "exe" | "cgroup" | "unit"
    value: str
    name: str | None
    source_file: str
    line: int

    @property
    def description(self) -> str:
        """`allow exe=/usr/bin/iperf3 "iperf" (10-web.toml:3)`"""
        label = f' "{self.name}"' if self.name else ""
        return f"{self.action} {self.kind}={self.value}{label} ({Path(self.source_file).name}:{self.line})"

    @property
    def series(self) -> tuple[str, str]:
        """(file, rule): the rule's identity in metrics, which editing other lines does not change
        (its description holds its line, its id its position in the policy): the policy file's base
        name and the rule's own `name`, else what it matches (`exe=/usr/bin/iperf3`)."""
        return Path(self.source_file).name, self.name or f"{self.kind}={self.value}"


@dataclass(frozen=True)
class NetnsSelection:
    mode: str = "host"            # "host" | "names" (the host's plus these) | "all"
    names: tuple[str, ...] = ()   # /run/netns/NAME, in mode "names" only

    def describe(self) -> str:
        if self.mode == "names":
            return "host + " + ", ".join(self.names)
        return self.mode


# The namespace the [paths] table calls "host": the daemon's own (the policy's "host" everywhere).
HOST_NETNS_NAME = "host"


@dataclass(frozen=True)
class PathsSettings:
    """How MPTCP endpoints and limits are managed in one network namespace ([paths], merged with its
    [paths.netns.NAME] table). Interface names are matched with shell-style patterns (fnmatch)."""
    role: str = "none"                   # "client" (subflow), "server" (signal), "both", "none"
    interfaces: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    backup: tuple[str, ...] = ()         # their endpoints get the backup flag
    fullmesh: tuple[str, ...] = ()       # their endpoints get the fullmesh flag (role client only)
    subflows: int | None = None          # None: the kernel's value is left alone
    add_addr_accepted: int | None = None
    where: str = ""                      # "file:line" of the table these come from

    @property
    def manages(self) -> bool:
        return self.role != "none"

    def describe(self) -> str:
        if not self.manages:
            return "none"
        parts = [self.role]
        if self.interfaces != ("*",):
            parts.append("interfaces " + ",".join(self.interfaces))
        if self.exclude:
            parts.append("exclude " + ",".join(self.exclude))
        if self.backup:
            parts.append("backup " + ",".join(self.backup))
        if self.fullmesh:
            parts.append("fullmesh " + ",".join(self.fullmesh))
        if self.subflows is not None:
            parts.append(f"subflows={self.subflows}")
        if self.add_addr_accepted is not None:
            parts.append(f"add_addr_accepted={self.add_addr_accepted}")
        return " ".join(parts)


@dataclass(frozen=True)
class PathsTable:
    """The policy's [paths] table: `default` for every namespace the policy selects, `netns` the
    namespaces with a table of their own (already merged with the default)."""
    default: PathsSettings
    netns: tuple[tuple[str, PathsSettings], ...] = ()
    where: str = ""

    def for_netns(self, name: str) -> PathsSettings:
        """`name`: "host" (HOST_NETNS_NAME) or a /run/netns name."""
        return dict(self.netns).get(name, self.default)

    def describe(self) -> str:
        """`client` / `none; mzp-cli: client; mzp-srv: server`"""
        out = [self.default.role]
        out.extend(f"{name}: {s.role}" for name, s in self.netns)
        return "; ".join(out)


@dataclass(frozen=True)
class Policy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    netns: NetnsSelection = NetnsSelection()
    files: tuple[str, ...] = ()
    paths: PathsTable | None = None     # None: no [paths] table, endpoints are not ours to manage

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(sorted(self.allow + self.deny, key=lambda r: r.id))

    def summary(self) -> str:
        files = "file" if len(self.files) == 1 else "files"
        paths = f"; paths: {self.paths.describe()}" if self.paths is not None else ""
        return (f"{len(self.allow)} allow, {len(self.deny)} deny rules from {len(self.files)} {files}; "
                f"netns: {self.netns.describe()}{paths}")


@dataclass(frozen=True)
class PolicyFile:
    """One file of the policy directory as read: its text, or why it could not be (`refused`: the whole
    one-line message, e.g. "path: refused: a symbolic link ...")."""
    path: str
    text: str = ""
    refused: str | None = None


# The commented example, shipped as /usr/share/doc/mptcpize-py/examples/example-policy.toml by the
# Debian package; `mptcpize-py daemon --example-policy` prints it.
EXAMPLE_POLICY = (Path(__file__).resolve().parents[1] / "data" / "example-policy.toml").read_text()
