"""Policy files -> Policy: valid input, every kind of bad input with its exact `file:line: reason`, and the
refusals that protect a root daemon from hostile files."""

import os
import re
from pathlib import Path

import pytest

from mptcpize_py import abi, policy
from mptcpize_py.errors import EXIT_BAD_POLICY, MptcpizeError
from mptcpize_py.host.files import others_may_write as _unsafe
from mptcpize_py.policy import (
    NetnsSelection,
    PolicyError,
    load_policy,
    parse_policy_text,
)
from tests.configmap import write_configmap

ME = os.getuid()
ONE_LINE = re.compile(r"^[^\n]+:\d+: [^\n]+$")  # file:line: reason


def policy_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "policy.d"
    d.mkdir(mode=0o755)
    d.chmod(0o755)  # whatever the umask
    for name, text in files.items():
        (d / name).write_text(text)
        (d / name).chmod(0o644)
    return d


def errors_of(text: str, filename: str = "p.toml") -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse_policy_text(text, filename)
    return e.value.errors


def only_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert ONE_LINE.match(errors[0]), errors[0]
    return errors[0]


# --- valid policies ---------------------------------------------------------------------------------


def test_valid_policy_across_two_files(tmp_path):
    d = policy_dir(tmp_path, {
        "20-batch.toml": (
            "# batch jobs\n"
            "[[allow]]\n"
            'cgroup = "/system.slice/batch.slice"\n'
            "\n"
            "[[allow]]\n"
            'name = "web"\n'
            'unit = "nginx.service"\n'
            "[netns]\n"
            'names = ["blue", "red", "blue"]\n'
        ),
        "10-web.toml": (
            "[[deny]]\n"
            'unit = "getty@tty1.service"\n'
            "[[allow]]\n"
            'exe = "/usr/bin/iperf3"\n'
        ),
        "README": "not toml, ignored\n",
        ".10-web.toml": "editor lock file, ignored = [\n",
    })
    p = load_policy(d, owner_uid=ME)
    # Files in name order; ids from 16 in file order, then line order within a file.
    assert p.files == (str(d / "10-web.toml"), str(d / "20-batch.toml"))
    assert [(r.id, r.description) for r in p.rules] == [
        (16, "deny unit=getty@tty1.service (10-web.toml:1)"),
        (17, "allow exe=/usr/bin/iperf3 (10-web.toml:3)"),
        (18, "allow cgroup=/system.slice/batch.slice (20-batch.toml:2)"),
        (19, 'allow unit=nginx.service "web" (20-batch.toml:5)'),
    ]
    assert [r.id for r in p.allow] == [17, 18, 19] and [r.id for r in p.deny] == [16]
    web = p.allow[2]
    assert (web.action, web.kind, web.value, web.name, web.source_file, web.line) == \
        ("allow", "unit", "nginx.service", "web", str(d / "20-batch.toml"), 5)
    assert p.netns == NetnsSelection("names", ("blue", "red"))
    assert p.summary() == "3 allow, 1 deny rules from 2 files; netns: host + blue, red"
    # The same directory gives the same ids.
    assert load_policy(d, owner_uid=ME) == p


def test_deny_and_allow_of_the_same_selector_are_both_kept():
    p = parse_policy_text('[[allow]]\nexe = "/usr/bin/curl"\n[[deny]]\nexe = "/usr/bin/curl"\n', "p.toml")
    assert [(r.action, r.value) for r in p.allow] == [("allow", "/usr/bin/curl")]
    assert [(r.action, r.value) for r in p.deny] == [("deny", "/usr/bin/curl")]


def test_empty_policy_is_valid():
    p = parse_policy_text("# nothing yet\n", "p.toml")
    assert (p.allow, p.deny, p.netns) == ((), (), NetnsSelection("host"))
    assert p.summary() == "0 allow, 0 deny rules from 1 file; netns: host"


