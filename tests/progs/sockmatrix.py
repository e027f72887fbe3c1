"""Creates one socket per case with libc's socket() (exact arguments, no implicit flags) and prints, as
JSON, what the kernel reports for each: SO_PROTOCOL, O_NONBLOCK, FD_CLOEXEC, or the errno."""

import ctypes
import fcntl
import json
import os
import socket
import sys

SOCK_NONBLOCK, SOCK_CLOEXEC = socket.SOCK_NONBLOCK, socket.SOCK_CLOEXEC
INET, INET6, UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
STREAM, DGRAM, RAW = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW

# name -> (family, type, protocol, should be upgraded)
CASES = {}
for fam_name, fam in (("inet", INET), ("inet6", INET6)):
    for flag_name, flags in (("", 0), ("+nonblock", SOCK_NONBLOCK), ("+cloexec", SOCK_CLOEXEC),
                             ("+nonblock+cloexec", SOCK_NONBLOCK | SOCK_CLOEXEC)):
        for proto in (0, 6):
            CASES[f"{fam_name}-stream{flag_name}-proto{proto}"] = (fam, STREAM | flags, proto, True)
    CASES[f"{fam_name}-dgram-proto0"] = (fam, DGRAM, 0, False)
    CASES[f"{fam_name}-dgram-proto17"] = (fam, DGRAM, 17, False)
    CASES[f"{fam_name}-raw-proto6"] = (fam, RAW, 6, False)
    CASES[f"{fam_name}-stream-proto262"] = (fam, STREAM, 262, False)
CASES["unix-stream-proto0"] = (UNIX, STREAM, 0, False)
CASES["unix-dgram-proto0"] = (UNIX, DGRAM, 0, False)

libc = ctypes.CDLL(None, use_errno=True)


def probe(family: int, type_: int, proto: int) -> dict:
    fd = libc.socket(family, type_, proto)
    if fd < 0:
        return {"errno": ctypes.get_errno()}
    try:
        s = socket.socket(fileno=os.dup(fd))
        try:
            protocol = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        finally:
            s.close()
        return {"protocol": protocol,
                "nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
                "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}
    finally:
        os.close(fd)


if __name__ == "__main__":
    json.dump({name: probe(f, t, p) for name, (f, t, p, _up) in CASES.items()}, sys.stdout)
    print()


def mismatches(baseline: dict, result: dict, upgraded: bool = True) -> list[str]:
    """What differs from expectations between a plain run (baseline) and a run under mptcpize:
    upgradable cases must go from 6 to 262 (or stay 6 when `upgraded` is False) with the same flags;
    every other case must be exactly as in the plain run. Empty list = all good."""
    problems = []
    for name, (_f, _t, _p, upgradable) in CASES.items():
        base, got = baseline[name], result[name]
        if upgradable:
            want = dict(base, protocol=262 if upgraded else 6)
            if base.get("protocol") != 6:
                problems.append(f"{name}: plain run gave {base}, expected TCP (6)")
        else:
            want = base
        if got != want:
            problems.append(f"{name}: got {got}, want {want}")
    return problems
