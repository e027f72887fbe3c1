"""The [paths] table: what a valid one becomes (PathsTable, per-namespace settings merged with the
defaults), and every bad input as one exact `file:line: reason`."""

import re

import pytest

from mptcpize_py.policy import PathsSettings, PolicyError, parse_policy_text
from mptcpize_py.policy.load import load_policy

ONE_LINE = re.compile(r"^[^\n]+:\d+: [^\n]+$")

LAB = """\
[netns]
names = ["mzp-cli", "mzp-srv"]

[paths]                     # the host: left alone
role = "none"
subflows = 2
add_addr_accepted = 2

[paths.netns.mzp-cli]
role = "client"
exclude = ["lo*"]
backup = ["mzc3"]
fullmesh = ["mzc*"]

[paths.netns."mzp-srv"]
role = "server"
interfaces = ["mzs?", "eth[0-9]"]
subflows = 4
"""


def only_error(text: str, filename: str = "p.toml") -> str:
    with pytest.raises(PolicyError) as e:
        parse_policy_text(text, filename)
    assert len(e.value.errors) == 1, e.value.errors
    assert ONE_LINE.match(e.value.errors[0]), e.value.errors[0]
    return e.value.errors[0]


def test_no_table_no_paths():
    assert parse_policy_text('[[allow]]\nexe = "/x"\n', "p.toml").paths is None
    assert parse_policy_text('[[allow]]\nexe = "/x"\n', "p.toml").summary() == \
        "1 allow, 0 deny rules from 1 file; netns: host"


def test_per_namespace_settings_inherit_the_defaults():
    p = parse_policy_text(LAB, "10-lab.toml")
    t = p.paths
    assert t.default == PathsSettings(role="none", subflows=2, add_addr_accepted=2, where="10-lab.toml:4")
    cli = t.for_netns("mzp-cli")
    assert (cli.role, cli.interfaces, cli.exclude, cli.backup, cli.fullmesh, cli.subflows,
            cli.add_addr_accepted, cli.where) == \
        ("client", ("*",), ("lo*",), ("mzc3",), ("mzc*",), 2, 2, "10-lab.toml:9")
    srv = t.for_netns("mzp-srv")
    assert (srv.role, srv.interfaces, srv.subflows, srv.add_addr_accepted) == \
        ("server", ("mzs?", "eth[0-9]"), 4, 2)
    assert not t.for_netns("host").manages and t.for_netns("host") == t.default
    assert p.summary().endswith("netns: host + mzp-cli, mzp-srv; paths: none; mzp-cli: client; "
                                "mzp-srv: server")


def test_one_role_for_every_selected_namespace():
    t = parse_policy_text('[paths]\nrole = "both"\n', "p.toml").paths
    assert t.for_netns("host").role == "both" and t.for_netns("any").role == "both"
    assert t.for_netns("host").interfaces == ("*",) and t.for_netns("host").subflows is None


