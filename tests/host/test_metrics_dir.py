"""The daemon's metrics directory is not trusted further than its owner (issue 23 item 12): a non-root
owner of its parent (Debian's prometheus-node-exporter makes /var/lib/prometheus the prometheus user's)
must not be able to make the root daemon write into another directory by swapping the metrics
directory for a symbolic link, and a directory that others than root may write is refused."""

import errno
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from mptcpize_py.daemon.textfile import FILE_NAME, TextFile
from mptcpize_py.host import files
from tests.conftest import is_root, start_daemon
from tests.waiting import scaled, wait_exit, wait_for

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (directories owned by 65534)")
NOBODY = 65534


@pytest.fixture
def base():
    """A directory anyone may enter (tmp_path's parents are 0700), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="mzmetrics-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def test_a_swapped_symlink_is_not_followed(base):
    # The parent belongs to nobody, the metrics directory (and the daemon) to root; a root-only
    # directory elsewhere is what nobody wants the daemon to write into.
    parent = base / "prometheus"
    parent.mkdir(mode=0o755)
    os.chown(parent, NOBODY, NOBODY)
    textfile = parent / "node-exporter"
    textfile.mkdir(mode=0o755)
    secret = base / "secret"
    secret.mkdir(mode=0o700)
    policy_dir = base / "policy.d"
    policy_dir.mkdir(mode=0o755)
    (policy_dir / "10.toml").write_text('[[allow]]\nexe = "/bin/true"\n')
    (policy_dir / "10.toml").chmod(0o644)
    log_path = base / "daemon.log"
    with open(log_path, "w") as log:
        daemon = start_daemon(policy_dir, base / "run" / "control", log, log_path, "--dry-run",
                              "--metrics-dir", str(textfile))
        try:
            wait_for(lambda: (textfile / FILE_NAME).exists(), "the first metrics file")
            # nobody swaps the directory it may rename for a symlink to the root-only one
            subprocess.run(["sh", "-c", 'mv "$1" "$1.old" && ln -s "$2" "$1"', "sh", str(textfile),
                           str(secret)], user=NOBODY, group=NOBODY, extra_groups=[], check=True,
                           timeout=scaled(30), cwd="/")
            daemon.send_signal(signal.SIGHUP)   # a reload: the metrics are rewritten within a second
            refusal = f"metrics: refused {textfile}: a symbolic link is in the path"
            wait_for(lambda: refusal in log_path.read_text() or (secret / FILE_NAME).exists(),
                     "the daemon to write its metrics again, or to refuse to",
                     details=lambda: log_path.read_text())
            assert os.listdir(secret) == []
            assert sum(refusal in line for line in log_path.read_text().splitlines()) == 1
        finally:
            daemon.terminate()
            wait_exit(daemon, "the daemon to exit after SIGTERM")


@pytest.mark.parametrize("mode,uid,gid,why", [
    (0o777, 0, 0, "world-writable"),
    (0o1777, 0, 0, "world-writable"),
    (0o775, 0, NOBODY, "group-writable"),
    (0o755, NOBODY, 0, f"owned by uid {NOBODY}"),
])
def test_a_directory_others_may_write_is_refused(base, caplog, mode, uid, gid, why):
    d = base / "textfile"
    d.mkdir()
    os.chown(d, uid, gid)
    os.chmod(d, mode)
    caplog.set_level(logging.INFO, logger="mptcpize_py.daemon")
    tf = TextFile(d)
    assert tf.write(0, lambda: "up 1\n") is False
    assert tf.write(20, lambda: "up 1\n") is False     # said once, not at every write
    assert os.listdir(d) == []
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("metrics:")]
    assert len(said) == 1 and said[0][0] == logging.ERROR
    assert said[0][1].startswith(f"metrics: refused {d}: {why}"), said


def test_root_owned_directory_gets_the_file(base):
    d = base / "textfile"
    d.mkdir(mode=0o755)
    assert TextFile(d).write(0, lambda: "up 1\n") is True
    st = os.stat(d / FILE_NAME)
    assert (d / FILE_NAME).read_text() == "up 1\n" and st.st_mode & 0o777 == 0o644
    assert os.listdir(d) == [FILE_NAME]      # no temporary file left behind


def test_the_component_walk_refuses_a_symlink_too(base):
    # The fallback for kernels without openat2 (before 5.6) or a seccomp filter refusing it.
    (base / "real" / "d").mkdir(parents=True)
    (base / "link").symlink_to(base / "real")
    fd = files.open_dir_no_symlinks_walk(base / "real" / "d")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(base / "real" / "d"))
    finally:
        os.close(fd)
    for path in (base / "link" / "d", base / "link"):
        with pytest.raises(OSError) as e:
            files.open_dir_no_symlinks_walk(path)
        assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)   # O_NOFOLLOW|O_DIRECTORY at a link
