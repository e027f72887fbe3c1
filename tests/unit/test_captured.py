"""host.files.stderr_captured: descriptor 2 (what C code and children write to) goes to a file for a
block and comes back after it; and loader.compiler_errors, which picks a failed compile's errors."""

import os
import subprocess

import pytest

from mptcpize_py.host import files
from mptcpize_py.program.loader import MAX_ERRORS_SHOWN, compiler_errors


def test_what_a_child_and_this_process_write_to_fd2_is_captured(capfd):
    with files.stderr_captured() as out:
        subprocess.run(["sh", "-c", "echo from a child >&2"], check=True)
        os.write(2, b"written to fd 2\n")
    assert out.text == "from a child\nwritten to fd 2\n"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_fd2_comes_back_when_the_block_raises(capfd):
    before = os.fstat(2)
    with pytest.raises(RuntimeError), files.stderr_captured() as out:
        os.write(2, b"partial\n")
        raise RuntimeError("compile failed")
    assert out.text == "partial\n"
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


CLANG = """\
In file included from <built-in>:4:
In file included from /virtual/include/bcc/helpers.h:53:
arch/x86/include/asm/ibt.h:77:8: warning: 'nocf_check' attribute ignored [-Wignored-attributes]
extern __noendbr u64 ibt_save(bool disable);
       ^
arch/x86/include/asm/ibt.h:32:34: note: expanded from macro '__noendbr'
/virtual/main.c:12:5: error: use of undeclared identifier 'x'
    return x;
           ^
/virtual/main.c:1:10: fatal error: 'nope.h' file not found
2 warnings and 2 errors generated.
"""


def test_compiler_errors_are_the_error_lines_only():
    assert compiler_errors(CLANG) == ["/virtual/main.c:12:5: error: use of undeclared identifier 'x'",
                                      "/virtual/main.c:1:10: fatal error: 'nope.h' file not found"]


def test_compiler_errors_are_capped():
    text = "".join(f"/virtual/main.c:{i}:1: error: e{i}\n" for i in range(MAX_ERRORS_SHOWN + 3))
    errors = compiler_errors(text)
    assert len(errors) == MAX_ERRORS_SHOWN + 1 and errors[-1] == "and 3 more errors"
