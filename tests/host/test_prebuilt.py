"""The two loaders of one source, natively with the dry-run build (this host's kernel refuses the
fmod_ret hook; tests/vm/test_prebuilt.py loads the real one): the prebuilt CO-RE object loaded with
libbpf counts what bcc's compile of the same source counts, in-process, with no child and no LLVM;
it needs no kernel headers where bcc does; a shipped object that cannot load is one error line that
names the bcc alternative."""

import json
import os
import shutil
import subprocess

import pytest

from mptcpize_py.program import prebuilt
from tests.conftest import CHECKOUT_PYTHON, CLI, cli_env, is_root
from tests.waiting import scaled

pytestmark = [pytest.mark.skipif(not is_root(), reason="loading BPF programs needs root"),
              pytest.mark.skipif(not prebuilt.DRY_RUN_OBJECT.is_file(),
                                 reason="no prebuilt object: `make bpf` builds it")]

HOLDER = """
import json, os, re, socket, sys
from mptcpize_py.program.rewriter import Rewriter
rw = Rewriter(all_netns=False, dry_run=True, loader=sys.argv[1])
rw.set_netns_mptcp({os.stat("/proc/self/ns/net").st_ino: True})
rw.add_run_root(os.getpid())
events = []
rw.open_events(events.append)
socket.socket().close()
socket.socket(socket.AF_INET6).close()
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
rw.poll_events(1000)
maps = open("/proc/self/maps").read()
print(json.dumps({"loader": rw.loader, "upgraded": rw.counters()["upgraded"],
                  "events": [e.tgid for e in events], "pid": os.getpid(),
                  "compiler": sorted(set(re.findall(r"\\S*(?:LLVM|clang|libbcc\\.so)\\S*", maps, re.I))),
                  "maps": sorted(n.split(":", 1)[1] for n in rw.held() if n.startswith("map:"))}))
rw.close()
"""


def hold(loader: str, *prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *CHECKOUT_PYTHON, "-c", HOLDER, loader], capture_output=True,
                          text=True, env=cli_env(), timeout=scaled(120))


@pytest.mark.parametrize("loader", ["libbpf", "bcc"])
def test_both_loaders_count_the_same_sockets(loader):
    out = hold(loader)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["loader"] == loader
    assert r["upgraded"] == 2          # the two TCP sockets, not the UDP one
    assert r["events"] == [r["pid"]]   # one event: the process's first upgrade
    assert r["compiler"] == []         # bcc compiled in a child that has exited; libbpf needs none
    assert len(r["maps"]) == 12


def test_a_libbpf_load_reads_kernel_btf_once_and_no_kallsyms(tmp_path):
    """The netns guard's facts are found in the kernel (find_netns_guard): the only reader of the
    kernel's BTF is libbpf's relocation, and nothing reads /proc/kallsyms (a Python parse of both took
    most of a start)."""
    trace = tmp_path / "openat"
    out = hold("libbpf", "strace", "-f", "-qq", "-e", "trace=openat,open", "-o", str(trace))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["upgraded"] == 2
    opened = [line.split('"')[1] for line in trace.read_text().splitlines() if '"' in line]
    assert opened.count("/sys/kernel/btf/vmlinux") == 1
    assert "/proc/kallsyms" not in opened


# A daemon start (dry run, libbpf), in a process of its own: the modules it imported.
DAEMON_START = """
import sys
from pathlib import Path
before = set(sys.modules)
from mptcpize_py.daemon import service
service.start(Path(sys.argv[1]), Path(sys.argv[2]), dry_run=True, serve=False).close()
print(" ".join(sorted(set(sys.modules) - before)))
"""
# What a start that works does not need: the Python BTF and kallsyms readers (`check`, and the error
# path of a load that failed), the HTTP server (only with --metrics-listen) and what it pulls in.
NOT_AT_START = {"mptcpize_py.program.btf", "mptcpize_py.program.kallsyms", "mptcpize_py.program.support",
                "mptcpize_py.daemon.http", "http.server", "ssl"}


