"""enable/disable's files (enable.py) in a temporary root: what is written, that the daemon's policy loader
accepts it, idempotence, the exact round trip, refusals. systemd itself is exercised in
tests/host/test_enable.py (systemd-analyze verify) and tests/systemd/test_service.py (real PID 1)."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from mptcpize_py import enable, report
from mptcpize_py.errors import MptcpizeError, UsageError
from mptcpize_py.policy import load_policy, parse_policy_text
from mptcpize_py.policy import names as policy_names
from tests.unit.status_builder import daemon_status, policy, process, rule

EXE = "/opt/mptcpize-py/venv/bin/mptcpize-py"


def snapshot(root: Path) -> dict:
    """Every path under root with its type, mode, owner and content (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_gid, p.read_bytes())
    return out


@pytest.fixture
def tree(tmp_path):
    """A root with a vendor-ish /etc/systemd/system (an enabled unit link, a drop-in of another unit)."""
    sd = tmp_path / "etc/systemd/system"
    (sd / "multi-user.target.wants").mkdir(parents=True)
    os.symlink("/lib/systemd/system/ssh.service", sd / "multi-user.target.wants/ssh.service")
    (sd / "other.service.d").mkdir()
    (sd / "other.service.d/override.conf").write_text("[Service]\nEnvironment=A=1\n")
    return enable.Tree(tmp_path)


def enabled_units(tree) -> list[str]:
    """The units whose policy record is in the tree (what the daemon will select)."""
    names = sorted(os.listdir(tree.policy_dir)) if tree.policy_dir.is_dir() else []
    return [u for u in map(policy_names.enabled_unit_of_file, names) if u]


# --- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", [
    "nginx.service", "foo@bar.service", "getty@tty1.service", r"foo\x2dbar.service",
    "a:b_c-d.e.service", "system-x@y@z.service", "x" * 237 + ".service",
])
def test_good_service_names(unit):
    assert enable.check_service_name(unit) is None


@pytest.mark.parametrize("unit, needle", [
    ("", "empty"),
    ("foo@.service", "template"),
    ("@bar.service", "starts with '@'"),
    ("nginx.socket", "not a service"),
    ("nginx.timer", "runs no processes"),
    ("../x.service", "'/' is not allowed"),
    ("a b.service", "' ' is not allowed"),
    ("a\n.service", r"'\n' is not allowed"),
    ("x;rm -rf /.service", "';' is not allowed"),
    ("x" * 250 + ".service", "at most 255"),
    ("x" * 238 + ".service", "too long"),   # unit-NAME.toml must fit in 255 bytes
    (None, "must be a string"),
])
def test_bad_service_names(unit, needle):
    problem = enable.check_service_name(unit)
    assert problem and needle in problem
    with pytest.raises(UsageError):
        enable.validate_service_name(unit)


@pytest.mark.parametrize("given, unit", [
    ("nginx", "nginx.service"), ("nginx.service", "nginx.service"), ("getty@tty1", "getty@tty1.service"),
    ("a.conf", "a.conf.service"),   # systemctl too: ".conf" is no unit type
])
def test_a_name_without_unit_type_is_a_service(given, unit):
    """As systemctl reads a name (unit_name_mangle_with_suffix)."""
    assert enable.validate_service_name(given) == unit


def test_a_template_without_unit_type_is_still_refused():
    with pytest.raises(UsageError, match="'foo@.service' is a template"):
        enable.validate_service_name("foo@")


@pytest.mark.parametrize("unit", ["nginx.service", "foo@bar.service", r"foo\x2dbar.service"])
def test_policy_file_name_maps_back(unit):
    name = enable.policy_file_name(unit)
    assert "/" not in name and not name.startswith(".") and name.endswith(".toml")
    assert policy_names.enabled_unit_of_file("/etc/mptcpize-py/policy.d/" + name) == unit


@pytest.mark.parametrize("name", ["10-site.toml", "unit-.toml", "unit-foo@.service.toml",
                                  "unit-x.socket.toml", "unit-nginx.service.toml.bak"])
def test_other_files_are_not_enabled_units(name):
    assert policy_names.enabled_unit_of_file(name) is None


