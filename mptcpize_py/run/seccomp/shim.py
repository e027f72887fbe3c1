"""The preloaded shim (shim/mptcpize-shim.c, shipped as mptcpize_py/lib/libmptcpize-shim.so): where it
is, and the shared counters through which it reports its upgrades to the supervisor."""

import errno
import mmap
import os
import secrets
import struct
import sysconfig
from pathlib import Path

# Shared with shim/mptcpize-shim.c.
SHIM_REGISTER = 0x6D707472   # socket()'s 4th argument: "register", the slot in the 5th
SHIM_PASS = 0x6D707470       # socket()'s 4th argument: the caller's own TCP socket, not notified
SHIM_GO = errno.EALREADY     # answers to SHIM_REGISTER
SHIM_STAND_ASIDE = errno.EXDEV
ENV = "MPTCPIZE_SHIM"
_HEADER = struct.Struct("<QII48x")   # token, nslots, next
_SLOT = struct.Struct("<QQ")         # upgraded, fallback
SLOTS = 65536                        # processes that can register; the file is sparse (1 MiB at most)

NAME = "libmptcpize-shim.so"
# Beside the modules (a checkout, a wheel), or where the Debian package keeps its private libraries.
PLACES = (Path(__file__).resolve().parents[2] / "lib",
          Path("/usr/lib") / (sysconfig.get_config_var("MULTIARCH") or "") / "mptcpize-py")


def library() -> str | None:
    """The shim's path when it was built and LD_PRELOAD can name it (the dynamic loader splits that
    list at spaces and colons)."""
    for place in PLACES:
        path = str(place / NAME)
        if os.path.isfile(path):
            return None if any(c in path for c in " :\t\n") else path
    return None


class Counters:
    """The memfd the shim counts in: made here, inherited by CMD (its fd number and token in ENV)."""

    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        self.fd = os.memfd_create("mptcpize-shim", os.MFD_CLOEXEC)
        size = _HEADER.size + slots * _SLOT.size
        os.ftruncate(self.fd, size)
        self.token = secrets.randbits(64)
        self._map = mmap.mmap(self.fd, size)
        _HEADER.pack_into(self._map, 0, self.token, slots, 0)

    def env_value(self) -> str:
        return f"{self.fd}:{self.token:x}"

    def read(self, slot: int) -> tuple[int, int]:
        """(upgraded, fallback) of a slot, as the program wrote them."""
        if not 0 <= slot < self.slots:
            return 0, 0
        return _SLOT.unpack_from(self._map, _HEADER.size + slot * _SLOT.size)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
