"""The prebuilt program on a real kernel (6.12, and the second kernel of `make test-vm-kernel2`): the
daemon and `run` load the CO-RE object that `make bpf` built, with libbpf, while no kernel headers are
visible to them (a mount namespace hides /usr/src and /lib/modules/$(uname -r)/build), and no
mptcpize-py process maps LLVM or clang at any time. What it selects is what the outside world sees:
SO_PROTOCOL of sockets made by processes the policy or a `run` tree selects. The bcc loader keeps a
test of its own (last; not on the second kernel, which has no headers)."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import CLI, cli_env, mptcpize, start_daemon
from tests.waiting import scaled

pytestmark = pytest.mark.vm

RELEASE = os.uname().release
HEADERS = ("/usr/src", f"/lib/modules/{RELEASE}/build")
# Into a private mount namespace (unshare execs: the pid stays the command's), with an empty,
# read-only tmpfs over each headers directory that exists, then exec the command. The directories
# come as arguments, not as shell text.
HIDE_HEADERS = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'for d in "$1" "$2"; do if [ -d "$d" ]; then mount -t tmpfs -o ro,size=4k none "$d" '
                '|| exit 125; fi; done; shift 2; exec "$@"', "hide-headers", *HEADERS)
COMPILER_LIBS = re.compile(r"llvm|clang|libbcc\.so", re.I)
CG = "/sys/fs/cgroup/mzp-allow"
NS_OFF = "mzp-mptcp-off"


def compiler_maps(pid: int) -> list[str]:
    """The LLVM, clang or bcc-compiler libraries process pid maps ([] when it has exited)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return sorted({line.split()[-1] for line in f if COMPILER_LIBS.search(line)})
    except (FileNotFoundError, ProcessLookupError):
        return []


def mptcpize_processes() -> list[int]:
    """Every live process running mptcpize_py (the CLI, the daemon, a loader child)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if b"mptcpize_py" in f.read():
                        out.append(int(name))
            except OSError:
                pass
    return out


class Env:
    pass


@pytest.fixture(scope="module")
def env(bpf_backend, static_rawsock, tmp_path_factory):
    e = Env()
    base = tmp_path_factory.mktemp("prebuilt")
    os.chmod(base, 0o755)
    policy = base / "policy.d"
    policy.mkdir(mode=0o755)
    e.selected, e.other = str(base / "rawsock-selected"), str(base / "rawsock-other")
    for path in (e.selected, e.other):
        shutil.copy2(static_rawsock, path)
    os.makedirs(CG, exist_ok=True)
    (policy / "10.toml").write_text(f'[[allow]]\nexe = "{e.selected}"\n\n[[allow]]\ncgroup = "/mzp-allow"\n')
    os.chmod(policy / "10.toml", 0o644)
    e.control = str(base / "run" / "control")
    e.environ = cli_env(dict(os.environ, MPTCPIZE_CONTROL=e.control))
    e.log_path = base / "daemon.log"
    e.seen_compiler: dict[int, list[str]] = {}

    def watch(_pid: int) -> None:   # while the daemon starts: every mptcpize-py process
        for pid in mptcpize_processes():
            libs = compiler_maps(pid)
            if libs:
                e.seen_compiler[pid] = libs

    e.proc = None
    with open(e.log_path, "w") as log:
        try:
            e.proc = start_daemon(policy, e.control, log, e.log_path, wrapper=HIDE_HEADERS,
                                  while_starting=watch)
            watch(e.proc.pid)
            yield e
        finally:
            if e.proc is not None and e.proc.poll() is None:
                e.proc.terminate()
                e.proc.wait(scaled(60))
            os.rmdir(CG)


def proto(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True,
                          timeout=scaled(120)).stdout.strip()


def in_daemon_view(pid: int, *cmd: str) -> subprocess.CompletedProcess:
    """cmd in the daemon's mount namespace (its absolute symbolic links, such as
    /lib/modules/R/build -> /usr/src/..., resolve there: through /proc/PID/root they would not)."""
    return subprocess.run(["nsenter", "--target", str(pid), "--mount", "--", *cmd], capture_output=True,
                          text=True, timeout=scaled(60))


def test_the_daemon_sees_no_kernel_headers(env):
    assert in_daemon_view(env.proc.pid, "ls", "-A", "/usr/src").stdout == ""
    build = f"/lib/modules/{RELEASE}/build/include"
    assert in_daemon_view(env.proc.pid, "test", "-e", build).returncode == 1
    # The host's /usr/src (6.12's headers) is seen in the guest: hidden, it shows the hiding works.
    # The second kernel (scripts/vm-kernel2.sh) has no build directory at all, as on a headerless node.
    assert os.listdir("/usr/src"), "nothing to hide: the test proves nothing"


def test_the_daemon_loaded_the_prebuilt_object_with_libbpf(env):
    st = json.loads(mptcpize("status", "--json", env=env.environ).stdout)
    assert st["backend"] == "bpf" and st["loader"] == "libbpf"
    assert "program loaded by libbpf (libbpf v" in env.log_path.read_text()
    assert "mptcpize.bpf.o" in env.log_path.read_text()


def test_no_mptcpize_process_mapped_a_compiler(env):
    assert env.seen_compiler == {}
    assert compiler_maps(env.proc.pid) == []


def test_selected_exe_and_cgroup_are_upgraded_others_not(env):
    assert proto(env.selected) == "262"
    assert proto(env.other) == "6"
    in_cgroup = ["sh", "-c", f'echo $$ > {CG}/cgroup.procs && exec "$0"', env.other]
    assert proto(*in_cgroup) == "262"


def test_run_joins_the_daemons_program(env):
    out = subprocess.run([*CLI, "run", "--backend", "bpf", "--", env.other], capture_output=True,
                         text=True, env=env.environ, timeout=scaled(120))
    assert (out.returncode, out.stdout.strip()) == (0, "262"), out.stderr


@pytest.fixture()
def mptcp_off_netns():
    subprocess.run(["ip", "netns", "del", NS_OFF], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS_OFF], check=True)
    subprocess.run(["ip", "netns", "exec", NS_OFF, "sysctl", "-qw", "net.mptcp.enabled=0"], check=True)
    yield NS_OFF
    subprocess.run(["ip", "netns", "del", NS_OFF], capture_output=True)


def standalone_run(env, *prefix: str) -> subprocess.CompletedProcess:
    """`run --loader libbpf -v` with its own program (not the daemon's), headers hidden."""
    environ = cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(env.control) + ".none"))
    return subprocess.run([*prefix, *HIDE_HEADERS, *CLI, "run", "-v", "--loader", "libbpf", "--backend",
                           "bpf", "--", env.other], capture_output=True, text=True, env=environ,
                          timeout=scaled(300))


