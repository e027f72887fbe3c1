"""TOML text scanning, the one home of it (pure):
- before tomllib: a linear count of a text's tokens and its longest dotted key (validate.py's budget
  guard bounds what a hostile policy file costs; see the figures there);
- after tomllib: where each table, key and array element starts (tomllib gives no positions). That
  scan goes token by token (strings, arrays, inline tables), so a "[[allow]]" inside a multi-line
  string is not taken for a header; it relies on the text being valid."""

import bisect
import operator
import re
import tomllib

# The budget scan's tokens: strings (whose dots are not separators), comments, and runs of key parts
# joined by dots (chains: a key, a header, or a value such as 1.5 or true); '[' and '{' are counted
# apart. Linear: at any position at most one alternative of a repeat can match, so a failed repeat is
# not retried another way, and an unterminated string takes the rest of its line (or file) instead of
# failing after a long scan.
# (No possessive quantifiers: Python 3.11.2's, Debian's, miss matches with alternations inside them.)
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\[^\n])*"|'[^'\n]*')"""
_KEY_PART_RE = re.compile(_KEY_PART)
_count_dots = operator.methodcaller("count", ".")
_TOML_SCAN = re.compile(
    r'"""(?:[^"\\]|\\[\s\S]|\\\Z|"(?!""))*(?:"""|\Z)'   # a multi-line basic string
    r"|'''(?:[^']|'(?!''))*(?:'''|\Z)"                 # a multi-line literal string
    rf"|(?P<chain>{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*)"
    r"|\#[^\n]*"                                      # a comment
    r"""|["'][^\n]*""")                                # an unterminated string


def scan_chains(text: str) -> list[str]:
    """One entry per token of the budget scan: a chain's text, or "" for a string or comment."""
    return _TOML_SCAN.findall(text)


def count_tokens(text: str, chains: list[str]) -> int:
    """The text's tokens as the budget counts them: `chains` (scan_chains(text)), '[' and '{'."""
    return len(chains) + text.count("[") + text.count("{")


def long_dotted_key(text: str, chains: list[str], max_parts: int) -> tuple[int, str] | None:
    """(line, chain) of the first dotted key (or header, or value) of more than `max_parts` parts;
    `chains`: scan_chains(text)."""
    if max(map(_count_dots, chains), default=0) < max_parts:
        return None   # the usual case, without a Python step per token
    for m in _TOML_SCAN.finditer(text):
        chain = m.group("chain")
        if chain and chain.count(".") >= max_parts and len(_KEY_PART_RE.findall(chain)) > max_parts:
            return text.count("\n", 0, m.start()) + 1, chain
    return None


def toml_error_line(message: str, text: str) -> tuple[int, str]:
    """(line, reason) from tomllib's "Reason (at line 3, column 5)" / "Reason (at end of document)"."""
    if message.endswith(")") and " (at line " in message:
        reason, _, where = message.rpartition(" (at line ")
        line, _, column = where[:-1].partition(", column ")
        if line.isdigit():
            return int(line), f"{reason} (column {column})" if column else reason
    if message.endswith(" (at end of document)"):
        return max(1, len(text.splitlines())), message[: -len(" (at end of document)")] + " at end of file"
    return 1, message