# --- generated text ------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["nginx.service", "foo@bar.service", r"foo\x2dbar.service"])
def test_policy_text_is_one_allow_rule_for_the_unit(unit):
    pol = parse_policy_text(enable.policy_text(unit), "unit.toml")
    assert [(r.action, r.kind, r.value) for r in pol.rules] == [("allow", "unit", unit)]
    assert enable.policy_text(unit).startswith(enable.MARKER)


def test_dropin_text():
    text = enable.dropin_text("nginx.service", EXE)
    assert text.startswith(enable.MARKER)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["[Unit]", "Wants=mptcpize-py.service", "After=mptcpize-py.service", "[Service]",
                     f"ExecStartPre=-+{EXE} resync --unit %n"]


def console_script(d: Path) -> Path:
    d.mkdir(parents=True)
    exe = d / "mptcpize-py"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


@pytest.fixture
def install(tmp_path_factory, monkeypatch):
    """A made-up install: this interpreter in ROOT/venv/bin, PATH=ROOT/path; whatever the real
    interpreter has does not count."""
    root = tmp_path_factory.mktemp("install")
    monkeypatch.setattr(sys, "executable", str(root / "venv" / "bin" / "python3"))
    monkeypatch.setenv("PATH", str(root / "path"))
    return root


def test_cli_executable_is_the_console_script_next_to_the_interpreter_else_on_path(install):
    beside = console_script(install / "venv" / "bin")
    on_path = console_script(install / "path")
    assert enable.cli_executable() == str(beside)
    beside.unlink()
    assert enable.cli_executable() == str(on_path)


def test_cli_executable_missing_or_unquotable_is_an_error(install, monkeypatch):
    with pytest.raises(MptcpizeError, match="cannot find the mptcpize-py executable") as e:
        enable.cli_executable()
    assert e.value.hint == "install the package so that mptcpize-py is on PATH"
    monkeypatch.setattr(sys, "executable", str(install / "my venv" / "bin" / "python3"))
    exe = console_script(install / "my venv" / "bin")
    with pytest.raises(MptcpizeError, match="would need quoting"):
        enable.cli_executable()
    assert exe.exists()


# --- files ------------------------------------------------------------------------------------------

def test_enable_writes_two_files_the_daemon_accepts(tree):
    changed = enable.write_files("nginx.service", EXE, tree)
    assert changed == [tree.policy("nginx.service"), tree.dropin("nginx.service")]
    assert tree.dropin("nginx.service") == tree.root / "etc/systemd/system/nginx.service.d/mptcpize-py.conf"
    assert tree.policy("nginx.service") == tree.root / "etc/mptcpize-py/policy.d/unit-nginx.service.toml"
    for p in changed:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    for d in (tree.policy_dir, tree.policy_dir.parent, tree.dropin("nginx.service").parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    # The daemon's own loader (ownership and mode checks included) takes the directory as it is.
    pol = load_policy(tree.policy_dir, owner_uid=os.geteuid())
    assert [(r.action, r.kind, r.value) for r in pol.rules] == [("allow", "unit", "nginx.service")]
    assert enabled_units(tree) == ["nginx.service"]


def test_enable_twice_changes_nothing(tree):
    enable.write_files("nginx.service", EXE, tree)
    before = {p: p.stat() for p in (tree.policy("nginx.service"), tree.dropin("nginx.service"))}
    snap = snapshot(tree.root)
    assert enable.write_files("nginx.service", EXE, tree) == []
    for p, st in before.items():
        st2 = p.stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert snapshot(tree.root) == snap


def test_enable_rewrites_its_own_outdated_file(tree):
    enable.write_files("nginx.service", EXE, tree)
    tree.dropin("nginx.service").write_text(enable.MARKER + " (an older version)\n[Unit]\n")
    assert enable.write_files("nginx.service", EXE, tree) == [tree.dropin("nginx.service")]
    assert tree.dropin("nginx.service").read_text() == enable.dropin_text("nginx.service", EXE)


def test_round_trip_leaves_the_tree_identical(tree):
    snap = snapshot(tree.root)
    enable.write_files("nginx.service", EXE, tree)
    assert snapshot(tree.root) != snap
    removed = enable.remove_files("nginx.service", tree)
    assert tree.policy_dir.parent in removed and tree.dropin("nginx.service").parent in removed
    assert snapshot(tree.root) == snap
    assert enable.remove_files("nginx.service", tree) == []   # twice: nothing to do


def test_round_trip_interleaved_units(tree):
    snap = snapshot(tree.root)
    enable.write_files("a.service", EXE, tree)
    enable.write_files("b@x.service", EXE, tree)
    assert enabled_units(tree) == ["a.service", "b@x.service"]
    enable.remove_files("a.service", tree)      # a created the shared directories; b still uses them
    assert tree.policy("b@x.service").exists()
    enable.remove_files("b@x.service", tree)
    assert snapshot(tree.root) == snap


def test_directories_that_existed_stay(tree):
    """An empty policy.d someone else made, and a drop-in directory with the admin's override."""
    tree.policy_dir.mkdir(parents=True)
    (tree.root / "etc/systemd/system/nginx.service.d").mkdir()
    (tree.root / "etc/systemd/system/nginx.service.d/override.conf").write_text(
        "[Service]\nEnvironment=WORKERS=4\nEnvironment=MODE=prod\n")
    snap = snapshot(tree.root)
    enable.write_files("nginx.service", EXE, tree)
    enable.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap


@pytest.mark.parametrize("which", ["dropin", "policy"])
def test_refuses_a_file_it_did_not_write(tree, which):
    path = tree.dropin("nginx.service") if which == "dropin" else tree.policy("nginx.service")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[Service]\nEnvironment=MINE=1\n")
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="not written by mptcpize-py enable"):
        enable.write_files("nginx.service", EXE, tree)
    assert snapshot(tree.root) == snap
    with pytest.raises(MptcpizeError, match="not written by mptcpize-py enable"):
        enable.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap


