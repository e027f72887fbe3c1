"""The systemd tier: tests that need systemd as PID 1 and change /etc and systemd's state. They run only
inside scripts/vm-systemd.sh (a throwaway VM whose runner unit sets MPTCPIZE_THROWAWAY_SYSTEMD=1), never
on a developer's machine, where they would install units and restart services for real.

They test what users install: the Debian package `make deb` built from this checkout
(MPTCPIZE_DEB, default build/mptcpize-py_VERSION_ARCH.deb), installed once per session with apt in the
VM's throwaway /usr, /etc and /var. systemd runs /usr/bin/mptcpize-py from its units under
/lib/systemd/system, and the tests run that same command (installed.mptcpize()), never the checkout's
code, so the units' ProtectHome=/ProtectSystem= apply as they do for users. test_package.py (install,
remove, purge) runs after the others: it uninstalls the package; then test_no_compiler.py purges bcc,
compilers, LLVM and headers from the throwaway root and installs the package again."""

import os
import subprocess
from pathlib import Path

import pytest

from mptcpize_py import __version__
from mptcpize_py.program.support import kernel_support
from tests.conftest import REPO
from tests.systemd import installed
from tests.waiting import scaled


def _deb_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()

THROWAWAY = os.environ.get("MPTCPIZE_THROWAWAY_SYSTEMD") == "1"
# In this order, after all others: test_package.py ends the package's life cycle with apt purge;
# test_no_compiler.py then strips bcc, compilers and headers from the root and installs it again.
LAST = ("test_package.py", "test_no_compiler.py")


def pytest_collection_modifyitems(config, items):
    # The package's life cycle ends with apt purge: every other test needs it installed.
    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return LAST.index(name) + 1 if "/tests/systemd/" in str(item.fspath) and name in LAST else 0
    items.sort(key=rank)
    if THROWAWAY:
        return
    skip = pytest.mark.skip(reason="changes /etc and systemd's state: runs only in scripts/vm-systemd.sh "
                                   "(make test-systemd)")
    for item in items:
        if "/tests/systemd/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def systemd_and_bpf():
    """systemd is PID 1 and the daemon's BPF path works (else fail under MPTCPIZE_REQUIRE_BPF=1)."""
    reason = None
    if not os.path.isdir("/run/systemd/system"):
        reason = "systemd is not PID 1"
    else:
        # In-process: `mptcpize-py check` compiles with bcc (~40 s under TCG).
        failed = [f"{c.name}: {c.detail}" for c in kernel_support().problems]
        if failed:
            reason = "BPF path unusable: " + "; ".join(failed)
    if reason:
        if os.environ.get("MPTCPIZE_REQUIRE_BPF") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def deb_path() -> Path:
    given = os.environ.get("MPTCPIZE_DEB")
    deb = Path(given) if given else REPO / "build" / f"mptcpize-py_{__version__}_{_deb_arch()}.deb"
    if not deb.is_file():
        pytest.fail(f"no Debian package at {deb}: run `make deb` first (make test-systemd does)")
    return deb


class Package:
    """The installed package, and what installing it did."""
    deb: Path
    install_output: str
    units_after_install: dict[str, dict[str, str]]   # unit -> UnitFileState, ActiveState


@pytest.fixture(scope="session")
def etc_before_install() -> dict:
    """/etc as it was before the package was installed (taken before the session installs it)."""
    return installed.etc_snapshot()


@pytest.fixture(scope="session")
def package(systemd_and_bpf, etc_before_install) -> Package:
    p = Package()
    p.deb = deb_path()
    if installed.dpkg_status() is not None:
        pytest.fail(f"mptcpize-py is already installed here ({installed.dpkg_status()}): the tier needs "
                    "a machine without it")
    # As a user does (README "Install"), minus the Recommends (kernel headers): the VM has no network,
    # and bcc here compiles against the VM kernel's own headers.
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", f"./{p.deb.name}"],
                          cwd=p.deb.parent, capture_output=True, text=True, timeout=scaled(300),
                          env=installed.user_env(DEBIAN_FRONTEND="noninteractive"))
    if proc.returncode != 0:
        pytest.fail(f"apt-get install ./{p.deb.name} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    p.install_output = proc.stdout + proc.stderr
    p.units_after_install = {u: installed.show(u, "UnitFileState", "ActiveState") for u in installed.UNITS}
    return p
