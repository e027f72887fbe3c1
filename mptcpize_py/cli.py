"""Command line: argparse, typed errors → one line + exit code. The only module that prints.

`run` through a running daemon is the path whose start-up a user waits for on every command: it
imports only what it uses (no argparse, logging, policy, status or report unless asked for; see
tests/unit/test_run_imports.py), so the imports that serve other commands stay inside them."""

import sys
from typing import TYPE_CHECKING, TypeVar

from mptcpize_py import __version__
from mptcpize_py.errors import EXIT_UNAVAILABLE, MptcpizeError, UsageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from mptcpize_py.run.backend import RunBackend
    from mptcpize_py.status import DaemonStatus

PROG = "mptcpize-py"
T = TypeVar("T")


def _parser_class() -> "type[argparse.ArgumentParser]":
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(message, hint=f"see '{self.prog} --help'")

    return _Parser


def _add_policy_dir(parser: "argparse.ArgumentParser") -> None:
    """One setting for the daemon and for enable/disable, which write where the daemon reads."""
    from pathlib import Path

    from mptcpize_py.locations import POLICY_DIR
    parser.add_argument("--policy-dir", metavar="DIR", default=POLICY_DIR, type=Path,
                        help=f"policy directory (default {POLICY_DIR})")


def _add_host_root(parser: "argparse.ArgumentParser") -> None:
    parser.add_argument("--host-root", metavar="DIR", default=None,
                        help="the host's / is mounted at DIR (a container: hostPath / at /host): "
                             "executables, cgroups and /run/netns are the host's (default: "
                             "$MPTCPIZE_HOST_ROOT, else /)")


def _command(sub, name: str, help: str, description: str,
             examples: "list[tuple[str, str]]") -> "argparse.ArgumentParser":
    """A subcommand whose --help says what it does and shows how it is used: the description as
    paragraphs (wrapped here: the raw formatter keeps the examples' layout), then "examples:", one
    `mptcpize-py ...` line each with what it does. Every subcommand also takes --debug."""
    import argparse
    import textwrap
    text = "\n\n".join(textwrap.fill(par, HELP_WIDTH) for par in description.split("\n\n"))
    # What each does in a column beside the commands when it fits, else below each command.
    width = max(len(cmd) for cmd, _ in examples)
    beside = all(len(f"  {PROG} {cmd:<{width}}   # {what}") <= HELP_WIDTH for cmd, what in examples)
    lines = ["examples:"]
    for cmd, what in examples:
        lines += ([f"  {PROG} {cmd:<{width}}   # {what}"] if beside else
                  [f"  {PROG} {cmd}", f"      # {what}"])
    p = sub.add_parser(name, help=help, description=text, epilog="\n".join(lines),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # SUPPRESS: absent here, the value given before the command (or False) stays.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks (as --debug before the command)")
    return p


LOADERS = ("auto", "libbpf", "bcc")


def _add_loader(p, what: str) -> None:
    p.add_argument("--loader", choices=LOADERS, default=None,
                   help=f"{what}: libbpf, the prebuilt CO-RE object (no compiler, no kernel "
                        "headers); bcc, compiled at start-up (python3-bpfcc and kernel headers); "
                        "auto (default, or $MPTCPIZE_PY_LOADER): libbpf when the object was built")


HELP_WIDTH = 78   # argparse's own, in an 80-column terminal


def _build_parser() -> "argparse.ArgumentParser":
    _Parser = _parser_class()
    p = _Parser(prog=PROG, description="Make unmodified applications use Multipath TCP.",
                epilog=f"'{PROG} COMMAND --help' describes each command, with examples.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_run, _add_check, _add_daemon, _add_resync, _add_enable_disable, _add_status, _add_paths,
                _add_metrics):
        add(sub)
    return p


def _add_run(sub) -> None:
    r = _command(sub, "run", "run CMD with its and its descendants' TCP sockets upgraded to MPTCP",
                 "Run CMD; CMD and all its descendants get MPTCP instead of TCP sockets. Exit status "
                 "is CMD's (127 not found, 126 not executable, 128+N killed by signal N).\n\n"
                 "run's options end at '--' or at CMD, the first word that is not an option.",
                 [("run iperf3 -s", "iperf3 and every process it starts get MPTCP sockets"),
                  ("run -v -- curl -sO https://example.org/big.iso",
                   "then say which processes were upgraded"),
                  ("run --backend seccomp iperf3 -c server", "no BPF needed (nor root)")])
    # run's own options are parsed by parse_run_args (argparse cannot stop at CMD's first word);
    # these declarations only feed --help.
    r.add_argument("-v", "--verbose", action="store_true",
                   help="at exit, print one line per process that got upgraded sockets")
    r.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="bpf: fmod_ret on update_socket_protocol (Linux >= 6.6); seccomp: user "
                        "notification supervisor (Linux >= 5.14); auto: bpf, else seccomp")
    _add_loader(r, "load run's own program with LOADER, not the running daemon's")
    r.add_argument("argv", nargs="*", metavar="CMD [ARGS...]")


