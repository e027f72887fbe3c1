"""TOML text scanning, the one home of it (pure). One tokeniser, one linear pass (scan()), serves:
- before tomllib: the budget guard (validate.py bounds what a hostile policy file costs; see the
  figures there): the number of tokens and the longest dotted key;
- after tomllib: where each table, key and array element starts (tomllib gives no positions), read
  from the same tokens, so a "[[allow]]" inside a multi-line string is not taken for a header; that
  walk relies on the text being valid."""

import collections
import operator
import re
import tomllib
from collections.abc import Iterator

# The tokens: strings (whose dots are not separators), comments, runs of key parts joined by dots
# (chains: a key, a header, or a value such as 1.5 or true), and the punctuation [ ] { } = , and newline.
# Anything else (blanks, ':' and '+' in values) is passed over. Every newline of the text is in a
# token (the comment and string alternatives stop before one), so a token's line is counted from them.
# Linear: at any position at most one alternative of a repeat can match, so a failed repeat is not
# retried another way, and an unterminated string takes the rest of its line (or file) instead of
# failing after a long scan.
# (No possessive quantifiers: Python 3.11.2's, Debian's, miss matches with alternations inside them.)
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\[^\n])*"|'[^'\n]*')"""
_KEY_PART_RE = re.compile(_KEY_PART)
_CHAIN = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_CHAIN_RE = re.compile(_CHAIN)
_TOKEN = re.compile(
    r"[][{}=,\n]"                                   # first: the most frequent in hostile texts
    # a multi-line basic string; up to two more quotes after its end are content (`"""a""""` is 'a"')
    r'|"""(?:[^"\\]|\\[\s\S]|\\\Z|"(?!""))*(?:""""{0,2}|\Z)'
    r"|'''(?:[^']|'(?!''))*(?:''''{0,2}|\Z)"           # a multi-line literal string
    rf"|{_CHAIN}"
    r"|\#[^\n]*"                                      # a comment
    r"""|["'][^\n]*""")                                # an unterminated string
_PUNCTUATION = "[]{}=,\n"
_count_dots = operator.methodcaller("count", ".")


def scan(text: str) -> list[str]:
    """The text's tokens, in order, each as it stands in the text."""
    return _TOKEN.findall(text)


def count_tokens(text: str, tokens: list[str]) -> int:
    """The text's tokens as the budget counts them: keys, values (a date's pieces apart), strings and
    comments, and every '[' and '{' of the text (in strings and comments too: a cheap upper bound).
    `tokens`: scan(text)."""
    counts = collections.Counter(tokens)   # one pass, in C
    punctuation = sum(counts[c] for c in _PUNCTUATION)
    return len(tokens) - punctuation + text.count("[") + text.count("{")


def long_dotted_key(tokens: list[str], max_parts: int) -> tuple[int, str] | None:
    """(line, chain) of the first dotted key (or header, or value) of more than `max_parts` parts;
    `tokens`: scan(text)."""
    if max(map(_count_dots, tokens), default=0) < max_parts:
        return None   # the usual case, without a Python step per token
    line = 1
    for tok in tokens:
        if tok.count(".") >= max_parts and _CHAIN_RE.fullmatch(tok) \
                and len(_KEY_PART_RE.findall(tok)) > max_parts:
            return line, tok
        line += tok.count("\n")
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


def toml_lines(tokens: list[str]) -> dict[tuple, int]:
    """{path: line} for a valid TOML text's tokens (scan(text)). A path is the key path with array
    indexes: ("allow", 0) is the first [[allow]] table, ("allow", 0, "exe") its exe key,
    ("netns", "names", 1) an array element."""
    walk = _Walk(tokens)
    try:
        walk.document()
    except (ValueError, RecursionError, tomllib.TOMLDecodeError):
        pass  # cannot happen on text tomllib accepted; keep what we found: lines fall back to prefixes
    return walk.lines


def _key_parts(chain: str) -> tuple[str, ...]:
    return tuple(_key_part(p) for p in _KEY_PART_RE.findall(chain))


def _key_part(part: str) -> str:
    if part[0] == "'":
        return part[1:-1]
    if part[0] == '"':
        return tomllib.loads("k = " + part)["k"]   # let tomllib decode the escapes
    return part


class _Walk:
    """The token walk of toml_lines(), by recursive descent like tomllib's own (which accepted the
    text, so its nesting is shallow enough)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens: Iterator[str] = iter(tokens)
        self.tok = next(self.tokens, "")   # the current token; "" at the end
        self.line = 1                      # the current token's line
        self.lines: dict[tuple, int] = {}
        self.aot_count: dict[tuple, int] = {}  # array-of-tables path -> tables seen so far

    def advance(self) -> str:
        """Moves past the current token; returns it."""
        tok = self.tok
        self.line += tok.count("\n")
        self.tok = next(self.tokens, "")
        return tok

    def skip_blank(self) -> None:
        while self.tok == "\n" or self.tok.startswith("#"):
            self.advance()

    def document(self) -> None:
        table: tuple = ()
        self.skip_blank()
        while self.tok:
            if self.tok == "[":
                table = self.header()
            else:
                self.key_value(table)
            self.skip_blank()

    def header(self) -> tuple:
        """A [table] or [[array of tables]] header: its path."""
        line = self.line
        self.advance()
        double = self.tok == "["
        if double:
            self.advance()
        keys = _key_parts(self.advance())
        self.advance()
        if double:
            self.advance()
            path = self.resolve(keys[:-1]) + keys[-1:]
            self.aot_count[path] = self.aot_count.get(path, 0) + 1
            path += (self.aot_count[path] - 1,)
        else:
            path = self.resolve(keys)
        self.lines.setdefault(path, line)
        return path

    def resolve(self, keys: tuple) -> tuple:
        """A header's key path with the current index after each array of tables it passes through."""
        path: tuple = ()
        for k in keys:
            path += (k,)
            if path in self.aot_count:
                path += (self.aot_count[path] - 1,)
        return path

    def key_value(self, table: tuple) -> None:
        """`key = value` in `table`: records the key's line, moves past the value."""
        path = table + _key_parts(self.tok)
        self.lines.setdefault(path, self.line)
        self.advance()
        if self.advance() != "=":
            raise ValueError("no '=' after a key")
        self.value(path)

    def value(self, path: tuple) -> None:
        if self.tok == "[":
            self.array(path)
        elif self.tok == "{":
            self.inline_table(path)
        else:   # a scalar: its tokens up to the next separator (a date's pieces, a string's quotes)
            self.advance()
            while self.tok and self.tok not in (",", "]", "}", "\n") and not self.tok.startswith("#"):
                self.advance()

    def array(self, path: tuple) -> None:
        self.advance()
        idx = 0
        while True:
            self.skip_blank()
            if self.tok == "]":
                self.advance()
                return
            self.lines.setdefault(path + (idx,), self.line)
            self.value(path + (idx,))
            idx += 1
            self.skip_blank()
            if self.tok == ",":
                self.advance()
            elif not self.tok:
                raise ValueError("unterminated array")

    def inline_table(self, path: tuple) -> None:
        self.advance()
        while True:
            self.skip_blank()
            if self.tok == "}":
                self.advance()
                return
            if self.tok == ",":
                self.advance()
                continue
            if not self.tok:
                raise ValueError("unterminated inline table")
            self.key_value(path)