def test_example_policy_parses(tmp_path):
    p = parse_policy_text(policy.EXAMPLE_POLICY, "example.toml")
    assert len(p.allow) == 3 and len(p.deny) == 1 and p.netns.mode == "host"
    # Its commented [netns] lines stay valid too, one alternative at a time.
    names = policy.EXAMPLE_POLICY.replace("# [netns]", "[netns]").replace("# names", "names")
    assert parse_policy_text(names, "example.toml").netns == NetnsSelection("names", ("blue", "red"))
    all_ = policy.EXAMPLE_POLICY.replace("# [netns]", "[netns]").replace("# all", "all")
    assert parse_policy_text(all_, "example.toml").netns == NetnsSelection("all")
    # And as a file of a policy directory.
    assert load_policy(policy_dir(tmp_path, {"example.toml": policy.EXAMPLE_POLICY}), owner_uid=ME) \
        .summary() == "3 allow, 1 deny rules from 1 file; netns: host"


def test_valid_selectors():
    text = "".join(f'[[allow]]\n{k} = "{v}"\n' for k, v in [
        ("exe", "/opt/my app/bin/srv"), ("cgroup", "/"), ("cgroup", "/user.slice/user-1000.slice"),
        ("unit", "nginx.service"), ("unit", "getty@tty1.service"), ("unit", "foo@a@b.service"),
        ("unit", "dbus-org.freedesktop.login1.service"), ("unit", r"sys-devices-x\\x2dy.mount"),
        ("unit", "batch.slice"), ("unit", "session-3.scope"), ("unit", "sshd.socket"),
    ])
    assert len(parse_policy_text(text, "p.toml").allow) == 11


def test_netns_all():
    assert parse_policy_text("[netns]\nall = true\n", "p.toml").netns == NetnsSelection("all")
    assert parse_policy_text("[netns]\nall = true\n", "p.toml").summary().endswith("netns: all")


