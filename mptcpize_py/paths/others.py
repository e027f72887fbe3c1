"""Who else manages MPTCP endpoints in a network namespace: where someone does, mptcpize-py stands back.

How we tell, and why this way:
- mptcpd (its addr_adv plugin adds an endpoint per address, with the in-kernel path manager; other
  plugins drive the userspace one): a process whose executable is named `mptcpd` with its network
  namespace (/proc/PID/ns/net) being this one. mptcpd has no D-Bus name, and the endpoints it adds
  carry no mark (no flags by default), so its process is the one reliable sign. It manages only the
  namespace it runs in, and leaves its endpoints behind when it stops: they stay foreign to us.
  Reading another user's /proc/PID/ns/net (mptcpd's unit uses DynamicUser=) needs CAP_SYS_PTRACE;
  without it we cannot tell its namespace, and stand back wherever it might be.
- NetworkManager (>= 1.40 adds endpoints for the addresses of the devices it manages, per its
  connection.mptcp-flags): a `NetworkManager` process in this namespace. Its D-Bus name would not
  say which namespace it serves (the system bus is one for all), its process does. Standing back
  is the default wherever it runs; the exception is a configuration that turns its MPTCP handling
  off everywhere: the global default `connection.mptcp-flags` is "disabled" (0x1) in
  NetworkManager.conf or conf.d, and no connection profile (keyfile) sets another value. Reading the
  profiles needs root; anything we cannot read or parse counts as "NetworkManager manages".
- the userspace path manager (net.mptcp.path_manager=userspace, pm_type=1 before 6.15): the kernel
  ignores endpoints there; a userspace daemon (mptcpd) is meant to open the subflows.
"""

import configparser
import glob
import os
from dataclasses import dataclass

from mptcpize_py.host import procfs
from mptcpize_py.host.netns import read_sysctl

NAMES = ("mptcpd", "NetworkManager")

NM_CONF = ("etc/NetworkManager/NetworkManager.conf", "usr/lib/NetworkManager/conf.d/*.conf",
           "run/NetworkManager/conf.d/*.conf", "etc/NetworkManager/conf.d/*.conf")
NM_PROFILES = ("etc/NetworkManager/system-connections/*", "run/NetworkManager/system-connections/*",
               "usr/lib/NetworkManager/system-connections/*")
# libnm NMMptcpFlags
_NM_FLAGS = {"none": 0, "disabled": 0x1, "enabled": 0x2, "also-without-sysctl": 0x4,
             "also-without-default-route": 0x8, "signal": 0x10, "subflow": 0x20, "backup": 0x40,
             "fullmesh": 0x80}
NM_MPTCP_DISABLED = 0x1


@dataclass(frozen=True)
class OtherManager:
    name: str          # "mptcpd", "NetworkManager", "userspace path manager"
    pid: int | None
    why: str           # one line: what manages endpoints here

    def line(self) -> str:
        return f"{self.why}: mptcpize-py manages no endpoint here"


def read_path_manager() -> str | None:
    """net.mptcp.path_manager (Linux >= 6.15: "kernel"/"userspace"), else net.mptcp.pm_type
    (5.19+: 0 in-kernel, 1 userspace); None before 5.19 (in-kernel only). The calling thread's
    namespace."""
    pm = read_sysctl("net.mptcp.path_manager")
    if pm:
        return pm
    return {"0": "kernel", "1": "userspace"}.get(read_sysctl("net.mptcp.pm_type") or "", None)


def processes() -> list[tuple[int, str, int | None]]:
    """The candidates on this machine, once per pass over the namespaces."""
    return procfs.processes_named(NAMES)


def other_manager(inum: int | None, procs: list[tuple[int, str, int | None]], path_manager: str | None,
                  root: str = "/") -> tuple[OtherManager | None, str | None]:
    """(who manages endpoints in the namespace `inum` instead of us, or None; a note worth showing
    even so, or None)."""
    if path_manager == "userspace":
        return OtherManager("userspace path manager", None,
                            "net.mptcp.path_manager is 'userspace' (the kernel ignores endpoints here; a "
                            "userspace path manager such as mptcpd opens the subflows)"), None
    note = None
    for pid, name, ns in procs:
        if ns is None:   # its namespace is hidden from us (no CAP_SYS_PTRACE): it may be this one
            where = "in a network namespace this process may not see (it may be this one)"
        elif ns != inum:
            continue
        else:
            where = "in this namespace"
        if name == "mptcpd":
            return OtherManager("mptcpd", pid, f"mptcpd (pid {pid}) manages MPTCP endpoints {where}"), None
        if name == "NetworkManager":
            off = network_manager_mptcp_off(root)
            if off is None:
                return OtherManager("NetworkManager", pid,
                                    f"NetworkManager (pid {pid}) runs {where} and manages MPTCP "
                                    "endpoints (connection.mptcp-flags)"), None
            note = f"NetworkManager (pid {pid}) runs here with MPTCP off ({off})"
    return None, note


def _nm_flags(value: str) -> int | None:
    value = value.strip()
    try:
        return int(value, 0)
    except ValueError:
        pass
    total = 0
    for word in value.replace("|", ",").replace(" ", ",").split(","):
        if word:
            if word not in _NM_FLAGS:
                return None
            total |= _NM_FLAGS[word]
    return total


class _KeyFile(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr   # keys are case-sensitive in GKeyFile


def _read_ini(path: str) -> configparser.ConfigParser | None:
    cp = _KeyFile(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return cp


def network_manager_mptcp_off(root: str = "/") -> str | None:
    """Where NetworkManager's configuration turns its MPTCP handling off everywhere ("connection.mptcp-
    flags=0x1 in FILE"), or None: it may manage endpoints (the default, "enabled,subflow" when
    net.mptcp.enabled=1; or a file or profile we cannot read)."""
    default, where = 0, None
    for pattern in NM_CONF:   # NetworkManager.conf, then conf.d by directory order: later ones win
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            cp = _read_ini(path)
            if cp is None:
                return None
            for section in cp.sections():
                if section != "connection" and not section.startswith("connection-"):
                    continue
                value = cp[section].get("connection.mptcp-flags")
                if value is None:
                    continue
                flags = _nm_flags(value)
                if flags is None:
                    return None
                if section != "connection" and flags and not flags & NM_MPTCP_DISABLED:
                    return None   # a per-device default that enables it somewhere
                if section == "connection":
                    default, where = flags, path
    if not default & NM_MPTCP_DISABLED:
        return None
    for pattern in NM_PROFILES:
        for path in glob.glob(os.path.join(root, pattern)):
            cp = _read_ini(path)
            if cp is None:
                return None
            value = cp["connection"].get("mptcp-flags") if cp.has_section("connection") else None
            if value is not None:
                flags = _nm_flags(value)
                if flags is None or (flags and not flags & NM_MPTCP_DISABLED):
                    return None
    return f"connection.mptcp-flags={default:#x} in {where}"
