"""Checksums of prepared entries: recorded when preparing, checked cheaply on reuse, fully on request.

Preparing records, in the prepare report (`llava_hf_report.json`), the size and xxh3_128 digest of every
file it wrote, and for each Arrow file where each record batch lies (offset, length, rows), the xxh3_64 of
its bytes and the xxh3_64 of each row's image bytes. Reusing an entry compares the sizes only (a `stat` per
file): a truncated or missing file is an error naming it and the remedy. `verify_prepared` re-reads every
file: a digest that differs is located to its record batch and, where the image bytes differ, to the row.
Reports written by llava_hf before xxh3 (sha256 of files, crc32 of batches and rows) are checked with those.

One flipped bit in an embedded JPEG is otherwise served silently: Arrow has no checksums of its own.
xxh3 (not a cryptographic hash: it detects damage, not tampering) reads ~8 GB/s here where sha256 reads
~1 GB/s: recording costs ~0.07 s per 260 MB of Arrow instead of ~0.3 s (scripts/bench_integrity.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from .failures import PrepareError

_CHUNK = 4 << 20
# The digest recorded for each file, and for each record batch and each row's image bytes: each is the key
# under which the report holds it, so that a report says which algorithm it was written with.
HASH = "xxh3_128"
BATCH_HASH = "xxh3_64"
# Reports written before xxh3: checked with what they recorded.
_FILE_HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
_BATCH_HASHES = {"xxh3_64": "<u8", "crc32": "<u4"}  # name: how the report packs each row's digest


class DamagedEntry(PrepareError):
    """A prepared entry whose files are not the ones its prepare wrote (truncated, missing, altered)."""


def remedy(folder: str) -> str:
    return f"prepare it again with download_mode='force_redownload', or delete {folder}"


# --- recording -----------------------------------------------------------------------------------------------


def _image_bytes(batch: pa.RecordBatch) -> pa.Array | None:
    if "image" not in batch.schema.names:
        return None
    image = batch.column(batch.schema.get_field_index("image"))
    if not pa.types.is_struct(image.type) or image.type.get_field_index("bytes") < 0:
        return None
    return image.field("bytes")


def _chained(algorithm: str, parts: Iterable[pa.Buffer]) -> int:
    """The `algorithm` digest of the concatenation of `parts`, without concatenating them."""
    if algorithm == "crc32":
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        return crc
    digest = xxhash.xxh3_64()
    for part in parts:
        digest.update(part)
    return digest.intdigest()


def batch_checksums(
    data: pa.Buffer, offset: int, length: int, batch: pa.RecordBatch, algorithm: str = BATCH_HASH
) -> tuple[int, list[int] | None]:
    """(digest of the record batch's bytes outside its image values, digest of each row's image bytes or
    None when it holds none) of the batch read zero-copy from `data` at [offset, offset + length).
    `algorithm` is a key of the report's batches: "xxh3_64" (written now) or "crc32" (older reports).

    Every byte of the batch is covered once: a damaged row is found by its own digest, any other damage by
    the first."""
    end = offset + length
    values = _image_bytes(batch)
    if values is None or values.buffers()[2] is None or len(values) == 0:
        return _chained(algorithm, [data[offset:end]]), None if values is None else [0] * len(values)
    buffers = values.buffers()
    large = pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32, count=values.offset + len(values) + 1)
    base = buffers[2].address - data.address  # where the image bytes lie in the file (read zero-copy)
    # Positions in the file, as Python ints: the per-row loop below is the only per-row work of recording.
    starts = (offsets[values.offset :].astype(np.int64) + base).tolist()
    low, high = starts[0], starts[-1]
    if not offset <= low <= high <= end:
        return _chained(algorithm, [data[offset:end]]), None  # not laid out as expected: whole-batch digest only
    rest = _chained(algorithm, [data[offset:low], data[high:end]])
    row = zlib.crc32 if algorithm == "crc32" else xxhash.xxh3_64_intdigest
    valid = values.is_valid().to_numpy(zero_copy_only=False).tolist()
    view = memoryview(data)  # a memoryview slice costs half of a pa.Buffer slice (0.55 against 1.06 us)
    rows = [row(view[starts[i] : starts[i + 1]]) if valid[i] else 0 for i in range(len(valid))]
    return rest, rows


def _pack(digests: list[int], algorithm: str = BATCH_HASH) -> str:
    return base64.b64encode(np.asarray(digests, dtype=_BATCH_HASHES[algorithm]).tobytes()).decode("ascii")


def _unpack(text: str, algorithm: str = BATCH_HASH) -> list[int]:
    return np.frombuffer(base64.b64decode(text), dtype=_BATCH_HASHES[algorithm]).tolist()


def _map(path: str) -> pa.Buffer:
    # Zero-copy: hashlib and zlib read the mapped pages (and release the GIL while hashing).
    with pa.memory_map(path, "r") as source:
        return source.read_buffer()


def _batches(data: pa.Buffer) -> Iterable[tuple[int, int, pa.RecordBatch]]:
    """(offset, length, batch) of every record batch of the Arrow stream in `data`."""
    source = pa.BufferReader(data)
    reader = pa.ipc.MessageReader.open_stream(source)
    schema = None
    start = source.tell()
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            return
        end = source.tell()
        if message.type == "schema":
            schema = pa.ipc.read_schema(message)
        elif message.type == "record batch":
            yield start, end - start, pa.ipc.read_record_batch(message, schema)
        start = end


def _file_hash(expected: dict[str, Any]) -> str:
    """The file digest a report entry holds: xxh3_128, or sha256 in a report written before xxh3."""
    return next((name for name in _FILE_HASHES if name in expected), HASH)


def _digest(data: pa.Buffer | None, algorithm: str = HASH) -> str:
    digest = _FILE_HASHES[algorithm]()
    if data is not None:
        for offset in range(0, data.size, _CHUNK):
            digest.update(data[offset : offset + _CHUNK])
    return digest.hexdigest()


def _sha(path: str, algorithm: str = HASH) -> str:
    return _digest(_map(path) if os.path.getsize(path) else None, algorithm)


def describe_file(path: str) -> dict[str, Any]:
    """Size and xxh3_128 of the file at `path`; for an Arrow stream, also its record batches' checksums."""
    size = os.path.getsize(path)
    entry: dict[str, Any] = {"size": size}
    data = _map(path) if size else None  # mapped once: both passes below read the same pages
    if data is None or not path.endswith(".arrow"):
        entry[HASH] = _digest(data)
        return entry
    # The file digest in a thread of its own, while the record batches are scanned (both release the GIL).
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(_digest, data)
        _describe_batches(data, entry)
    entry[HASH] = digest.result()
    return entry


