"""The BPF program's maps and ring buffer from the long-lived process, without bcc or LLVM: Debian's
libbpf.so.1 (package libbpf1) through ctypes. The one module that loads it.

Why libbpf.so.1 and not bcc's LLVM-free libbcc_bpf.so.0: libbcc_bpf's ring-buffer calls are thin
wrappers around libbpf's own (it links libbpf.so.1, and libstdc++ besides), its symbols carry no
version and bcc promises no ABI for them; libbpf's C API is versioned (LIBBPF_0.0.1 ...) and stable,
and has what a per-CPU map read needs (libbpf_num_possible_cpus). python3-bpfcc depends on it
(libbpfcc -> libbpf1), so wherever bcc can compile the program, this can read its maps.

Keys and values are the ctypes types of program/layout.py (from bpf/mptcpize.h); each map's key and
value sizes are checked against what the kernel says at open time."""

import ctypes
import errno
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from mptcpize_py.errors import MptcpizeError, Unavailable
from mptcpize_py.program.layout import MapLayout

log = logging.getLogger("mptcpize_py.program")

LIBBPF = "libbpf.so.1"
_lib = None


def _libbpf() -> ctypes.CDLL:
    """libbpf, loaded on first use (a process that never touches a map does not map it)."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as e:
        raise Unavailable(f"cannot load {LIBBPF}: {e}", hint="apt-get install libbpf1") from None
    c_int, c_void_p, c_uint64 = ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64
    for name, args in {"bpf_map_lookup_elem": (c_int, c_void_p, c_void_p),
                       "bpf_map_update_elem": (c_int, c_void_p, c_void_p, c_uint64),
                       "bpf_map_delete_elem": (c_int, c_void_p),
                       "bpf_map_get_next_key": (c_int, c_void_p, c_void_p),
                       "bpf_map_lookup_batch": (c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                                ctypes.POINTER(ctypes.c_uint32), c_void_p),
                       "bpf_obj_get_info_by_fd": (c_int, c_void_p, ctypes.POINTER(ctypes.c_uint32)),
                       "bpf_raw_tracepoint_open": (ctypes.c_char_p, c_int),
                       "libbpf_num_possible_cpus": (),
                       "ring_buffer__new": (c_int, c_void_p, c_void_p, c_void_p),
                       "ring_buffer__poll": (c_void_p, c_int),
                       "ring_buffer__consume": (c_void_p,),
                       "ring_buffer__free": (c_void_p,)}.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = c_void_p if name == "ring_buffer__new" else None if name == "ring_buffer__free" \
            else c_int
    _lib = lib
    return lib


def _check(ret: int) -> int:
    """libbpf >= 1.0 returns -errno (and sets errno)."""
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


# include/uapi/linux/bpf.h: the head of struct bpf_map_info; bpf_prog_info and bpf_link_info start with
# the same two u32 (type, id). The kernel fills as many bytes as we ask for.
class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


_Info = TypeVar("_Info", bound=ctypes.Structure)


def _info(fd: int, info: _Info) -> _Info:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    return info


def map_info(fd: int) -> MapInfo:
    return _info(fd, MapInfo())


class _ObjectHead(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


def object_id(fd: int) -> int:
    """The kernel's id of the BPF program, map or link open at fd (what `bpftool prog show id` takes)."""
    return _info(fd, _ObjectHead()).id


def attach_tracing(prog_fd: int) -> int:
    """Attaches a loaded tracing program (fmod_ret) where it was loaded for; returns the link fd,
    whose close detaches it (bcc's bpf_attach_kfunc does the same BPF_RAW_TRACEPOINT_OPEN)."""
    return _check(_libbpf().bpf_raw_tracepoint_open(None, prog_fd))


def attach_raw_tracepoint(name: str, prog_fd: int) -> int:
    """Attaches a loaded raw tracepoint program to tracepoint `name`; returns the link fd (as bcc's
    RAW_TRACEPOINT_PROBE attachment)."""
    return _check(_libbpf().bpf_raw_tracepoint_open(name.encode(), prog_fd))


