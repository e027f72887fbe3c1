"""What a policy is once validated (Rule, NetnsSelection, Policy), what a policy file is once read
(PolicyFile), the error that reports every problem, and the shipped example."""

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


@dataclass(frozen=True)
class NetnsSelection:
    mode: str = "host"            # "host" | "names" (the host's plus these) | "all"
    names: tuple[str, ...] = ()   # /run/netns/NAME, in mode "names" only

    def describe(self) -> str:
        if self.mode == "names":
            return "host + " + ", ".join(self.names)
        return self.mode


@dataclass(frozen=True)
class Policy:
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    netns: NetnsSelection = NetnsSelection()
    files: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(sorted(self.allow + self.deny, key=lambda r: r.id))

    def summary(self) -> str:
        files = "file" if len(self.files) == 1 else "files"
        return (f"{len(self.allow)} allow, {len(self.deny)} deny rules from {len(self.files)} {files}; "
                f"netns: {self.netns.describe()}")


@dataclass(frozen=True)
class PolicyFile:
    """One file of the policy directory as read: its text, or why it could not be (`refused`: the whole
    one-line message, e.g. "path: refused: a symbolic link ...")."""
    path: str
    text: str = ""
    refused: str | None = None


# The commented example shipped as /etc/mptcpize-py/policy.d/example.toml.sample (not loaded: only
# *.toml files are); `mptcpize-py daemon --example-policy` prints it.
EXAMPLE_POLICY = (Path(__file__).resolve().parents[1] / "data" / "example-policy.toml").read_text()