def toml_lines(text: str) -> dict[tuple, int]:
    """{path: line} for a valid TOML text. A path is the key path with array indexes: ("allow", 0) is
    the first [[allow]] table, ("allow", 0, "exe") its exe key, ("netns", "names", 1) an array element."""
    scanner = _Scanner(text)
    try:
        scanner.scan()
    except (IndexError, ValueError, RecursionError, tomllib.TOMLDecodeError):
        pass  # cannot happen on text tomllib accepted; keep what we found: lines fall back to prefixes
    return scanner.lines


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.lines: dict[tuple, int] = {}
        self.aot_count: dict[tuple, int] = {}  # array-of-tables path -> tables seen so far

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def skip_blank(self, i: int, newline_ok: bool = True) -> int:
        text, n = self.text, self.n
        while i < n:
            c = text[i]
            if c in " \t\r" or (c == "\n" and newline_ok):
                i += 1
            elif c == "#":
                j = text.find("\n", i)
                i = n if j == -1 else j
            else:
                break
        return i

    def read_string(self, i: int) -> tuple[str, int]:
        """A one-line basic or literal string starting at i: (its value, position after it)."""
        text = self.text
        if text[i] == "'":
            j = text.index("'", i + 1)
            return text[i + 1:j], j + 1
        j = i + 1
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        return tomllib.loads("k = " + text[i:j + 1])["k"], j + 1  # let tomllib decode the escapes

    def read_key(self, i: int) -> tuple[tuple[str, ...], int]:
        text, n = self.text, self.n
        parts = []
        while True:
            i = self.skip_blank(i, newline_ok=False)
            if text[i] in "\"'":
                part, i = self.read_string(i)
            else:
                j = i
                while j < n and (text[j].isalnum() or text[j] in "-_"):
                    j += 1
                part, i = text[i:j], j
            parts.append(part)
            i = self.skip_blank(i, newline_ok=False)
            if i < n and text[i] == ".":
                i += 1
                continue
            return tuple(parts), i

    def skip_multiline_string(self, i: int, quote: str) -> int:
        text = self.text
        j = i + 3
        while not text.startswith(quote, j):
            j += 2 if quote == '"""' and text[j] == "\\" else 1
        # Up to two more quote characters still belong to the content: `"""a""""` is 'a"'.
        extra = 0
        while extra < 2 and j + 3 + extra < self.n and text[j + 3 + extra] == quote[0]:
            extra += 1
        return j + 3 + extra

    def skip_array(self, i: int, path: tuple) -> int:
        text, idx = self.text, 0
        i += 1
        while True:
            i = self.skip_blank(i)
            if text[i] == "]":
                return i + 1
            self.lines.setdefault(path + (idx,), self.line_of(i))
            i = self.skip_blank(self.skip_value(i, path + (idx,)))
            idx += 1
            if text[i] == ",":
                i += 1

    def skip_inline_table(self, i: int, path: tuple) -> int:
        text = self.text
        i += 1
        while True:
            i = self.skip_blank(i)
            if text[i] == "}":
                return i + 1
            if text[i] == ",":
                i += 1
                continue
            i = self.key_value(i, path)

    def key_value(self, i: int, table: tuple) -> int:
        """`key = value` at i in `table`: records the key's line, returns the position after the value."""
        keys, j = self.read_key(i)
        self.lines.setdefault(table + keys, self.line_of(i))
        j = self.skip_blank(j, newline_ok=False) + 1  # past "="
        return self.skip_value(self.skip_blank(j, newline_ok=False), table + keys)

    def skip_value(self, i: int, path: tuple) -> int:
        text = self.text
        for quote in ('"""', "'''"):
            if text.startswith(quote, i):
                return self.skip_multiline_string(i, quote)
        c = text[i]
        if c in "\"'":
            return self.read_string(i)[1]
        if c == "[":
            return self.skip_array(i, path)
        if c == "{":
            return self.skip_inline_table(i, path)
        while i < self.n and text[i] not in ",]}\n#":  # numbers, booleans, dates
            i += 1
        return i

    def resolve(self, keys: tuple) -> tuple:
        """A header's key path with the current index after each array of tables it passes through."""
        path: tuple = ()
        for k in keys:
            path += (k,)
            if path in self.aot_count:
                path += (self.aot_count[path] - 1,)
        return path

    def header(self, i: int) -> tuple[tuple, int]:
        """A [table] or [[array of tables]] header at i: (its path, the position after it)."""
        double = self.text.startswith("[[", i)
        keys, j = self.read_key(i + (2 if double else 1))
        j = self.skip_blank(j, newline_ok=False) + (2 if double else 1)
        if double:
            path = self.resolve(keys[:-1]) + keys[-1:]
            self.aot_count[path] = self.aot_count.get(path, 0) + 1
            path += (self.aot_count[path] - 1,)
        else:
            path = self.resolve(keys)
        self.lines.setdefault(path, self.line_of(i))
        return path, j

    def scan(self) -> None:
        table: tuple = ()
        i = self.skip_blank(0)
        while i < self.n:
            if self.text[i] == "[":
                table, i = self.header(i)
            else:
                i = self.key_value(i, table)
            i = self.skip_blank(i)