class _TestRunOpts(ctypes.Structure):
    """libbpf's struct bpf_test_run_opts (bpf.h, LIBBPF_0.7.0), whose `sz` tells libbpf its size."""
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


def run_once(prog_fd: int) -> int:
    """Runs a loaded program once in this thread (BPF_PROG_TEST_RUN, no context: a raw tracepoint
    program that reads none, Linux >= 5.10) and returns what it returned, as a signed int."""
    lib = _libbpf()
    fn = lib.bpf_prog_test_run_opts
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.POINTER(_TestRunOpts)), ctypes.c_int
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    _check(fn(prog_fd, ctypes.byref(opts)))
    return ctypes.c_int32(opts.retval).value


# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2


def _object_api(lib: ctypes.CDLL) -> None:
    c_int, p, s = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
    for name, args, res in (("bpf_object__open_file", (s, p), p), ("bpf_object__load", (p,), c_int),
                            ("bpf_object__close", (p,), None),
                            ("bpf_object__next_program", (p, p), p), ("bpf_program__name", (p,), s),
                            ("bpf_program__fd", (p,), c_int), ("bpf_object__next_map", (p, p), p),
                            ("bpf_map__name", (p,), s), ("bpf_map__fd", (p,), c_int),
                            ("libbpf_set_print", (_PRINT_FN,), p), ("libbpf_version_string", (), s),
                            ("libbpf_strerror", (c_int, ctypes.c_char_p, ctypes.c_size_t), c_int)):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def libbpf_version() -> str:
    lib = _libbpf()
    _object_api(lib)
    return lib.libbpf_version_string().decode()


class LibbpfError(OSError):
    """libbpf refused: errno and libbpf's words, with its messages so far as `log`."""

    def __init__(self, err: int, text: str, log: list[tuple[int, str]]):
        super().__init__(err, text)
        self.log = log


class BpfObject:
    """A BPF ELF object opened and loaded by libbpf (CO-RE relocations resolved against the running
    kernel's BTF), for as long as it takes to take its descriptors: programs() and maps() return
    duplicates, close-on-exec, that outlive close(). libbpf's messages are collected in `log`
    (libbpf_set_print is process-wide: one object at a time)."""

    def __init__(self, path: str):
        self._lib = _libbpf()
        _object_api(self._lib)
        self.log: list[tuple[int, str]] = []
        self._print: Any = _PRINT_FN(self._on_print)   # referenced while libbpf may call it
        self._previous = self._lib.libbpf_set_print(self._print)
        self._obj = self._lib.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            self._restore()
            self._raise(ctypes.get_errno() or errno.EINVAL)

    def _raise(self, err: int) -> None:
        """OSError(err) in libbpf's words (it has errors of its own, from 4000: LIBBPF_ERRNO__*),
        with libbpf's messages so far as its `log`."""
        buf = ctypes.create_string_buffer(256)
        self._lib.libbpf_strerror(err, buf, len(buf))
        raise LibbpfError(err, buf.value.decode(errors="replace") or os.strerror(err), list(self.log))

    def _on_print(self, level: int, fmt: bytes, va_list: int) -> int:
        from mptcpize_py.host import libc
        if level <= LIBBPF_INFO:
            self.log.append((level, libc.vformat(fmt, va_list)))
        return 0

    def _restore(self) -> None:
        if self._print is not None:
            self._lib.libbpf_set_print(_PRINT_FN(self._previous) if self._previous else _PRINT_FN())
            self._print = None

    def load(self) -> None:
        """Relocates and loads every program and creates every map; OSError(errno) when refused
        (the reason is in `log`)."""
        ret = self._lib.bpf_object__load(self._obj)
        if ret < 0:
            self._raise(-ret)

    def _each(self, nxt, name, fd) -> dict[str, int]:
        out: dict[str, int] = {}
        item = None
        while True:
            item = nxt(self._obj, item)
            if not item:
                return out
            out[name(item).decode()] = os.dup(_check(fd(item)))   # Python's dup(): close-on-exec

    def programs(self) -> dict[str, int]:
        lib = self._lib
        return self._each(lib.bpf_object__next_program, lib.bpf_program__name, lib.bpf_program__fd)

    def maps(self) -> dict[str, int]:
        lib = self._lib
        return self._each(lib.bpf_object__next_map, lib.bpf_map__name, lib.bpf_map__fd)

    def close(self) -> None:
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None
        self._restore()

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def possible_cpus() -> int:
    return _check(_libbpf().libbpf_num_possible_cpus())


