"""The Debian package's sources (debian/) agree with the code they package: one version, the units run
the installed command, `make install-units` points the same units at a venv, and the purge script
removes exactly what `enable` writes (it reads the same markers). The package itself is built by
`make deb` and installed, removed and purged under systemd in tests/systemd/test_package.py."""

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from mptcpize_py import __version__, enable
from tests.conftest import REPO

DEBIAN = REPO / "debian"
UNITS = ("mptcpize-py.service",)
SERVICES = [u for u in UNITS if u.endswith(".service")]


def unit_lines(text: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]


def test_one_version():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.fullmatch(r"mptcpize-py \(([^)]+)\) \S+; urgency=\S+", changelog)
    assert m, changelog
    # A native package: the .deb is mptcpize-py_<pyproject version>_<arch>.deb.
    assert m.group(1) == pyproject == __version__


def field(text: str, name: str) -> set[str]:
    m = re.search(rf"^{name}:(.*?)^\S", text + "\nEnd:", re.S | re.M)
    return {d.strip().split()[0] for d in m.group(1).split(",") if d.strip()} if m else set()


def test_depends_only_on_debian_packages_of_what_the_code_imports():
    control = (DEBIAN / "control").read_text()
    source, binary = control.split("\nPackage: mptcpize-py\n", 1)
    names = field(binary, "Depends")
    # The prebuilt program is loaded with libbpf (ctypes: no shared-library dependency is computed).
    assert {"libbpf1", "python3-pyroute2", "python3-psutil", "python3-systemd",
            "${python3:Depends}"} <= names
    # No compiler, no LLVM, no bcc, no kernel headers where it runs: bcc is a suggestion.
    assert not {n for n in names | field(binary, "Recommends")
                if re.search(r"bpfcc|clang|llvm|linux-headers", n)}
    assert "python3-bpfcc" in field(binary, "Suggests")
    # python3's version comes with ${python3:Depends}, from X-Python3-Version (a python3 (>= 3.11)
    # beside it would be redundant).
    assert "python3" not in names and re.search(r"^X-Python3-Version: >= 3.11$", source, re.M)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    assert {"clang", "llvm", "libbpf-dev", "bpftool"} <= field(source, "Build-Depends")
    assert re.search(r"^Rules-Requires-Root: no$", source, re.M)
    # any: the seccomp backend's preloaded shim is a shared library (shlibs: libc)
    assert re.search(r"^Architecture: any$", binary, re.M) and "${shlibs:Depends}" in names


@pytest.mark.parametrize("unit", SERVICES)
def test_units_run_the_installed_command(unit):
    text = (REPO / "systemd" / unit).read_text()
    starts = unit_lines(text, "ExecStart")
    assert starts and all(s.startswith("/usr/bin/mptcpize-py ") for s in starts), starts
    assert "/opt/" not in "".join(unit_lines(text, "ExecStart") + unit_lines(text, "ExecStartPre"))


def test_a_kernel_without_the_hook_is_not_restarted():
    text = (REPO / "systemd" / "mptcpize-py.service").read_text()
    assert unit_lines(text, "Restart") == ["on-failure"]
    assert "69" in unit_lines(text, "RestartPreventExitStatus")[0].split()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_install_units_points_the_same_units_at_a_venv(tmp_path):
    venv = "/srv/mz-venv"
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "install-units", f"DESTDIR={tmp_path}",
                           f"VENV={venv}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for unit in UNITS:
        installed = (tmp_path / "etc/systemd/system" / unit).read_text()
        shipped = (REPO / "systemd" / unit).read_text()
        assert installed == shipped.replace("/usr/bin/mptcpize-py", f"{venv}/bin/mptcpize-py")
        assert stat.S_IMODE((tmp_path / "etc/systemd/system" / unit).stat().st_mode) == 0o644
    assert (tmp_path / "etc/mptcpize-py/policy.d").is_dir()
    assert sorted(os.listdir(tmp_path / "etc/systemd/system")) == sorted(UNITS)   # no temporary file


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), p.read_bytes() if p.is_file() else None)
    return out


def purge(root: Path) -> subprocess.CompletedProcess:
    """debian/postrm purge against `root` (DPKG_ROOT, as `dpkg --root` runs it), after dpkg removed the
    package's conffile, as it does before running postrm purge."""
    (root / "etc/mptcpize-py/policy.d/example.toml.sample").unlink(missing_ok=True)
    return subprocess.run(["sh", str(DEBIAN / "postrm"), "purge"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "DPKG_ROOT": str(root)})


@pytest.fixture
def root(tmp_path):
    """/etc before installation: a vendor-ish systemd directory (an enabled unit's link, an admin's
    drop-in)."""
    sd = tmp_path / "etc/systemd/system"
    (sd / "multi-user.target.wants").mkdir(parents=True)
    os.symlink("/lib/systemd/system/ssh.service", sd / "multi-user.target.wants/ssh.service")
    (sd / "other.service.d").mkdir()
    (sd / "other.service.d/override.conf").write_text("[Service]\nEnvironment=A=1\n")
    return tmp_path


def install(root: Path) -> None:
    """What the package puts in /etc."""
    (root / "etc/mptcpize-py/policy.d").mkdir(parents=True)
    (root / "etc/mptcpize-py/policy.d/example.toml.sample").write_text("# example\n")


def test_purge_removes_what_enable_wrote(root):
    before = snapshot(root)
    install(root)
    tree = enable.Tree(root)
    for unit in ("nginx.service", "other.service", "getty@tty1.service"):
        enable.write_files(unit, "/usr/bin/mptcpize-py", tree)
    proc = purge(root)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(root) == before


def test_purge_keeps_what_is_not_enables(root):
    install(root)
    tree = enable.Tree(root)
    enable.write_files("nginx.service", "/usr/bin/mptcpize-py", tree)
    admin = {
        "etc/mptcpize-py/policy.d/my.toml": '[[allow]]\nexe = "/usr/bin/iperf3"\n',
        # enable's file names, but not its marker: someone else's
        "etc/mptcpize-py/policy.d/unit-web.service.toml": "[[allow]]\nunit = 'web.service'\n",
        "etc/systemd/system/web.service.d/mptcpize-py.conf": "[Service]\nExecStartPre=/bin/true\n",
        # a file of the admin's in a drop-in directory enable created
        "etc/systemd/system/nginx.service.d/override.conf": "[Service]\nNice=5\n",
    }
    for rel, text in admin.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = purge(root)
    assert proc.returncode == 0, proc.stderr
    for rel, text in admin.items():
        assert (root / rel).read_text() == text, rel
    assert not tree.dropin("nginx.service").exists() and not tree.policy("nginx.service").exists()


def test_purge_reads_enables_markers():
    text = (DEBIAN / "postrm").read_text()
    assert f"MARKER='{enable.MARKER}'" in text
    assert f"CREATED={enable.CREATED_MARKER}" in text
    assert enable.DROPIN_NAME == "mptcpize-py.conf" and "/*.d/mptcpize-py.conf" in text
    assert enable.policy_file_name("x.service") == "unit-x.service.toml" and "/unit-*.toml" in text


def test_every_module_is_in_a_packaged_package():
    """What setuptools packages (pyproject's find rule) covers every directory of Python code under
    mptcpize_py/: a package left out installs fine and fails only at import, on the user's machine."""
    from setuptools import find_packages
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = set(find_packages(where=str(REPO), include=find["include"]))
    code_dirs = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mptcpize_py").rglob("*.py")
                 if "bpf" not in p.relative_to(REPO).parts}
    assert code_dirs and code_dirs <= packaged, sorted(code_dirs - packaged)
