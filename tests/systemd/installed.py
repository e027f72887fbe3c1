"""The installed mptcpize-py, as users run it: /usr/bin/mptcpize-py from the Debian package (Debian's
python3 and its dist-packages), with a root shell's environment: nothing from this checkout or its
venv. And the views of the system the systemd tier compares: systemctl properties, /etc."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.waiting import scaled

MPTCPIZE = "/usr/bin/mptcpize-py"
SERVICE = "mptcpize-py.service"
UNITS = (SERVICE,)   # the daemon writes its metrics itself: no other unit
UNIT_DIR = Path("/usr/lib/systemd/system")   # where Debian 13 keeps units (debian/rules)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def user_env(**extra: str) -> dict[str, str]:
    """A root login's environment: no PYTHONPATH, no venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=PATH, **extra)
    return env


def mptcpize(*args, **kw) -> subprocess.CompletedProcess:
    """Runs the installed command (text mode, output captured)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", scaled(120))
    kw.setdefault("cwd", "/")
    kw["env"] = user_env(**kw.pop("env", {}))
    return subprocess.run([MPTCPIZE, *args], **kw)


def run(*argv, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", user_env())
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=scaled(timeout), **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def show(unit: str, *props: str) -> dict[str, str]:
    out = run("systemctl", "show", *(f"--property={p}" for p in props), "--", unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def dpkg_status() -> str | None:
    """dpkg's status of the package ("install ok installed 0.1.0"), None when dpkg does not know it."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "mptcpize-py"],
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 and "not-installed" not in proc.stdout else None


def etc_snapshot(exact: bool = False) -> dict:
    """Every path under /etc: type, mode and owner, a link's target; a file's content too where the
    package, enable and systemctl write (/etc/systemd, /etc/mptcpize-py: reading all of /etc over 9p
    would cost ~15 s). `exact`: a file's size, inode and mtime too, so that any write shows (enable
    and disable must not even rewrite a file; a package's install and purge may)."""
    out: dict = {}
    for dirpath, dirnames, filenames in os.walk("/etc"):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                content = Path(p).read_bytes() if p.startswith(("/etc/systemd/", "/etc/mptcpize-py/")) \
                    else None
                written = (st.st_size, st.st_ino, st.st_mtime_ns) if exact else ()
                out[p] = ("file", st.st_mode, st.st_uid, st.st_gid, *written, content)
            else:
                out[p] = ("other", st.st_mode, st.st_uid, st.st_gid)
    return out


def diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
