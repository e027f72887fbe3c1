"""The only bcc importer, and the code of the loader child: compile bpf/mptcpize.bpf.c, load and
attach it, hand the file descriptors to the parent, exit.

program.rewriter.Rewriter starts this module in a child process (child_main) so that the long-lived
process (the daemon, `run --backend bpf`) never maps bcc's compiler: LLVM and clang cost ~60 MB on
import and as much again while compiling, and all of it goes away with the child. The child sends its
program, map and link (or perf event) descriptors over a Unix socket (SCM_RIGHTS) and exits without
bcc's cleanup: the attachments then live exactly as long as the parent's descriptors (fail-open when
the parent dies, as before).

bcc comes from the distribution (python3-bpfcc) and compiles at run time. The program reads kernel
structs at offsets taken from the running kernel's BTF (btf.STRUCT_FIELDS), so the headers only
have to satisfy the compiler: the running kernel's (/lib/modules/$(uname -r)/build) when installed,
else any Debian linux-headers tree under /usr/src, merged into the one-directory layout bcc expects
($BCC_KERNEL_SOURCE).

A dry run builds the same decision on the socket() syscall tracepoint: it needs no trampoline and no
hook, counts and reports what would be upgraded, and changes no socket.
"""

import ctypes
import json
import os
import re
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from mptcpize_py import abi
from mptcpize_py.errors import MptcpizeError, Unavailable
from mptcpize_py.host import files, libc, mounts
from mptcpize_py.locations import MERGED_HEADERS_DIR
from mptcpize_py.program import btf, layout
from mptcpize_py.program.attached import Attached, message
from mptcpize_py.program.support import HOOK, OK, kernel_support

# The descriptor the parent's end of the socket pair is given as in the child (program/rewriter.py).
CHILD_FD = 3
# What `check` compiles to learn whether bcc can compile at all.
COMPILE_PROBE = b"int mptcpize_compile_probe(void *ctx) { return 0; }"


@dataclass(frozen=True)
class ToolchainStatus:
    ok: bool
    detail: str
    hint: str | None = None


def _headers_dir() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def _debian_header_trees(src: Path = Path("/usr/src")) -> list[tuple[Path, Path]]:
    """(arch tree, -common tree) pairs of installed Debian linux-headers packages, newest first."""
    pairs = []
    for arch in sorted(src.glob("linux-headers-*-amd64"), reverse=True):
        common = arch.with_name(arch.name[:-len("amd64")] + "common")
        if (arch / "include" / "generated").is_dir() and (common / "include" / "linux").is_dir():
            pairs.append((arch, common))
    return pairs


def merge_header_tree(arch: Path, common: Path, dest: Path) -> Path:
    """Builds in `dest` (symlinks only) the single tree bcc's $BCC_KERNEL_SOURCE wants from Debian's
    split arch/-common packages: common's include/ and arch/x86/include/ plus arch's generated/."""
    for sub in ("include", "arch/x86/include"):
        out = dest / sub
        out.mkdir(parents=True, exist_ok=True)
        for src_dir in (common / sub, arch / sub):
            if not src_dir.is_dir():
                continue
            for entry in src_dir.iterdir():
                link = out / entry.name
                if not link.exists() and not link.is_symlink():
                    link.symlink_to(entry)
    return dest


def compile_env() -> tuple[Path | None, str]:
    """(headers tree for bcc or None, description). Sets $BCC_KERNEL_SOURCE when it is not the
    running kernel's own tree."""
    own = _headers_dir()
    own_text = str(own)
    try:
        if (own / "include").is_dir():
            return own, own_text
    except OSError as e:   # e.g. a sandbox that hides the tree: try the others
        own_text = f"{own} ({e.strerror})"
    try:
        trees = _debian_header_trees()
    except OSError:
        trees = []
    for arch, common in trees:
        dest = MERGED_HEADERS_DIR / arch.name
        try:
            if not (dest / "include" / "linux").exists():
                merge_header_tree(arch, common, dest)
        except OSError:
            continue
        os.environ["BCC_KERNEL_SOURCE"] = str(dest)
        return dest, f"{arch.name} (this kernel's own headers are not installed; the program takes " \
                     f"struct offsets from BTF, so other headers do)"
    return None, f"no kernel headers at {own_text} or /usr/src/linux-headers-*"