def _add_check(sub) -> None:
    c = _command(sub, "check", "report what this host can do; exit 0 if run can upgrade, 69 if not",
                 "Report what this host can do: one line per prerequisite (the kernel hook, BPF "
                 "trampolines, the network namespace guard, bcc, net.mptcp.enabled, seccomp user "
                 "notification), with a hint for each that fails; the MPTCP path management of each "
                 "network namespace; and which backend run will use. Exit 0 if run can upgrade "
                 "sockets here, 69 if not.",
                 [("check", "the table, with hints"),
                  ("check --json | jq '.checks[] | select(.status == \"fail\")'",
                   "only what fails, machine-readable")])
    c.add_argument("--json", action="store_true", help="machine-readable output")
    _add_loader(c, "check what LOADER needs")
    _add_host_root(c)


def _add_daemon(sub) -> None:
    from pathlib import Path

    d = _command(sub, "daemon", "system-wide: upgrade the processes an allowlist policy selects",
                 "Load the policy of DIR (every *.toml file), attach the BPF program and keep its maps "
                 "in sync: SIGHUP or a change in DIR reloads, SIGTERM detaches. Exit 78 on a bad "
                 "policy. Usually started by systemd (mptcpize-py.service); see "
                 "mptcpize-py-policy(5) for the policy format.",
                 [("daemon --example-policy > /etc/mptcpize-py/policy.d/10-site.toml",
                   "start from the commented example"),
                  ("daemon --check", "validate and resolve the policy, load nothing"),
                  ("daemon --dry-run", "report what would be upgraded, change no socket")])
    _add_policy_dir(d)
    d.add_argument("--check", action="store_true",
                   help="validate and resolve the policy without loading BPF; exit 0 or 78")
    d.add_argument("--example-policy", action="store_true",
                   help="print the commented example policy file and exit")
    d.add_argument("--dry-run", action="store_true",
                   help="evaluate the policy at every socket() (syscall tracepoint, no hook or "
                        "trampoline needed) and report what would be upgraded; change nothing")
    from mptcpize_py.locations import TEXTFILE_DIR
    d.add_argument("--metrics-dir", metavar="DIR", default=TEXTFILE_DIR, type=Path,
                   help="keep DIR/mptcpize.prom, the Prometheus metrics, for node_exporter's textfile "
                        f"collector: every 15 s and on change (default {TEXTFILE_DIR}; nothing is "
                        "written while DIR does not exist)")
    d.add_argument("--no-metrics", action="store_true", help="write no metrics file")
    d.add_argument("--metrics-listen", metavar="ADDR:PORT", default=None,
                   help="also serve the metrics at http://ADDR:PORT/metrics (off by default; "
                        "':9549' listens on every address)")
    _add_loader(d, "the program's loader")
    _add_host_root(d)


def _add_resync(sub) -> None:
    rs = _command(sub, "resync", "make the daemon re-resolve its policy now (used by the "
                                 "ExecStartPre= of units enabled with `enable`)",
                  "Ask the daemon to re-resolve its policy now and answer once its maps hold the "
                  "result. With --unit, exit 0 only when UNIT's current cgroup is selected (1: UNIT "
                  "not in the policy or not running; 3: no daemon).",
                  [("resync", "after changing something the policy selects by"),
                   ("resync --unit nginx.service", "what a drop-in written by enable runs")])
    rs.add_argument("--unit", metavar="UNIT", default=None, help="a unit named by an allow rule")


