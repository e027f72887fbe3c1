"""`mptcpize-py daemon --check` (and a daemon start, which validates the same way before loading BPF)
on bad input: one clear `file:line: reason` line each, exit 78, nothing loaded."""

import os
import shutil

import pytest

from tests.conftest import is_root, mptcpize

pytestmark = pytest.mark.skipif(not is_root(), reason="policy files must be root-owned")


def errors(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("mptcpize-py: error:")]


def check(policy_dir, *extra):
    return mptcpize("daemon", "--policy-dir", str(policy_dir), *extra, "--check")


def policy(tmp_path, text, name="10.toml"):
    d = tmp_path / "policy.d"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    os.chmod(d / name, 0o644)
    return d


def assert_bad(proc, *needles):
    assert proc.returncode == 78, (proc.returncode, proc.stderr)
    lines = errors(proc)
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("text,needles", [
    ("[[allow]\nexe = '/bin/true'\n", ["10.toml:1: invalid TOML"]),
    ("[[allow]]\nexe = '/bin/true'\ncolour = 'blue'\n", ["10.toml:3: unknown key 'colour'"]),
    ("[[allow]]\nexe = '/bin/true'\ncgroup = '/x'\n", ["10.toml:1:", "2 selectors"]),
    ("[[allow]]\nexe = 'bin/true'\n", ["10.toml:2: exe:", "not an absolute path"]),
    ("\n[[allow]]\nexe = '/nonexistent/mzd-binary'\n", ["10.toml:2: exe=/nonexistent/mzd-binary:",
                                                         "does not exist"]),
    ("[[allow]]\nunit = 'nginx.service; rm -rf /'\n", ["10.toml:2: unit:", "not a valid unit name"]),
    ("[[allow]]\nunit = '$(reboot).service'\n", ["10.toml:2: unit:", "not a valid unit name"]),
    # The command line reads `nginx` as nginx.service; a policy names units in full, and says so.
    ("[[allow]]\nunit = 'nginx'\n", ["10.toml:2: unit: 'nginx' has no unit type suffix: write "
                                       "'nginx.service'", "only the command line reads a bare name"]),
])
def test_bad_policy_one_line_each(tmp_path, text, needles):
    assert_bad(check(policy(tmp_path, text)), *needles)


def test_missing_policy_dir(tmp_path):
    proc = check(tmp_path / "nope")
    assert_bad(proc, "nope: policy directory does not exist")
    assert "mptcpize-py: hint: create it" in proc.stderr


def test_writable_policy_file_refused(tmp_path):
    d = policy(tmp_path, "[[allow]]\nexe = '/bin/true'\n")
    os.chmod(d / "10.toml", 0o666)
    assert_bad(check(d), "10.toml: refused: world-writable")


def test_every_problem_is_listed(tmp_path):
    d = policy(tmp_path, "[[allow]]\nexe = 'rel'\n[[deny]]\nunit = 'a b.service'\n")
    proc = check(d)
    assert proc.returncode == 78
    lines = errors(proc)
    assert len(lines) == 2 and "10.toml:2:" in lines[0] and "10.toml:4:" in lines[1], proc.stderr


def test_good_policy_checks_ok(tmp_path):
    d = policy(tmp_path, "[[allow]]\nexe = '/bin/true'\n[[allow]]\ncgroup = '/mzd-not-yet'\n")
    proc = check(d)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("policy ok: 2 allow, 0 deny rules from 1 file; netns: host")
    assert "pending:" in proc.stdout and "/mzd-not-yet" in proc.stdout



def test_odd_names_are_shown_escaped_under_a_strict_utf8_stdout(tmp_path):
    # A policy file's name and the file an exe rule's symlink leads to hold ESC and bytes that are not
    # UTF-8: shown escaped, never raw, never a UnicodeEncodeError (PYTHONIOENCODING: as a UTF-8 locale
    # other than C.UTF-8 makes stdout).
    real = tmp_path / "real\x1b[2J\udcff"
    shutil.copy2("/bin/true", real)
    (tmp_path / "link").symlink_to(real)
    d = policy(tmp_path, f"[[allow]]\nexe = '{tmp_path / 'link'}'\n", name="10-\udcfe.toml")
    proc = mptcpize("daemon", "--policy-dir", str(d), "--check",
                    env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert all(ln.isprintable() for ln in proc.stdout.splitlines()), proc.stdout
    assert f"  allow exe={tmp_path}/link (10-\\xfe.toml:1) -> {tmp_path}/link -> " \
           f"{tmp_path}/real\\x1b[2J\\xff (dev " in proc.stdout

def test_daemon_start_with_bad_policy_exits_78_before_loading_bpf(tmp_path):
    # No --check: the same validation runs first, so this fails the same way on any kernel.
    d = policy(tmp_path, "[[allow]]\nexe = 'rel'\n")
    proc = mptcpize("daemon", "--policy-dir", str(d),
                    env=dict(os.environ, MPTCPIZE_CONTROL=str(tmp_path / "run" / "control")))
    assert_bad(proc, "10.toml:2: exe:")
    assert not (tmp_path / "run").exists()


def test_status_without_daemon_exits_3(tmp_path):
    proc = mptcpize("status", env=dict(os.environ, MPTCPIZE_CONTROL=str(tmp_path / "control")))
    assert proc.returncode == 3
    assert errors(proc) == [f"mptcpize-py: error: no daemon is running (cannot connect to "
                            f"{tmp_path / 'control'})"]