def test_refuses_a_symlink_at_its_path(tree):
    d = tree.dropin("nginx.service").parent
    d.mkdir(parents=True)
    target = tree.root / "elsewhere.conf"
    target.write_text(enable.MARKER + "\n")
    os.symlink(target, d / enable.DROPIN_NAME)
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="symbolic link"):
        enable.write_files("nginx.service", EXE, tree)
    with pytest.raises(MptcpizeError, match="symbolic link"):
        enable.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap


def link_dir(tree, rel: str) -> Path:
    """Makes ROOT/rel a symbolic link to a real directory elsewhere (ROOT/elsewhere/NAME)."""
    link = tree.root / rel
    target = tree.root / "elsewhere" / link.name
    target.mkdir(parents=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


SYMLINKED_DIRS = ["etc/systemd/system/nginx.service.d", "etc/mptcpize-py/policy.d", "etc/mptcpize-py"]


@pytest.mark.parametrize("rel", SYMLINKED_DIRS)
def test_enable_refuses_a_symlinked_directory(tree, rel):
    link = link_dir(tree, rel)
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError) as e:
        enable.write_files("nginx.service", EXE, tree)
    assert e.value.message == f"{link} is a symbolic link: refusing to write through it"
    assert e.value.hint.startswith("replace the link with a real directory")
    assert snapshot(tree.root) == snap    # nothing written, here or where the link leads


@pytest.mark.parametrize("rel", SYMLINKED_DIRS)
def test_disable_refuses_a_symlinked_directory(tree, rel):
    """enable wrote into real directories; then one of them was moved away and linked back."""
    enable.write_files("nginx.service", EXE, tree)
    real = tree.root / rel
    target = tree.root / "elsewhere" / real.name
    target.parent.mkdir()
    real.rename(target)
    real.symlink_to(target)
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match=f"^{real} is a symbolic link: refusing to remove files through"):
        enable.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap    # nothing removed


def test_a_dangling_directory_link_is_refused(tree):
    (tree.root / "etc/mptcpize-py").symlink_to(tree.root / "nowhere")
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="symbolic link: refusing to write") as e:
        enable.write_files("nginx.service", EXE, tree)
    assert "--policy-dir" in e.value.hint
    assert snapshot(tree.root) == snap


def test_failure_half_way_puts_everything_back(tree):
    """The drop-in directory's name is taken by a file: the policy record already written is removed
    again, with the directories created for it."""
    (tree.root / "etc/systemd/system/nginx.service.d").write_text("not a directory\n")
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="cannot write"):
        enable.write_files("nginx.service", EXE, tree)
    assert snapshot(tree.root) == snap


def test_no_temporary_files_left(tree):
    enable.write_files("nginx.service", EXE, tree)
    enable.write_files("nginx.service", EXE + "2", tree)
    leftovers = [p for p in tree.root.rglob(".*.tmp")]
    assert leftovers == []


