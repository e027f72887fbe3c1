"""Files: atomic replacement, durable removal, opening without /proc magic links, symlinked directories,
dev_t encoding, descriptor 2 captured into a file."""

import ctypes
import errno
import os
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mptcpize_py.host import libc

AT_FDCWD = -100
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def mkdev(major: int, minor: int) -> int:
    """The kernel's internal dev_t encoding (include/linux/kdev_t.h MKDEV: major << 20 | minor)."""
    return (major << 20) | minor


def kernel_dev(st_dev: int) -> int:
    """The kernel's internal dev_t for a userspace st_dev."""
    return mkdev(os.major(st_dev), os.minor(st_dev))


def parse_fdinfo(text: str) -> dict[str, str]:
    """/proc/PID/fdinfo/FD 'key:\\tvalue' lines -> {key: value} (the first lines; later ones are
    per-file-type extras)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def openat2(path: str | Path, flags: int, resolve: int, dirfd: int = AT_FDCWD) -> int | None:
    """openat2(dirfd, path, {flags, resolve}); None where the kernel has no openat2 (before Linux
    5.6) or a seccomp filter refuses it. Other failures raise OSError."""
    how = ctypes.create_string_buffer(struct.pack("=QQQ", flags, 0, resolve), 24)
    try:
        return libc.syscall(libc.syscall_number("openat2"), dirfd, ctypes.c_char_p(os.fsencode(path)),
                            how, 24)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM):
            return None
        raise OSError(e.errno, e.strerror, str(path)) from None


def open_no_magiclinks(path: str) -> int:
    """open(path, O_PATH) following ordinary symlinks but no /proc magic links: a policy (or a symlink
    in it) naming /proc/self/exe or /proc/PID/fd/N would otherwise resolve to whatever that process
    runs, the daemon itself included. openat2(RESOLVE_NO_MAGICLINKS); plain open() before Linux 5.6."""
    fd = openat2(path, os.O_PATH | os.O_CLOEXEC, RESOLVE_NO_MAGICLINKS)
    return fd if fd is not None else os.open(path, os.O_PATH | os.O_CLOEXEC)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_no_symlinks(path: Path) -> int:
    """A descriptor of the directory `path` (absolute), reached without following any symbolic link:
    ELOOP when one is on the way. For a directory that someone else may swap for a link (its parent is
    theirs), so that what we check and write through the descriptor is the directory named.
    openat2(RESOLVE_NO_SYMLINKS); a walk with O_NOFOLLOW where there is no openat2."""
    fd = openat2(path, _DIR_FLAGS, RESOLVE_NO_SYMLINKS)
    return fd if fd is not None else open_dir_no_symlinks_walk(path)


def open_dir_no_symlinks_walk(path: Path) -> int:
    """open_dir_no_symlinks() one component at a time: openat(O_NOFOLLOW) of each, relative to the
    last (ELOOP or ENOTDIR at a symbolic link)."""
    path = Path(path)
    if not path.is_absolute():
        raise OSError(errno.EINVAL, "not an absolute path", str(path))
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in path.parts[1:]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(path)) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic_at(dir_fd: int, name: str, text: str, mode: int = 0o644, durable: bool = False) -> None:
    """Replaces `name` in the directory open as `dir_fd` with `text` at once: a hidden temporary file
    beside it (neither systemd, the policy loader nor a textfile collector reads it half-written),
    created with O_EXCL|O_NOFOLLOW and renamed over `name` in that same directory, so no path is
    resolved again. durable=True fsyncs the file before the rename and the directory after it; without
    it (a file rewritten every few seconds whose loss in a crash costs nothing, e.g. the metrics) a
    crash may leave the old text or none. Raises OSError."""
    fd = -1
    for _ in range(100):
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", name)
    try:
        try:
            os.fchmod(fd, mode)  # created 0600; the umask must not narrow what readers need
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if durable:
        os.fsync(dir_fd)


def others_may_write(st: os.stat_result, owner_uid: int, read_only: bool = False) -> str | None:
    """Why a file or directory with this stat may be written by others than `owner_uid` (and root,
    who may anyway), or None: another owner, group- or world-writable. read_only: it is on a
    read-only mount, where write permission bits grant nothing."""
    if st.st_uid != owner_uid:
        return f"owned by uid {st.st_uid}, not uid {owner_uid}"
    if read_only:
        return None
    if st.st_mode & stat.S_IWOTH:
        return "world-writable (chmod o-w)"
    if st.st_mode & stat.S_IWGRP:
        return "group-writable (chmod g-w)"
    return None


def open_beneath(dirfd: int, name: str, flags: int) -> int:
    """openat2(dirfd, name, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): symlinks are followed only while
    they stay beneath dirfd (no absolute link, no `..` above it, no /proc magic link: EXDEV or ELOOP).
    Linux 5.6; without openat2 nothing is followed (ELOOP), the safe answer."""
    fd = openat2(name, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, dirfd)
    return fd if fd is not None else os.open(name, flags | os.O_NOFOLLOW, dir_fd=dirfd)


def first_symlink(path: Path, base: Path) -> Path | None:
    """The first component of `path` below `base` that is a symbolic link (dangling or not), or None.
    Components that do not exist (yet) end the walk: nothing below them can be a link."""
    p = base
    for part in path.relative_to(base).parts:
        p = p / part
        try:
            if stat.S_ISLNK(os.lstat(p).st_mode):
                return p
        except (FileNotFoundError, NotADirectoryError):
            return None
    return None


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, text: str, mode: int = 0o644, durable: bool = True) -> None:
    """write_atomic_at() in `path`'s directory, durable unless told otherwise. Raises OSError."""
    path = Path(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_atomic_at(dir_fd, path.name, text, mode, durable=durable)
    finally:
        os.close(dir_fd)


def remove_durably(path: Path) -> None:
    os.unlink(path)
    fsync_dir(path.parent)


class Captured:
    """What stderr_captured() kept: the text written to descriptor 2 inside it (first CAPTURE_MAX
    bytes), set when the block ends."""

    def __init__(self) -> None:
        self.text = ""


CAPTURE_MAX = 1 << 20


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()


@contextmanager
def stderr_captured() -> Iterator[Captured]:
    """Descriptor 2 goes to a temporary file for the block, for writers that bypass sys.stderr: bcc's
    C++ compiler (clang prints warnings and errors to fd 2), a child process that inherits it. A file,
    not a pipe: nothing reads it while the block runs, so a pipe's buffer could fill and block the
    writer. Descriptor 2 is back as it was when the block ends, however it ends."""
    _flush_stderr()   # what Python buffered before the block is not ours to keep
    saved = os.dup(2)
    captured = Captured()
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield captured
            finally:
                _flush_stderr()
                os.dup2(saved, 2)
                tmp.seek(0)
                captured.text = tmp.read(CAPTURE_MAX).decode("utf-8", errors="replace")
    finally:
        os.close(saved)

