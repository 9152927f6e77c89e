"""A zip's central directory as compact arrays, for local and remote archives alike.

`zipfile` keeps a `ZipInfo` object per member: ~0.8 KB each, ~440 MiB of every process's memory for the
558K-member LCS archive. Here a directory is a handful of numpy arrays (offset, sizes, CRC-32, method,
flags) plus one blob of names and a sorted CRC-32 index of them: ~45 bytes a member plus its name, ~35 MiB
at 558K members, and nothing in it is bound to a process (it pickles, and forked workers share its pages).

It is read through a *transport*, anything with `size`, `read_at(offset, length)` and
`read_spans(spans)`: two reads for the end records (the end-of-central-directory record in the last
64 KiB, and the zip64 one it points at when there is one), then the directory itself in a few big reads.
The same code serves a file on disk (`os.pread`) and an archive on a web server (range requests).

A zip's layout, for reference: each member is a local header (30 bytes + name + extra) followed by its
data; the central directory after the last member repeats every name with its sizes, CRC-32, method and
local-header offset; the end records close the file. Sizes and offsets past 4 GiB live in zip64 extra
fields (the 27 GB LCS archive needs them).
"""

from __future__ import annotations

import bz2
import contextlib
import ctypes
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np

try:  # the same function, ~20x faster (see pyproject.toml)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; kept for a platform with no wheel
    from zlib import crc32

_EOCD = struct.Struct("<4s4H2LH")  # signature, disks, entries (this disk, total), size, offset, comment length
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # signature, record size, versions, disks, entries x2, size, offset
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory header (46 bytes)
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # one local file header (30 bytes)
# A member's bytes beyond its data, at most: local header, name, extra field, data descriptor.
MEMBER_SLACK = _LOCAL.size + 2 * 0xFFFF + 24
_TAIL = _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size  # the end record, its longest comment, the zip64 locator

# Byte offsets of the central header fields read below, and the zip64 "see the extra field" marker.
_FLAGS, _METHOD, _CRC, _CSIZE, _USIZE, _NAME_LEN, _OFFSET = 8, 10, 16, 20, 24, 28, 42
_MAX32 = 0xFFFFFFFF
_UTF8_FLAG = 0x800
_HASH_BLOCK = 1 << 16
_CHUNK = 4 << 20  # the directory is read in pieces of this size: bounded memory while it is parsed

STORED, DEFLATED, BZIP2 = 0, 8, 12
READABLE_METHODS = (STORED, DEFLATED, BZIP2)


class Transport(Protocol):
    """Random access to the bytes of one archive, wherever it lives."""

    size: int

    def read_at(self, offset: int, length: int) -> bytes: ...

    def read_spans(self, spans: list[tuple[int, int]]) -> Iterator[bytes]: ...


class ZipFormatError(ValueError):
    """The archive is no zip, or its end records or directory are damaged."""


