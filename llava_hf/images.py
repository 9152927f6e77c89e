"""Image roots: a folder or a zip, read in place; path containment; cheap header checks.

Preparing never decodes an image (PIL decodes ~600 images/s per core; reading the file is the floor).
An image is embedded as the exact bytes of its file after three cheap checks: the name stays inside the
root, the file exists and is not empty, and its first bytes are the signature of an image format.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import struct
import threading
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import BadImage

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

# Threads reading image files of a folder root at the same time, in each worker process, and how many
# reads may be in flight (two per thread: one being read, one queued).
READ_THREADS = 8
READ_AHEAD = 2 * READ_THREADS

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
    """`name` as a clean relative POSIX path, or BadImage("unsafe_path") when it could leave the root, or
    BadImage("bad_name") when it is not storable text (an unpaired UTF-16 surrogate).

    Absolute paths, drive letters, URLs (any `scheme:`), `..` components and NUL bytes are refused; the
    check is on the text alone (CWE-22), so symlinked sub-folders inside a root keep working.
    """
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
        that fails. From a folder, `READ_THREADS` threads keep up to `READ_AHEAD` reads in flight, so the
        storage always has requests queued, and no more than that many images wait in memory."""
        method = self.read if embed else self.locate

        def one(name: str):
            try:
                return method(name)
            except BadImage as bad:
                return bad

        if not self.parallel_reads:
            yield from map(one, names)
            return
        pool = self._pool()
        pending: deque = deque()
        for name in names:
            pending.append(pool.submit(one, name))
            if len(pending) >= READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

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
