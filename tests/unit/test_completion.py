"""The bash completion the package installs (scripts/bash_completion.py, generated from the argparse
parser at build time), run in bash with bash-completion loaded as a user's shell loads it: what it
offers after each subcommand is exactly what the parser accepts there."""

import argparse
import importlib.util
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from mptcpize_py import cli
from tests.conftest import REPO

BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")
GENERATOR = REPO / "scripts" / "bash_completion.py"


def _generator():
    spec = importlib.util.spec_from_file_location("bash_completion_generator", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    if shutil.which("bash") is None or not BASH_COMPLETION.exists():
        pytest.skip("bash-completion not installed (Debian: bash-completion)")
    out = tmp_path_factory.mktemp("completion") / "mptcpize-py"
    # As debian/rules runs it: a separate process writing the script to stdout.
    proc = subprocess.run(["python3", str(GENERATOR)], capture_output=True, text=True, cwd="/",
                          env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out.write_text(proc.stdout)
    return out


def complete(script: Path, *words: str, cwd=None, path_prefix=None) -> list[str]:
    """COMPREPLY for the command line `words` (the last one is being completed)."""
    driver = f"""
. {BASH_COMPLETION}
. {shlex.quote(str(script))}
COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={shlex.quote(' '.join(words))}
COMP_POINT=${{#COMP_LINE}}
spec=$(complete -p mptcpize-py) || exit 3
fn=${{spec#*-F }}; fn=${{fn%% *}}
"$fn" mptcpize-py "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {"PATH": os.pathsep.join(p for p in (path_prefix, os.environ["PATH"]) if p), "HOME": "/nonexistent",
           "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True, text=True,
                          cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._build_parser()
    return dict(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def test_every_subcommand_and_only_those(script):
    assert set(complete(script, "mptcpize-py", "")) == set(subparsers())
    assert sorted(complete(script, "mptcpize-py", "st")) == ["status"]


def test_global_options(script):
    assert set(complete(script, "mptcpize-py", "-")) == option_strings(cli._build_parser())


@pytest.mark.parametrize("name", sorted(subparsers()))
def test_every_option_of_each_subcommand(script, name):
    sp = subparsers()[name]
    assert set(complete(script, "mptcpize-py", name, "-")) == option_strings(sp)
    # Global options before the subcommand do not confuse it.
    assert set(complete(script, "mptcpize-py", "--debug", name, "--")) == \
        {o for o in option_strings(sp) if o.startswith("--")}


@pytest.mark.parametrize("name,option", [(n, a.option_strings[-1]) for n, sp in sorted(subparsers().items())
                                         for a in sp._actions if a.choices])
def test_choices_are_offered(script, name, option):
    action = next(a for a in subparsers()[name]._actions if option in a.option_strings)
    assert complete(script, "mptcpize-py", name, option, "") == [str(c) for c in action.choices]
    assert complete(script, "mptcpize-py", name, f"{option}={action.choices[0][:1]}") == \
        [str(c) for c in action.choices if str(c).startswith(str(action.choices[0])[:1])]


def test_run_completes_cmd_as_a_command_line(script, tmp_path):
    prog = tmp_path / "mzc-some-program"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    # The command's name, after run's options...
    assert complete(script, "mptcpize-py", "run", "-v", "--backend", "bpf", "mzc-some", path_prefix=str(tmp_path)) \
        == ["mzc-some-program"]
    assert complete(script, "mptcpize-py", "run", "--", "mzc-some", path_prefix=str(tmp_path)) \
        == ["mzc-some-program"]
    # ...and CMD's own options are not run's.
    assert "--backend" not in complete(script, "mptcpize-py", "run", "mzc-some-program", "--",
                                       path_prefix=str(tmp_path))


def test_units_are_services_systemd_knows(script, tmp_path):
    fake = tmp_path / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    "case \"$*\" in\n"
                    "  list-unit-files*) printf 'nginx.service enabled enabled\\n"
                    "getty@.service enabled enabled\\nnginx.socket enabled enabled\\n' ;;\n"
                    "  list-units*) printf 'ngircd@x.service loaded active running IRC\\n' ;;\n"
                    "esac\n")
    fake.chmod(0o755)
    for words in (("enable", "ng"), ("disable", "ng"), ("resync", "--unit", "ng")):
        assert sorted(complete(script, "mptcpize-py", *words, path_prefix=str(tmp_path))) == \
            ["nginx.service", "ngircd@x.service"], words


def test_directories_and_files(script, tmp_path):
    (tmp_path / "pol.d").mkdir()
    (tmp_path / "pol.toml").write_text("")
    assert complete(script, "mptcpize-py", "daemon", "--policy-dir", "pol", cwd=tmp_path) == ["pol.d"]
    assert sorted(complete(script, "mptcpize-py", "metrics", "--output", "pol", cwd=tmp_path)) == \
        ["pol.d", "pol.toml"]


def test_every_value_has_a_completer():
    """An option that takes a value gets its values from its choices or from its metavar: a new
    metavar needs a line in VALUE_COMPLETERS, else its values would get no suggestions."""
    gen = _generator()
    for name, sp in subparsers().items():
        for action in sp._actions:
            if action.nargs == 0 or action.choices or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.metavar in gen.VALUE_COMPLETERS, (name, action.option_strings, action.metavar)
