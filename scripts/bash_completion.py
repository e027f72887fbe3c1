#!/usr/bin/env python3
"""Writes mptcpize-py's bash completion to stdout, generated from the command line's own argparse
parser (mptcpize_py.cli), so every subcommand and option the parser has is completed and nothing it
lacks is offered. The Debian package runs it at build time (debian/rules); for a pip install:

    python3 scripts/bash_completion.py > ~/.local/share/bash-completion/completions/mptcpize-py

The script relies on bash-completion's helpers (_init_completion, _filedir, _command_offset): it is
loaded by bash-completion, which provides them. tests/unit/test_completion.py runs it in bash and
compares what it offers with the parser."""

import argparse
import shlex
import sys
from pathlib import Path

# The checkout (or unpacked source) this script belongs to, not whatever mptcpize_py is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mptcpize_py import __version__  # noqa: E402
from mptcpize_py.cli import PROG, _build_parser  # noqa: E402

FUNCTION = "_" + PROG.replace("-", "_")

# How the value of an option (or a positional) is completed, by its metavar. A metavar not listed
# here gets no suggestions (rather than file names that would be wrong).
VALUE_COMPLETERS = {
    "DIR": "_filedir -d",
    "FILE": "_filedir",
    "UNIT": f"{FUNCTION}_services",
    "NAME": f"{FUNCTION}_netns",                 # status --netns NAME: /run/netns/NAME
    "CMD [ARGS...]": "_command_offset $cword",   # run's CMD: complete it as a command line
    "ADDR:PORT": "COMPREPLY=()",                 # daemon --metrics-listen: nothing to offer
}

HELPERS = f"""\
{FUNCTION}_services()
{{
    # Services systemd knows, without templates (foo@.service runs nothing: name an instance).
    local units
    units=$( {{ systemctl list-unit-files --type=service --no-legend --no-pager 2>/dev/null
               systemctl list-units --type=service --all --no-legend --no-pager --plain 2>/dev/null
            }} | awk '$1 ~ /\\.service$/ && $1 !~ /@\\.service$/ {{print $1}}')
    COMPREPLY=($(compgen -W "$units" -- "$cur"))
}}

{FUNCTION}_netns()
{{
    COMPREPLY=($(compgen -W "$(ls /run/netns 2>/dev/null)" -- "$cur"))
}}
"""


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def value_completion(action: argparse.Action) -> str:
    if action.choices:
        words = " ".join(str(c) for c in action.choices)
        return f"COMPREPLY=($(compgen -W {shlex.quote(words)} -- \"$cur\"))"
    return VALUE_COMPLETERS.get(action.metavar or "", "COMPREPLY=()")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


def value_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and takes_value(a)]


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings
            and not isinstance(a, argparse._SubParsersAction)]


def _prev_cases(parser: argparse.ArgumentParser, indent: str) -> list[str]:
    """`case $prev in`: the value of an option that takes one."""
    acts = value_options(parser)
    if not acts:
        return []
    out = [f"{indent}case $prev in"]
    for a in acts:
        out.append(f"{indent}    {'|'.join(a.option_strings)}) {value_completion(a)}; return ;;")
    out.append(f"{indent}esac")
    return out


def _subcommand_body(name: str, sp: argparse.ArgumentParser) -> list[str]:
    ind = " " * 12
    opts = " ".join(options(sp))
    lines = [f"        {name})"]
    pos = positionals(sp)
    if name == "run":
        # cli.parse_run_args: run's options end at "--" or at CMD, the first word that is not an
        # option; from there on the words are CMD's, completed as a command line of their own.
        skip = "|".join(o for a in value_options(sp) for o in a.option_strings)
        lines += [f"{ind}for ((i = cmd_at + 1; i < cword; i++)); do",
                  f"{ind}    case ${{words[i]}} in",
                  f"{ind}        --) _command_offset $((i + 1)); return ;;"]
        if skip:
            lines.append(f"{ind}        {skip}) ((i++)) ;;")
        lines += [f"{ind}        -*) ;;",
                  f"{ind}        *) _command_offset $i; return ;;",
                  f"{ind}    esac",
                  f"{ind}done"]
    lines += _prev_cases(sp, ind)
    lines.append(f"{ind}if [[ $cur == -* ]]; then")
    lines.append(f"{ind}    COMPREPLY=($(compgen -W {shlex.quote(opts)} -- \"$cur\"))")
    if pos:
        lines.append(f"{ind}else")
        lines.append(f"{ind}    {value_completion(pos[0])}")
    lines.append(f"{ind}fi")
    lines.append(f"{ind};;")
    return lines


def bash_completion(parser: argparse.ArgumentParser) -> str:
    subs = subcommands(parser)
    global_opts = " ".join(options(parser))
    global_value_opts = "|".join(o for a in value_options(parser) for o in a.option_strings)
    lines = [f"# bash completion for {PROG} {__version__}, generated by scripts/bash_completion.py from",
             "# the command line's argparse parser (mptcpize_py/cli.py): do not edit, regenerate.",
             "",
             HELPERS,
             f"{FUNCTION}()",
             "{",
             "    local cur prev words cword split",
             "    _init_completion -s || return",
             "",
             "    # The subcommand: the first word after the global options.",
             "    local i cmd= cmd_at=0",
             "    for ((i = 1; i < cword; i++)); do",
             "        case ${words[i]} in"]
    if global_value_opts:
        lines.append(f"            {global_value_opts}) ((i++)) ;;")
    lines += ["            -*) ;;",
              "            *) cmd=${words[i]} cmd_at=$i; break ;;",
              "        esac",
              "    done",
              "",
              "    case $cmd in",
              "        '')"]
    lines += _prev_cases(parser, " " * 12)
    lines += ["            if [[ $cur == -* ]]; then",
              f"                COMPREPLY=($(compgen -W {shlex.quote(global_opts)} -- \"$cur\"))",
              "            else",
              f"                COMPREPLY=($(compgen -W {shlex.quote(' '.join(subs))} -- \"$cur\"))",
              "            fi",
              "            ;;"]
    for name, sp in subs.items():
        lines += _subcommand_body(name, sp)
    lines += ["    esac",
              "} &&",
              f"    complete -F {FUNCTION} {PROG}",
              ""]
    return "\n".join(lines)


def main() -> int:
    sys.stdout.write(bash_completion(_build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