def _add_enable_disable(sub) -> None:
    # --- enable / disable (enable.py) ---
    names = ("UNIT is a service; without a type suffix it is read as systemctl reads it: nginx is "
             "nginx.service.")
    for verb, text, more, examples in (
            ("enable", "make UNIT's TCP sockets MPTCP from its first one: a drop-in and a policy "
                       "record, both ours (exit 69: BPF path unusable, nothing written)",
             "The drop-in (/etc/systemd/system/UNIT.d/mptcpize-py.conf) makes UNIT want the daemon "
             "and wait at each start until the daemon selects its new cgroup; the policy record "
             "(unit-UNIT.toml in the policy directory) selects it. UNIT's unit file is never "
             "touched.",
             [("enable nginx", "from nginx.service's next start"),
              ("enable --now getty@tty1.service", "and restart it now")]),
            ("disable", "remove exactly what enable wrote: /etc is as it was before",
             "Files at these paths that enable did not write are never removed.",
             [("disable nginx", "its running processes keep their MPTCP sockets"),
              ("disable --now nginx", "and restart it now, with plain TCP")])):
        e = _command(sub, verb, text, f"{text[0].upper() + text[1:]}.\n\n{more} {names}", examples)
        e.add_argument("unit", metavar="UNIT", help="a service, e.g. nginx, nginx.service or "
                                                    "foo@bar.service")
        _add_policy_dir(e)
        e.add_argument("--now", action="store_true",
                       help="also restart UNIT now" if verb == "enable" else
                            "also restart UNIT now if it runs (its new sockets are plain TCP)")


def _add_status(sub) -> None:
    s = _command(sub, "status", "ask the running daemon what it upgraded (exit 3: no daemon)",
                 "Ask the running daemon what it does: its policy and what each rule selects, the "
                 "processes whose sockets it upgraded, with counters, and the units enabled with "
                 "enable. With --connections, the MPTCP connections themselves, read from the "
                 "kernel. Exit 3 when no daemon runs (except with --connections).",
                 [("status", "what the daemon upgraded"),
                  ("status --json", "the same, machine-readable"),
                  ("status --connections", "subflows, fallback and bytes per connection"),
                  ("status --connections --netns blue", "only network namespace blue")])
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--connections", action="store_true",
                   help="the MPTCP connections of the upgraded processes (subflows, fallback, bytes), "
                        "read from the kernel (MPTCP sock_diag); with no daemon, every MPTCP "
                        "connection of this network namespace")
    s.add_argument("--netns", metavar="NAME", default=None,
                   help="with --connections: only network namespace NAME (/run/netns/NAME)")


def _add_paths(sub) -> None:
    pa = _command(sub, "paths", "MPTCP endpoints per network namespace: who manages them, which are "
                                "mptcpize-py's, what the policy's [paths] table would change",
                  "Show, per network namespace (the caller's, then every /run/netns one as root), "
                  "who manages MPTCP endpoints, each endpoint (own: added by mptcpize-py; foreign: "
                  "never touched), the limits, and what the [paths] table of the policy would "
                  "change. --apply changes it (the daemon does this by itself when it runs). Exit 78 "
                  "on a bad policy.",
                  [("paths", "what is there, and what the policy would change"),
                   ("paths --netns blue --json", "one namespace, machine-readable"),
                   ("paths --apply", "set endpoints and limits once, without the daemon"),
                   ("paths --apply --follow", "and keep them in sync until stopped")])
    pa.add_argument("--netns", metavar="NAME", default=None,
                    help="only network namespace NAME (/run/netns/NAME)")
    pa.add_argument("--json", action="store_true", help="machine-readable output")
    _add_host_root(pa)
    _add_policy_dir(pa)
    pa.add_argument("--apply", action="store_true",
                    help="make endpoints and limits what the [paths] table says, once, and exit; for "
                         "hosts where the daemon does not run (e.g. no usable BPF hook); refused "
                         "while the daemon or another --apply manages them")
    pa.add_argument("--follow", action="store_true",
                    help="with --apply: keep them in sync with address events until SIGTERM or "
                         "SIGINT, then remove the endpoints it added; SIGHUP or a change in the "
                         "policy directory reloads")


def _add_metrics(sub) -> None:
    m = _command(sub, "metrics", "Prometheus text-format metrics (stdout, or a file for "
                                 "node_exporter's textfile collector)",
                 "Print the daemon's upgrade counters and the MPTCP connections of the upgraded "
                 "processes in the Prometheus text format. With no daemon, only "
                 "mptcpize_daemon_up 0.",
                 [("metrics", "print them"),
                  ("metrics --output /var/lib/prometheus/node-exporter/mptcpize.prom",
                   "for node_exporter's textfile collector")])
    m.add_argument("--output", metavar="FILE", default=None,
                   help="replace FILE atomically (mode 0644) instead of printing, e.g. "
                        "/var/lib/prometheus/node-exporter/mptcpize.prom")


