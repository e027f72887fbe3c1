"""What `run` asks of a backend (RunBackend), and what a backend reports per process."""

from typing import NamedTuple, Protocol


class ProcessReport(NamedTuple):
    # A NamedTuple, not a dataclass: `run` via the daemon would import dataclasses (and inspect,
    # ast, dis, tokenize) for this alone, ~4 ms of every `run`'s start.
    pid: int
    exe: str
    upgraded: int


class ProcessSummary(NamedTuple):
    """Processes that got upgraded sockets but no row of their own (beyond a backend's row limit),
    by executable."""
    exe: str
    processes: int
    upgraded: int


class RunBackend(Protocol):
    """A way to upgrade the sockets of CMD's process tree. Every backend provides all of it."""

    name: str   # "bpf", "bpf (via the daemon, pid N)" or "seccomp"

    def child_setup(self) -> None:
        """Runs in the child between fork and exec, so that the very first socket() is covered."""

    def spawn_env(self, env: dict[str, str]) -> dict[str, str] | None:
        """CMD's environment built from ours (None: ours unchanged)."""

    def pass_fds(self) -> tuple[int, ...]:
        """Descriptors CMD inherits."""

    def started(self, pid: int) -> None:
        """Runs in the parent once CMD is running."""

    def finish(self) -> list[ProcessReport]:
        """After CMD exited: one report per process that got upgraded sockets."""

    def summarized(self) -> list[ProcessSummary]:
        """After finish(): the processes its list left out (beyond a row limit), by executable."""

    def counters(self) -> dict[str, int] | None:
        """Sockets upgraded and not upgraded, by reason; None when the backend cannot count this run's
        alone."""

    @property
    def handed_off_pid(self) -> int | None:
        """Pid of a detached process that keeps upgrading the sockets of descendants that outlived
        CMD, if one was needed."""

    def close(self) -> None:
        """Releases everything (e.g. detaches the BPF program)."""