# --- bad content: the exact file:line: reason ----------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # Malformed TOML: line (and column) from tomllib.
    ('[[allow]]\nexe = "/x"\nunit = nginx.service\n', "p.toml:3: invalid TOML: Invalid value (column 8)"),
    ("[[allow]\n", "p.toml:1: invalid TOML: Expected ']]' at the end of an array declaration (column 8)"),
    ('\n\n[[allow]]\nexe = "/a"\nexe = "/b"\n', "p.toml:5: invalid TOML: Cannot overwrite a value (column 11)"),
    ('[[allow]]\nexe = "/x', "p.toml:2: invalid TOML: Unterminated string at end of file"),
    # Keys.
    ('[[allow]]\nexe = "/x"\nexec = "/y"\n',
     "p.toml:3: unknown key 'exec' in [[allow]] (expected one of exe, cgroup, unit, name)"),
    ('\n[[allow]]\n"exe" = "/x"\n[[deny]]\nunit = "a.service"\nport = 80\n',
     "p.toml:6: unknown key 'port' in [[deny]] (expected one of exe, cgroup, unit, name)"),
    ('exe = "/usr/bin/iperf3"\n',
     "p.toml:1: unknown key 'exe': a policy file holds [[allow]], [[deny]], [netns] and [paths] tables"),
    ('[[alow]]\nexe = "/x"\n',
     "p.toml:1: unknown key 'alow': a policy file holds [[allow]], [[deny]], [netns] and [paths] tables"),
    ('[allow]\nexe = "/x"\n', "p.toml:1: write each rule as its own [[allow]] table"),
    ('[[allow]]\nexe = "/x"\n\n[[deny]]\n# why\nexe = "/y"\nunit = "a.service"\n',
     "p.toml:4: [[deny]] has 2 selectors (exe, unit); a rule takes exactly one: write one [[deny]] per selector"),
    ('[[allow]]\nexe = "/x"\n[[allow]]\nname = "nothing"\n',
     "p.toml:3: [[allow]] has no selector: give exactly one of exe, cgroup, unit"),
    # exe.
    ('[[allow]]\nexe = "iperf3"\n', "p.toml:2: exe: 'iperf3' is not an absolute path (e.g. /usr/bin/iperf3)"),
    ('[[allow]]\nexe = "./bin/x"\n', "p.toml:2: exe: './bin/x' is not an absolute path (e.g. /usr/bin/iperf3)"),
    ('[[allow]]\nexe = "/usr/bin/../sbin/x"\n',
     "p.toml:2: exe: '/usr/bin/../sbin/x' is not a normalised path (no '.', '..', '//' or trailing '/')"),
    ('[[allow]]\nexe = "//usr/bin/x"\n',
     "p.toml:2: exe: '//usr/bin/x' is not a normalised path (no '.', '..', '//' or trailing '/')"),
    ('[[allow]]\nexe = "/usr/bin/"\n',
     "p.toml:2: exe: '/usr/bin/' is not a normalised path (no '.', '..', '//' or trailing '/')"),
    ('[[allow]]\nexe = "/usr/bin/x\\u0000"\n', "p.toml:2: exe: contains a NUL character"),
    ('[[allow]]\nexe = 3\n', "p.toml:2: exe: must be a string, not an integer"),
    ('[[allow]]\nexe = "/"\n', "p.toml:2: exe: '/' is a directory, not an executable"),
    # cgroup.
    ('[[allow]]\ncgroup = "system.slice"\n',
     "p.toml:2: cgroup: 'system.slice' is not an absolute path (e.g. /system.slice/batch.slice)"),
    ('[[allow]]\ncgroup = "/system.slice/../user.slice"\n',
     "p.toml:2: cgroup: '/system.slice/../user.slice' contains '..': write the cgroup's own path"),
    ('[[allow]]\ncgroup = "/system.slice//batch.slice"\n',
     "p.toml:2: cgroup: '/system.slice//batch.slice' has an empty component ('//' or a trailing '/')"),
    ('[[allow]]\ncgroup = "/system.slice/"\n',
     "p.toml:2: cgroup: '/system.slice/' has an empty component ('//' or a trailing '/')"),
    ('[[allow]]\ncgroup = "/system.slice "\n',
     "p.toml:2: cgroup: '/system.slice ' has a component starting or ending with whitespace"),
    ('[[allow]]\ncgroup = "/a\\nb"\n', "p.toml:2: cgroup: '/a\\nb' contains a control character"),
    ('[[allow]]\ncgroup = "' + "/a" * 17 + '"\n',
     "p.toml:2: cgroup: '" + "/a" * 17 + "' is 17 levels deep; the kernel side looks at most 16"),
    # unit.
    ('[[allow]]\nunit = "nginx"\n',
     "p.toml:2: unit: 'nginx' has no unit type suffix: write 'nginx.service' (a policy names units in "
     "full, as unit files do; only the command line reads a bare name as a service)"),
    ('[[allow]]\nunit = "nginx.servce"\n',
     "p.toml:2: unit: 'nginx.servce' has no valid unit type suffix (e.g. nginx.service; one of .service, "
     ".socket, .mount, .swap, .scope, .slice)"),
    ('[[allow]]\nunit = "multi-user.target"\n',
     "p.toml:2: unit: 'multi-user.target' is a .target unit, which runs no processes: name the unit it starts"),
    ('[[allow]]\nunit = "foo@.service"\n',
     "p.toml:2: unit: 'foo@.service' is a template, which runs no processes: name an instance "
     '(foo@NAME.service) or select all of them with cgroup = "/system.slice/system-foo.slice"'),
    ('[[allow]]\nunit = "@foo.service"\n',
     "p.toml:2: unit: '@foo.service' is not a valid unit name: it starts with '@'"),
    ('[[allow]]\nunit = "' + "a" * 250 + '.service"\n', "p.toml:2: unit: unit names are at most 255 characters"),
    # name.
    ('[[allow]]\nexe = "/x"\nname = "' + "n" * 81 + '"\n', "p.toml:3: name: must be 1 to 80 characters"),
    ('[[allow]]\nexe = "/x"\nname = "a\\u001b[31mred"\n',
     "p.toml:3: name: 'a\\x1b[31mred' contains a control character"),
    # netns.
    ('[netns]\nnames = ["blue", "../red"]\n',
     "p.toml:2: names: '../red' contains '/': give the name of /run/netns/NAME, not a path"),
    ('[netns]\nnames = [\n  "blue",\n  "..",\n]\n', "p.toml:4: names: '..' is not a namespace name"),
    ('[netns]\nnames = [""]\n', "p.toml:2: names: '' is not a namespace name"),
    ('[netns]\nnames = "blue"\n', "p.toml:2: names must be an array of strings, not a string"),
    ('# all of them\n[netns]\nall = true\nnames = ["blue"]\n',
     "p.toml:2: [netns] sets both all = true and names: choose one"),
    ('[netns]\nall = "yes"\n', "p.toml:2: all must be true or false, not a string"),
    ('[netns]\nhost = true\n', "p.toml:2: unknown key 'host' in [netns] (expected names or all)"),
])
def test_bad_content(text, expected):
    assert only_error(text) == expected


