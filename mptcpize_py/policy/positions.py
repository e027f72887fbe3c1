"""Where things are in a TOML text: tomllib returns values without positions, so we scan the (already
valid) text once more, just enough to know where each table, key and array element starts. Scanning
token by token (strings, arrays, inline tables) keeps a "[[allow]]" inside a multi-line string from
being taken for a header. Pure."""

import bisect
import tomllib


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
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    lines: dict[tuple, int] = {}
    n = len(text)

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    def skip_blank(i: int, newline_ok: bool = True) -> int:
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

    def read_string(i: int) -> tuple[str, int]:
        """A one-line basic or literal string starting at i: (its value, position after it)."""
        if text[i] == "'":
            j = text.index("'", i + 1)
            return text[i + 1:j], j + 1
        j = i + 1
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        return tomllib.loads("k = " + text[i:j + 1])["k"], j + 1  # let tomllib decode the escapes

    def read_key(i: int) -> tuple[tuple[str, ...], int]:
        parts = []
        while True:
            i = skip_blank(i, newline_ok=False)
            if text[i] in "\"'":
                part, i = read_string(i)
            else:
                j = i
                while j < n and (text[j].isalnum() or text[j] in "-_"):
                    j += 1
                part, i = text[i:j], j
            parts.append(part)
            i = skip_blank(i, newline_ok=False)
            if i < n and text[i] == ".":
                i += 1
                continue
            return tuple(parts), i

    def skip_value(i: int, path: tuple) -> int:
        for quote in ('"""', "'''"):
            if text.startswith(quote, i):
                j = i + 3
                while not text.startswith(quote, j):
                    j += 2 if quote == '"""' and text[j] == "\\" else 1
                # Up to two more quote characters still belong to the content: `"""a""""` is 'a"'.
                extra = 0
                while extra < 2 and j + 3 + extra < n and text[j + 3 + extra] == quote[0]:
                    extra += 1
                return j + 3 + extra
        c = text[i]
        if c in "\"'":
            return read_string(i)[1]
        if c == "[":
            i, idx = i + 1, 0
            while True:
                i = skip_blank(i)
                if text[i] == "]":
                    return i + 1
                lines.setdefault(path + (idx,), line_of(i))
                i = skip_blank(skip_value(i, path + (idx,)))
                idx += 1
                if text[i] == ",":
                    i += 1
        if c == "{":
            i += 1
            while True:
                i = skip_blank(i)
                if text[i] == "}":
                    return i + 1
                if text[i] == ",":
                    i += 1
                    continue
                key_start = i
                key, i = read_key(i)
                lines.setdefault(path + key, line_of(key_start))
                i = skip_blank(i, newline_ok=False) + 1  # past "="
                i = skip_value(skip_blank(i, newline_ok=False), path + key)
        while i < n and text[i] not in ",]}\n#":  # numbers, booleans, dates
            i += 1
        return i

    table: tuple = ()
    aot_count: dict[tuple, int] = {}  # array-of-tables path -> tables seen so far

    def resolve(keys: tuple) -> tuple:
        """A header's key path with the current index after each array of tables it passes through."""
        path: tuple = ()
        for k in keys:
            path += (k,)
            if path in aot_count:
                path += (aot_count[path] - 1,)
        return path

    try:
        i = skip_blank(0)
        while i < n:
            start = i
            if text[i] == "[":
                double = text.startswith("[[", i)
                keys, i = read_key(i + (2 if double else 1))
                i = skip_blank(i, newline_ok=False) + (2 if double else 1)
                if double:
                    path = resolve(keys[:-1]) + keys[-1:]
                    aot_count[path] = aot_count.get(path, 0) + 1
                    path += (aot_count[path] - 1,)
                else:
                    path = resolve(keys)
                lines.setdefault(path, line_of(start))
                table = path
            else:
                keys, i = read_key(i)
                lines.setdefault(table + keys, line_of(start))
                i = skip_blank(i, newline_ok=False) + 1  # past "="
                i = skip_value(skip_blank(i, newline_ok=False), table + keys)
            i = skip_blank(i)
    except (IndexError, ValueError, RecursionError, tomllib.TOMLDecodeError):
        pass  # cannot happen on text tomllib accepted; keep what we found: lines fall back to prefixes
    return lines
