"""Kernel symbol addresses from /proc/kallsyms (zeros when kptr_restrict hides them)."""

from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")


def kallsyms_address(text: str, symbol: str) -> int | None:
    """Address of `symbol` in /proc/kallsyms text; None when absent or hidden (kptr_restrict: zeros)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == symbol:
            addr = int(parts[0], 16)
            return addr or None
    return None


def read_kallsyms_address(symbol: str) -> int | None:
    try:
        return kallsyms_address(KALLSYMS.read_text(), symbol)
    except OSError:
        return None