class ZipMemberError(ValueError):
    """One member cannot be read; `reason` is a BadImage reason ("unreadable", "too_large")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ZipEntry(NamedTuple):
    """One member, as its central directory entry describes it; `span_end` is where its region ends
    (the next member's local header, or the directory), so [header_offset, span_end) holds its local
    header, data and data descriptor. (A NamedTuple: a batch makes thousands of these.)"""

    name: str
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    method: int
    flags: int
    span_end: int

    @property
    def span(self) -> tuple[int, int]:
        """(offset, length) of the bytes that hold this member, bounded even when the next member is far."""
        longest = MEMBER_SLACK + self.compress_size
        return self.header_offset, min(self.span_end, self.header_offset + longest) - self.header_offset


class ZipDirectory:
    """The members of one zip, held compactly; see the module docstring."""

    def __init__(
        self,
        label: str,
        size: int,
        directory_offset: int,
        directory_size: int,
        names: bytes,
        name_ends: np.ndarray,
        header_offsets: np.ndarray,
        compress_sizes: np.ndarray,
        file_sizes: np.ndarray,
        crcs: np.ndarray,
        methods: np.ndarray,
        flags: np.ndarray,
    ):
        self.label = label
        self.size = size
        self.directory_offset = directory_offset
        self.directory_size = directory_size
        self._names = names
        self._name_ends = name_ends
        self.header_offsets = header_offsets
        self.compress_sizes = compress_sizes
        self.file_sizes = file_sizes
        self.crcs = crcs
        self.methods = methods
        self.flags = flags
        # Where each member's region ends: the next local header in file order, or the directory.
        order = np.argsort(header_offsets, kind="stable")
        span_ends = np.empty_like(header_offsets)
        span_ends[order[:-1]] = header_offsets[order[1:]]
        if len(order):
            span_ends[order[-1]] = directory_offset
        self.span_ends = span_ends
        # Names are found by CRC-32 (deterministic, so a pickled directory works in another process)
        # and a binary search; equal hashes are told apart by comparing the names.
        hashes = np.empty(len(name_ends), dtype=np.uint32)
        starts = self._name_starts()
        for block in range(0, len(hashes), _HASH_BLOCK):  # in blocks: no list of 558K ints at once
            bounds = zip(starts[block : block + _HASH_BLOCK].tolist(), name_ends[block : block + _HASH_BLOCK].tolist())
            hashes[block : block + _HASH_BLOCK] = [crc32(names[a:b]) for a, b in bounds]
        self._order = np.argsort(hashes, kind="stable").astype(np.int32)
        self._hashes = hashes[self._order]

    # --- reading ---------------------------------------------------------------------------------------

    @classmethod
    def from_transport(cls, transport: Transport, label: str) -> ZipDirectory:
        """Read the directory of the zip behind `transport`; ZipFormatError when it is not a readable zip."""
        size = transport.size
        tail_start = max(0, size - _TAIL)
        tail = transport.read_at(tail_start, size - tail_start)
        at = _find_end_record(tail)
        if at < 0:
            raise ZipFormatError(f"{label} is not a zip file (no end-of-central-directory record)")
        _, _, _, _, entries, directory_size, directory_offset, _ = _EOCD.unpack_from(tail, at)
        end_record = tail_start + at
        zip64_record_size = 0
        locator_at = at - _ZIP64_LOCATOR.size
        if locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
            # The zip64 end record sits just before its locator (its stated offset ignores a prefix).
            record_at = end_record - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
            if record_at >= tail_start:
                record = tail[record_at - tail_start : record_at - tail_start + _ZIP64_EOCD.size]
            else:
                record = transport.read_at(record_at, _ZIP64_EOCD.size)
            if record[:4] != b"PK\x06\x06":
                raise ZipFormatError(f"{label}: the zip64 end record is not where its locator says")
            _, _, _, _, _, _, _, entries, directory_size, directory_offset = _ZIP64_EOCD.unpack(record)
            zip64_record_size = _ZIP64_EOCD.size + _ZIP64_LOCATOR.size
        # Data prepended to the archive (a self-extractor stub) shifts every offset by the same amount.
        shift = end_record - zip64_record_size - directory_size - directory_offset
        if shift < 0:
            raise ZipFormatError(f"{label}: the zip directory does not fit before its end record (truncated?)")
        directory_offset += shift
        if entries * _CENTRAL.size > directory_size:  # each entry is at least 46 bytes: no arrays sized by a lie
            raise ZipFormatError(
                f"{label}: the end record says {entries:,} members, but its {directory_size:,}-byte directory "
                f"holds at most {directory_size // _CENTRAL.size:,}"
            )
        spans = [
            (start, min(_CHUNK, directory_offset + directory_size - start))
            for start in range(directory_offset, directory_offset + directory_size, _CHUNK)
        ]
        # Filled chunk by chunk into arrays of the size the end record states: no list of per-chunk
        # arrays to concatenate (a second copy of everything at 558K members).
        columns = [
            np.zeros(entries, dtype) for dtype in (np.int64, np.int64, np.int64, np.uint32, np.uint16, np.uint16)
        ]
        name_ends = np.zeros(entries, np.int64)
        blobs, count, base = [], 0, 0
        for name_blob, chunk_ends, chunk_columns in _parse_directory(transport.read_spans(spans), label, shift):
            n = len(chunk_ends)
            if count + n > entries:
                raise ZipFormatError(f"{label}: the zip directory lists more members than its end record ({entries:,})")
            for column, values in zip(columns, chunk_columns):
                column[count : count + n] = values
            name_ends[count : count + n] = chunk_ends + base
            blobs.append(name_blob)
            base += len(name_blob)
            count += n
        if count != entries:
            raise ZipFormatError(f"{label}: the zip directory lists {count:,} members, its end record {entries:,}")
        offsets, compress_sizes, file_sizes, crcs, methods, flags = columns
        directory = cls(
            label,
            size,
            directory_offset,
            directory_size,
            b"".join(blobs),
            _compact(name_ends),
            offsets,
            _compact(compress_sizes),
            _compact(file_sizes),
            crcs,
            methods,
            flags,
        )
        del columns, blobs, name_ends
        _release_freed_memory()
        return directory

    # --- lookups -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._name_ends)

    @property
    def nbytes(self) -> int:
        """The memory this directory holds, in bytes."""
        arrays = (
            self._name_ends,
            self.header_offsets,
            self.compress_sizes,
            self.file_sizes,
            self.crcs,
            self.methods,
            self.flags,
            self.span_ends,
            self._order,
            self._hashes,
        )
        return len(self._names) + sum(a.nbytes for a in arrays)

    def _name_starts(self) -> np.ndarray:
        starts = np.empty_like(self._name_ends)
        if len(starts):
            starts[0] = 0
            starts[1:] = self._name_ends[:-1]
        return starts

    def _name_bytes(self, i: int) -> bytes:
        return self._names[int(self._name_ends[i - 1]) if i else 0 : int(self._name_ends[i])]

    def name(self, i: int) -> str:
        # surrogateescape, as names are looked up (`find`): a name flagged UTF-8 that is not comes back as it is
        return self._name_bytes(i).decode("utf-8", "surrogateescape")

    def names(self) -> Iterator[str]:
        """Every member's name, in directory order."""
        start = 0
        for end in self._name_ends.tolist():
            yield self._names[start:end].decode("utf-8", "surrogateescape")
            start = end

    def _lookup(self, key: bytes, digest: int, at: int) -> int:
        # The last member of that name, as zipfile (and so a `zip://` path) takes it when a name is repeated.
        hashes, order = self._hashes, self._order
        found = -1
        while at < len(hashes) and hashes[at] == digest:
            index = int(order[at])
            if self._name_bytes(index) == key:
                found = index
            at += 1
        return found

    def find(self, name: str) -> int:
        """The index of the member called `name` (a file, not a folder entry), or -1."""
        key = name.encode("utf-8", "surrogateescape")
        digest = crc32(key)
        # np.uint32: a Python int would make numpy convert the whole index to int64 on every call (~0.3 ms
        # at 558K members).
        return self._lookup(key, digest, int(np.searchsorted(self._hashes, np.uint32(digest))))

    def find_many(self, names: list[str]) -> np.ndarray:
        """`find` of each name at once, -1 where absent: one vectorised search, then each name compared
        with the member its hash points at (the last of that hash: names repeated in an archive resolve to
        their last member, as in `find`); only a name whose hash is shared or absent takes `_lookup`."""
        keys = [name.encode("utf-8", "surrogateescape") for name in names]
        found = np.full(len(keys), -1, dtype=np.int64)
        if not keys or not len(self._hashes):
            return found
        digests = np.fromiter((crc32(k) for k in keys), dtype=np.uint32, count=len(keys))
        positions = np.searchsorted(self._hashes, digests)
        inside = np.maximum(np.searchsorted(self._hashes, digests, side="right") - 1, 0)
        candidates = self._order[inside].astype(np.int64)
        ends = self._name_ends[candidates]
        starts = np.where(candidates > 0, self._name_ends[np.maximum(candidates - 1, 0)], 0)
        blob = self._names
        same = [blob[a:b] == key for a, b, key in zip(starts.tolist(), ends.tolist(), keys)]
        found[same] = candidates[same]
        for k in np.flatnonzero(~np.array(same, dtype=bool)).tolist():
            found[k] = self._lookup(keys[k], int(digests[k]), int(positions[k]))
        return found

    def entry(self, i: int) -> ZipEntry:
        return ZipEntry(
            name=self.name(i),
            header_offset=int(self.header_offsets[i]),
            compress_size=int(self.compress_sizes[i]),
            file_size=int(self.file_sizes[i]),
            crc=int(self.crcs[i]),
            method=int(self.methods[i]),
            flags=int(self.flags[i]),
            span_end=int(self.span_ends[i]),
        )

    def entries(self, indexes: np.ndarray) -> list[ZipEntry]:
        """`entry` of each index at once (one gather per field, not eight numpy lookups a member)."""
        indexes = np.asarray(indexes, dtype=np.int64)
        names = [self.name(i) for i in indexes.tolist()]
        columns = (
            self.header_offsets,
            self.compress_sizes,
            self.file_sizes,
            self.crcs,
            self.methods,
            self.flags,
            self.span_ends,
        )
        return [ZipEntry(*fields) for fields in zip(names, *(c[indexes].tolist() for c in columns))]

    def spans(self, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the bytes that hold each member of `indexes`: `ZipEntry.span` of each, at once."""
        starts = self.header_offsets[indexes].astype(np.int64)
        ends = np.minimum(
            self.span_ends[indexes].astype(np.int64), starts + MEMBER_SLACK + self.compress_sizes[indexes]
        )
        return starts, ends

    def top_folder(self) -> str:
        """The one folder every member sits under (`"train2017/"` in COCO's archive), or "" when the
        members do not all share one (the LLaVA pretrain archives have no root folder)."""
        if not len(self):
            return ""
        first = self._name_bytes(0)
        slash = first.find(b"/")
        if slash <= 0:
            return ""
        prefix = first[: slash + 1]
        starts, ends = self._name_starts(), self._name_ends
        blob = np.frombuffer(self._names, dtype=np.uint8)
        long_enough = (ends - starts) >= len(prefix)
        if not long_enough.all():
            return ""
        heads = blob[starts[:, None] + np.arange(len(prefix))]
        if not (heads == np.frombuffer(prefix, dtype=np.uint8)).all():
            return ""
        if not ((ends - starts) > len(prefix)).any():
            return ""  # only the folder entry itself
        return prefix.decode("utf-8", "surrogateescape")


def _release_freed_memory() -> None:
    # Parsing frees tens of MB of temporaries that glibc keeps in the heap (counted as the process's
    # memory, ~70 MiB at 558K members): hand them back. A no-op where there is no glibc.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _compact(values: np.ndarray) -> np.ndarray:
    # Sizes of images fit 32 bits; only an archive with a member past 4 GiB pays for 64.
    return values.astype(np.uint32) if not len(values) or int(values.max()) <= _MAX32 else values.astype(np.int64)


def _find_end_record(tail: bytes) -> int:
    # The end record is the last "PK\x05\x06" whose comment reaches the end of the file; failing that (bytes
    # appended after the comment), the last one whose comment fits, as zipfile accepts it.
    candidates = []
    at = len(tail)
    while (at := tail.rfind(b"PK\x05\x06", 0, at)) >= 0:
        if at + _EOCD.size <= len(tail):
            end = at + _EOCD.size + _EOCD.unpack_from(tail, at)[-1]
            if end == len(tail):
                return at
            if end < len(tail):
                candidates.append(at)
    return candidates[0] if candidates else -1


def _parse_directory(chunks: Iterator[bytes], label: str, shift: int) -> Iterator[tuple[bytes, np.ndarray, list]]:
    """Parse the central directory from consecutive chunks: per chunk, the names blob, their ends and the
    columns (offset, compressed size, size, CRC, method, flags)."""
    carry = b""
    for chunk in chunks:
        buf = carry + chunk if carry else chunk
        found = _entries_at_once(buf)
        starts, pos = found if found is not None else _entries_one_by_one(buf, label)
        carry = buf[pos:]
        if len(starts):
            yield _columns(buf, starts, label, shift)
    if carry:
        raise ZipFormatError(f"{label}: the zip directory ends inside a member's entry (truncated?)")


_CENTRAL_SIGNATURE = b"PK\x01\x02"


def _entries_one_by_one(buf: bytes, label: str) -> tuple[np.ndarray, int]:
    """(starts of the complete entries in `buf`, where the first incomplete one starts), walking from 0."""
    starts = []
    pos, limit = 0, len(buf)
    lengths = struct.Struct("<3H")
    while pos + _CENTRAL.size <= limit:
        if not buf.startswith(_CENTRAL_SIGNATURE, pos):
            raise ZipFormatError(f"{label}: damaged zip directory (no member header at its byte {pos})")
        name_len, extra_len, comment_len = lengths.unpack_from(buf, pos + _NAME_LEN)
        end = pos + _CENTRAL.size + name_len + extra_len + comment_len
        if end > limit:
            break
        starts.append(pos)
        pos = end
    return np.array(starts, dtype=np.int64), pos


def _entries_at_once(buf: bytes) -> tuple[np.ndarray, int] | None:
    """`_entries_one_by_one(buf)` worked out vectorised (0.35 s -> ~0.05 s at 558K members), or None when
    that cannot be trusted: every place the entry signature occurs is taken for an entry, which holds only
    if each one ends exactly where the next begins, from byte 0 on (a name, extra field or comment holding
    the signature breaks that chain). Anything else, damage included, is left to the walk and its errors."""
    limit = len(buf)
    if limit < _CENTRAL.size:
        return None
    raw = np.frombuffer(buf, dtype=np.uint8)
    found = np.flatnonzero((raw[:-3] == 0x50) & (raw[1:-2] == 0x4B) & (raw[2:-1] == 1) & (raw[3:] == 2))
    found = found[found + _CENTRAL.size <= limit]  # a header cut by the chunk's end is the next chunk's
    if not len(found) or found[0] != 0:
        return None
    lengths = sum(_field(raw, found, _NAME_LEN + 2 * k, "<u2").astype(np.int64) for k in range(3))
    ends = found + _CENTRAL.size + lengths
    if not np.array_equal(ends[:-1], found[1:]):
        return None
    complete = int(np.searchsorted(ends, limit, side="right"))  # ends increase: the complete ones come first
    pos = int(ends[complete - 1]) if complete else 0
    if complete == len(found) and pos + _CENTRAL.size <= limit:
        return None  # a full header's room after the last entry, and no signature there: the walk names it
    return found[:complete], pos


def _field(raw: np.ndarray, starts: np.ndarray, offset: int, dtype) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    return raw[starts[:, None] + np.arange(offset, offset + width)].copy().view(dtype).ravel()


def _columns(buf: bytes, starts: np.ndarray, label: str, shift: int) -> tuple[bytes, np.ndarray, list]:
    raw = np.frombuffer(buf, dtype=np.uint8)
    flags = _field(raw, starts, _FLAGS, "<u2")
    methods = _field(raw, starts, _METHOD, "<u2")
    crcs = _field(raw, starts, _CRC, "<u4")
    compress_sizes = _field(raw, starts, _CSIZE, "<u4").astype(np.int64)
    file_sizes = _field(raw, starts, _USIZE, "<u4").astype(np.int64)
    name_lens = _field(raw, starts, _NAME_LEN, "<u2").astype(np.int64)
    offsets = _field(raw, starts, _OFFSET, "<u4").astype(np.int64)
    # The names, cut out in one gather: for each name byte, its position in buf.
    name_ends = np.cumsum(name_lens)
    first = starts + _CENTRAL.size
    positions = np.repeat(first - (name_ends - name_lens), name_lens) + np.arange(int(name_ends[-1]))
    names = raw[positions].tobytes()
    if (raw[positions] >= 0x80).any():
        names, name_ends = _utf8_names(names, name_ends, flags)
    # zip64: a field of all ones means the real value is in the extra field; few members need it.
    wide = np.flatnonzero((compress_sizes == _MAX32) | (file_sizes == _MAX32) | (offsets == _MAX32))
    for k in wide.tolist():
        at = int(starts[k])
        name_len, extra_len = struct.unpack_from("<2H", buf, at + _NAME_LEN)
        extra = buf[at + _CENTRAL.size + name_len : at + _CENTRAL.size + name_len + extra_len]
        values = _zip64_values(extra, label)
        for array in (file_sizes, compress_sizes, offsets):  # the order zip64 extra fields use
            if array[k] == _MAX32:
                if not values:
                    raise ZipFormatError(f"{label}: member {k} needs a zip64 extra field it does not have")
                array[k] = values.pop(0)
    return names, name_ends, [offsets + shift, compress_sizes, file_sizes, crcs, methods, flags]


def _zip64_values(extra: bytes, label: str) -> list[int]:
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, pos)
        if kind == 1:
            body = extra[pos + 4 : pos + 4 + length]
            return list(struct.unpack_from(f"<{len(body) // 8}Q", body))
        pos += 4 + length
    return []


def _utf8_names(names: bytes, name_ends: np.ndarray, flags: np.ndarray) -> tuple[bytes, np.ndarray]:
    # Names without the UTF-8 flag are CP437 (as zipfile reads them): held as UTF-8, so lookups are by text.
    out, ends, start = [], [], 0
    for end, flag in zip(name_ends.tolist(), flags.tolist()):
        raw = names[start:end]
        text = raw.decode("utf-8", "surrogateescape") if flag & _UTF8_FLAG else raw.decode("cp437")
        out.append(text.encode("utf-8", "surrogateescape"))
        ends.append((ends[-1] if ends else 0) + len(out[-1]))
        start = end
    return b"".join(out), np.array(ends, dtype=np.int64)


def read_member(entry: ZipEntry, buffer: bytes | memoryview, buffer_offset: int, where: str) -> bytes:
    """The data of `entry`, from `buffer` (bytes of the archive starting at `buffer_offset` that hold the
    member's span): stored, deflated or bzip2, never inflated past the size the directory states, with its
    size and CRC-32 checked. ZipMemberError("unreadable", ...) otherwise."""
    if entry.flags & 0x1:
        raise ZipMemberError("unreadable", f"{where} is encrypted")
    if entry.method not in READABLE_METHODS:
        raise ZipMemberError(
            "unreadable", f"{where} uses zip compression method {entry.method}; stored, deflated and bzip2 are read"
        )
    at = entry.header_offset - buffer_offset
    header = bytes(buffer[at : at + _LOCAL.size])
    if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise ZipMemberError("unreadable", f"{where} has no local header where the zip directory says")
    name_len, extra_len = _LOCAL.unpack(header)[-2:]
    start = at + _LOCAL.size + name_len + extra_len
    raw = buffer[start : start + entry.compress_size]
    if len(raw) != entry.compress_size:
        raise ZipMemberError("unreadable", f"{where} is cut short (the archive is truncated)")
    try:
        if entry.method == STORED:
            data = bytes(raw)
        # At most the stated size, and one byte when it says 0 (zlib's 0 is "no limit"): a member that
        # inflates past it is corrupt, found by the size check below, never inflated whole.
        elif entry.method == DEFLATED:
            data = zlib.decompressobj(-15).decompress(raw, max(entry.file_size, 1))
        else:
            data = bz2.BZ2Decompressor().decompress(raw, max_length=max(entry.file_size, 1))
    except (zlib.error, OSError, ValueError) as e:
        raise ZipMemberError("unreadable", f"{where} does not decompress: {e}") from None
    if len(data) != entry.file_size or crc32(data) != entry.crc:
        raise ZipMemberError("unreadable", f"{where} is corrupt (size or CRC differs from the zip directory)")
    return data
