"""policy/positions.py: one tokenising pass serves the budget guard (before tomllib) and the file:line
positions (after it). The guard's refusals are checked by their messages, the positions by the lines
they give and by the lines a policy's errors name."""

import pytest

from mptcpize_py.policy import PolicyError, parse_policy_text
from mptcpize_py.policy.positions import scan, toml_lines

TOKENS_REFUSED = ("p.toml: refused: the policy files together hold more than 100000 keys, values and "
                  "comments (this file passes the limit)")


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse_policy_text(text, "p.toml")
    return e.value.errors


# The messages are the ones the two-scanner guard gave (checked against it before the scanners were
# made one); the inputs are each about 1 MiB, the size the loader lets through.
@pytest.mark.parametrize("text, message", [
    # deep nesting: tomllib recurses once per level; refused as invalid, not a crash
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "p.toml:1: invalid TOML: nested too deeply"),
    ("x = " + "[" * 100_001 + "\n", TOKENS_REFUSED),
    # a very long line: one dotted key of 200,000 parts (tomllib's time is quadratic in them)
    ("[[allow]]\n" + ".".join(["a"] * 200_000) + " = 1\n",
     "p.toml:2: a dotted key of more than 8 parts ('" + "a." * 50 + "'...); policy keys have one or two"),
    # many keys: 50,001 `kN = 1` lines are 100,002 keys and values
    ("".join(f"k{i} = 1\n" for i in range(50_001)), TOKENS_REFUSED),
], ids=["deep nesting", "100,001 brackets", "very long line", "many keys"])
def test_pathological_input_is_refused_with_the_guards_message(text, message):
    assert errors_of(text)[0] == message


def test_the_token_budget_counts_keys_and_values_not_punctuation():
    # 50,000 keys and values are exactly the budget: parsed (and refused for what they say)
    errors = errors_of("".join(f"k{i} = 1\n" for i in range(50_000)))
    assert errors[0].startswith("p.toml:1: unknown key 'k0'")


def test_a_long_dotted_key_behind_a_closing_quote_is_refused_before_parsing():
    # `"""a""""` is the string 'a"': its fourth quote opened an unterminated string in the old budget
    # scan, which then hid the rest of the line from it (here a 9-part key, in the review's case a
    # key tomllib takes minutes over).
    text = 'x = [{ k = """a"""", ' + ".".join(["j"] * 9) + " = 1 }]\n"
    assert errors_of(text) == ["p.toml:1: a dotted key of more than 8 parts ('j.j.j.j.j.j.j.j.j'); policy "
                               "keys have one or two"]


def test_positions_of_multi_line_arrays_and_dotted_keys():
    text = (
        "# a comment with [[allow]] and a = [\n"          # 1
        "netns . 'names' = [\n"                          # 2
        '  "a, b",   # a comment ], {\n'                 # 3
        "  '''c\n"                                       # 4
        "d''',\n"                                        # 5
        "  [1, [2,\n"                                    # 6
        "   3]],\n"                                      # 7
        "]\n"                                            # 8
        '[[allow]]\n'                                    # 9
        'exe."x.y" = { a.b = [ """\n'                    # 10
        '""" , 2 ], c = 1979-05-27T07:32:00Z }\n'        # 11
        '[[allow]]\n'                                    # 12
        'name = """q""""\n'                              # 13
        'when = 07:32:00\n'                              # 14
        "[allow.sub]\n"                                  # 15
        "k = 1\n"                                        # 16
    )
    assert toml_lines(scan(text)) == {
        ("netns", "names"): 2,
        ("netns", "names", 0): 3, ("netns", "names", 1): 4, ("netns", "names", 2): 6,
        ("netns", "names", 2, 0): 6, ("netns", "names", 2, 1): 6, ("netns", "names", 2, 1, 0): 6,
        ("netns", "names", 2, 1, 1): 7,
        ("allow", 0): 9, ("allow", 0, "exe", "x.y"): 10, ("allow", 0, "exe", "x.y", "a", "b"): 10,
        ("allow", 0, "exe", "x.y", "a", "b", 0): 10, ("allow", 0, "exe", "x.y", "a", "b", 1): 11,
        ("allow", 0, "exe", "x.y", "c"): 11,
        ("allow", 1): 12, ("allow", 1, "name"): 13, ("allow", 1, "when"): 14,
        ("allow", 1, "sub"): 15, ("allow", 1, "sub", "k"): 16,
    }


def test_errors_name_the_line_of_an_element_of_a_multi_line_array():
    text = ("netns.names = [\n"
            '  "blue",   # ], "x/y"\n'
            '  """red""",\n'
            '  "a/b",\n'
            "]\n")
    assert errors_of(text) == ["p.toml:4: names: 'a/b' contains '/': give the name of /run/netns/NAME, not a path"]
