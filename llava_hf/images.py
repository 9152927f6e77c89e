"""Image roots: a folder or a zip, read in place; path containment; cheap header checks.

Preparing never decodes an image (PIL decodes ~600 images/s per core; reading the file is the floor).
An image is embedded as the exact bytes of its file after three cheap checks: the name stays inside the
root, the file exists and is not empty, and its first bytes are the signature of an image format.
"""

from __future__ import annotations

import os
import posixpath
import re
import struct
import threading
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

from .errors import BadImage

# Every reason an image can be refused, in the order reports list them.
BAD_IMAGE_REASONS = ("unsafe_path", "missing", "empty", "not_an_image", "too_large", "unreadable")

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


def sniff_format(head: bytes) -> str | None:
    """The image format whose signature starts `head` (JPEG, PNG, GIF, WEBP, BMP, TIFF, JPEG2000), or None."""
    for magic, offset, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if name == "WEBP" and head[:4] != b"RIFF":
                continue
            return name
    return None


def safe_name(name: str) -> str:
    """`name` as a clean relative POSIX path, or BadImage("unsafe_path") when it could leave the root.

    Absolute paths, drive letters, URLs (any `scheme:`), `..` components and NUL bytes are refused; the
    check is on the text alone (CWE-22), so symlinked sub-folders inside a root keep working.
    """
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


def _check_size(size: int, where: str) -> None:
    if size > MAX_IMAGE_BYTES:
        raise BadImage("too_large", f"image file {where} has {size:,} bytes, more than the {MAX_IMAGE_BYTES:,} allowed")


def _check_head(head: bytes, size: int, where: str) -> None:
    if size == 0:
        raise BadImage("empty", f"image file {where} is empty (0 bytes)")
    if sniff_format(head) is None:
        raise BadImage("not_an_image", f"image file {where} is not an image (starts with {bytes(head[:8])!r})")


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
            pending.append(self._pool().submit(_attempt_all, method, chunk))
            if len(pending) >= READ_THREADS:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()

    _recent: deque | None = None  # the last inline read times in this process (seconds)

    def _reads_block(self) -> bool:
        """Whether reads are slow enough for the threads (the median of the recent ones); first inline."""
        recent = self._recent
        return bool(recent) and sorted(recent)[len(recent) // 2] >= INLINE_BELOW

    def _timed(self, method, name: str):
        started = _clock()
        result = _attempt(method, name)
        if self._recent is None:
            self._recent = deque(maxlen=READ_SAMPLES)
        self._recent.append(_clock() - started)
        return result

    parallel_reads = False
    _executor = None
    _executor_pid = 0

    def _pool(self) -> ThreadPoolExecutor:
        # One pool per process: a pool inherited through fork has no threads.
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="llava_hf-read")
            self._executor_pid = os.getpid()
        return self._executor

    def __getstate__(self):
        state = dict(self.__dict__)
        for transient in ("_zip", "_fd", "_pid", "_executor", "_executor_pid"):
            state.pop(transient, None)
        return state

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
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                _check_size(size, path)
                if size <= _READ_WHOLE:
                    data = f.read()  # one request: one round trip to the storage
                    _check_head(data[:HEAD_SIZE], len(data), path)
                    return data
                # A big file: its signature is checked before the rest is read or allocated, so a big file
                # that is no image costs 16 bytes.
                head = f.read(HEAD_SIZE)
                _check_head(head, size, path)
                return head + f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BadImage("unreadable", f"image file {path} cannot be read: {e.strerror or e}") from None

    def _probe(self, name: str) -> tuple[bytes, int] | None:
        path = os.path.join(self.location, name)
        try:
            with open(path, "rb") as f:
                return f.read(HEAD_SIZE), os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BadImage("unreadable", f"image file {path} cannot be read: {e.strerror or e}") from None


