"""The libbpf loader, and the choice between the two loaders.

`make bpf` (and the Debian package's build) compiles bpf/mptcpize.bpf.c once with clang -target bpf
against a vmlinux.h dumped from BTF (bpf/loaders.h maps the program's bcc macros to libbpf's), into
two objects beside the source: the program on update_socket_protocol, and the dry run's (the same
decision on the socket() tracepoint). libbpf relocates the kernel struct offsets they read (CO-RE)
against /sys/kernel/btf/vmlinux when it loads them, in this process: no compiler, no kernel headers,
no LLVM, and no child. The netns guard's two kernel facts (the address of mptcp_pernet_id, the offset
of mptcp_pernet.mptcp_enabled) are found in the kernel too: the object's find_netns_guard program,
run once after load, looks the symbol up (bpf_kallsyms_lookup_name) and has the offset relocated
(CO-RE), and writes both into the settings map, where bcc's loader writes what userspace found. So a
start that works parses neither BTF nor /proc/kallsyms: only a failed load asks program/support.py
(what `check` shows) why.

bcc (program/loader.py) compiles the same source at start-up: it is used when asked (`--loader bcc`,
or MPTCPIZE_PY_LOADER=bcc in the environment, e.g. the daemon's unit), or when no object was built
(a checkout without `make bpf`).
"""

import errno
import os
from pathlib import Path

from mptcpize_py import abi
from mptcpize_py.errors import MptcpizeError, Unavailable, UsageError
from mptcpize_py.host import libc, mounts
from mptcpize_py.program import layout, maps
from mptcpize_py.program.attached import Attached

OBJECT = abi.BPF_DIR / "mptcpize.bpf.o"
DRY_RUN_OBJECT = abi.BPF_DIR / "mptcpize-dry-run.bpf.o"
LOADERS = ("libbpf", "bcc")
LOADER_ENV = "MPTCPIZE_PY_LOADER"
HOOK = "update_socket_protocol"
BCC_HINT = (f"the bcc loader compiles the program at start-up instead: --loader bcc (or "
            f"{LOADER_ENV}=bcc); it needs python3-bpfcc and kernel headers")


def object_path(dry_run: bool) -> Path:
    return DRY_RUN_OBJECT if dry_run else OBJECT


_requested: str | None = None   # --loader, for this process (the CLI sets it: request())


def request(loader: str | None) -> None:
    """The command line's --loader: what choose() uses from now on in this process."""
    global _requested
    _requested = loader
    choose()   # a bad name is a usage error now, not at load time


def choose(requested: str | None = None) -> tuple[str, str]:
    """(loader, why): `requested`, else --loader (request()), else $MPTCPIZE_PY_LOADER, else "auto":
    libbpf when the built objects are there, bcc otherwise."""
    source = "--loader"
    requested = requested or _requested
    if not requested:
        requested, source = os.environ.get(LOADER_ENV) or "auto", LOADER_ENV
    if requested not in ("auto", *LOADERS):
        raise UsageError(f"unknown program loader {requested!r} ({source}): choose auto, libbpf or bcc")
    if requested != "auto":
        return requested, f"chosen by {source}"
    missing = [p for p in (OBJECT, DRY_RUN_OBJECT) if not p.is_file()]
    if not missing:
        return "libbpf", f"prebuilt CO-RE object {OBJECT}"
    return "bcc", f"no prebuilt object ({missing[0]}; `make bpf` builds it): bcc compiles the source"


def _why(log: list[tuple[int, str]], err: OSError) -> str:
    """The one line that says why libbpf could not load the object: the verifier's last word when it
    refused a program, else libbpf's own failure line, else the errno."""
    lines = [line.strip() for _level, text in log for line in text.splitlines() if line.strip()]
    verifier = ""
    if "-- END PROG LOAD LOG --" in " ".join(lines):
        body = lines[:next(i for i, x in enumerate(lines) if "-- END PROG LOAD LOG --" in x)]
        body = [x for x in body if not x.startswith(("libbpf:", "processed ", "verification time"))]
        verifier = body[-1] if body else ""
    failed = [x.removeprefix("libbpf: ") for x in lines if "fail" in x or "error" in x.lower()]
    why = failed[0] if failed else f"{err.strerror}"
    return f"{why} (verifier: {verifier})" if verifier else why


def probe(hook: bool) -> tuple[bool, str, str | None]:
    """(ok, detail, hint) for `check`: libbpf really relocates and loads the object (the hook's when
    `hook`, i.e. this kernel takes fmod_ret programs; else the dry run's, same source and same
    relocations), without attaching it."""
    path = object_path(dry_run=not hook)
    if not OBJECT.is_file() or not path.is_file():
        return False, f"no prebuilt object at {path}", f"build it with `make bpf`; or {BCC_HINT}"
    if os.geteuid() != 0:
        return True, f"{path} (not loaded: loading needs root)", None
    out = Attached()
    try:
        with maps.BpfObject(str(path)) as obj:
            try:
                obj.load()
            except OSError as e:
                return False, f"{path.name} does not load on this kernel: {_why(obj.log, e)}", BCC_HINT
            out.progs, out.maps = obj.programs(), obj.maps()
        err = _find_netns_guard(out)
    except OSError as e:
        return False, f"cannot open {path}: {_why(getattr(e, 'log', []), e)}", BCC_HINT
    finally:
        _close(out)
    loads = f"libbpf {maps.libbpf_version()} relocates and loads {path} (CO-RE)"
    if out.pernet_addr:
        return True, f"{loads}; it finds net.mptcp.enabled in kernel memory itself (mptcp_pernet_id, " \
                     f"mptcp_enabled at +{out.enabled_offset})", None
    why = f"cannot locate net.mptcp.enabled in kernel memory ({errno.errorcode.get(-err, err)})"
    if not hook:   # the dry run asks userspace instead
        return True, f"{loads}; it {why}: the dry run is told the value", None
    from mptcpize_py.program.support import guard_error
    return False, f"{loads}, but it {why}", guard_error(-err).hint


