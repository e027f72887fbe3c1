"""Builds the seccomp backend's preloaded shim (shim/mptcpize-shim.c) into the package, as
mptcpize_py/lib/libmptcpize-shim.so, with the rest from pyproject.toml. A checkout builds it with
`make shim` (scripts/setup.sh does); without it the seccomp backend answers every socket() itself."""

import os
import shlex
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "shim" / "mptcpize-shim.c"
TARGET = Path("mptcpize_py") / "lib" / "libmptcpize-shim.so"
# Hardened as Debian builds its C (dpkg-buildflags): CFLAGS/LDFLAGS from the environment come first.
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-fPIC", "-shared", "-fstack-protector-strong",
          "-D_FORTIFY_SOURCE=2", "-Wl,-z,relro,-z,now"]


class BuildShim(build_py):
    def run(self) -> None:
        super().run()
        root = HERE if getattr(self, "editable_mode", False) else Path(self.build_lib)
        out = root / TARGET
        out.parent.mkdir(parents=True, exist_ok=True)
        cc = shlex.split(os.environ.get("CC", "cc"))
        flags = shlex.split(os.environ.get("CFLAGS", "")) + CFLAGS + \
            shlex.split(os.environ.get("LDFLAGS", ""))
        subprocess.run([*cc, *flags, "-o", str(out), str(SOURCE), "-lpthread"], check=True)


class BinaryDistribution(Distribution):
    """A wheel with a shared library: tagged for the platform it was built on."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildShim}, distclass=BinaryDistribution)