def test_a_daemon_start_imports_neither_the_btf_reader_nor_the_http_server(tmp_path):
    os.chmod(tmp_path, 0o755)
    policy = tmp_path / "policy.d"
    policy.mkdir(mode=0o755)
    (policy / "10.toml").write_text('[[allow]]\nexe = "/usr/bin/true"\n')
    out = subprocess.run([*CHECKOUT_PYTHON, "-c", DAEMON_START, str(policy), str(tmp_path / "control")],
                         capture_output=True, text=True, env=cli_env(), timeout=scaled(120))
    assert out.returncode == 0, out.stderr
    imported = set(out.stdout.split())
    assert "mptcpize_py.program.prebuilt" in imported   # it did load with libbpf
    assert imported & NOT_AT_START == set()


# A private mount namespace with an empty tmpfs over /usr/src (where this host's only headers are)
# and the running kernel's build directory when it exists.
HIDE_HEADERS = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'for d in "$1" "$2"; do if [ -d "$d" ]; then mount -t tmpfs -o ro,size=4k none "$d" '
                '|| exit 125; fi; done; shift 2; exec "$@"', "hide-headers", "/usr/src",
                f"/lib/modules/{os.uname().release}/build")


def test_libbpf_needs_no_kernel_headers_where_bcc_cannot_compile():
    with_libbpf = hold("libbpf", *HIDE_HEADERS)
    assert with_libbpf.returncode == 0, with_libbpf.stderr
    assert json.loads(with_libbpf.stdout)["upgraded"] == 2
    with_bcc = hold("bcc", *HIDE_HEADERS)
    assert with_bcc.returncode != 0
    assert "bcc has nothing to compile against: no kernel headers" in with_bcc.stderr


@pytest.fixture()
def broken_object_checkout(tmp_path):
    """A copy of the package whose dry-run object is cut short (as a bad download or disk would)."""
    shutil.copytree(prebuilt.OBJECT.parents[1], tmp_path / "mptcpize_py", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    obj = tmp_path / "mptcpize_py" / "bpf" / prebuilt.DRY_RUN_OBJECT.name
    obj.write_bytes(obj.read_bytes()[:4096])
    return tmp_path


def test_an_object_that_cannot_load_is_one_error_line_naming_bcc(broken_object_checkout, tmp_path):
    (tmp_path / "policy.d").mkdir()
    env = dict(os.environ, PYTHONPATH=str(broken_object_checkout),
               MPTCPIZE_CONTROL=str(tmp_path / "control"))
    out = subprocess.run([*CLI, "daemon", "--dry-run", "--no-metrics", "--policy-dir",
                          str(tmp_path / "policy.d")], capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL, timeout=scaled(120))
    assert out.returncode == 69, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith(("mptcpize-py: error:", "mptcpize-py: hint:"))]
    assert lines[0].startswith("mptcpize-py: error: cannot load the prebuilt program "), out.stderr
    assert lines[1].startswith("mptcpize-py: hint: the bcc loader compiles the program at start-up "
                               "instead: --loader bcc"), out.stderr
    assert len(lines) == 2 and "Traceback" not in out.stderr


def test_check_and_the_daemon_say_which_loader(tmp_path):
    check = subprocess.run([*CLI, "check", "--json"], capture_output=True, text=True, env=cli_env(),
                           timeout=scaled(120))
    rep = json.loads(check.stdout)
    assert rep["loader"] == "libbpf"
    assert any(c["name"] == "prebuilt program" and c["status"] == "ok" for c in rep["checks"])
    bcc = json.loads(subprocess.run([*CLI, "check", "--json", "--loader", "bcc"], capture_output=True,
                                    text=True, env=cli_env(), timeout=scaled(120)).stdout)
    assert bcc["loader"] == "bcc" and any(c["name"] == "bcc" for c in bcc["checks"])