class BpfMap:
    """One map, by its file descriptor (not owned: the caller closes it). Key and Leaf are its ctypes
    types; a per-CPU map's lookup gives one Leaf per possible CPU."""

    def __init__(self, fd: int, layout: MapLayout):
        self.fd, self.name, self.layout = fd, layout.name, layout
        self.Key: Any = layout.key     # ctypes types, made from mptcpize.h at run time
        self.Leaf: Any = layout.value
        info = map_info(fd)
        sizes = tuple(ctypes.sizeof(t) if t is not None else 0 for t in (self.Key, self.Leaf))
        if (info.key_size, info.value_size) != sizes:
            raise MptcpizeError(
                f"BPF map {self.name}: the kernel's key/value sizes {info.key_size}/{info.value_size} "
                f"are not those of its types in mptcpize.h ({sizes[0]}/{sizes[1]})")
        self.max_entries = info.max_entries
        self._lib = _libbpf()
        if self.Leaf is None:   # a ring buffer: read with RingBuffer
            self._value_size = 0
        elif layout.percpu:
            # The kernel rounds each CPU's value up to 8 bytes (kernel/bpf/syscall.c).
            self._stride = (ctypes.sizeof(self.Leaf) + 7) & ~7
            self._ncpus = possible_cpus()
            self._value_size = self._stride * self._ncpus
        else:
            self._value_size = ctypes.sizeof(self.Leaf)

    def _key(self, key: Any) -> ctypes._SimpleCData | ctypes.Structure:
        return key if isinstance(key, self.Key) else self.Key(key)

    def lookup(self, key: Any):
        """The value (a Leaf, or a list of them for a per-CPU map), or None when absent."""
        buf = ctypes.create_string_buffer(self._value_size)
        ret = self._lib.bpf_map_lookup_elem(self.fd, ctypes.byref(self._key(key)), buf)
        if ret == -errno.ENOENT:
            return None
        _check(ret)
        if self.layout.percpu:
            return [self.Leaf.from_buffer_copy(buf, i * self._stride) for i in range(self._ncpus)]
        return self.Leaf.from_buffer_copy(buf)

    def percpu_sums(self, count: int) -> list[int]:
        """Entries 0..count-1 of a per-CPU array of integers, each summed over the CPUs: one
        BPF_MAP_LOOKUP_BATCH (Linux >= 5.6) instead of a lookup per entry."""
        if self.layout.kind != "percpu_array":
            raise TypeError(f"{self.name}: not a per-CPU array")
        count = min(count, self.max_entries)
        if count <= 0:
            return []
        keys = (ctypes.c_uint32 * count)()
        values = ctypes.create_string_buffer(self._value_size * count)
        out_batch = ctypes.c_uint32()
        got = ctypes.c_uint32(count)
        ret = self._lib.bpf_map_lookup_batch(self.fd, None, ctypes.byref(out_batch), keys, values,
                                             ctypes.byref(got), None)
        if ret < 0 and ret != -errno.ENOENT:   # ENOENT: the walk reached the map's end
            _check(ret)
        sums = [0] * count
        for i in range(got.value):
            base = i * self._value_size
            sums[keys[i]] = sum(self.Leaf.from_buffer_copy(values, base + c * self._stride).value
                                for c in range(self._ncpus))
        return sums

    def __getitem__(self, key: Any):
        value = self.lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, leaf: Any) -> None:
        if self.layout.percpu:
            raise TypeError(f"{self.name}: per-CPU values are written by the program only")
        leaf = leaf if isinstance(leaf, self.Leaf) else self.Leaf(leaf)
        _check(self._lib.bpf_map_update_elem(self.fd, ctypes.byref(self._key(key)), ctypes.byref(leaf), 0))

    def __delitem__(self, key: Any) -> None:
        ret = self._lib.bpf_map_delete_elem(self.fd, ctypes.byref(self._key(key)))
        if ret == -errno.ENOENT:
            raise KeyError(key)
        _check(ret)

    def keys(self) -> Iterator[Any]:
        """Every key present now. A hash map's walk restarts from its first key when the current one
        is deleted meanwhile (kernel/bpf/hashtab.c htab_map_get_next_key): keys are reported once."""
        seen: set[bytes] = set()
        prev = None
        for _ in range(2 * self.max_entries + 1):
            nxt = self.Key()
            ret = self._lib.bpf_map_get_next_key(self.fd, None if prev is None else ctypes.byref(prev),
                                                 ctypes.byref(nxt))
            if ret == -errno.ENOENT:
                return
            _check(ret)
            if bytes(nxt) not in seen:
                seen.add(bytes(nxt))
                yield nxt
            prev = nxt

    def items(self) -> list[tuple[Any, Any]]:
        out = []
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:   # gone between the walk and the lookup (an LRU eviction)
                out.append((key, value))
        return out


