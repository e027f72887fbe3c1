"""The Debian package on a machine with no bcc, no compiler, no LLVM tools and no kernel headers, as on
many node OSes: apt purges all of those (and whatever depends on them) from the VM's throwaway root,
then installs the package as a user does, and systemd starts its daemon, which upgrades the process its
policy selects with the object the package ships, loaded by libbpf, and maps no LLVM library. (LLVM's
shared libraries stay where other packages need them, e.g. Mesa: they are no compiler, and purging
them would take ~60 unrelated packages with them.)

Runs after test_package.py (conftest.py orders it), whose purge leaves the package uninstalled: this
module installs it again, in the stripped root. Run by `make test-systemd` (scripts/vm-systemd.sh)."""

import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemd import installed
from tests.systemd.conftest import deb_path
from tests.systemd.installed import PATH, mptcpize, run, user_env

SERVICE = "mptcpize-py.service"
TEST_DIR = Path("/run/mzb-test")   # seen by the daemon (its unit has PrivateTmp=)
POLICY = Path("/etc/mptcpize-py/policy.d/50-mzb.toml")
# bcc (and libbcc, its compiler half), C compilers, clang, LLVM's tools, kernel headers.
STRIP = re.compile(r"(python3-bpfcc|bpfcc-tools|libbpfcc(-dev)?|clang(-[0-9]+)?|llvm(-[0-9]+)?"
                   r"(-dev|-runtime|-linker-tools|-tools)?|gcc(-[0-9]+)?|g\+\+(-[0-9]+)?"
                   r"|cpp(-[0-9]+)?|tcc|linux-headers-.*|linux-kbuild-.*)")
COMPILERS = ("clang", "gcc", "cc", "c++", "cpp", "tcc", "llc", "llvm-strip")
LIB_DIR = "/usr/lib/x86_64-linux-gnu"


def installed_packages() -> set[str]:
    out = run("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\\n").stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("ii")}


class Bare:
    install_output: str
    stripped: list[str]
    selected: str
    other: str


@pytest.fixture(scope="module")
def bare(systemd_and_bpf, static_rawsock):
    """The root stripped of bcc, compilers, LLVM and headers, the package installed, its daemon
    started by systemd with a policy that selects one executable. static_rawsock is built first
    (with gcc, while there is one)."""
    if installed.dpkg_status() is not None:
        pytest.fail(f"mptcpize-py is already installed here ({installed.dpkg_status()}): this module "
                    "installs it into a root without compilers (it runs after test_package.py's purge)")
    b = Bare()
    TEST_DIR.mkdir(exist_ok=True)
    b.selected, b.other = str(TEST_DIR / "rawsock-selected"), str(TEST_DIR / "rawsock-other")
    for path in (b.selected, b.other):
        shutil.copy2(static_rawsock, path)
    b.stripped = sorted(p for p in installed_packages() if STRIP.fullmatch(p))
    assert "python3-bpfcc" in b.stripped and any(p.startswith("linux-headers-") for p in b.stripped), \
        f"nothing to strip, the test would prove nothing: {b.stripped}"
    # Debian's switch for man-db's trigger (its debconf man-db/auto-update): rebuilding the index of
    # every man page over 9p under TCG is slow, and the index is not what this module tests.
    Path("/var/lib/man-db/auto-update").unlink(missing_ok=True)
    # The headers' 17,000 files are most of what the purge would unlink, one by one on the 9p-backed
    # overlay under TCG (the fixture took 23 minutes so). An empty tmpfs over /usr/src first: dpkg
    # then finds them gone (and forgets them as it purges), and no process in this throwaway root
    # sees them.
    run("mount", "-t", "tmpfs", "-o", "mode=0755", "mptcpize-no-headers", "/usr/src")
    # purge: with every package that depends on them (apt lists them), so dpkg's state stays
    # consistent and apt installs the package below as on a machine that never had them.
    run("apt-get", "purge", "-y", *b.stripped, timeout=450, env=user_env(DEBIAN_FRONTEND="noninteractive"))
    deb = deb_path()
    proc = run("apt-get", "install", "-y", "--no-install-recommends", f"./{deb.name}", cwd=deb.parent,
               timeout=300, env=user_env(DEBIAN_FRONTEND="noninteractive"))
    b.install_output = proc.stdout + proc.stderr
    POLICY.write_text(f'[[allow]]\nexe = "{b.selected}"\n')
    os.chmod(POLICY, 0o644)
    started = run("systemctl", "start", SERVICE, check=False, timeout=300)
    if started.returncode != 0:
        pytest.fail(f"{SERVICE} did not start: {started.stderr}\n"
                    + run("journalctl", "-q", "--no-pager", "-u", SERVICE, check=False).stdout)
    yield b
    run("systemctl", "stop", SERVICE, check=False)
    POLICY.unlink(missing_ok=True)


def test_bcc_compilers_llvm_and_headers_are_absent(bare):
    for pkg in ("python3-bpfcc", "libbpfcc", "clang", "gcc", "llvm"):
        assert subprocess.run(["dpkg", "-s", pkg], capture_output=True).returncode != 0, pkg
    assert [c for c in COMPILERS if shutil.which(c, path=PATH)] == []
    assert glob.glob("/usr/src/linux-headers-*") + glob.glob("/usr/src/linux-kbuild-*") == []
    assert not os.path.lexists(f"/lib/modules/{os.uname().release}/build")
    assert glob.glob(f"{LIB_DIR}/libbcc.so*") == []
    bcc = run("/usr/bin/python3", "-I", "-c", "import bcc", check=False, cwd="/")
    assert "ModuleNotFoundError" in bcc.stderr, bcc.stderr


def test_apt_installed_the_package_and_nothing_else(bare):
    assert installed.dpkg_status() is not None and installed.dpkg_status().startswith("install ok installed")
    assert "0 upgraded, 1 newly installed, 0 to remove" in bare.install_output, bare.install_output


def test_the_daemon_upgrades_the_selected_process_only(bare):
    assert run(bare.selected).stdout.strip() == "262"
    assert run(bare.other).stdout.strip() == "6"
    pid = installed.show(SERVICE, "MainPID")["MainPID"]
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert pid != "0" and not re.search(r"libLLVM|libclang|libbcc", maps), maps


def test_status_names_the_libbpf_loader(bare):
    st = json.loads(mptcpize("status", "--json").stdout)
    assert (st["backend"], st["loader"]) == ("bpf", "libbpf"), st
    text = mptcpize("status")
    assert text.returncode == 0 and "loaded by libbpf" in text.stdout, text.stdout
    journal = run("journalctl", "-q", "--no-pager", "-o", "cat", "-u", SERVICE).stdout
    assert "program loaded by libbpf" in journal, journal