def _import_bcc():
    try:
        import bcc  # noqa: F401  (distro package python3-bpfcc)
        return bcc
    except ImportError as e:
        raise Unavailable(f"bcc is not importable: {e}",
                          hint="apt-get install python3-bpfcc, and use Debian's /usr/bin/python3 "
                               "or a venv made with --system-site-packages") from None


class CompileFailed(Exception):
    """bcc could not compile: the compiler's error lines (or bcc's own words when it printed none)."""

    def __init__(self, errors: list[str], output: str = ""):
        super().__init__("; ".join(errors))
        self.errors = errors
        self.output = output   # everything the compiler (and bcc's loader) wrote


MAX_ERRORS_SHOWN = 5


def compiler_errors(text: str) -> list[str]:
    """The diagnostics that made a compile fail: clang's "FILE:LINE:COL: error: ..." (and "fatal
    error:") lines, not its warnings, notes or include chains."""
    errors = [line.strip() for line in text.splitlines() if re.search(r"\b(fatal )?error: ", line)]
    if len(errors) > MAX_ERRORS_SHOWN:
        errors = errors[:MAX_ERRORS_SHOWN] + [f"and {len(errors) - MAX_ERRORS_SHOWN} more errors"]
    return errors


# bpf/loaders.h: the source's MAP_OP(map, args) calls, spelled as bcc's map.op(args) methods (bcc's
# rewriter refuses map methods that a macro produced).
_MAP_CALL = re.compile(r"\bMAP_(LOOKUP|INSERT|UPDATE|DELETE|RINGBUF_RESERVE|RINGBUF_SUBMIT|"
                       r"TASK_STORAGE_GET|TASK_STORAGE_DELETE)\(\s*(\w+)\s*,\s*")


def bcc_source(text: str) -> str:
    """The program as bcc compiles it: each MAP_OP(map, args...) becomes map.op(args...)."""
    return _MAP_CALL.sub(lambda m: f"{m.group(2)}.{m.group(1).lower()}(", text)


def compile_program(bcc, **kwargs):
    """bcc.BPF(**kwargs) with the compiler kept quiet: clang writes its diagnostics to descriptor 2
    from C++ (~25 lines of warnings about the kernel headers for the smallest program), which would
    land before `check`'s table and in the daemon's journal. Kept in a file instead, and dropped when
    the compile works; when it fails, its error lines are raised (CompileFailed), since bcc's own
    exception says only "Failed to compile BPF module"."""
    with files.stderr_captured() as captured:
        try:
            return bcc.BPF(**kwargs)
        except Exception as e:  # bcc raises plain Exception on compile failure
            failure = str(e)
    raise CompileFailed(compiler_errors(captured.text) or [failure], captured.text)


def toolchain_status(compile_test: bool = True) -> ToolchainStatus:
    try:
        bcc = _import_bcc()
    except MptcpizeError as e:
        return ToolchainStatus(False, e.message, e.hint)
    headers, where = compile_env()
    if headers is None:
        return ToolchainStatus(False, f"bcc importable, but {where}",
                               f"apt-get install linux-headers-{os.uname().release}")
    if compile_test:
        try:
            compile_program(bcc, text=COMPILE_PROBE).cleanup()
        except CompileFailed as e:
            return ToolchainStatus(False, f"bcc cannot compile against {headers}: {e}",
                                   f"reinstall linux-headers-{os.uname().release}")
    return ToolchainStatus(True, f"bcc {getattr(bcc, '__version__', '?')} "
                                 f"{'compiles' if compile_test else 'with headers'} at {where}")