@pytest.mark.parametrize("unit", [
    "nginx.service; rm -rf /", "$(id).service", "`id`.service", "nginx .service", "nginx.service\n",
    "a|b.service", "a&b.service", "a>b.service", "a'b.service", 'a"b.service', "a/b.service", "a*.service",
    "nginx.sérvice",
])
def test_unit_with_shell_metacharacters_is_refused(unit):
    text = "[[deny]]\nexe = \"/x\"\n[[allow]]\nunit = " + _toml_string(unit) + "\n"
    message = only_error(text)
    assert message.startswith(f"p.toml:4: unit: {unit!r} is not a valid unit name: ")
    assert message.endswith("is not allowed (letters, digits and ':-_.\\@' only)")


def _toml_string(s: str) -> str:
    """s as a TOML basic string (escapes quotes, backslashes and control characters)."""
    out = "".join(f"\\u{ord(c):04x}" if c in '"\\' or not c.isprintable() else c for c in s)
    return f'"{out}"'


def test_lines_are_found_by_structure_not_by_text():
    # A header-like line inside a multi-line string, rules written as an inline array, a quoted
    # header key, comments and blank lines: every error still points at the right line.
    text = (
        "[[allow]]\n"                                  # 1
        'name = """\n'                                 # 2
        "[[deny]]\n"                                   # 3 (inside the string)
        '"""\n'                                        # 4
        'exe = "/x"\n'                                 # 5
        "[[ 'deny' ]]  # quoted\n"                     # 6
        'unit = "good.service"\n'                      # 7
        "[[deny]]\n"                                   # 8
        'unit = "bad unit.service"\n'                  # 9
        "[[allow]]\n"                                  # 10
        "name = '''it''s'''\n"                         # 11
        'exe = "rel"\n'                                # 12
    )
    assert errors_of(text) == [
        "p.toml:2: name: '[[deny]]\\n' contains a control character",
        "p.toml:9: unit: 'bad unit.service' is not a valid unit name: ' ' is not allowed (letters, digits "
        "and ':-_.\\@' only)",
        "p.toml:12: exe: 'rel' is not an absolute path (e.g. /usr/bin/iperf3)",
    ]
    inline = 'deny = [\n  { exe = "/x" },\n  { exe = "/y", unit = "a.service" },\n]\n'
    assert only_error(inline) == \
        "p.toml:3: [[deny]] has 2 selectors (exe, unit); a rule takes exactly one: write one [[deny]] per selector"
    p = parse_policy_text('deny = [\n  { exe = "/x" },\n\n  { unit = "a.service", name = "a" },\n]\n', "p.toml")
    assert [r.line for r in p.deny] == [2, 4]


def test_all_errors_of_one_file_are_reported_in_line_order():
    text = '[[allow]]\nexe = "b"\n[netns]\nnames = ["x/y"]\n[[deny]]\nunit = "a b.service"\n[[allow]]\nfoo = 1\n'
    errors = errors_of(text)
    assert [e.split(":")[1] for e in errors] == ["2", "4", "6", "8"]
    assert all(ONE_LINE.match(e) for e in errors)


