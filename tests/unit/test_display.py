"""display.escaped(): names from the outside world as one line of printable text, unambiguously."""

import pytest

from mptcpize_py.display import escaped, utf8_text


@pytest.mark.parametrize("raw,shown", [
    ("/usr/bin/iperf3", "/usr/bin/iperf3"),
    ("/opt/My App/bin/x", "/opt/My App/bin/x"),              # spaces are kept
    ("/opt/café/名前", "/opt/café/名前"),                     # printable non-ASCII is kept
    ("a\nb", "a\\nb"), ("a\rb", "a\\rb"), ("a\tb", "a\\tb"),
    ("a\\nb", "a\\\\nb"),                                     # a backslash is escaped: no look-alikes
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),               # OSC: set the terminal's title
    ("\x1b[2J", "\\x1b[2J"), ("\x00\x7f", "\\x00\\x7f"),      # C0, DEL
    ("\x9b31m\x85", "\\u009b31m\\u0085"),                     # C1 controls (CSI, NEL) as characters
    ("a\udcffb", "a\\xffb"),                                  # an undecodable byte (surrogateescape)
    ("\ud800\udc41", "\\ud800\\udc41"),                       # lone surrogates that are no byte
    ("a\u2028b\u202eb", "a\\u2028b\\u202eb"),                  # line separator, right-to-left override
    ("\U000e0001", "\\U000e0001"),                            # a format character beyond the BMP
    (b"/tmp/\xff\x1b\n", "/tmp/\\xff\\x1b\\n"),                # bytes: decoded as UTF-8 first
    ("/opt/caf\u00e9".encode(), "/opt/caf\u00e9"),
])
def test_escaped(raw, shown):
    assert escaped(raw) == shown


def test_escaped_is_one_printable_line_that_any_encoder_takes():
    every = "".join(map(chr, range(0x110000)))
    out = escaped(every)
    assert out.isprintable() and "\n" not in out
    out.encode("utf-8")   # no lone surrogate is left


def test_forged_log_line_stays_in_its_line():
    name = "/tmp/evil\nmptcpize-py: info: would upgrade pid=1 exe=/usr/sbin/sshd rule=FORGED"
    assert escaped(name).splitlines() == [escaped(name)]


@pytest.mark.parametrize("raw,text", [
    ("a\nb\\c\x1b", "a\nb\\c\x1b"),      # only surrogates change: the caller's format escapes the rest
    ("a\udcffb", "a\\xffb"), ("\ud800", "\\ud800"), ("", ""),
])
def test_utf8_text(raw, text):
    assert utf8_text(raw) == text
    utf8_text(raw).encode("utf-8")
