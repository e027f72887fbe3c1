"""Names from the outside world, made safe to show: executable paths, comm, cgroup paths, unit names.

Anyone can choose them: an unprivileged user names a file, a cgroup in a delegated subtree, or its comm
(prctl(PR_SET_NAME)). Written raw into a log line or a terminal, a line feed forges a log line of its
own and an ESC or OSC sequence reaches the reader's terminal; a byte that is not UTF-8 (os.readlink()
and friends decode it to a lone surrogate) makes a strict UTF-8 stream raise. Every text renderer and
log line shows such names through escaped(); JSON (json.dumps escapes) and journald fields carry
them exact.

Pure: no I/O, no OS imports.
"""

_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escaped(name: str | bytes) -> str:
    r"""`name` as one line of printable text: backslash, control characters (C0, DEL, C1), other
    characters Python does not call printable (format characters such as U+202E RIGHT-TO-LEFT OVERRIDE,
    line and paragraph separators, unassigned code points) and undecodable bytes become visible
    escapes; every other character, non-ASCII letters included, is kept.

    The escapes are unambiguous: `\\`, `\n`, `\t`, `\r`; `\xNN` is an ASCII control character
    (NN < 80) or a byte that is not UTF-8 (NN >= 80, from bytes or a surrogateescape'd str);
    `\uNNNN` / `\UNNNNNNNN` is a character (a C1 control such as U+009B, or a lone surrogate that is
    not an escaped byte)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    if name.isprintable() and "\\" not in name:   # the common case: nothing to do
        return name
    return "".join(_escape_char(c) for c in name)


def _escape_char(c: str) -> str:
    short = _SHORT.get(c)
    if short is not None:
        return short
    if c.isprintable():   # the space included; lone surrogates are not (category Cs)
        return c
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:   # PEP 383: the byte o - 0xDC00 that did not decode
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x80:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def utf8_text(name: str) -> str:
    r"""`name` with every lone surrogate spelled out (an undecodable byte as `\xNN`, any other lone
    surrogate as `\uNNNN`) and nothing else changed: text any UTF-8 encoder accepts, for formats with
    escaping rules of their own (the Prometheus text format)."""
    if name.isprintable() or not any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return name
    return "".join(_escape_char(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in name)