def _print(as_json: bool, value: T, to_json: "Callable[[T], str]",
           to_text: "Callable[[T], Iterable[str]]") -> None:
    """A report as JSON, or as its text lines."""
    if as_json:
        _out(to_json(value))
    else:
        for line in to_text(value):
            _out(line)


def _out(line: str = "") -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _never_fail_on_encoding() -> None:
    """Output must not die of a name: the renderers escape what they show, but a message may still
    quote one (a command line's undecodable byte is a lone surrogate, os.fsdecode()), and a strict
    UTF-8 stdout (any UTF-8 locale but C.UTF-8; PYTHONIOENCODING=utf-8:strict) or a non-UTF-8 locale
    raises on what it cannot encode. What encodes is written as before; the rest as \\udcff, \\u2014."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


RUN_USAGE = f"{PROG} run [-v] [--backend auto|bpf|seccomp] [--loader auto|libbpf|bcc] [--] CMD [ARGS...]"
BACKENDS = ("auto", "bpf", "seccomp")


class RunArgs:
    """run's parsed options (argparse is not needed to parse them, nor imported for it)."""

    def __init__(self, verbose: bool = False, help: bool = False, argv: list[str] | None = None,
                 backend: str = "auto", debug: bool = False, loader: str | None = None):
        self.verbose, self.help, self.argv, self.backend = verbose, help, argv or [], backend
        self.debug = debug
        self.loader = loader   # --loader: our own program, loaded so (not the daemon's)


def parse_run_args(tokens: list[str]) -> RunArgs:
    """run's options end at "--" or at the first word that is not an option: that word is CMD."""
    args = RunArgs()
    it = iter(enumerate(tokens))
    for i, tok in it:
        if tok == "--backend" or tok.startswith("--backend="):
            if tok == "--backend":
                value = next(it, (None, None))[1]
            else:
                value = tok.split("=", 1)[1]
            if value not in BACKENDS:
                raise UsageError(f"run: --backend must be one of {', '.join(BACKENDS)}"
                                 f"{'' if value is None else f', not {value!r}'}", hint=RUN_USAGE)
            args.backend = value
            continue
        if tok == "--loader" or tok.startswith("--loader="):
            value = next(it, (None, None))[1] if tok == "--loader" else tok.split("=", 1)[1]
            if value not in LOADERS:
                raise UsageError(f"run: --loader must be one of {', '.join(LOADERS)}"
                                 f"{'' if value is None else f', not {value!r}'}", hint=RUN_USAGE)
            args.loader = value
            continue
        if tok == "--":
            args.argv = tokens[i + 1:]
            break
        if tok in ("-v", "--verbose"):
            args.verbose = True
        elif tok == "--debug":
            args.debug = True
        elif tok in ("-h", "--help"):
            args.help = True
            return args
        elif tok.startswith("-"):
            raise UsageError(f"run: unknown option {tok}",
                             hint=f"{RUN_USAGE} (use '--' before a command that starts with '-')")
        else:
            args.argv = tokens[i:]
            break
    if not args.argv:
        raise UsageError("run: no command given", hint=RUN_USAGE)
    return args


def cmd_run(args: RunArgs) -> int:
    from mptcpize_py.run import daemon_fast_path, make_backend
    from mptcpize_py.run.spawn import resolve_command, run_command
    argv = args.argv
    resolve_command(argv[0])  # 127/126 before loading anything
    if args.loader:
        from mptcpize_py.program import prebuilt
        prebuilt.request(args.loader)
    backend: RunBackend | None = None if args.loader else daemon_fast_path(args.backend)
    if backend is None:
        _setup_logging(args.debug)   # our own backends log (e.g. seccomp: a setuid CMD)
        backend = make_backend(args.backend, try_daemon=False)
    try:
        status, reports = run_command(argv, backend)
        if args.verbose:
            from mptcpize_py import report
            for line in report.run_verbose(backend.name, reports, backend.counters(),
                                           backend.summarized()):
                _err(line)
            loaded_by = getattr(backend, "loader", None)
            if loaded_by:
                _err(f"{PROG}: program loaded by {loaded_by}")
            handed_off = backend.handed_off_pid
            if handed_off:
                _err(f"{PROG}: descendants outlived CMD: pid {handed_off} keeps upgrading their sockets")
    finally:
        backend.close()
    return status


