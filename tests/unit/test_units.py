"""enable/disable's files (units.py) in a temporary root: what is written, that the daemon's policy loader
accepts it, idempotence, the exact round trip, refusals. systemd itself is exercised in
tests/host/test_enable.py (systemd-analyze verify) and tests/systemd/test_service.py (real PID 1)."""

import os
import stat
import sys
from pathlib import Path

import pytest

from mptcpize_py import report, units
from mptcpize_py.errors import MptcpizeError, UsageError
from mptcpize_py.policy import load_policy, parse_policy_text

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
    return units.Tree(tmp_path)


# --- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", [
    "nginx.service", "foo@bar.service", "getty@tty1.service", r"foo\x2dbar.service",
    "a:b_c-d.e.service", "system-x@y@z.service", "x" * 237 + ".service",
])
def test_good_service_names(unit):
    assert units.check_service_name(unit) is None


@pytest.mark.parametrize("unit, needle", [
    ("", "empty"),
    ("nginx", "no valid unit type suffix"),
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
    problem = units.check_service_name(unit)
    assert problem and needle in problem
    with pytest.raises(UsageError):
        units.validate_service_name(unit)


@pytest.mark.parametrize("unit", ["nginx.service", "foo@bar.service", r"foo\x2dbar.service"])
def test_policy_file_name_maps_back(unit):
    name = units.policy_file_name(unit)
    assert "/" not in name and not name.startswith(".") and name.endswith(".toml")
    assert units.enabled_unit_of_file("/etc/mptcpize-py/policy.d/" + name) == unit


@pytest.mark.parametrize("name", ["10-site.toml", "unit-.toml", "unit-foo@.service.toml",
                                  "unit-x.socket.toml", "unit-nginx.service.toml.bak"])
def test_other_files_are_not_enabled_units(name):
    assert units.enabled_unit_of_file(name) is None


# --- generated text ------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["nginx.service", "foo@bar.service", r"foo\x2dbar.service"])
def test_policy_text_is_one_allow_rule_for_the_unit(unit):
    pol = parse_policy_text(units.policy_text(unit), "unit.toml")
    assert [(r.action, r.kind, r.value) for r in pol.rules] == [("allow", "unit", unit)]
    assert units.policy_text(unit).startswith(units.MARKER)


def test_dropin_text():
    text = units.dropin_text("nginx.service", EXE)
    assert text.startswith(units.MARKER)
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
    assert units.cli_executable() == str(beside)
    beside.unlink()
    assert units.cli_executable() == str(on_path)


def test_cli_executable_missing_or_unquotable_is_an_error(install, monkeypatch):
    with pytest.raises(MptcpizeError, match="cannot find the mptcpize-py executable") as e:
        units.cli_executable()
    assert e.value.hint == "install the package so that mptcpize-py is on PATH"
    monkeypatch.setattr(sys, "executable", str(install / "my venv" / "bin" / "python3"))
    exe = console_script(install / "my venv" / "bin")
    with pytest.raises(MptcpizeError, match="would need quoting"):
        units.cli_executable()
    assert exe.exists()


# --- files ------------------------------------------------------------------------------------------

def test_enable_writes_two_files_the_daemon_accepts(tree):
    changed = units.write_files("nginx.service", EXE, tree)
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
    assert units.enabled_units(tree) == ["nginx.service"]


def test_enable_twice_changes_nothing(tree):
    units.write_files("nginx.service", EXE, tree)
    before = {p: p.stat() for p in (tree.policy("nginx.service"), tree.dropin("nginx.service"))}
    snap = snapshot(tree.root)
    assert units.write_files("nginx.service", EXE, tree) == []
    for p, st in before.items():
        st2 = p.stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert snapshot(tree.root) == snap


def test_enable_rewrites_its_own_outdated_file(tree):
    units.write_files("nginx.service", EXE, tree)
    tree.dropin("nginx.service").write_text(units.MARKER + " (an older version)\n[Unit]\n")
    assert units.write_files("nginx.service", EXE, tree) == [tree.dropin("nginx.service")]
    assert tree.dropin("nginx.service").read_text() == units.dropin_text("nginx.service", EXE)


def test_round_trip_leaves_the_tree_identical(tree):
    snap = snapshot(tree.root)
    units.write_files("nginx.service", EXE, tree)
    assert snapshot(tree.root) != snap
    removed = units.remove_files("nginx.service", tree)
    assert tree.policy_dir.parent in removed and tree.dropin("nginx.service").parent in removed
    assert snapshot(tree.root) == snap
    assert units.remove_files("nginx.service", tree) == []   # twice: nothing to do


def test_round_trip_interleaved_units(tree):
    snap = snapshot(tree.root)
    units.write_files("a.service", EXE, tree)
    units.write_files("b@x.service", EXE, tree)
    assert units.enabled_units(tree) == ["a.service", "b@x.service"]
    units.remove_files("a.service", tree)      # a created the shared directories; b still uses them
    assert tree.policy("b@x.service").exists()
    units.remove_files("b@x.service", tree)
    assert snapshot(tree.root) == snap


def test_directories_that_existed_stay(tree):
    """An empty policy.d someone else made, and a drop-in directory with the admin's override."""
    tree.policy_dir.mkdir(parents=True)
    (tree.root / "etc/systemd/system/nginx.service.d").mkdir()
    (tree.root / "etc/systemd/system/nginx.service.d/override.conf").write_text(
        "[Service]\nEnvironment=WORKERS=4\nEnvironment=MODE=prod\n")
    snap = snapshot(tree.root)
    units.write_files("nginx.service", EXE, tree)
    units.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap


@pytest.mark.parametrize("which", ["dropin", "policy"])
def test_refuses_a_file_it_did_not_write(tree, which):
    path = tree.dropin("nginx.service") if which == "dropin" else tree.policy("nginx.service")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[Service]\nEnvironment=MINE=1\n")
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="not written by mptcpize-py enable"):
        units.write_files("nginx.service", EXE, tree)
    assert snapshot(tree.root) == snap
    with pytest.raises(MptcpizeError, match="not written by mptcpize-py enable"):
        units.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap


def test_refuses_a_symlink_at_its_path(tree):
    d = tree.dropin("nginx.service").parent
    d.mkdir(parents=True)
    target = tree.root / "elsewhere.conf"
    target.write_text(units.MARKER + "\n")
    os.symlink(target, d / units.DROPIN_NAME)
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="symbolic link"):
        units.write_files("nginx.service", EXE, tree)
    with pytest.raises(MptcpizeError, match="symbolic link"):
        units.remove_files("nginx.service", tree)
    assert snapshot(tree.root) == snap