def _describe_batches(data: pa.Buffer, entry: dict[str, Any]) -> None:
    batches = []
    for offset, length, batch in _batches(data):
        rest, rows = batch_checksums(data, offset, length, batch)
        described = {"offset": offset, "length": length, "rows": batch.num_rows, BATCH_HASH: rest}
        if rows is not None:
            described[f"images_{BATCH_HASH}"] = _pack(rows)
        batches.append(described)
    entry["batches"] = batches


def record_files(
    folder: str, names: Iterable[str], known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """`describe_file` of each of `names` in `folder`, several files at once. `known` holds descriptions
    made earlier (by the num_proc worker that wrote the file, while its pages were in memory) under the
    `inode_identity` they were made for: a file renamed since keeps it and is not read again."""
    names = sorted(names)
    known = known or {}

    def described(name: str) -> dict[str, Any]:
        path = os.path.join(folder, name)
        return known.get(inode_identity(path)) or describe_file(path)

    with ThreadPoolExecutor(max(1, min(len(names), os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(described, names)))


def inode_identity(path: str) -> str:
    """The file at `path` as a rename leaves it: device, inode, size and modification time."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


# --- checking ------------------------------------------------------------------------------------------------


def check_sizes(folder: str, files: dict[str, dict[str, Any]], config: str) -> None:
    """DamagedEntry naming the first file of `folder` that is missing or not the size it was prepared with.

    One `stat` per file; nothing is read."""
    for name, expected in files.items():
        path = os.path.join(folder, name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise DamagedEntry(
                f"{config}: the prepared entry is incomplete: {path} is missing; {remedy(folder)}"
            ) from None
        if size != expected["size"]:
            change = "truncated" if size < expected["size"] else "grown"
            raise DamagedEntry(
                f"{config}: the prepared entry is damaged: {path} has {size:,} bytes, {expected['size']:,} when it "
                f"was prepared ({change}); {remedy(folder)}"
            )


@dataclass
class PreparedCheck:
    """What `verify_prepared` found: `intact` is True only when every file matches its checksum."""

    folder: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    damaged_rows: list[int] = field(default_factory=list)
    hash: str = HASH  # the file digest the report holds (sha256 in a report written before xxh3)

    @property
    def intact(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.folder}: {self.files} files, {self.bytes:,} bytes checked"
        if self.intact:
            return f"{head}: intact (every {self.hash} matches the prepare report)"
        return "\n".join(
            [
                f"{head}: DAMAGED, {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}",
                *(f"  {p}" for p in self.problems),
            ]
        )


def _arrow_order(name: str) -> tuple:
    return (not name.endswith(".arrow"), name)


def check_files(folder: str, files: dict[str, dict[str, Any]]) -> PreparedCheck:
    """Re-read every file of `files` in `folder` and compare sizes and checksums (see PreparedCheck)."""
    check = PreparedCheck(folder)
    first_row = 0
    for name in sorted(files, key=_arrow_order):
        expected = files[name]
        path = os.path.join(folder, name)
        rows = sum(b["rows"] for b in expected.get("batches", []))
        check.files += 1
        if not os.path.exists(path):
            check.problems.append(f"{path}: missing (rows {first_row}..{first_row + rows - 1})")
            first_row += rows
            continue
        size = os.path.getsize(path)
        check.bytes += size
        if size != expected["size"]:
            check.problems.append(f"{path}: {size:,} bytes, {expected['size']:,} when it was prepared")
        algorithm = check.hash = _file_hash(expected)
        if _sha(path, algorithm) != expected.get(algorithm):
            located = "batches" in expected and _locate(path, expected, first_row, check)
            if not located:
                check.problems.append(f"{path}: its {algorithm} differs from the prepare report")
        first_row += rows
    check.damaged_rows = sorted(set(check.damaged_rows))
    return check


def _locate(path: str, expected: dict, first_row: int, check: PreparedCheck) -> bool:
    """Add the damaged rows (or record batches) of the Arrow file at `path`; False when none differ.

    Each record batch is read at the offset recorded for it and checked on its own, so a damage that
    makes one batch unreadable still lets the others be checked."""
    located = False
    row = first_row
    data = _map(path)
    try:
        schema = pa.ipc.open_stream(pa.BufferReader(data)).schema
    except (pa.ArrowException, OSError, ValueError):
        schema = None  # the stream's header itself is damaged
    for number, batch in enumerate(expected["batches"]):
        algorithm = next((name for name in _BATCH_HASHES if name in batch), BATCH_HASH)
        start, length = batch["offset"], batch["length"]
        last = row + batch["rows"] - 1
        where = f"rows {row}..{last} (record batch {number})"
        damaged = None
        if start + length > data.size:
            damaged = f"{where} are cut off"
        else:
            try:
                read = pa.ipc.read_record_batch(pa.ipc.read_message(data.slice(start, length)), schema)
                rest, rows = batch_checksums(data, start, length, read, algorithm)
            except (pa.ArrowException, OSError, ValueError, TypeError):
                read, rest, rows = None, None, None
            packed = batch.get(f"images_{algorithm}")
            wanted = _unpack(packed, algorithm) if packed is not None else None
            differing = []
            if rows is not None and wanted is not None and len(rows) == len(wanted):
                differing = [k for k in range(len(rows)) if rows[k] != wanted[k]]
            if read is None:
                damaged = f"{where} no longer parse"
            elif rest != batch[algorithm] or (differing == [] and rows != wanted):
                damaged = f"{where} differ from the prepared bytes"
            ids = read.column(read.schema.get_field_index("id")).to_pylist() if differing else []
            for k in differing:
                who = f" (id={ids[k]!r})" if k < len(ids) else ""
                check.problems.append(
                    f"{path}: row {row + k}{who}: its image bytes differ from the prepared ones (record batch {number})"
                )
                check.damaged_rows.append(row + k)
                located = True
        if damaged is not None:
            check.problems.append(f"{path}: {damaged}")
            check.damaged_rows.extend(range(row, last + 1))
            located = True
        row = last + 1
    return located


def load_files(report_path: str) -> dict[str, dict[str, Any]] | None:
    """The `files` section of a prepare report, or None for a report written before checksums existed."""
    with open(report_path, encoding="utf-8") as f:
        return json.load(f).get("files")