def cmd_check(args) -> int:
    from mptcpize_py import report, support
    if args.loader:
        from mptcpize_py.program import prebuilt
        prebuilt.request(args.loader)
    rep = support.run_checks()
    _print(args.json, rep, report.check_json, report.check_text)
    return 0 if rep.run_can_upgrade else EXIT_UNAVAILABLE


def cmd_daemon(args) -> int:
    import logging

    from mptcpize_py.daemon import service
    policy_dir = args.policy_dir
    if args.example_policy:
        from mptcpize_py.policy import EXAMPLE_POLICY
        sys.stdout.write(EXAMPLE_POLICY)
        return 0
    if args.check:
        from mptcpize_py import report
        policy, resolved = service.check(policy_dir)
        for line in report.policy_check_text(policy, resolved):
            _out(line)
        return 0
    logging.getLogger().setLevel(logging.DEBUG if logging.getLogger().level == logging.DEBUG
                                 else logging.INFO)
    if args.loader:
        from mptcpize_py.program import prebuilt
        prebuilt.request(args.loader)
    listen = None
    if args.metrics_listen:   # only then http.server and ssl, which a start would otherwise import
        from mptcpize_py.daemon.http import parse_listen
        listen = parse_listen(args.metrics_listen)
    return service.run_daemon(policy_dir, dry_run=args.dry_run,
                              metrics_dir=None if args.no_metrics else args.metrics_dir,
                              metrics_listen=listen)


def _daemon_status() -> "DaemonStatus":
    """The daemon's `status` answer, checked field by field (exit 3 when no daemon runs)."""
    from mptcpize_py.daemon import client
    from mptcpize_py.status import DaemonStatus
    return DaemonStatus.from_json_dict(client.request({"cmd": "status"}, client.control_path(),
                                                       timeout=10))


def _daemon_status_or_none() -> "DaemonStatus | None":
    """The daemon's `status` answer; None when no daemon runs (other errors are raised)."""
    from mptcpize_py.errors import EXIT_NO_DAEMON
    try:
        return _daemon_status()
    except MptcpizeError as e:
        if e.exit_code != EXIT_NO_DAEMON:
            raise
        return None


def cmd_status_connections(args) -> int:
    from mptcpize_py import report
    from mptcpize_py.diag.view import connection_view
    from mptcpize_py.host.netns import netns_path
    netns = netns_path(args.netns) if args.netns is not None else None
    view = connection_view(_daemon_status_or_none(), netns)
    _print(args.json, view, report.connections_json, report.connections_text)
    return 0


def cmd_metrics(args) -> int:
    from mptcpize_py import metrics
    from mptcpize_py.diag.view import connection_view
    status = _daemon_status_or_none()
    text = metrics.render(status, connection_view(status) if status is not None else None)
    if args.output:
        _write_output(args.output, text)
    else:
        print(text, end="", flush=True)
    return 0


def _write_output(path: str, text: str) -> None:
    from pathlib import Path

    from mptcpize_py.host.files import write_atomic
    try:
        write_atomic(path, text)
    except FileNotFoundError:
        raise MptcpizeError(f"cannot write {path}: directory {Path(path).parent} does not exist",
                            hint="create it, or pass the textfile collector's directory "
                                 "(node_exporter --collector.textfile.directory)") from None
    except OSError as e:
        raise MptcpizeError(f"cannot write {path}: {e.strerror}") from None


def cmd_status(args) -> int:
    from mptcpize_py import report
    if args.connections:
        return cmd_status_connections(args)
    if args.netns is not None:
        raise UsageError("status: --netns only applies with --connections",
                         hint=f"{PROG} status --connections --netns NAME")
    status = _daemon_status()
    _print(args.json, status, report.status_json, report.status_text)
    return 0


def cmd_resync(args) -> int:
    from mptcpize_py.daemon import client
    from mptcpize_py.display import escaped
    req = {"cmd": "resync"}
    if args.unit is not None:
        req["unit"] = args.unit
    resp = client.request(req, client.control_path(), timeout=30)
    for rule in resp.get("rules", []):
        _out(f"{args.unit}: {rule.get('action')} rule {rule.get('id')}: "
             f"{escaped(str(rule.get('target')))}")
    return 0


def _paths_policy(policy_dir: "Path", required: bool):
    """The policy for `paths`; None when there is no policy directory and `required` is false."""
    from mptcpize_py.policy import load_policy
    if not required and not policy_dir.exists():
        return None
    return load_policy(policy_dir)