def test_deeply_nested_toml_is_an_error_not_a_crash():
    assert only_error("x = " + "[" * 5000 + "]" * 5000 + "\n").startswith("p.toml:")


def test_too_many_exe_rules_for_the_kernel_map():
    text = "".join(f'[[allow]]\nexe = "/bin/x{i}"\n' for i in range(policy.MAX_EXE_RULES + 1))
    assert only_error(text) == \
        f"p.toml:{2 * policy.MAX_EXE_RULES + 1}: more than 4096 exe rules: the kernel map holds 4096"


def test_too_many_netns_names_for_the_kernel_map(tmp_path):
    """One name per line: the error names the line of the first name that does not fit; duplicates
    take no entry; the daemon refuses the policy (exit 78), one line."""
    fits = abi.MAX_NETNS - 1
    names = [f"ns{i}" for i in range(fits)] + ["ns0"] + [f"ns{fits}", f"ns{fits + 1}"]
    text = "# namespaces\n\n[netns]\nnames = [\n" + "".join(f'  "{n}",\n' for n in names) + "]\n"
    first_too_many = 5 + names.index(f"ns{fits}")
    assert only_error(text) == (f"p.toml:{first_too_many}: names: more than {fits} namespaces: the kernel "
                                f"map holds {abi.MAX_NETNS}, the host's namespace included")
    e = load_error(policy_dir(tmp_path, {"10-ns.toml": text}))
    assert len(e.errors) == 1 and e.errors[0].endswith(f"10-ns.toml:{first_too_many}: names: more than "
                                                       f"{fits} namespaces: the kernel map holds "
                                                       f"{abi.MAX_NETNS}, the host's namespace included")
    parse_policy_text(text.replace(f'  "ns{fits}",\n  "ns{fits + 1}",\n', ""), "p.toml")   # 1023 fit


def test_enforced_limits_are_the_kernel_headers():
    """Each map limit the policy enforces, found by probing it (not by reading a constant), is the
    header's: a policy that fits the kernel maps loads, one entry more is refused."""
    defines = abi.parse_defines(abi.HEADER.read_text())

    def exe_rules(n):
        return "".join(f'[[allow]]\nexe = "/bin/x{i}"\n' for i in range(n))

    def cgroup_and_unit_rules(n):  # a unit rule takes a cgroup map entry too
        return "".join(f'[[allow]]\ncgroup = "/c{i}"\n' if i % 2 else f'[[deny]]\nunit = "u{i}.service"\n'
                       for i in range(n))

    def cgroup_of_depth(n):
        return f'[[allow]]\ncgroup = "{"/a" * n}"\n'

    def netns_entries(n):  # the host's namespace takes one entry of netns_allow
        return "[netns]\nnames = [" + ", ".join(f'"ns{i}"' for i in range(n - 1)) + "]\n"

    for build, limit in [(exe_rules, defines["MAX_EXE_RULES"]),
                         (cgroup_and_unit_rules, defines["MAX_CGROUP_RULES"]),
                         (cgroup_of_depth, defines["CGROUP_MAX_DEPTH"]),
                         (netns_entries, defines["MAX_NETNS"])]:
        parse_policy_text(build(limit), "p.toml")
        assert f" {limit}" in only_error(build(limit + 1)), build.__name__


# --- the directory and its files ------------------------------------------------------------------


def load_error(d: Path, owner_uid: int = ME) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        load_policy(d, owner_uid=owner_uid)
    assert e.value.exit_code == EXIT_BAD_POLICY == 78
    assert isinstance(e.value, MptcpizeError)
    assert e.value.message == e.value.errors[0]
    return e.value