def test_standalone_run_loads_the_object_and_keeps_the_netns_guard(env, mptcp_off_netns):
    here = standalone_run(env)
    assert (here.returncode, here.stdout.strip()) == (0, "262"), here.stderr
    assert "program loaded by libbpf" in here.stderr
    # net.mptcp.enabled=0 there: the rewrite would fail socket() with ENOPROTOOPT, so TCP it stays.
    off = standalone_run(env, "ip", "netns", "exec", mptcp_off_netns)
    assert (off.returncode, off.stdout.strip()) == (0, "6"), off.stderr
    assert re.search(r"not upgraded: .*mptcp_disabled=[1-9]", off.stderr), off.stderr


def test_the_libbpf_loader_finds_the_netns_guard_where_kallsyms_and_btf_say(env):
    """find_netns_guard (in the kernel: bpf_kallsyms_lookup_name and a CO-RE offset) writes into the
    program's settings map what userspace reads from /proc/kallsyms and the kernel's BTF (bcc's way)."""
    from mptcpize_py.program import btf, kallsyms
    from mptcpize_py.program.rewriter import Rewriter
    rw = Rewriter(all_netns=True, loader="libbpf")
    try:
        map_id = rw.held()["map:settings"]
        dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                                         capture_output=True, text=True, check=True,
                                         timeout=scaled(60)).stdout)
    finally:
        rw.close()
    value = dump[0]["formatted"]["value"]
    assert value["pernet_id_addr"] == kallsyms.read_kallsyms_address("mptcp_pernet_id") != 0
    assert value["enabled_offset"] == btf.read_hook_facts().mptcp_enabled_offset


def test_check_says_the_loaded_object_finds_the_netns_guard_itself(env):
    rep = json.loads(subprocess.run([*CLI, "check", "--json"], capture_output=True, text=True,
                                    env=env.environ, timeout=scaled(300)).stdout)
    line = next(c for c in rep["checks"] if c["name"] == "prebuilt program")
    assert line["status"] == "ok", line
    assert "mptcpize.bpf.o" in line["detail"]   # the hook's object, not the dry run's
    assert "finds net.mptcp.enabled in kernel memory itself" in line["detail"], line


def test_without_cap_syslog_the_hook_is_refused_in_one_line_that_says_so(env):
    """The kernel hides its addresses (bpf_kallsyms_lookup_name: -EPERM, as /proc/kallsyms shows zeros)
    from a process without CAP_SYSLOG: the hook's program could not read net.mptcp.enabled, so `run`
    refuses it and names the capability (exit 69)."""
    environ = cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(env.control) + ".none"))
    out = subprocess.run(["setpriv", "--inh-caps", "-syslog", "--bounding-set", "-syslog", "--",
                          *CLI, "run", "--loader", "libbpf", "--backend", "bpf", "--", "true"],
                         capture_output=True, text=True, env=environ, timeout=scaled(300))
    assert out.returncode == 69, out.stderr
    lines = out.stderr.splitlines()
    assert ("mptcpize-py: error: cannot locate net.mptcp.enabled in kernel memory (mptcp_pernet_id in "
            "/proc/kallsyms, struct mptcp_pernet in BTF)") in lines, out.stderr
    assert ("mptcpize-py: hint: the kernel hides its addresses from this process: it needs CAP_SYSLOG "
            "(kptr_restrict)") in lines, out.stderr
    assert "Traceback" not in out.stderr


def test_the_bcc_loader_still_compiles_and_upgrades_the_same_source(env):
    environ = cli_env(dict(os.environ, MPTCPIZE_CONTROL=str(env.control) + ".none"))
    out = subprocess.run([*CLI, "run", "-v", "--loader", "bcc", "--backend", "bpf", "--", env.other],
                         capture_output=True, text=True, env=environ, timeout=scaled(600))
    assert (out.returncode, out.stdout.strip()) == (0, "262"), out.stderr
    assert "program loaded by bcc" in out.stderr