class ZipRoot(ImageRoot):
    """Images inside one zip, read in place (the LLaVA archives are 6.5 GB and 27 GB, no root folder).

    `zipfile` reads the directory; a member's bytes are then read with `os.pread` at the offset the
    directory gives, so several threads read at once (zipfile serialises reads on one shared handle) and
    no file offset is shared across a fork. Stored and deflated members are read this way, with their
    CRC checked; other compressions go through zipfile.
    """

    parallel_reads = True
    _zip: zipfile.ZipFile | None = None
    _fd: int = -1
    _pid: int = 0

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            with _OPEN_LOCK:  # reading threads start together: one of them opens the archive
                if self._zip is None or self._pid != os.getpid():
                    try:
                        self._zip = zipfile.ZipFile(self.location)
                        self._fd = os.open(self.location, os.O_RDONLY)
                    except (OSError, zipfile.BadZipFile) as e:
                        raise BadImage("unreadable", f"image archive {self.location} cannot be opened: {e}") from None
                    self._pid = os.getpid()
        return self._zip

    def describe(self, name: str) -> str:
        return f"{name} in {self.location}"

    def url(self, name: str) -> str:
        return f"zip://{name}::{self.location}"

    def _info(self, name: str) -> zipfile.ZipInfo | None:
        try:
            info = self._archive().getinfo(name)
        except KeyError:
            return None
        return None if info.is_dir() else info

    def _read(self, name: str) -> bytes | None:
        info = self._info(name)
        if info is None:
            return None
        where = self.describe(name)
        _check_size(info.file_size, where)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            return self._read_with_zipfile(info, where)
        try:
            header = os.pread(self._fd, _LOCAL_HEADER.size, info.header_offset)
            if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise BadImage("unreadable", f"{where} has no local header where the zip directory says")
            name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
            start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size > _READ_WHOLE:  # a big member: its signature first, as for files
                    _check_head(os.pread(self._fd, HEAD_SIZE, start), info.file_size, where)
                data = os.pread(self._fd, info.compress_size, start)
                _check_head(data[:HEAD_SIZE], len(data), where)
            else:
                # max_length: a member cannot inflate past the size its directory entry declares
                data = zlib.decompressobj(-15).decompress(os.pread(self._fd, info.compress_size, start), info.file_size)
                _check_head(data[:HEAD_SIZE], len(data), where)
        except OSError as e:
            raise BadImage("unreadable", f"{where} cannot be read: {e}") from None
        except zlib.error as e:
            raise BadImage("unreadable", f"{where} does not inflate: {e}") from None
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise BadImage("unreadable", f"{where} is corrupt (size or CRC differs from the zip directory)")
        return data

    def _read_with_zipfile(self, info: zipfile.ZipInfo, where: str) -> bytes:
        try:
            with self._lock, self._archive().open(info) as f:
                head = f.read(HEAD_SIZE)
                _check_head(head, info.file_size, where)
                return head + f.read()
        except (OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile, EOFError) as e:
            raise BadImage("unreadable", f"{where} cannot be read: {e}") from None

    @property
    def _lock(self) -> threading.Lock:
        return _ZIPFILE_LOCK

    def _probe(self, name: str) -> tuple[bytes, int] | None:
        info = self._info(name)
        if info is None:
            return None
        try:
            with self._lock, self._archive().open(info) as f:
                return f.read(HEAD_SIZE), info.file_size
        except (OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile, EOFError) as e:
            raise BadImage("unreadable", f"{self.describe(name)} cannot be read: {e}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            os.close(self._fd)
            self._zip, self._fd = None, -1


# The fixed part of a zip local file header (signature ... file name length, extra field length).
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_ZIPFILE_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()


def open_root(location: str, aliases: tuple[tuple[str, str], ...] = ()) -> ImageRoot:
    """The image root at `location`: a `.zip` file is read in place, anything else is a folder.

    Decided from the name alone, so that nothing under the root is listed or stat'ed.
    """
    location = os.path.abspath(os.path.expanduser(location))
    cls = ZipRoot if location.lower().endswith(".zip") else FolderRoot
    return cls(location, aliases)