def test_errors_of_all_files_are_collected(tmp_path):
    d = policy_dir(tmp_path, {
        "10-a.toml": '[[allow]]\nexe = "/ok"\n',
        "20-b.toml": '[[allow]]\nexe = "relative"\n',
        "30-c.toml": '\n[[deny]]\nunit = "$(id).service"\n',
        "40-d.toml": "broken = \n",
    })
    (d / "35-e.toml").symlink_to(d / "10-a.toml")
    e = load_error(d)
    assert e.errors == [
        f"{d}/20-b.toml:2: exe: 'relative' is not an absolute path (e.g. /usr/bin/iperf3)",
        f"{d}/30-c.toml:3: unit: '$(id).service' is not a valid unit name: '$' is not allowed "
        "(letters, digits and ':-_.\\@' only)",
        f"{d}/35-e.toml: refused: a symbolic link that leads outside the policy directory "
        "(or through /proc); copy the file into the directory instead",
        f"{d}/40-d.toml:1: invalid TOML: Invalid value (column 10)",
    ]
    assert e.message == e.errors[0]


def test_second_netns_table_in_another_file(tmp_path):
    d = policy_dir(tmp_path, {"a.toml": "[netns]\nall = true\n", "b.toml": '\n[netns]\nnames = ["x"]\n'})
    assert load_error(d).errors == [
        f"{d}/b.toml:2: a second [netns] table (the first is at {d}/a.toml:1); the namespace choice is "
        "global, keep one"]


def test_missing_directory(tmp_path):
    e = load_error(tmp_path / "nope")
    assert e.errors == [f"{tmp_path}/nope: policy directory does not exist"]
    assert e.hint == f"create it (mkdir -p {tmp_path}/nope), or pass --policy-dir"


def test_directory_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    assert load_error(tmp_path / "f").errors == [f"{tmp_path}/f: cannot open policy directory: Not a directory"]


def test_group_writable_file(tmp_path):
    d = policy_dir(tmp_path, {"a.toml": '[[allow]]\nexe = "/x"\n'})
    (d / "a.toml").chmod(0o664)
    assert load_error(d).errors == [f"{d}/a.toml: refused: group-writable (chmod g-w)"]


def test_world_writable_file(tmp_path):
    d = policy_dir(tmp_path, {"a.toml": '[[allow]]\nexe = "/x"\n'})
    (d / "a.toml").chmod(0o646)
    assert load_error(d).errors == [f"{d}/a.toml: refused: world-writable (chmod o-w)"]


@pytest.mark.parametrize("mode, problem", [(0o777, "world-writable (chmod o-w)"),
                                           (0o775, "group-writable (chmod g-w)")])
def test_writable_directory(tmp_path, mode, problem):
    d = policy_dir(tmp_path, {"a.toml": '[[allow]]\nexe = "/x"\n'})
    d.chmod(mode)
    e = load_error(d)
    assert e.errors == [f"{d}: refused: {problem}"]  # the files are not even read
    assert "owned by root" in e.hint


def test_wrong_owner(tmp_path):
    d = policy_dir(tmp_path, {"a.toml": '[[allow]]\nexe = "/x"\n'})
    other = ME + 1
    assert load_error(d, owner_uid=other).errors == [f"{d}: refused: owned by uid {ME}, not uid {other}"]


def test_wrong_owner_of_a_file():
    # Unprivileged tests cannot create a file owned by someone else: check the rule on a built stat.
    st = os.stat_result((0o100644, 1, 1, 1, 1000, 1000, 10, 0, 0, 0))
    assert _unsafe(st, 0) == "owned by uid 1000, not uid 0"
    assert _unsafe(st, 1000) is None


def test_symlinked_file(tmp_path):
    target = tmp_path / "elsewhere.toml"
    target.write_text('[[allow]]\nexe = "/x"\n')
    target.chmod(0o644)
    d = policy_dir(tmp_path, {})
    (d / "a.toml").symlink_to(target)
    assert load_error(d).errors == [f"{d}/a.toml: refused: a symbolic link that leads outside the policy "
                                    "directory (or through /proc); copy the file into the directory instead"]


def configmap_dir(tmp_path, files: dict[str, str], stamp: str = "..2026_12_07_21_00_00.1") -> Path:
    """A policy directory laid out as a ConfigMap volume (tests/configmap.py)."""
    d = policy_dir(tmp_path, {})
    write_configmap(d, files, stamp)
    return d