def test_policy_warnings(tree):
    uid = os.geteuid()
    enable.write_files("nginx.service", EXE, tree)
    assert enable.policy_warnings("nginx.service", tree, uid) == []
    site = tree.policy_dir / "10-site.toml"
    site.write_text('[[deny]]\nunit = "nginx.service"\n')
    site.chmod(0o644)
    (warning,) = enable.policy_warnings("nginx.service", tree, uid)
    assert "deny unit=nginx.service (10-site.toml:1) beats the allow rule" in warning
    site.write_text("[[allow]]\nexe = 'relative'\n")
    (warning,) = enable.policy_warnings("nginx.service", tree, uid)
    assert warning.startswith("the policy in /etc/mptcpize-py/policy.d does not load") and \
        "10-site.toml:2" in warning


# --- status --------------------------------------------------------------------------------------

def test_status_enabled_units_section():
    nginx = rule(17, "allow", "unit", "nginx.service", file="unit-nginx.service.toml", line=4,
                 target="/system.slice/nginx.service (cgroup id 99)")
    status = daemon_status(
        policy((rule(16, "allow", "exe", "/usr/bin/iperf3", file="10-site.toml", line=2, target="x"),
                nginx,
                rule(18, "allow", "unit", "foo@bar.service", file="unit-foo@bar.service.toml", line=4)),
               files=("10-site.toml", "unit-nginx.service.toml", "unit-foo@bar.service.toml")),
        [process(1, nginx, unit="nginx.service", upgraded=3),
         process(2, nginx, unit="nginx.service", upgraded=4, alive=False),
         process(3, upgraded=9)])
    lines = report.enabled_units_text(status)
    assert lines[0].startswith("enabled units")
    body = "\n".join(lines[1:])
    assert "nginx.service: 7 socket(s) upgraded in 2 process(es)" in body
    assert "/system.slice/nginx.service (cgroup id 99)" in body
    assert "foo@bar.service: 0 socket(s) upgraded in 0 process(es)" in body
    assert "iperf3" not in body
    assert report.enabled_units_text(daemon_status()) == ["enabled units (mptcpize-py enable): none"]


def test_status_enabled_unit_record_is_its_files_unit_rule():
    """The target shown is the one of the rule `enable` wrote (unit=UNIT in unit-UNIT.toml), not of
    another file's rule for the unit, nor of another rule in that file."""
    def rules_of(*rules):
        files = ("10-site.toml", "unit-nginx.service.toml")
        return report.enabled_units_text(daemon_status(policy(rules, files=files)))[1]

    site = rule(16, "deny", "unit", "nginx.service", file="10-site.toml", line=2, target="site's")
    # A name that quotes another file's position does not make a rule that file's.
    named = rule(17, "allow", "unit", "nginx.service", name="(unit-nginx.service.toml:1)",
                 file="10-site.toml", line=5, target="named")
    exe = rule(18, "allow", "exe", "/usr/sbin/nginx", file="unit-nginx.service.toml", line=1,
               target="exe's")
    mine = rule(19, "allow", "unit", "nginx.service", file="unit-nginx.service.toml", line=3,
                target="mine")
    assert rules_of(site, named, exe, mine).endswith("-> mine")
    assert rules_of(site, named, exe).endswith("-> not running")


# --- boot ordering (a stand-in systemctl answering from a made-up ordering graph) -------------------

STAND_IN = """\
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "runs"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] != "show":
    sys.exit(0)                                   # daemon-reload, restart
graph = json.load(open(os.path.join(here, "graph.json")))
sep = sys.argv.index("--")
props = [p for a in sys.argv[2:sep] if a.startswith("--property=") for p in a[11:].split(",")]
units = sys.argv[sep + 1:]
blocks = []
for u in units:
    known = graph.get(u)
    have = {"Id": u, "LoadState": "loaded" if known is not None else "not-found", **(known or {})}
    blocks.append("".join(f"{p}={have.get(p, '')}\\n" for p in props))
print("\\n".join(blocks), end="")
"""

TIMESYNCD_EXEC = ("{ path=/lib/systemd/systemd-timesyncd ; argv[]=/lib/systemd/systemd-timesyncd ; "
                  "ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; "
                  "status=0/0 }")
