"""Image roots: a folder or a zip, read in place; path containment; cheap header checks.

Preparing never decodes an image (PIL decodes ~600 images/s per core; reading the file is the floor).
An image is embedded as the exact bytes of its file after three cheap checks: the name stays inside the
root, the file exists and is not empty, and its first bytes are the signature of an image format.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from .errors import BadImage
from .pagecache import residency
from .zipdir import READABLE_METHODS, ZipDirectory, ZipEntry, ZipMemberError, crc32, read_member

# Every reason an image can be refused, in the order reports list them.
BAD_IMAGE_REASONS = (
    "unsafe_path",
    "bad_name",
    "missing",
    "not_a_file",
    "empty",
    "not_an_image",
    "too_large",
    "unreadable",
)

# No LLaVA image comes near this (the largest are a few MB); a bigger "image" is refused before it is
# read, so a hostile or broken file can never make a worker allocate gigabytes.
MAX_IMAGE_BYTES = 64 << 20

# Threads reading image files of a folder root at the same time, in each worker process, when reads block
# (NFS, Lustre, a cold disk); each thread task reads READ_CHUNK names, so the handoff (~30-55 us of CPU
# and a GIL round trip) is paid once per chunk, not per image. At most READ_AHEAD images wait in memory.
READ_THREADS = 8
READ_CHUNK = 4
READ_AHEAD = READ_THREADS * READ_CHUNK
# Reads faster than this on average (page cache, local SSD) run inline in the calling thread: there, a
# thread handoff costs more than the read itself, and 8 threads fighting the parser for the GIL slow both.
# Slower reads go to the threads, where many requests in flight set the pace.
INLINE_BELOW = 200e-6
# While reads go to the threads, one read in every PROBE_EVERY chunks runs inline and is timed (a read
# timed in a thread also counts its wait for the GIL), so that reads that became fast go inline again.
PROBE_EVERY = 16
# The decision is the median of the last READ_SAMPLES inline read times: a fast read that the scheduler
# preempted (a busy machine) looks slow once, storage that blocks looks slow every time.
READ_SAMPLES = 5
_clock = time.perf_counter

# Files up to this size are read in one request and checked after; bigger ones are checked first.
_READ_WHOLE = 1 << 20

# Bytes needed to recognise every format in `_SIGNATURES`.
HEAD_SIZE = 16

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),  # RIFF....WEBP
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG2000"),
)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A name safe_name gives back unchanged: ASCII components that start with a letter, digit or "_" (so no "."
# or ".." component, no "//", no leading or trailing "/", no scheme, backslash or NUL). Most names are such.
_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*/)*[A-Za-z0-9_][A-Za-z0-9_.+-]*", re.ASCII)


def sniff_format(head: bytes) -> str | None:
    """The image format whose signature starts `head` (JPEG, PNG, GIF, WEBP, BMP, TIFF, JPEG2000), or None."""
    for magic, offset, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if name == "WEBP" and head[:4] != b"RIFF":
                continue
            return name
    return None


def safe_name(name: str) -> str:
    """`name` as a clean relative POSIX path, or BadImage("unsafe_path") when it could leave the root, or
    BadImage("bad_name") when it is not storable text (an unpaired UTF-16 surrogate).

    Absolute paths, drive letters, URLs (any `scheme:`), `..` components and NUL bytes are refused; the
    check is on the text alone (CWE-22), so symlinked sub-folders inside a root keep working.
    """
    if _PLAIN_NAME.fullmatch(name):
        return name  # the checks below would pass it, and normpath would return it as it is
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        # JSON allows a lone UTF-16 surrogate escape ("\ud83d"); no file system or Arrow string can hold it.
        raise BadImage(
            "bad_name",
            f"image path {_printable(name)} holds an unpaired UTF-16 surrogate at character {e.start}; "
            "expected UTF-8 text",
        ) from None
    if not name or "\x00" in name:
        raise BadImage("unsafe_path", f"image path {name!r} is empty or contains a NUL byte")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _SCHEME.match(posix):
        raise BadImage(
            "unsafe_path", f"image path {name!r} is absolute or a URL; expected a path inside the image root"
        )
    if ".." in posix.split("/"):
        raise BadImage("unsafe_path", f"image path {name!r} leaves the image root ('..')")
    return posixpath.normpath(posix)


def _printable(name: str) -> str:
    # repr() would keep a lone surrogate, which no terminal or log file can print.
    return repr(name.encode("utf-8", "backslashreplace").decode("utf-8"))


def _check_size(size: int, where: str) -> None:
    if size > MAX_IMAGE_BYTES:
        raise BadImage("too_large", f"image file {where} has {size:,} bytes, more than the {MAX_IMAGE_BYTES:,} allowed")


def _check_head(head: bytes, size: int, where: str) -> None:
    if size == 0:
        raise BadImage("empty", f"image file {where} is empty (0 bytes)")
    if sniff_format(head) is None:
        # The bytes are never quoted: the "image" may be any file the name points at (/etc/passwd).
        raise BadImage(
            "not_an_image",
            f"image file {where} ({size:,} bytes) is not an image: it starts with no known image signature",
        )


@dataclass
class ImageRoot:
    """Where images are read from; `aliases` are (pattern, replacement) name rewrites tried when missing."""

    location: str
    aliases: tuple[tuple[str, str], ...] = ()
    _compiled: list[tuple[re.Pattern, str]] = field(default_factory=list, init=False, repr=False)
    _preferred: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        self._compiled = [(re.compile(pattern), repl) for pattern, repl in self.aliases]

    def candidates(self, name: str) -> list[tuple[int, str]]:
        """(rule, name) pairs to try for `name`: as written (rule -1), then each matching alias rule,
        the rule that worked last time first."""
        options = [(-1, name)]
        options += [(rule, p.sub(repl, name)) for rule, (p, repl) in enumerate(self._compiled) if p.match(name)]
        options.sort(key=lambda option: option[0] != self._preferred)
        return options

    def _first(self, name: str, attempt):
        clean = safe_name(name)
        if self._preferred == -1:  # the usual case, without building the alias list
            found = attempt(clean)
            if found is not None:
                return clean, found
        options = self.candidates(clean)
        for rule, candidate in options:
            if rule == -1 and self._preferred == -1:
                continue  # tried above
            found = attempt(candidate)
            if found is not None:
                # A folder is usually all one layout (train2017 or train2014): try that rule first next time.
                self._preferred = rule
                return candidate, found
        tried = f" (also tried {', '.join(repr(c) for _, c in options[1:])})" if len(options) > 1 else ""
        raise BadImage("missing", f"image {name!r} not found under {self.location}{tried}")

    def read(self, name: str) -> tuple[str, bytes]:
        """(resolved name, bytes) of the image called `name`; BadImage when it cannot be embedded."""
        return self._first(name, self._read)

    def locate(self, name: str) -> str:
        """A path (or fsspec URL) that `datasets.Image` can open for `name`, after the same checks as `read`."""
        candidate, (head, size) = self._first(name, self._probe)
        _check_head(head, size, self.describe(candidate))
        return self.url(candidate)

    def read_many(self, names: Iterable[str], embed: bool = True) -> Iterator[tuple[str, bytes] | str | BadImage]:
        """`read` (or with `embed=False`, `locate`) of each name, in order, a BadImage in place of a name
        that fails. From a folder, reads that block (on average slower than `INLINE_BELOW`) are handed to
        `READ_THREADS` threads, `READ_CHUNK` names a task, so the storage always has requests queued and
        no more than `READ_AHEAD` images wait in memory; fast reads (cached, local SSD) run inline."""
        method = self.read if embed else self.locate
        if not self.parallel_reads:
            yield from (_attempt(method, name) for name in names)
            return
        names = iter(names)
        pending: deque = deque()
        chunks = 0
        while True:
            if not self._reads_block():
                while pending:  # results stay in input order
                    yield from pending.popleft().result()
                name = next(names, _END)
                if name is _END:
                    return
                yield self._timed(method, name)
                continue
            chunks += 1
            if chunks % PROBE_EVERY == 0:
                name = next(names, _END)
                if name is _END:
                    break
                probe = self._timed(method, name)
                pending.append(_Done([probe]))
                continue
            chunk = list(islice(names, READ_CHUNK))
            if not chunk:
                break
            pending.append(_pool().submit(_attempt_all, method, chunk))
            if len(pending) >= READ_THREADS:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()

    _recent: deque | None = None  # the last inline read times in this process (seconds)

    def _reads_block(self) -> bool:
        """Whether reads are slow enough for the threads (the median of the recent ones); first inline."""
        recent = self._recent
        return bool(recent) and _median(recent) >= INLINE_BELOW

    def _timed(self, method, name: str):
        started = _clock()
        result = _attempt(method, name)
        if self._recent is None:
            self._recent = deque(maxlen=READ_SAMPLES)
        self._recent.append(_clock() - started)
        return result

    parallel_reads = False

    def __getstate__(self):
        return dict(self.__dict__)

    def describe(self, name: str) -> str:
        raise NotImplementedError

    def url(self, name: str) -> str:
        raise NotImplementedError

    def _read(self, name: str) -> bytes | None:
        """The file's bytes after the size and signature checks, or None when there is no such file."""
        raise NotImplementedError

    def _probe(self, name: str) -> tuple[bytes, int] | None:
        raise NotImplementedError