def test_configmap_layout_is_read_through_its_links(tmp_path):
    d = configmap_dir(tmp_path, {"10-web.toml": '[[allow]]\nexe = "/usr/bin/web"\n',
                                 "20-db.toml": '[[deny]]\nexe = "/usr/bin/db"\n'})
    policy = load_policy(d, owner_uid=ME)
    assert [(r.action, r.value, Path(r.source_file).name) for r in policy.rules] == [
        ("allow", "/usr/bin/web", "10-web.toml"), ("deny", "/usr/bin/db", "20-db.toml")]
    write_configmap(d, {"10-web.toml": '[[allow]]\nexe = "/usr/bin/web2"\n', "20-db.toml": ""},
                   "..2026_12_07_21_05_00.2")
    assert [r.value for r in load_policy(d, owner_uid=ME).rules] == ["/usr/bin/web2"]


def test_links_that_leave_the_directory_or_end_elsewhere_are_refused(tmp_path):
    outside = tmp_path / "outside.toml"
    outside.write_text('[[allow]]\nexe = "/x"\n')
    outside.chmod(0o644)
    d = configmap_dir(tmp_path, {"10-ok.toml": '[[allow]]\nexe = "/ok"\n'})
    (d / "20-up.toml").symlink_to("../outside.toml")             # `..` above the directory
    (d / "30-dir.toml").symlink_to("..data")                     # ends at a directory
    (d / "40-proc.toml").symlink_to("/proc/self/root/etc/passwd")
    (d / "50-dangling.toml").symlink_to("..data/nope.toml")
    errors = load_error(d).errors
    refused = ("refused: a symbolic link that leads outside the policy directory (or through /proc); "
               "copy the file into the directory instead")
    assert errors == [f"{d}/20-up.toml: {refused}",
                      f"{d}/30-dir.toml: refused: not a regular file (where its symbolic link ends)",
                      f"{d}/40-proc.toml: {refused}",
                      f"{d}/50-dangling.toml: cannot open: No such file or directory"]


def test_symlinked_directory_is_followed(tmp_path):
    d = policy_dir(tmp_path, {"a.toml": '[[allow]]\nexe = "/x"\n'})
    (tmp_path / "link").symlink_to(d)
    assert load_policy(tmp_path / "link", owner_uid=ME).summary() == "1 allow, 0 deny rules from 1 file; netns: host"


def test_not_a_regular_file(tmp_path):
    d = policy_dir(tmp_path, {})
    os.mkfifo(d / "fifo.toml", 0o644)  # opening it for reading would block: we never open it
    (d / "dir.toml").mkdir(mode=0o755)
    assert load_error(d).errors == [f"{d}/dir.toml: refused: not a regular file",
                                    f"{d}/fifo.toml: refused: not a regular file"]