def cmd_paths(args) -> int:
    import logging

    from mptcpize_py import report
    from mptcpize_py.daemon import client
    state_dir = client.control_path().parent   # beside the daemon's control socket
    if args.follow and not args.apply:
        raise UsageError("paths: --follow only applies with --apply", hint=f"{PROG} paths --apply --follow")
    if args.apply:
        from mptcpize_py.paths.manager import PathManager, follow
        if args.netns is not None:
            raise UsageError("paths: --apply works on every namespace the policy selects, not --netns")
        policy = _paths_policy(args.policy_dir, required=True)
        if args.follow:
            logging.getLogger().setLevel(logging.INFO)
        manager = PathManager(state_dir, what="paths --apply --follow" if args.follow else "paths --apply",
                              follow=args.follow)
        try:
            manager.apply(policy, clean=True)
            for res in manager.results:
                for line in report.paths_apply_text(res):
                    _out(line)
            if args.follow:
                follow(manager, args.policy_dir, lambda: _paths_policy(args.policy_dir, required=True))
        finally:
            manager.close(release=args.follow)
        return 0
    from mptcpize_py.host.netns import netns_path
    from mptcpize_py.paths import paths_report
    if args.netns is not None:
        netns_path(args.netns)   # a usage error, or no such namespace, before anything else
    reports = paths_report(_paths_policy(args.policy_dir, required=False), state_dir, only=args.netns)
    _print(args.json, reports, report.paths_json, report.paths_text)
    return 0


def cmd_enable_disable(args) -> int:
    from mptcpize_py import enable
    out = (enable.enable if args.command == "enable" else enable.disable)(
        args.unit, now=args.now, policy_dir=args.policy_dir)
    for line in out.lines:
        _out(line)
    for line in out.warnings:
        _err(f"{PROG}: warning: {line}")
    return 0


def _setup_logging(debug: bool) -> None:
    """Other modules log (e.g. seccomp: a setuid program exec'd under no_new_privs); this prints it."""
    import logging
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logging.addLevelName(level, logging.getLevelName(level).lower())
    logging.basicConfig(format=f"{PROG}: %(levelname)s: %(message)s",
                        level=logging.DEBUG if debug else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _never_fail_on_encoding()
    try:
        try:
            return _main(argv)
        finally:
            # What is still buffered (argparse's --help, daemon --example-policy) fails here, while
            # BrokenPipeError is caught, rather than in the interpreter's last flush.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """A reader of our output went away (`mptcpize-py status | head -1`): end as ip and systemctl do,
    killed by SIGPIPE, silently. Python ignores SIGPIPE, so the write raised BrokenPipeError instead;
    not SIG_DFL from the start, which would kill the daemon for a peer closing a socket (Python's
    "Note on SIGPIPE"). As that note does, the streams go to /dev/null first, so that nothing buffered
    is written (and fails) again."""
    import os
    import signal
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, ValueError, OSError):
            pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPIPE})
    os.kill(os.getpid(), signal.SIGPIPE)
    return 128 + signal.SIGPIPE   # (not reached)


def _main(argv: list[str]) -> int:
    # Global options come first; after "run" everything belongs to run or to CMD. --debug is also
    # accepted after the command (argparse, or parse_run_args for run).
    i = 0
    while i < len(argv) and argv[i] == "--debug":
        i += 1
    debug = i > 0
    try:
        if i < len(argv) and argv[i] == "run":
            run_args = parse_run_args(argv[i + 1:])
            if run_args.help:
                _build_parser().parse_args(["run", "--help"])  # prints run's help and exits 0
            debug = run_args.debug = debug or run_args.debug
            return cmd_run(run_args)   # sets up logging itself, only where it is used
        parser = _build_parser()
        args = parser.parse_args(argv)
        debug = args.debug
        _setup_logging(debug)
        if args.command is None:
            raise UsageError("no command given", hint=f"see '{PROG} --help'")
        import os

        from mptcpize_py.host import root
        root.set_host_root(getattr(args, "host_root", None) or os.environ.get(root.ENV))
        return {"run": cmd_run, "check": cmd_check, "daemon": cmd_daemon,
                "status": cmd_status, "resync": cmd_resync, "metrics": cmd_metrics, "paths": cmd_paths,
                "enable": cmd_enable_disable, "disable": cmd_enable_disable}[args.command](args)
    except MptcpizeError as e:
        if debug:
            import traceback
            traceback.print_exc()
        for message in getattr(e, "errors", None) or [e.message]:  # PolicyError: every file:line
            _err(f"{PROG}: error: {message}")
        if e.hint:
            _err(f"{PROG}: hint: {e.hint}")
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