def load_and_attach(dry_run: bool) -> Attached:
    """Probes the kernel, compiles, loads and attaches; raises MptcpizeError with the user's words."""
    support = kernel_support()   # the prerequisites `check` and `enable` judge by, too
    if support.facts is None:
        raise support.errors["kernel hook"]
    if not dry_run and support.problems:
        raise support.errors[support.problems[0].name]
    offsets = btf.read_struct_offsets()
    # Without the in-kernel guard the dry run asks userspace's netns_mptcp map (set_netns_mptcp).
    pernet_addr = support.pernet_addr if support.netns_guard.status == OK else 0
    bcc = _import_bcc()  # after the cheap probes: importing bcc loads libLLVM (slow)
    headers, where = compile_env()
    if headers is None:
        raise Unavailable(f"bcc has nothing to compile against: {where}",
                          hint=f"apt-get install linux-headers-{os.uname().release} (or any "
                               f"linux-headers-*-amd64)")
    cflags = [f"-I{abi.BPF_DIR}", "-w"] + [f"-D{k}={v}" for k, v in sorted(offsets.items())]
    if dry_run:
        cflags.append("-DMPTCPIZE_DRY_RUN")
        mounts.ensure_tracefs()
    try:
        b = compile_program(bcc, text=bcc_source(abi.PROGRAM.read_text()).encode(), cflags=cflags)
    except CompileFailed as e:
        err = Unavailable(f"bcc could not compile {abi.PROGRAM.name} against {where}: {e}")
        err.compiler_output = e.output   # child_main writes it out in full (the journal's record)
        raise err from None
    out = Attached(pernet_addr=pernet_addr or 0, enabled_offset=support.facts.mptcp_enabled_offset or 0,
                   loader="bcc", detail=f"bcc {getattr(bcc, '__version__', '?')}, headers {where}")
    # bcc attached the TRACEPOINT_PROBE / RAW_TRACEPOINT_PROBE functions when it loaded the program.
    for tp, fd in b.raw_tracepoint_fds.items():
        out.links[f"raw_tp:{tp.decode()}"] = (fd, "link")
    for tp, fd in b.tracepoint_fds.items():
        out.links[f"tp:{tp.decode()}"] = (fd, "perf_event")
    if dry_run:
        out.hook = "tp:syscalls:sys_enter_socket"
    else:
        try:
            fn = b.load_func(b"kmod_ret__" + HOOK.encode(), bcc.BPF.TRACING)
        except Exception as e:
            raise Unavailable(f"the kernel refused the fmod_ret program: {e}",
                              hint="see `mptcpize-py check`") from None
        # bcc 0.26 has KMOD_RET but no attach_fmod_ret: attach the TRACING program by fd. The link
        # lives as long as an fd to it, i.e. as long as the parent holds the one we send it.
        link_fd = bcc.lib.bpf_attach_kfunc(fn.fd)
        if link_fd < 0:
            code = ctypes.get_errno() or -link_fd
            raise Unavailable(f"cannot attach fmod_ret to {HOOK}: {os.strerror(code)}",
                              hint="see `mptcpize-py check`")
        out.hook = f"fmod_ret:{HOOK}"
        out.links[out.hook] = (link_fd, "link")
    if out.hook not in out.links:
        raise MptcpizeError(f"the program loaded but its hook {out.hook} is not attached")
    out.progs = {name.decode(): fn.fd for name, fn in b.funcs.items()}
    for name in layout.maps():
        fd = bcc.lib.bpf_table_fd(b.module, name.encode())
        if fd < 0:
            raise MptcpizeError(f"the compiled program has no map {name!r}")
        out.maps[name] = fd
    return out


def child_main(argv: list[str]) -> None:
    """The loader child: `--dry-run` or nothing. One message to the parent on CHILD_FD (SOCK_SEQPACKET),
    JSON with the descriptors attached, or {"error": ...}; then _exit without bcc's atexit cleanup,
    which would detach what the parent now holds (it disables the dry run's perf event)."""
    status = 1
    try:
        sock = socket.socket(fileno=CHILD_FD)
        # The parent may die while we compile (tens of seconds in a slow VM): then die too rather
        # than attach a program nobody holds. getppid() closes the race with an earlier death.
        parent = int(argv[0])
        libc.set_parent_death_signal(9)
        if os.getppid() != parent:
            os._exit(1)
        fds: list[int] = []
        try:
            msg, fds = message(load_and_attach("--dry-run" in argv[1:]))
        except MptcpizeError as e:
            # A failed compile: the whole diagnostic (include chains, notes, a verifier log) on our
            # stderr, which is the parent's (the daemon's journal); the message has its error lines.
            sys.stderr.write(e.compiler_output or "")
            msg = {"error": {"class": type(e).__name__, "message": e.message, "hint": e.hint,
                             "exit_code": e.exit_code}}
        except Exception as e:   # a bug: the parent reports it, the traceback goes to stderr
            traceback.print_exc()
            msg = {"error": {"class": "MptcpizeError", "message": f"the program loader failed: {e!r}"}}
        socket.send_fds(sock, [json.dumps(msg).encode()], fds)
        status = 0
    finally:
        sys.stderr.flush()
        os._exit(status)