def test_a_table_in_another_file_and_a_netns_from_a_third(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    for name, text in {"10-netns.toml": '[netns]\nall = true\n',
                       "20-paths.toml": '[paths.netns.blue]\nrole = "client"\n'}.items():
        (d / name).write_text(text)
        (d / name).chmod(0o644)
    import os
    p = load_policy(d, owner_uid=os.getuid())
    assert p.paths.for_netns("blue").role == "client" and p.paths.for_netns("host").role == "none"


@pytest.mark.parametrize("text, expected", [
    # Keys and roles.
    ('[paths]\nrole = "client"\nsubflow = 2\n',
     "p.toml:3: unknown key 'subflow' in [paths] (expected one of role, interfaces, exclude, backup, "
     "fullmesh, subflows, add_addr_accepted, netns)"),
    ('[paths]\nrole = "clients"\n', "p.toml:2: role: 'clients' is not a role (client, server, both or none)"),
    ('[paths]\nrole = 1\n', "p.toml:2: role: an integer is not a role (client, server, both or none)"),
    ('[paths]\nsubflows = 2\n',
     "p.toml:1: [paths] manages no namespace: give a role (client, server or both) in [paths] or in a "
     "[paths.netns.NAME] table"),
    ('paths = 1\n', "p.toml:1: paths must be a table: [paths] with role = ..."),
    ('[paths]\nrole = "client"\n[paths.netns.host]\nrole = "server"\nbackup = "eth1"\n',
     "p.toml:5: backup must be an array of interface names or patterns, not a string"),
    ('[paths]\nrole = "client"\n[paths.netns.host]\nnetns = {}\n',
     "p.toml:4: unknown key 'netns' in [paths.netns.host] (expected one of role, interfaces, exclude, "
     "backup, fullmesh, subflows, add_addr_accepted)"),
    # Unknown interface patterns: what no Linux interface name can be.
    ('[paths]\nrole = "client"\ninterfaces = ["eth0", "eth0:1"]\n',
     "p.toml:3: interfaces: 'eth0:1' contains ':': no interface name does"),
    ('[paths]\nrole = "client"\ninterfaces = [\n  "eth0",\n  "wlan 0",\n]\n',
     "p.toml:5: interfaces: 'wlan 0' contains whitespace or a control character: no interface name does"),
    ('[paths]\nrole = "client"\nexclude = ["a/b"]\n', "p.toml:3: exclude: 'a/b' contains '/': no interface name does"),
    ('[paths]\nrole = "client"\nbackup = ["enx0123456789abc"]\n',
     "p.toml:3: backup: 'enx0123456789abc' is longer than 15 bytes: no interface name is"),
    ('[paths]\nrole = "client"\ninterfaces = ["eth[0-9"]\n',
     "p.toml:3: interfaces: 'eth[0-9' has a '[' without its ']'"),
    ('[paths]\nrole = "client"\ninterfaces = [""]\n', "p.toml:3: interfaces: an empty pattern matches no interface"),
    ('[paths]\nrole = "client"\ninterfaces = []\n',
     "p.toml:3: interfaces: empty: no interface would be managed (leave it out for every interface)"),
    ('[paths]\nrole = "client"\ninterfaces = [3]\n', "p.toml:3: interfaces: must be strings, not an integer"),
    # Conflicting flags.
    ('[paths]\nrole = "server"\nfullmesh = ["eth*"]\n',
     "p.toml:3: [paths]: fullmesh conflicts with role 'server': the kernel refuses an endpoint with both the "
     "'signal' flag (roles server and both) and 'fullmesh'"),
    ('[paths]\nrole = "client"\nfullmesh = ["eth*"]\n\n[paths.netns.host]\nrole = "both"\n',
     "p.toml:6: [paths.netns.host]: fullmesh conflicts with role 'both': the kernel refuses an endpoint with "
     "both the 'signal' flag (roles server and both) and 'fullmesh'"),
    ('[paths]\nrole = "client"\ninterfaces = ["eth*", "wl*"]\nexclude = ["wl*"]\n',
     "p.toml:4: [paths]: 'wl*' is both in interfaces and in exclude"),
    ('[paths]\nrole = "client"\nexclude = ["wwan*"]\nbackup = ["wwan*"]\n',
     "p.toml:4: [paths]: 'wwan*' is in backup but also in exclude: its interfaces get no endpoint at all"),
    # Limits above the kernel's maximum (MPTCP_PM_ADDR_MAX = 8), and other bad numbers.
    ('[paths]\nrole = "client"\nsubflows = 9\n',
     "p.toml:3: subflows: 9 is above the kernel's maximum of 8 (MPTCP_PM_ADDR_MAX; `ip mptcp limits set` "
     "refuses it)"),
    ('[paths]\nrole = "client"\n[paths.netns.host]\nadd_addr_accepted = 100\n',
     "p.toml:4: add_addr_accepted: 100 is above the kernel's maximum of 8 (MPTCP_PM_ADDR_MAX; `ip mptcp "
     "limits set` refuses it)"),
    ('[paths]\nrole = "client"\nsubflows = -1\n', "p.toml:3: subflows must be an integer from 0 to 8, not -1"),
    ('[paths]\nrole = "client"\nsubflows = true\n',
     "p.toml:3: subflows must be an integer from 0 to 8, not a boolean"),
    # Namespaces.
    ('[paths]\nrole = "client"\n[paths.netns.blue]\nrole = "server"\n',
     "p.toml:3: [paths.netns.blue]: the policy does not select namespace 'blue' (add it to [netns] names)"),
    ('[netns]\nnames = ["blue"]\n[paths]\nrole = "client"\n[paths.netns."a/b"]\nrole = "server"\n',
     "p.toml:5: [paths.netns.a/b]: 'a/b' contains '/': give the name of /run/netns/NAME, not a path"),
])
def test_bad_paths_table(text, expected):
    assert only_error(text) == expected


def test_one_paths_table_across_files():
    from mptcpize_py.policy.model import PolicyFile
    from mptcpize_py.policy.validate import policy_from_files
    with pytest.raises(PolicyError) as e:
        policy_from_files([PolicyFile("a.toml", '[paths]\nrole = "client"\n'),
                           PolicyFile("b.toml", '\n[paths]\nrole = "server"\n')])
    assert e.value.errors == ["b.toml:2: a second [paths] table (the first is at a.toml:1); keep one "
                              "([paths.netns.NAME] tables set one namespace)"]


def test_the_example_policy_s_paths_table_is_valid():
    from mptcpize_py.policy import EXAMPLE_POLICY
    lines = EXAMPLE_POLICY.split("# [paths]\n", 1)[1].splitlines()
    text = "[paths]\n" + "\n".join(line[2:] for line in lines if line.startswith("# "))
    t = parse_policy_text(text, "example.toml").paths
    assert (t.default.role, t.default.exclude, t.default.backup, t.default.subflows) == \
        ("client", ("docker*", "veth*"), ("wwan*",), 2)