def test_oversized_file(tmp_path):
    big = "# padding\n" * (policy.MAX_FILE_BYTES // 10 + 1)
    d = policy_dir(tmp_path, {"big.toml": big, "ok.toml": ""})
    assert load_error(d).errors == [f"{d}/big.toml: refused: larger than 1048576 bytes"]


def test_file_not_utf8(tmp_path):
    d = policy_dir(tmp_path, {})
    (d / "a.toml").write_bytes(b'[[allow]]\nname = "caf\xe9"\nexe = "/x"\n')
    (d / "a.toml").chmod(0o644)
    assert load_error(d).errors == [f"{d}/a.toml:2: not valid UTF-8"]


def test_every_error_is_one_line(tmp_path):
    d = policy_dir(tmp_path, {"a.toml": '[[allow]]\nunit = "x\\ny.service"\nname = "\\n"\n'})
    e = load_error(d)
    assert len(e.errors) == 2 and all(ONE_LINE.match(x) for x in e.errors), e.errors


# --- what parsing may cost ----------------------------------------------------------------------------
# The daemon parses in its main loop: what would take tomllib long is refused before it parses.


@pytest.mark.parametrize("text, line, shown", [
    # the review's file: 120 KB of one dotted key, which tomllib took 97 s to parse
    (".".join(["a"] * 60000) + " = 1\n", 1, "'a.a.a.a.a."),
    ("[[allow]]\nexe = \"/x\"\n[" + ".".join(["t"] * 9) + "]\n", 3, "'t.t.t.t.t."),
    ("x = 1\n" + " . ".join(['"q"'] * 9) + " = 1\n", 2, "'\"q\" . \"q\" . "),
    ("x = { " + ".".join(["k"] * 9) + " = 1 }\n", 1, "'k.k.k.k.k."),
])
def test_a_dotted_key_of_many_parts_is_refused_before_parsing(text, line, shown):
    assert only_error(text).startswith(f"p.toml:{line}: a dotted key of more than 8 parts ({shown}")
    assert only_error(text).endswith("); policy keys have one or two")


def test_dots_in_strings_and_comments_are_not_key_parts(tmp_path):
    dotted = ".".join("abcdefghijklmnop")
    text = (f"# {dotted}\n"
            f'[[allow]]\nname = "{dotted}"\nexe = "/opt/{dotted}/bin"\n'
            f"[[allow]]\nname = '{dotted}'\nunit = \"{dotted}.service\"\n"
            f'[netns]\nnames = ["""{dotted}""", \'\'\'{dotted}\'\'\']   # {dotted}\n')
    p = load_policy(policy_dir(tmp_path, {"a.toml": text}), owner_uid=ME)
    assert [r.name for r in p.rules] == [dotted, dotted] and p.netns.names == (dotted,)
    assert parse_policy_text('netns.names = ["blue"]\n', "p.toml").netns.names == ("blue",)


def test_too_many_tokens_in_all_files_are_refused(tmp_path):
    # Each token costs the parser a few microseconds: their number is bounded over the whole policy.
    part = "".join(f'[[allow]]\nexe = "/bin/x{i}"\n' for i in range(8000))   # 5 tokens a rule
    d = policy_dir(tmp_path, {"a.toml": part, "b.toml": part, "c.toml": part, "d.toml": part})
    e = load_error(d)
    assert e.errors[-1] == (f"{d}/c.toml: refused: the policy files together hold more than 100000 keys, "
                            "values and comments (this file passes the limit)")


def test_the_files_together_are_bounded_in_size(tmp_path):
    comment = "#" * 99 + "\n"
    d = policy_dir(tmp_path, {"a.toml": comment * 6000, "b.toml": comment * 6000, "c.toml": ""})
    e = load_error(d)
    assert e.errors == [f"{d}: the policy files hold more than 1048576 bytes together (b.toml passes the limit)"]


def test_a_full_policy_loads(tmp_path):
    # As many rules as the kernel maps hold, each with a name, with comments: well within the limits.
    rules = [f'# rule {i}\n[[allow]]\nname = "service binary number {i}"\nexe = "/usr/lib/vendor/bin/d-{i}"\n'
             for i in range(policy.MAX_EXE_RULES)]
    rules += [f'[[deny]]\nname = "worker {i}"\nunit = "worker-{i}.service"\n'
              for i in range(policy.MAX_CGROUP_RULES - 24)]
    rules.append('[netns]\nnames = [' + ", ".join(f'"ns{i}"' for i in range(24)) + "]\n")
    p = load_policy(policy_dir(tmp_path, {"big.toml": "".join(rules)}), owner_uid=ME)
    assert (len(p.allow), len(p.deny), len(p.netns.names)) == (4096, 4072, 24)


def test_problems_reported_are_bounded():
    errors = errors_of("".join(f"[[allow]]\nexe = \"/bin/x\"\nx{i} = 1\n" for i in range(1000)))
    assert len(errors) == 101
    assert errors[99] == "p.toml:300: unknown key 'x99' in [[allow]] (expected one of exe, cgroup, unit, name)"
    assert errors[100] == "and 900 more problems"