# Debian 12's units, as `systemctl show -p Before,After` prints them (abridged).
GRAPH = {
    "mptcpize-py.service": {"After": "sysinit.target system.slice basic.target systemd-journald.socket"},
    "systemd-timesyncd.service": {"Before": "time-set.target sysinit.target shutdown.target",
                                  "ExecStart": TIMESYNCD_EXEC},
    "mzu-early.service": {"Before": "local-fs.target"},            # two hops to sysinit.target
    "mzu-first.service": {"Before": "mptcpize-py.service"},        # ordered before the daemon itself
    "nginx.service": {"Before": "multi-user.target shutdown.target"},
    "local-fs.target": {"Before": "sysinit.target"},
    "time-set.target": {"Before": ""},
    "sysinit.target": {"Before": "basic.target mptcpize-py.service"},
    "basic.target": {"Before": "multi-user.target mptcpize-py.service"},
    "multi-user.target": {"Before": "graphical.target shutdown.target"},
    "graphical.target": {"Before": ""},
    "shutdown.target": {"Before": ""},
}


@pytest.fixture
def systemctl(tmp_path, monkeypatch):
    """The stand-in as the `systemctl` every call finds (the fixed PATH holds only it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "systemctl"
    exe.write_text(f"#!{sys.executable}\n{STAND_IN}")
    exe.chmod(0o755)
    (bin_dir / "graph.json").write_text(json.dumps(GRAPH))
    from mptcpize_py.host import systemd
    monkeypatch.setattr(systemd, "_SYSTEMCTL_ENV", {**systemd._SYSTEMCTL_ENV, "PATH": str(bin_dir)})

    class Stand:
        def graph(self, **changes):
            (bin_dir / "graph.json").write_text(json.dumps({**GRAPH, **changes}))

        def runs(self) -> list[str]:
            p = bin_dir / "runs"
            return p.read_text().splitlines() if p.exists() else []
    return Stand()


@pytest.mark.parametrize("unit, chain", [
    ("systemd-timesyncd.service", "systemd-timesyncd.service is before sysinit.target, which "
                                  "mptcpize-py.service starts after"),
    ("mzu-early.service", "mzu-early.service is before local-fs.target is before sysinit.target, which "
                          "mptcpize-py.service starts after"),
    ("mzu-first.service", "mzu-first.service is before mptcpize-py.service"),
])
def test_a_unit_ordered_before_the_daemon_is_refused(systemctl, unit, chain):
    with pytest.raises(MptcpizeError) as e:
        enable.ordering_cycle(unit)
    assert e.value.exit_code == 1
    assert e.value.message == (f"{unit} starts before mptcpize-py.service can ({chain}): the drop-in's "
                               "After=mptcpize-py.service would make an ordering cycle, and systemd "
                               "would break it at boot by deleting a start job")
    assert e.value.hint.startswith("select it by its executable instead: [[allow]] exe = ")


def test_the_refusal_names_the_units_program(systemctl):
    with pytest.raises(MptcpizeError) as e:
        enable.ordering_cycle("systemd-timesyncd.service")
    assert e.value.hint.startswith('select it by its executable instead: [[allow]] exe = '
                                   '"/lib/systemd/systemd-timesyncd" in a file of /etc/mptcpize-py/policy.d')


def test_a_unit_ordered_after_basic_target_is_accepted(systemctl):
    assert enable.ordering_cycle("nginx.service") is None
    # One process per level of the Before= walk (not per unit): the daemon's After=, nginx, its 2
    # successors, graphical.target.
    assert len(systemctl.runs()) == 4, systemctl.runs()


def test_daemon_not_installed_its_default_dependencies_count(systemctl):
    """Not loaded, mptcpize-py.service has no After= in systemd, nor do the targets list it in their
    Before=: its DefaultDependencies=yes (After=sysinit.target basic.target) stand in."""
    systemctl.graph(**{"mptcpize-py.service": None, "sysinit.target": {"Before": "basic.target"},
                       "basic.target": {"Before": "multi-user.target"}})
    with pytest.raises(MptcpizeError, match="systemd-timesyncd.service is before sysinit.target, which"):
        enable.ordering_cycle("systemd-timesyncd.service")
    assert enable.ordering_cycle("nginx.service") is None


def test_enabling_the_daemon_itself_is_a_usage_error(systemctl):
    with pytest.raises(UsageError, match="is the daemon itself"):
        enable.ordering_cycle("mptcpize-py.service")


def test_systemd_not_answering_refuses(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho 'Failed to connect to bus: No such file' >&2\nexit 1\n")
    (bin_dir / "systemctl").chmod(0o755)
    from mptcpize_py.host import systemd
    monkeypatch.setattr(systemd, "_SYSTEMCTL_ENV", {**systemd._SYSTEMCTL_ENV, "PATH": str(bin_dir)})
    with pytest.raises(MptcpizeError, match="cannot ask systemd how mptcpize-py.service is ordered: "
                                            "systemctl show mptcpize-py.service: Failed to connect"):
        enable.ordering_cycle("nginx.service")


@pytest.fixture
def enable_in(tmp_path, monkeypatch, systemctl):
    """enable() as root on a systemd host, but writing under tmp_path/root and talking to the stand-in:
    PID 1 "is" systemd, the kernel "supports" the hook."""
    from types import SimpleNamespace

    from mptcpize_py.host import systemd
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "run-systemd-system").mkdir()
    monkeypatch.setattr(systemd, "SYSTEMD_RUNTIME", str(tmp_path / "run-systemd-system"))
    monkeypatch.setattr(enable, "kernel_support", lambda: SimpleNamespace(problems=[]))
    monkeypatch.setattr(enable, "cli_executable", lambda: EXE)
    real_tree = enable.Tree
    monkeypatch.setattr(enable, "Tree", lambda policy_path: real_tree(root, policy_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return root


def test_enable_of_an_early_boot_unit_writes_nothing(enable_in, systemctl):
    """Before: enable wrote the drop-in, and at the next boot systemd deleted a start job to break the
    cycle (systemd-timesyncd's, or the daemon's)."""
    unit = "systemd-timesyncd.service"   # systemd would apply the drop-in, were it written
    systemctl.graph(**{unit: {**GRAPH[unit], "DropInPaths": f"{enable_in}/etc/systemd/system/{unit}.d/"
                                                           "mptcpize-py.conf"}})
    snap = snapshot(enable_in)
    with pytest.raises(MptcpizeError, match="systemd-timesyncd.service starts before mptcpize-py.service"):
        enable.enable("systemd-timesyncd.service")
    assert snapshot(enable_in) == snap
    assert not any(r.startswith("daemon-reload") for r in systemctl.runs())


def test_enable_of_an_ordinary_service_still_writes(enable_in, systemctl):
    dropin = enable_in / "etc/systemd/system/nginx.service.d/mptcpize-py.conf"
    systemctl.graph(**{"nginx.service": {**GRAPH["nginx.service"], "DropInPaths": str(dropin)}})
    out = enable.enable("nginx.service")
    assert out.lines[0].startswith("enabled nginx.service: wrote ")
    assert dropin.read_text() == enable.dropin_text("nginx.service", EXE)


def test_enable_of_a_short_name_writes_under_the_full_name(enable_in, systemctl):
    dropin = enable_in / "etc/systemd/system/nginx.service.d/mptcpize-py.conf"
    systemctl.graph(**{"nginx.service": {**GRAPH["nginx.service"], "DropInPaths": str(dropin)}})
    out = enable.enable("nginx")
    assert out.unit == "nginx.service" and out.lines[0].startswith("enabled nginx.service: wrote ")
    assert dropin.read_text() == enable.dropin_text("nginx.service", EXE)
    assert (enable_in / "etc/mptcpize-py/policy.d/unit-nginx.service.toml").exists()
    assert not any(" nginx" in r and "nginx.service" not in r for r in systemctl.runs())


def test_enable_waits_for_systemd_as_long_as_systemctl_does(systemctl, monkeypatch):
    """A person runs enable: its questions to systemd get systemctl's own limit, not the daemon loop's
    2 s, which a busy machine (qemu TCG, the daemon just started) exceeded."""
    from mptcpize_py.host import systemd
    limits = []
    real = systemd.systemctl

    def recording(*args, timeout=systemd.SYSTEMCTL_TIMEOUT, **kw):
        limits.append(timeout)
        return real(*args, timeout=timeout, **kw)

    monkeypatch.setattr(systemd, "systemctl", recording)
    with pytest.raises(MptcpizeError):
        enable.ordering_cycle("systemd-timesyncd.service")   # every question: graph, chain, ExecStart
    assert len(limits) >= 3 and min(limits) >= systemd.SYSTEMCTL_TIMEOUT, limits
