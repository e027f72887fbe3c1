"""Reading the policy directory safely; validation is validate.py's.

Files are treated as hostile input (the daemon runs as root): the directory and each file must be owned
by `owner_uid` (root) and not group- or world-writable; a symlinked policy file is followed only when
every link on the way stays inside the policy directory and it ends at a regular file (openat2
RESOLVE_BENEATH: an absolute link, a `..` out of the directory, a /proc magic link are refused, so neither
a link into /etc/shadow nor a swapped link can be read). That is the layout of a Kubernetes ConfigMap
volume: NAME.toml -> ..data/NAME.toml, ..data -> ..2026_12_07_21_00_00.1234/ (hidden names, not
policy), the kubelet swapping ..data atomically on an update. Such a volume's directory is 0777 (the
kubelet's emptyDir) but mounted read-only: on a read-only mount the group/world write bits are not
checked (nobody can write through it; ownership still is). Files are
bounded to 1 MiB, and so are all files together: parsing is pure Python (up to 2 s per MiB of the
costliest TOML on the build machine) and a reload runs in the daemon's main loop (validate.py bounds
the rest: tokens, dotted keys). The directory itself may be a symlink: the admin chose that path, and the
checks apply to the directory it leads to. Policy = every `*.toml` file of the directory, in sorted
name order; hidden files (".name.toml", e.g. editor lock files) are ignored.
"""

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from mptcpize_py.host import files
from mptcpize_py.host.files import others_may_write
from mptcpize_py.policy.model import DEFAULT_POLICY_DIR, Policy, PolicyError, PolicyFile
from mptcpize_py.policy.validate import policy_from_files

MAX_FILE_BYTES = 1 << 20
MAX_POLICY_BYTES = 1 << 20   # all files together
MAX_FILES = 1000

_OWNERSHIP_HINT = "policy files and their directory must be owned by root and writable only by root"


def load_policy(directory: Path = DEFAULT_POLICY_DIR, owner_uid: int = 0) -> Policy:
    """Reads and validates every policy file of `directory`; returns the Policy or raises PolicyError."""
    return policy_from_files(read_policy_files(Path(directory), owner_uid))


def read_policy_files(directory: Path, owner_uid: int) -> Iterator[PolicyFile]:
    """Each policy file of `directory` in name order, read one at a time. A problem with the directory
    (too many files, too many bytes in all) raises PolicyError; a problem with one file is that file's
    `refused`."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PolicyError([f"{directory}: policy directory does not exist"],
                          hint=f"create it (mkdir -p {directory}), or pass --policy-dir") from None
    except OSError as e:
        raise PolicyError([f"{directory}: cannot open policy directory: {e.strerror}"]) from None
    try:
        # Checked on the open descriptor, so the directory we list is the one we checked.
        problem = others_may_write(os.fstat(dfd), owner_uid, read_only=_read_only(dfd))
        if problem:
            raise PolicyError([f"{directory}: refused: {problem}"], hint=_OWNERSHIP_HINT)
        names = sorted(n for n in os.listdir(dfd) if n.endswith(".toml") and not n.startswith("."))
        if len(names) > MAX_FILES:
            raise PolicyError([f"{directory}: {len(names)} policy files; at most {MAX_FILES} are read"])
        total = 0
        for name in names:
            label = str(directory / name)
            try:
                text, size = _read_policy_file(dfd, name, label, owner_uid)
            except _FileRefused as e:
                yield PolicyFile(label, refused=str(e))
                continue
            total += size
            if total > MAX_POLICY_BYTES:
                raise PolicyError([f"{directory}: the policy files hold more than {MAX_POLICY_BYTES} bytes "
                                   f"together ({name} passes the limit)"],
                                  hint="remove comments, unused rules or files: a policy is read whole "
                                       "at every reload")
            yield PolicyFile(label, text)
    finally:
        os.close(dfd)


class _FileRefused(Exception):
    pass


def _read_only(fd: int) -> bool:
    """On a read-only mount (a ConfigMap volume), where write permission bits grant nothing."""
    try:
        return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _read_policy_file(dfd: int, name: str, label: str, owner_uid: int) -> tuple[str, int]:
    """(text, size in bytes) of one policy file; _FileRefused says why not."""
    # lstat first so that we never open a device or FIFO; then open without following links and check
    # the descriptor again, which is what counts (the entry may have been swapped in between).
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError as e:
        raise _FileRefused(f"{label}: cannot stat: {e.strerror}") from None
    symlink = _FileRefused(f"{label}: refused: a symbolic link that leads outside the policy directory "
                           "(or through /proc); copy the file into the directory instead")
    link = stat.S_ISLNK(st.st_mode)
    if not link and not stat.S_ISREG(st.st_mode):
        raise _FileRefused(f"{label}: refused: not a regular file")
    try:
        if link:   # a ConfigMap's NAME.toml -> ..data/NAME.toml: only links that stay beneath dfd
            fd = files.open_beneath(dfd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EXDEV):   # a link swapped in; RESOLVE_BENEATH's refusal
            raise symlink from None
        raise _FileRefused(f"{label}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _FileRefused(f"{label}: refused: not a regular file"
                               + (" (where its symbolic link ends)" if link else ""))
        problem = others_may_write(st, owner_uid, read_only=_read_only(fd))
        if problem:
            raise _FileRefused(f"{label}: refused: {problem}")
        too_big = _FileRefused(f"{label}: refused: larger than {MAX_FILE_BYTES} bytes")
        if st.st_size > MAX_FILE_BYTES:
            raise too_big
        chunks, total = [], 0
        while total <= MAX_FILE_BYTES:  # the size may change under us: bound what we read, not st_size
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise too_big
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _FileRefused(f"{label}:{line}: not valid UTF-8") from None
