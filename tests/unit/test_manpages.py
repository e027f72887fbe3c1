"""The man pages render without groff warnings, document every subcommand and option the CLI has and
every key the policy format accepts, and are installed with the package."""

import re
import shutil
import subprocess
import tomllib

import pytest

from mptcpize_py import cli, policy
from tests.conftest import REPO

PAGE8 = REPO / "docs" / "mptcpize-py.8"
PAGE5 = REPO / "docs" / "mptcpize-py-policy.5"


def rendered(page) -> str:
    if shutil.which("groff") is None:
        pytest.skip("groff not installed (Debian: groff-base)")
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=100n", str(page)],
                          capture_output=True, text=True, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return re.sub(r".\x08", "", proc.stdout)   # drop overstrike (bold/underline)


@pytest.mark.parametrize("page", [PAGE8, PAGE5])
def test_renders_without_warnings(page):
    assert "NAME" in rendered(page)


def test_every_subcommand_and_option_is_documented():
    text = rendered(PAGE8)
    parser = cli._build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        assert re.search(rf"^ {{7}}{name}\b", text, re.M), f"no COMMANDS entry for {name}"
        for action in subparser._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in text, f"{name} {opt} undocumented"
    for opt in ("--debug", "--version"):
        assert opt in text
    # Being written alongside: enable/disable must be there even before the parser has them.
    for name in ("enable", "disable"):
        assert re.search(rf"^ {{7}}{name}\b", text, re.M)


def test_every_policy_key_is_documented():
    text = rendered(PAGE5)
    for key in policy.ACTIONS:
        assert f"[[{key}]]" in text
    for key in policy.RULE_KEYS + policy.NETNS_KEYS + policy.PATHS_SETTING_KEYS:
        assert re.search(rf"\b{key} =", text), key
    assert "[paths]" in text and "[paths.netns.NAME]" in text
    for unit_type in policy.UNIT_TYPES_WITH_PROCESSES + policy.UNIT_TYPES_WITHOUT_PROCESSES:
        assert unit_type in text


def test_the_example_in_the_policy_page_is_a_valid_policy():
    text = rendered(PAGE5)
    example = text.split("\nEXAMPLE\n", 1)[1].split("\n\n       mptcpize-py daemon", 1)[0]
    example = "\n".join(line[7:] for line in example.splitlines())
    pol = policy.parse_policy_text(example, "10-web.toml")
    assert len(pol.allow) == 3 and len(pol.deny) == 1 and pol.netns.names == ("blue", "red")
    assert pol.paths.for_netns("blue").role == "client" and pol.paths.for_netns("red").role == "server"


def test_installed_with_the_package():
    with open(REPO / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    assert data_files["share/man/man8"] == ["docs/mptcpize-py.8"]
    assert data_files["share/man/man5"] == ["docs/mptcpize-py-policy.5"]