GUARD_PROGRAM = "find_netns_guard"


def _refused(dry_run: bool, otherwise: MptcpizeError) -> MptcpizeError:
    """Why the object did not load or attach, in the user's words: the kernel facts `check` judges by
    (program/support.py: the hook in BTF, a trampoline that attaches) name the cause when one is
    missing; else `otherwise` (libbpf's or the verifier's own line)."""
    from mptcpize_py.program.support import FAIL, kernel_support  # the slow path only: parses BTF
    support = kernel_support()
    if support.facts is None:
        return support.errors["kernel hook"]
    if not dry_run:
        for check in (support.hook, support.trampoline):
            if check.status == FAIL:
                return support.errors[check.name]
    return otherwise


def _find_netns_guard(out: Attached) -> int:
    """Runs the object's find_netns_guard program (bpf/mptcpize.bpf.c), which writes the address of
    mptcp_pernet_id and the offset of mptcp_enabled into the settings map, and takes them from there
    into `out` (the parent writes the map whole: program/rewriter.py). Returns the program's 0 or
    -errno. The program is closed here, never handed over."""
    fd = out.progs.pop(GUARD_PROGRAM)
    try:
        err = maps.run_once(fd)
    except OSError as e:
        err = -(e.errno or 1)
    finally:
        os.close(fd)
    cfg = maps.BpfMap(out.maps["settings"], layout.maps()["settings"])[0]
    out.pernet_addr, out.enabled_offset = cfg.pernet_id_addr, cfg.enabled_offset
    return err


def load_and_attach(dry_run: bool) -> Attached:
    """Loads the prebuilt object with libbpf and attaches its programs; raises MptcpizeError with the
    user's words (one line, and the bcc alternative as the hint)."""
    path = object_path(dry_run)
    if not path.is_file():
        raise Unavailable(f"no prebuilt program at {path}", hint=f"build it with `make bpf`; or {BCC_HINT}")
    out = Attached(loader="libbpf", detail=f"libbpf {maps.libbpf_version()}, CO-RE object {path}")
    try:
        with maps.BpfObject(str(path)) as obj:
            try:
                obj.load()
            except OSError as e:
                why = _why(obj.log, e)
                raise _refused(dry_run, Unavailable(f"the prebuilt program {path.name} cannot load on "
                                                    f"this kernel: {why}", hint=BCC_HINT)) from None
            out.progs, out.maps = obj.programs(), obj.maps()
        libc.trim_heap()   # libbpf's copy of the kernel's BTF is freed: return it (~0.5 MB RSS)
        err = _find_netns_guard(out)
        # Without the guard the hook's program would upgrade nothing; the dry run asks userspace's
        # netns_mptcp map instead (set_netns_mptcp).
        if not dry_run and not out.pernet_addr:
            from mptcpize_py.program.support import guard_error
            raise guard_error(-err)
        for name, fd in out.progs.items():
            if name.startswith("raw_tracepoint__"):
                out.links[f"raw_tp:{name.removeprefix('raw_tracepoint__')}"] = (
                    maps.attach_raw_tracepoint(name.removeprefix("raw_tracepoint__"), fd), "link")
        if dry_run:
            out.hook = "tp:syscalls:sys_enter_socket"
            mounts.ensure_tracefs()
            with open(f"{mounts.TRACEFS}/events/syscalls/sys_enter_socket/id") as f:
                tp_id = int(f.read())
            out.links[out.hook] = (libc.attach_to_tracepoint(
                tp_id, out.progs["tracepoint__syscalls__sys_enter_socket"]), "perf_event")
        else:
            out.hook = f"fmod_ret:{HOOK}"
            try:
                out.links[out.hook] = (maps.attach_tracing(out.progs[f"kmod_ret__{HOOK}"]), "link")
            except OSError as e:
                raise _refused(dry_run, Unavailable(f"cannot attach fmod_ret to {HOOK}: {e.strerror}",
                                                    hint="see `mptcpize-py check`")) from None
    except OSError as e:   # opening the object, a raw tracepoint or the dry run's tracepoint
        _close(out)
        raise Unavailable(f"cannot load the prebuilt program {path}: {_why(getattr(e, 'log', []), e)}",
                          hint=BCC_HINT) from None
    except BaseException:
        _close(out)
        raise
    return out


def _close(att: Attached) -> None:
    for fd in att.fds():
        try:
            os.close(fd)
        except OSError:
            pass
