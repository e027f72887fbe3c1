"""What a loader hands the long-lived process: the loaded program's descriptors by name, and what
the parent must write into the program's settings map. Both loaders (program/prebuilt.py with
libbpf, program/loader.py with bcc in a child) produce it; program/rewriter.py takes it over."""

from dataclasses import dataclass, field


@dataclass
class Attached:
    maps: dict[str, int] = field(default_factory=dict)
    progs: dict[str, int] = field(default_factory=dict)
    # name -> (fd, kind): "link" (a bpf_link: fmod_ret, raw tracepoints) or "perf_event" (a tracepoint
    # attached by perf event, the dry run's socket() hook). Closing one detaches its program.
    links: dict[str, tuple[int, str]] = field(default_factory=dict)
    hook: str = ""              # the links entry that decides sockets (update_socket_protocol or socket())
    pernet_addr: int = 0
    enabled_offset: int = 0
    loader: str = ""            # "libbpf" or "bcc"
    detail: str = ""

    def fds(self) -> list[int]:
        return list(self.maps.values()) + list(self.progs.values()) + [fd for fd, _ in self.links.values()]


def message(att: Attached) -> tuple[dict, list[int]]:
    """The handover as one JSON-able message whose descriptors are indexes into the returned list
    (what the bcc child sends over SCM_RIGHTS, and what the in-process libbpf loader hands over)."""
    fds: list[int] = []

    def index(fd: int) -> int:
        fds.append(fd)
        return len(fds) - 1

    msg = {"maps": {n: index(fd) for n, fd in att.maps.items()},
           "progs": {n: index(fd) for n, fd in att.progs.items()},
           "links": {n: [index(fd), kind] for n, (fd, kind) in att.links.items()},
           "hook": att.hook, "pernet_addr": att.pernet_addr, "enabled_offset": att.enabled_offset,
           "loader": att.loader, "detail": att.detail}
    return msg, fds