class MapTable(Protocol):
    """The part of a map the sync uses (tests drive sync_map with a fake of fixed capacity)."""

    def keys(self) -> Iterator[Any]: ...

    def __setitem__(self, key: Any, leaf: Any) -> None: ...

    def __delitem__(self, key: Any) -> None: ...


def sync_map(table: MapTable, entries: Iterable[tuple[Any, Any]], ident=bytes) -> None:
    """Makes `table` hold exactly `entries` [(key, leaf)], whatever it held before (even a half-done
    sync); ident(key) compares keys (ctypes keys compare by identity, their bytes by value).

    Stale keys go out first, then the wanted ones are upserted: the map never holds more than
    max(old, new) entries, so any selection that fits the map can replace any other (upserting first
    needed old + new at once: E2BIG from a full hash map when a package upgrade gave every selected
    executable a new inode). A key in both is updated in place, which a full BPF hash map allows
    (kernel/bpf/hashtab.c, since Linux 4.8, commit a6ed3ea65d98), so it is never absent. A key only
    in the old selection may stop matching before one only in the new starts: that is the change."""
    wanted = {ident(key): (key, leaf) for key, leaf in entries}
    for key in [k for k in table.keys() if ident(k) not in wanted]:
        del table[key]
    for key, leaf in wanted.values():
        table[key] = leaf


_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RingBuffer:
    """libbpf's ring_buffer on a BPF_MAP_TYPE_RINGBUF map: callback(record) for each record, a copy
    made with record_type.from_buffer_copy (the ring's memory is reused once the callback returns)."""

    def __init__(self, map_fd: int, record_type: type, callback: Callable[[Any], None]):
        self._lib = _libbpf()
        self._size = ctypes.sizeof(record_type)

        def on_sample(_ctx, data, size):
            try:
                raw = ctypes.string_at(data, min(size, self._size)).ljust(self._size, b"\0")
                callback(record_type.from_buffer_copy(raw))
            except Exception:   # one record's bug must not stop the reading: log it, go on
                log.exception("handling a ring-buffer record failed")
            return 0

        self._fn = _SAMPLE_FN(on_sample)   # referenced for as long as libbpf may call it
        rb = self._lib.ring_buffer__new(map_fd, self._fn, None, None)
        if not rb:
            e = ctypes.get_errno()
            raise OSError(e, f"ring_buffer__new: {os.strerror(e)}")
        self._rb = rb

    def poll(self, timeout_ms: int) -> int:
        """Waits up to timeout_ms for records and hands them over; the number handed over."""
        if not self._rb:
            return 0
        ret = self._lib.ring_buffer__poll(self._rb, timeout_ms)
        # epoll_wait() is never restarted after a signal handler (signal(7)): the caller's loop
        # looks at what the handler set, then polls again.
        return 0 if ret == -errno.EINTR else _check(ret)

    def consume(self) -> int:
        """Hands over what is there now, without waiting."""
        return _check(self._lib.ring_buffer__consume(self._rb)) if self._rb else 0

    def close(self) -> None:
        if self._rb:
            self._lib.ring_buffer__free(self._rb)
            self._rb = None