def test_failure_half_way_puts_everything_back(tree):
    """The drop-in directory's name is taken by a file: the policy record already written is removed
    again, with the directories created for it."""
    (tree.root / "etc/systemd/system/nginx.service.d").write_text("not a directory\n")
    snap = snapshot(tree.root)
    with pytest.raises(MptcpizeError, match="cannot write"):
        units.write_files("nginx.service", EXE, tree)
    assert snapshot(tree.root) == snap


def test_no_temporary_files_left(tree):
    units.write_files("nginx.service", EXE, tree)
    units.write_files("nginx.service", EXE + "2", tree)
    leftovers = [p for p in tree.root.rglob(".*.tmp-*")]
    assert leftovers == []


def test_policy_warnings(tree):
    uid = os.geteuid()
    units.write_files("nginx.service", EXE, tree)
    assert units.policy_warnings("nginx.service", tree, uid) == []
    site = tree.policy_dir / "10-site.toml"
    site.write_text('[[deny]]\nunit = "nginx.service"\n')
    site.chmod(0o644)
    (warning,) = units.policy_warnings("nginx.service", tree, uid)
    assert "deny unit=nginx.service (10-site.toml:1) beats the allow rule" in warning
    site.write_text("[[allow]]\nexe = 'relative'\n")
    (warning,) = units.policy_warnings("nginx.service", tree, uid)
    assert warning.startswith("the policy in /etc/mptcpize-py/policy.d does not load") and \
        "10-site.toml:2" in warning


# --- status --------------------------------------------------------------------------------------

def test_status_enabled_units_section():
    status = {
        "policy": {
            "files": ["/etc/mptcpize-py/policy.d/10-site.toml",
                      "/etc/mptcpize-py/policy.d/unit-nginx.service.toml",
                      "/etc/mptcpize-py/policy.d/unit-foo@bar.service.toml"],
            "rules": [
                {"id": 16, "description": "allow exe=/usr/bin/iperf3 (10-site.toml:2)", "target": "x"},
                {"id": 17, "description": "allow unit=nginx.service (unit-nginx.service.toml:4)",
                 "target": "/system.slice/nginx.service (cgroup id 99)"},
                {"id": 18, "description": "allow unit=foo@bar.service (unit-foo@bar.service.toml:4)",
                 "target": None},
            ],
        },
        "processes": [
            {"pid": 1, "unit": "nginx.service", "upgraded": 3, "alive": True},
            {"pid": 2, "unit": "nginx.service", "upgraded": 4, "alive": False},
            {"pid": 3, "unit": None, "upgraded": 9, "alive": True},
        ],
    }
    lines = report.enabled_units_text(status)
    assert lines[0].startswith("enabled units")
    body = "\n".join(lines[1:])
    assert "nginx.service: 7 socket(s) upgraded in 2 process(es)" in body
    assert "/system.slice/nginx.service (cgroup id 99)" in body
    assert "foo@bar.service: 0 socket(s) upgraded in 0 process(es)" in body
    assert "iperf3" not in body
    assert report.enabled_units_text({"policy": {"files": [], "rules": []}, "processes": []}) == \
        ["enabled units (mptcpize-py enable): none"]