_END = object()


def _median(samples) -> float:
    return sorted(samples)[len(samples) // 2]


def _attempt(method, name: str):
    try:
        return method(name)
    except BadImage as bad:
        return bad


def _attempt_all(method, names: list[str]) -> list:
    return [_attempt(method, name) for name in names]


class _Done:
    """A result already at hand, queued among the pending thread tasks to keep the input order."""

    def __init__(self, results: list):
        self._results = results

    def result(self) -> list:
        return self._results


_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def _pool() -> ThreadPoolExecutor:
    """The reading threads of this process (one pool per process: a pool inherited through fork has none)."""
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        with _POOL_LOCK:
            if _executor is None or _executor_pid != os.getpid():
                _executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="llava_hf-read")
                _executor_pid = os.getpid()
    return _executor


# (pid, path, size) of the files read through in this process (LocalFile.read_through).
_READ_THROUGH: set[tuple[int, str, int]] = set()


def _read_through(path: str, end: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # the reads that need the file say what is wrong with it
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, end, os.POSIX_FADV_SEQUENTIAL)  # a wider read-ahead window
        buffer = memoryview(bytearray(PREFETCH_CHUNK))
        offset = 0
        with residency(fd, end) as cached:
            while offset < end:
                length = min(PREFETCH_CHUNK, end - offset)
                if cached(offset, length):  # warm: a copy of 1.5 GB costs 0.23 s of a core for nothing
                    offset += length
                    continue
                got = os.preadv(fd, [buffer[:length]], offset)
                if got <= 0:
                    break
                offset += got
    except OSError:
        pass  # only a prefetch: a read that fails here fails again, named, where it is needed
    finally:
        os.close(fd)


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none: no prefetch there)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class FolderRoot(ImageRoot):
    """Images in a folder tree; each image is one `open` + `read`, several in flight at once."""

    # Reads release the GIL: on network file systems and SSDs, requests in flight set the pace.
    parallel_reads = True

    def describe(self, name: str) -> str:
        return os.path.join(self.location, name)

    def url(self, name: str) -> str:
        return os.path.join(self.location, name)

    def _read(self, name: str) -> bytes | None:
        path = os.path.join(self.location, name)
        opened = _open_regular(path)
        if opened is None:
            return None
        fd, size = opened
        try:
            _check_size(size, path)
            if size <= _READ_WHOLE:
                data = _read_bounded(fd, size, path)  # one request: one round trip to the storage
                _check_head(data[:HEAD_SIZE], len(data), path)
                return data
            # A big file: its signature is checked before the rest is read or allocated, so a big file
            # that is no image costs 16 bytes.
            head = os.read(fd, HEAD_SIZE)
            _check_head(head, size, path)
            return head + _read_bounded(fd, size - len(head), path, len(head))
        except OSError as e:
            raise BadImage("unreadable", f"image file {path} cannot be read: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def _probe(self, name: str) -> tuple[bytes, int] | None:
        path = os.path.join(self.location, name)
        opened = _open_regular(path)
        if opened is None:
            return None
        fd, size = opened
        try:
            return os.read(fd, HEAD_SIZE), size
        except OSError as e:
            raise BadImage("unreadable", f"image file {path} cannot be read: {e.strerror or e}") from None
        finally:
            os.close(fd)


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _open_regular(path: str) -> tuple[int, int] | None:
    """(descriptor, size) of the regular file at `path` (symlinks followed), None when there is none;
    BadImage("not_a_file") for anything else, found without reading a byte of it."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever; for a regular file it
        # changes nothing. The kind is then taken from the open descriptor (no race with a rename).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise BadImage("not_a_file", f"image file {path} is a folder, not a regular file") from None
    except OSError as e:
        raise BadImage("unreadable", f"image file {path} cannot be read: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise BadImage("unreadable", f"image file {path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
        # A symlink to /dev/zero has size 0 and never ends; a FIFO blocks: neither is read.
        raise BadImage("not_a_file", f"image file {path} is {kind}, not a regular file; only regular files are read")
    return fd, info.st_size


def _read_bounded(fd: int, size: int, path: str, already: int = 0) -> bytes:
    """The rest of the file at `fd`, refused as too_large once `already` + what was read passes
    MAX_IMAGE_BYTES, whatever `size` (its stat size) said: a file that grows, or reports 0, stays bounded."""
    limit = MAX_IMAGE_BYTES + 1 - already
    parts: list[bytes] = []
    total = 0
    request = min(max(size, 0) + 1, limit)  # one byte more than expected: the end of file in the same read
    while True:
        chunk = os.read(fd, min(request, limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total >= limit:
            raise BadImage("too_large", f"image file {path} has more than the {MAX_IMAGE_BYTES:,} bytes allowed")
        request = _READ_WHOLE
    return parts[0] if len(parts) == 1 else b"".join(parts)


class LocalFile:
    """The transport of a zip on disk (see zipdir.Transport): `os.pread` at the offsets asked for, so threads
    read at once and no file offset is shared across a fork; reopened in a forked process."""

    def __init__(self, path: str):
        self.path = path
        self._fd, self._pid = -1, 0
        self.size = os.stat(path).st_size
        self._recent: deque = deque(maxlen=READ_SAMPLES)  # seconds a span of the last inline reads took

    def _handle(self) -> int:
        if self._pid != os.getpid():
            with _OPEN_LOCK:  # reading threads start together: one of them opens the file
                if self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read_at(self, offset: int, length: int) -> bytes:
        data = os.pread(self._handle(), length, offset)
        if len(data) != length:
            raise OSError(f"{self.path}: {length} bytes at {offset} asked for, {len(data)} read (truncated?)")
        return data

    def read_spans(self, spans: list[tuple[int, int]]) -> Iterator[bytes]:
        """Each span's bytes, in order. The first _RUN spans are read inline and timed: when reads are fast
        (page cache, local SSD: a few us) the rest are read inline too, since a thread handoff costs more
        than such a read. When they block (a cold disk, NFS, Lustre) the rest are shared among the threads
        of `images._pool` in runs of consecutive spans, at most READ_THREADS runs: one handoff a thread for
        the whole batch, not one an image (~30-55 us of CPU each), and READ_THREADS reads in flight."""
        if spans and max(length for _, length in spans) >= _THREAD_READS_FROM:
            yield from self._threaded(spans)
            return
        started = _clock()
        first = [self.read_at(offset, length) for offset, length in spans[:_RUN]]
        self._recent.append((_clock() - started) / max(1, len(first)))
        yield from first
        rest = spans[_RUN:]
        if not rest:
            return
        if _median(self._recent) < SPAN_INLINE_BELOW:
            yield from (self.read_at(offset, length) for offset, length in rest)
            return
        yield from self._threaded(rest)

    def _threaded(self, spans: list[tuple[int, int]]) -> Iterator[bytes]:
        size = max(_RUN, -(-len(spans) // READ_THREADS))
        runs = [spans[k : k + size] for k in range(0, len(spans), size)]
        for run in _pool().map(lambda run: [self.read_at(o, n) for o, n in run], runs):
            yield from run

    def read_through(self, end: int) -> bool:
        """Read bytes [0, end) once, in order, in a background daemon thread (PREFETCH_CHUNK at a time into
        one reused buffer), so that they are in the page cache when asked for; once per file and process."""
        key = (os.getpid(), self.path, self.size)
        with _OPEN_LOCK:
            if key in _READ_THROUGH:
                return True
            _READ_THROUGH.add(key)
        thread = threading.Thread(target=_read_through, args=(self.path, end), name="llava_hf-prefetch", daemon=True)
        thread.start()
        return True

    def identity(self) -> str:
        from .sources import fingerprint_file

        return fingerprint_file(self.path)

    def describe(self) -> str:
        return self.path

    def close(self) -> None:
        if self._pid == os.getpid() and self._fd >= 0:
            os.close(self._fd)
        self._fd, self._pid = -1, 0

    def __getstate__(self):
        return {**self.__dict__, "_fd": -1, "_pid": 0}


# A local zip that a prepare reads at least PREFETCH_SHARE of (in members) is first read through once, in
# file order, PREFETCH_CHUNK at a time, by one background thread in each preparing process, when it fits in
# PREFETCH_MEMORY of the memory available: the JSON's order is random against the zip's (LCS-558K's is),
# and one sequential pass of a cold disk or network file system is many times faster than the same bytes
# in random reads; the random reads that follow hit the page cache. A second process finds the pages cached.
PREFETCH_SHARE = 0.5
PREFETCH_MEMORY = 0.5
PREFETCH_CHUNK = 8 << 20

# A zip's reads stay inline while a read takes less than this (the median of the last batches' first
# reads): a page-cache hit of a small member takes a few us, a read from storage 50 us or more (an SSD)
# to milliseconds (a network mount). Lower than a folder's INLINE_BELOW: a folder read opens a file, and a
# batch of zip reads pays one handoff a thread, not one a read, so threads pay off at SSD speed already.
SPAN_INLINE_BELOW = 20e-6
# A batch holding a read this big (a zip directory's 4 MiB pieces, merged neighbours) is read by the
# threads however fast reads are: the handoff is nothing next to it, and buffers allocated in the main
# thread raise glibc's dynamic mmap threshold, after which such buffers come from (and fragment) its
# heap: 55 instead of 34 MiB for a 558K-member directory after parsing, with the same arrays.
_THREAD_READS_FROM = 1 << 20
# The fewest spans one reading thread takes at a time (a batch is shared among READ_THREADS threads).
_RUN = 4
# Members closer than this are read in one request (the gap is read and dropped), up to _SPAN_BYTES.
MERGE_GAP = 16 << 10
_SPAN_BYTES = 8 << 20
# At most this many bytes of members are fetched at once, whatever the batch holds.
_WAVE_BYTES = 64 << 20


class ZipRoot(ImageRoot):
    """Images inside one zip, read in place (the LLaVA archives are 6.5 GB and 27 GB, no root folder).

    The directory is read once per root by `zipdir.ZipDirectory` (compact arrays, ~45 bytes a member plus
    its name; kept across a fork). A batch of names is looked up at once, sorted by offset, neighbouring
    members merged into one read, the reads done by the transport (several at once), and each member
    decoded and CRC-checked. The transport is a local file, or a remote archive (range requests). A zip
    whose members all sit under one top folder (COCO's `train2017/...`) is read with that folder implied.
    """

    def __init__(self, location: str, aliases: tuple[tuple[str, str], ...] = (), transport=None):
        super().__init__(location, aliases)
        self._transport = transport
        self._directory: ZipDirectory | None = None
        self._unopenable: str | None = None
        self._prefix = ""

    def _open(self) -> ZipDirectory:
        if self._directory is None:
            with _DIRECTORY_LOCK:
                if self._unopenable is not None:  # tried once: a gone archive is not asked again per image
                    raise BadImage("unreadable", self._unopenable)
                if self._directory is None:
                    try:
                        directory = self._parsed() or ZipDirectory.from_transport(self.transport, self.location)
                    except (OSError, ValueError, MemoryError) as e:
                        self._unopenable = f"image archive {self.location} cannot be opened: {e}"
                        raise BadImage("unreadable", self._unopenable) from None
                    self._prefix = directory.top_folder()
                    self._directory = directory
        return self._directory

    def _parsed(self) -> ZipDirectory | None:
        # The directory `read_directory_ahead` parsed before this process forked (or in it), for this file.
        if not _PARSED or not isinstance(self.transport, LocalFile):
            return None
        return _PARSED.get(_file_key(self.location))

    @property
    def transport(self):
        """Where the archive's bytes come from (a local file unless a remote transport was given)."""
        if self._transport is None:
            self._transport = LocalFile(self.location)
        return self._transport

    def describe(self, name: str) -> str:
        return f"{name} in {self.location}"

    def url(self, name: str) -> str:
        index = self._find(name)
        return f"zip://{self._directory.name(index) if index is not None else name}::{self.location}"

    def _find(self, name: str) -> int | None:
        directory = self._open()
        index = directory.find(name)
        if index < 0 and self._prefix:  # COCO's zip holds train2017/000000033471.jpg; the JSON says 000000033471.jpg
            index = directory.find(self._prefix + name)
        return None if index < 0 else index

    def _entry(self, name: str) -> tuple[str, ZipEntry]:
        candidate, index = self._first(name, self._find)
        entry = self._directory.entry(index)
        _check_size(entry.file_size, self.describe(candidate))
        return candidate, entry

    def expect(self, count: int) -> bool:
        """Say that about `count` images will be read: a local archive with at most `count` / PREFETCH_SHARE
        members that fits in PREFETCH_MEMORY of the available memory is then read through once in file order
        (see PREFETCH_SHARE), in a background thread. True when that pass runs (or ran) in this process."""
        if not isinstance(self.transport, LocalFile):
            return False  # a remote archive is fetched by what is asked for, never whole
        try:
            directory = self._open()
        except BadImage:
            return False
        if count < PREFETCH_SHARE * len(directory):
            return False
        available = _available_memory()
        if available is None or directory.directory_offset > PREFETCH_MEMORY * available:
            return False
        return self.transport.read_through(directory.directory_offset)

    def _lookup(self, names: list[str]) -> tuple[list, list[int], list[str], np.ndarray]:
        """The batch looked up at once: (results, positions, keys, indexes). `results` holds the BadImage of
        each name that gets one (None elsewhere); the others are at `positions`, resolved to `keys` (the
        member names) and `indexes` (their places in the directory). Each name is tried as written (then
        under the top folder); only names missing both ways take the alias path."""
        results: list = [None] * len(names)
        if not names:
            return results, [], [], np.zeros(0, np.int64)  # nothing is asked of the archive before a name is
        try:
            directory = self._open()
        except BadImage as bad:
            return [bad] * len(names), [], [], np.zeros(0, np.int64)
        clean: list[tuple[int, str]] = []
        for position, name in enumerate(names):
            try:
                clean.append((position, safe_name(name)))
            except BadImage as bad:
                results[position] = bad
        keys = [key for _, key in clean]
        found = directory.find_many(keys) if self._preferred == -1 else np.full(len(keys), -1, dtype=np.int64)
        if self._prefix and self._preferred == -1 and (found < 0).any():
            missing = np.flatnonzero(found < 0)
            found[missing] = directory.find_many([self._prefix + keys[k] for k in missing.tolist()])
        hits = np.flatnonzero(found >= 0).tolist()
        positions = [clean[k][0] for k in hits]
        resolved = [keys[k] for k in hits]
        indexes = found[hits].tolist()
        for k in np.flatnonzero(found < 0).tolist():
            position = clean[k][0]
            try:
                candidate, index = self._first(names[position], self._find)
            except BadImage as bad:
                results[position] = bad
                continue
            positions.append(position)
            resolved.append(candidate)
            indexes.append(index)
        indexes = np.array(indexes, dtype=np.int64)
        # Sizes are checked before anything is read: a member over MAX_IMAGE_BYTES is never fetched.
        large = np.flatnonzero(directory.file_sizes[indexes] > MAX_IMAGE_BYTES).tolist() if len(indexes) else []
        if large:
            for k in large:
                try:
                    _check_size(int(directory.file_sizes[indexes[k]]), self.describe(resolved[k]))
                except BadImage as bad:
                    results[positions[k]] = bad
            keep = np.ones(len(indexes), bool)
            keep[large] = False
            positions = [p for p, kept in zip(positions, keep.tolist()) if kept]
            resolved = [r for r, kept in zip(resolved, keep.tolist()) if kept]
            indexes = indexes[keep]
        return results, positions, resolved, indexes

    def _resolve(self, names: list[str]) -> list[tuple[str, ZipEntry] | BadImage]:
        """(resolved name, entry) of each name, or the BadImage it gets (see `_lookup`)."""
        results, positions, keys, indexes = self._lookup(names)
        if len(indexes):
            for position, key, entry in zip(positions, keys, self._directory.entries(indexes)):
                results[position] = (key, entry)
        return results

    def read_many(self, names: Iterable[str], embed: bool = True) -> Iterator[tuple[str, bytes] | str | BadImage]:
        for result in self.read_views(names) if embed else self._locate_many(list(names)):
            yield (result[0], bytes(result[1])) if isinstance(result, tuple) else result

    def read_views(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | memoryview] | BadImage]:
        """`read_many(names)`, each member's bytes possibly a memoryview into the read that held it (one copy
        fewer: the prepare joins them straight into its Arrow buffer). A view keeps that read (at most
        _SPAN_BYTES) in memory while it lives."""
        names = list(names)
        results, positions, keys, indexes = self._lookup(names)
        done = 0
        for wave in _waves(self._directory, indexes) if len(indexes) else ():
            for k, data in self._fetch(wave, indexes[wave], keys):
                results[positions[k]] = data if isinstance(data, BadImage) else (keys[k], data)
            # Results are handed out as soon as every earlier one is known.
            while done < len(results) and results[done] is not None:
                yield results[done]
                done += 1
        yield from results[done:]

    def _locate_many(self, names: list[str]) -> Iterator[str | BadImage]:
        for resolved in self._resolve(names):
            yield self._located(*resolved) if not isinstance(resolved, BadImage) else resolved

    def _fetch(self, wave: np.ndarray, indexes: np.ndarray, keys: list[str]) -> Iterator[tuple[int, bytes | BadImage]]:
        """(k, bytes or BadImage) of each member `indexes[i]`, k = `wave[i]` (`keys[k]` its name as resolved,
        which messages give): the members sorted by offset,
        neighbours merged into one read, the reads done by the transport, each member cut out and checked.
        Stored members (the LLaVA archives) are cut from the arrays alone; anything else, or a member whose
        bytes disagree with the directory, goes through `_member` (one entry, read once more on its own)."""
        directory = self._directory
        headers, ends = directory.spans(indexes)
        size = self.transport.size
        outside = headers + _LOCAL_HEADER.size > size
        if outside.any():  # a directory entry placing its member past the archive's end: named, not read
            for k, header in zip(wave[outside].tolist(), headers[outside].tolist()):
                yield (
                    k,
                    BadImage(
                        "unreadable",
                        f"{self.describe(keys[k])} cannot be read: the zip directory places it at byte {header:,}, "
                        f"past the end of the archive ({size:,} bytes)",
                    ),
                )
            inside = ~outside
            wave, indexes, headers, ends = wave[inside], indexes[inside], headers[inside], ends[inside]
            if not len(wave):
                return
        ends = np.minimum(ends, size)  # a neighbour's bad offset never stretches a read past the end
        sizes = directory.compress_sizes[indexes].astype(np.int64)
        plain = (
            (directory.methods[indexes] == 0)
            & ((directory.flags[indexes] & 0x1) == 0)
            & (directory.file_sizes[indexes].astype(np.int64) == sizes)
        )
        # A remote transport bounds the gaps it reads (bytes cost there); a local file reads small gaps freely.
        policy = getattr(self.transport, "merge_policy", (MERGE_GAP, None))
        spans = _merge_spans_sorted(headers, ends, *policy)
        try:
            buffers = list(self.transport.read_spans([(start, end - start) for start, end, _ in spans]))
        except OSError as e:
            if not isinstance(self.transport, LocalFile):  # remote: its retries are spent, the wave fails at once
                for k in wave.tolist():
                    yield k, BadImage("unreadable", f"{self.describe(keys[k])} cannot be read: {e}")
                return
            # A local read failed: each member on its own, so that only the members that fail are named.
            for k, index in zip(wave.tolist(), indexes.tolist()):
                entry = directory.entry(index)
                start, end = entry.span
                try:
                    buffer = self.transport.read_at(start, min(end, size) - start)
                except OSError as alone:
                    yield k, BadImage("unreadable", f"{self.describe(keys[k])} cannot be read: {alone}")
                    continue
                yield k, self._member(entry, buffer, start, self.describe(keys[k]))
            return
        wave_list, headers_list, sizes_list = wave.tolist(), headers.tolist(), sizes.tolist()
        crcs, plain_list = directory.crcs[indexes].tolist(), plain.tolist()
        unpack = _NAME_EXTRA.unpack_from
        for (start, _, members), buffer in zip(spans, buffers):
            view = memoryview(buffer)
            for i in members:
                at = headers_list[i] - start
                if plain_list[i] and buffer[at : at + 4] == b"PK\x03\x04":
                    name_len, extra_len = unpack(buffer, at + 26)
                    begin = at + _LOCAL_HEADER.size + name_len + extra_len
                    data = view[begin : begin + sizes_list[i]]
                    if (
                        len(data) == sizes_list[i]
                        and crc32(data) == crcs[i]
                        and sizes_list[i]
                        and (data[:3] == _JPEG or sniff_format(bytes(data[:HEAD_SIZE])) is not None)
                    ):
                        yield wave_list[i], data
                        continue
                k = wave_list[i]
                yield k, self._member(directory.entry(int(indexes[i])), buffer, start, self.describe(keys[k]))

    def _member(self, entry: ZipEntry, buffer: bytes, start: int, where: str) -> bytes | BadImage:
        """One member's bytes from `buffer` (the archive's bytes from `start`), every check made and named."""
        try:
            try:
                data = read_member(entry, buffer, start, where)
            except ZipMemberError:
                # Read once more on its own: bytes damaged in transit (or a flaky mount) come right, a member
                # corrupt in the archive fails the same way again. Encrypted members and unknown methods fail
                # on the directory entry alone: no second read for those.
                if entry.flags & 0x1 or entry.method not in READABLE_METHODS:
                    raise
                data = read_member(entry, self.transport.read_at(*entry.span), entry.header_offset, where)
            _check_head(data[:HEAD_SIZE], len(data), where)
        except ZipMemberError as e:
            return BadImage(e.reason, str(e))
        except OSError as e:
            return BadImage("unreadable", f"{where} cannot be read: {e}")
        except BadImage as bad:
            return bad
        return data

    def _located(self, candidate: str, entry: ZipEntry) -> str | BadImage:
        where = self.describe(candidate)
        try:
            offset, length = entry.span
            head = min(length, _LOCAL_HEADER.size + 2 * 0xFFFF + HEAD_SIZE)
            if entry.method == 0:  # stored: the signature is in the first bytes after the local header
                buffer = self.transport.read_at(offset, head)
                header = _LOCAL_HEADER.unpack(buffer[: _LOCAL_HEADER.size])
                start = _LOCAL_HEADER.size + header[-2] + header[-1]
                _check_head(buffer[start : start + HEAD_SIZE], entry.file_size, where)
            else:
                data = read_member(entry, self.transport.read_at(offset, length), offset, where)
                _check_head(data[:HEAD_SIZE], len(data), where)
        except ZipMemberError as e:
            return BadImage(e.reason, str(e))
        except (OSError, struct.error) as e:
            return BadImage("unreadable", f"{where} cannot be read: {e}")
        except BadImage as bad:
            return bad
        return f"zip://{entry.name}::{self.location}"

    def read(self, name: str) -> tuple[str, bytes]:
        (result,) = self.read_many([name])
        if isinstance(result, BadImage):
            raise result
        return result

    def locate(self, name: str) -> str:
        (result,) = self.read_many([name], embed=False)
        if isinstance(result, BadImage):
            raise result
        return result

    def __getstate__(self):
        state = super().__getstate__()
        transport = state.get("_transport")
        if isinstance(transport, LocalFile):
            state["_transport"] = None  # reopened where it is unpickled (the file may be elsewhere)
        return state

    def close(self) -> None:
        if self._transport is not None and hasattr(self._transport, "close"):
            self._transport.close()


def _waves(directory: ZipDirectory, indexes: np.ndarray) -> Iterator[np.ndarray]:
    """Positions in `indexes`, cut in waves of at most _WAVE_BYTES of members (one member at least), so the
    bytes a batch holds at once stay bounded."""
    total = np.cumsum(directory.compress_sizes[indexes].astype(np.int64))
    start = 0
    while start < len(indexes):
        # The first position whose running size, counted from this wave's start, reaches _WAVE_BYTES.
        base = int(total[start - 1]) if start else 0
        stop = int(np.searchsorted(total, base + _WAVE_BYTES, side="left")) + 1
        stop = min(max(stop, start + 1), len(indexes))
        yield np.arange(start, stop)
        start = stop


def _merge_spans_sorted(
    starts: np.ndarray, ends: np.ndarray, gap: int = MERGE_GAP, waste: float | None = None
) -> list[tuple[int, int, list[int]]]:
    """(start, end, indexes of the regions it holds) of the reads that cover the regions [starts, ends):
    sorted by offset, neighbours closer than `gap` merged, no read longer than _SPAN_BYTES unless one
    member is. With `waste`, the gaps read in one merged read stay under that fraction of its members'
    bytes, so a remote archive never sends much more than what was asked for."""
    order = np.argsort(starts, kind="stable")
    if waste is None and len(order):
        # Vectorised when the gap alone decides (a local file) and no merged read passes _SPAN_BYTES.
        first, last = starts[order], ends[order]
        reach = np.maximum.accumulate(last)
        cut = np.flatnonzero(first[1:] - reach[:-1] > gap) + 1
        heads = np.concatenate(([0], cut))
        tails = reach[np.concatenate((cut - 1, [len(order) - 1]))]
        sizes = np.diff(np.concatenate((heads, [len(order)])))
        if not ((tails - first[heads] > _SPAN_BYTES) & (sizes > 1)).any():
            members, bounds = order.tolist(), heads.tolist() + [len(order)]
            return [
                (a, b, members[h:t]) for a, b, h, t in zip(first[heads].tolist(), tails.tolist(), bounds, bounds[1:])
            ]
    order = order.tolist()
    starts_list, ends_list = starts.tolist(), ends.tolist()
    merged: list[list] = []  # [start, end, members, useful bytes, wasted bytes]
    last = None
    for k in order:
        start, end = starts_list[k], ends_list[k]
        if last is not None:
            hole = max(0, start - last[1])
            if (
                hole <= gap
                and max(end, last[1]) - last[0] <= _SPAN_BYTES
                and (waste is None or last[4] + hole <= waste * (last[3] + end - start))
            ):
                last[1] = max(end, last[1])
                last[2].append(k)
                last[3] += end - start
                last[4] += hole
                continue
        last = [start, end, [k], end - start, 0]
        merged.append(last)
    return [(start, end, members) for start, end, members, _, _ in merged]


# Zip directories parsed ahead of the processes that read them (`read_directory_ahead`), by `_file_key`.
_PARSED: dict[str, ZipDirectory] = {}


def _file_key(path: str) -> str | None:
    from .integrity import inode_identity

    try:
        return inode_identity(path)
    except OSError:
        return None


def _parse_local(path: str) -> tuple[str | None, ZipDirectory | None]:
    key = _file_key(path)
    try:
        directory = ZipDirectory.from_transport(LocalFile(path), path)
    except (OSError, ValueError):
        return key, None  # the readers open it themselves, and name what is wrong with it
    return (key, directory) if _file_key(path) == key else (None, None)


@contextlib.contextmanager
def read_directory_ahead(location: str | None) -> Iterator[None]:
    """For the block: the directory of the local zip at `location` parsed in a forked child while this
    process goes on (a prepare with num_proc > 1 scans its JSON files meanwhile), kept here once the block
    ends, so that every ZipRoot of that file in this process, and in the workers forked from it, uses this
    one copy instead of parsing its own (~0.5 s and 35 MiB at 558K members, then shared copy-on-write);
    forgotten when the caller's `forget_directories` runs. Best effort: nothing for anything but a local
    `.zip`, a platform without fork, a file changed meanwhile, or a zip the parse refuses (the readers then
    name the problem as ever)."""
    from .image_collections import is_url
    from .sources import in_child

    if (
        not location
        or is_url(location)
        or not location.lower().endswith(".zip")
        or not os.path.isfile(location)
        or not _workers_fork()
    ):
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            pending = stack.enter_context(in_child(_parse_local, location))
        except OSError:  # no process to spare (EAGAIN, ENOMEM): the workers parse it
            pending = None
        yield
    if pending is None:
        return
    try:
        key, directory = pending.result()
    except Exception:  # noqa: BLE001 - a child that died: the readers parse the directory themselves
        return
    if key is not None and directory is not None and _file_key(location) == key:
        _PARSED[key] = directory


def _workers_fork() -> bool:
    # datasets' workers come from a `multiprocess` pool: they inherit this process's memory only when it
    # forks them (the default on Linux before Python 3.14; forkserver and spawn start afresh).
    import sys

    import multiprocess

    method = multiprocess.get_start_method(allow_none=True)  # None: not set, and not set here either
    if method is None:
        return sys.platform == "linux" and sys.version_info < (3, 14)
    return method == "fork"


def forget_directories() -> None:
    """Drop the directories `read_directory_ahead` kept."""
    _PARSED.clear()


# The fixed part of a zip local file header (signature ... file name length, extra field length).
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_NAME_EXTRA = struct.Struct("<2H")  # its last two fields, at byte 26
_JPEG = b"\xff\xd8\xff"  # most members: checked before the list of every signature
# Separate locks: the directory is read (under its lock) through a transport that opens its file (under
# its own) and may start the reading threads (under a third).
_DIRECTORY_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()
_POOL_LOCK = threading.Lock()


def open_root(location: str, aliases: tuple[tuple[str, str], ...] = (), token: str | bool | None = None) -> ImageRoot:
    """The image root at `location`: a `.zip` file is read in place, anything else is a folder.

    Decided from the name alone, so that nothing under the root is listed or stat'ed. A URL (`https://`,
    `hf://`, `s3://` ...) of a zip is read by range requests (`llava_hf.remote`), a URL of a folder one GET
    an image; `token` goes to the Hub only. Nothing is requested before the first read.
    """
    from .image_collections import is_url

    if is_url(location):
        from .remote import open_remote_root

        return open_remote_root(location, aliases, token)
    location = os.path.abspath(os.path.expanduser(location))
    cls = ZipRoot if location.lower().endswith(".zip") else FolderRoot
    return cls(location, aliases)
