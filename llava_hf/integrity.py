"""Checksums of prepared entries: recorded when preparing, checked cheaply on reuse, fully on request.

Preparing records, in the prepare report (`llava_hf_report.json`), the size and sha256 of every file it
wrote, and for each Arrow file where each record batch lies (offset, length, rows), the crc32 of its bytes
and the crc32 of each row's image bytes. Reusing an entry compares the sizes only (a `stat` per file): a
truncated or missing file is an error naming it and the remedy. `verify_prepared` re-reads every file:
a sha256 that differs is located to its record batch and, where the image bytes differ, to the row.

One flipped bit in an embedded JPEG is otherwise served silently: Arrow has no checksums of its own.
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

from .failures import PrepareError

_CHUNK = 4 << 20
HASH = "sha256"


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


def row_checksums(batch: pa.RecordBatch) -> list[int] | None:
    """The crc32 of each row's image bytes (0 for a row without), or None when the batch holds none."""
    values = _image_bytes(batch)
    if values is None:
        return None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    buffers = values.buffers()
    if buffers[2] is None:
        return [0] * len(values)
    large = pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32, count=values.offset + len(values) + 1)
    offsets = offsets[values.offset :]
    data = memoryview(buffers[2])
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    return [zlib.crc32(data[int(offsets[i]) : int(offsets[i + 1])]) if valid[i] else 0 for i in range(len(values))]


def _pack(crcs: list[int]) -> str:
    return base64.b64encode(np.asarray(crcs, dtype="<u4").tobytes()).decode("ascii")


def _unpack(text: str) -> list[int]:
    return np.frombuffer(base64.b64decode(text), dtype="<u4").tolist()


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


def _sha(path: str) -> str:
    digest = hashlib.new(HASH)
    if os.path.getsize(path):
        data = _map(path)
        for offset in range(0, data.size, _CHUNK):
            digest.update(data[offset : offset + _CHUNK])
    return digest.hexdigest()


def describe_file(path: str) -> dict[str, Any]:
    """Size and sha256 of the file at `path`; for an Arrow stream, also its record batches' checksums."""
    size = os.path.getsize(path)
    entry: dict[str, Any] = {"size": size, HASH: _sha(path)}
    if size and path.endswith(".arrow"):
        data = _map(path)
        batches = []
        for offset, length, batch in _batches(data):
            described = {
                "offset": offset,
                "length": length,
                "rows": batch.num_rows,
                "crc32": zlib.crc32(data[offset : offset + length]),
            }
            crcs = row_checksums(batch)
            if crcs is not None:
                described["images_crc32"] = _pack(crcs)
            batches.append(described)
        entry["batches"] = batches
    return entry


def record_files(folder: str, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`describe_file` of each of `names` in `folder`, several files at once."""
    names = sorted(names)
    with ThreadPoolExecutor(max(1, min(len(names), os.cpu_count() or 1))) as pool:
        described = list(pool.map(lambda name: describe_file(os.path.join(folder, name)), names))
    return dict(zip(names, described))


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

    @property
    def intact(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.folder}: {self.files} files, {self.bytes:,} bytes checked"
        if self.intact:
            return f"{head}: intact (every sha256 matches the prepare report)"
        return "\n".join([f"{head}: DAMAGED, {len(self.problems)} problems", *(f"  {p}" for p in self.problems)])


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
        if _sha(path) != expected[HASH]:
            located = False
            if "batches" in expected:
                try:
                    found = describe_file(path)
                except (pa.ArrowException, OSError, ValueError):
                    found = {}  # its batches no longer parse: each one is compared by its crc32 alone
                located = _locate(path, expected, found, first_row, check)
            if not located:
                check.problems.append(f"{path}: its {HASH} differs from the prepare report")
        first_row += rows
    return check


def _locate(path: str, expected: dict, found: dict, first_row: int, check: PreparedCheck) -> bool:
    """Add the damaged rows (or record batches) of the Arrow file at `path`; False when none differ."""
    located = False
    found_batches = {b["offset"]: b for b in found.get("batches", [])}
    row = first_row
    data = _map(path)
    for number, batch in enumerate(expected["batches"]):
        start, end = batch["offset"], batch["offset"] + batch["length"]
        last = row + batch["rows"] - 1
        if end > data.size:
            check.problems.append(f"{path}: rows {row}..{last} (record batch {number}) are cut off")
            check.damaged_rows.extend(range(row, last + 1))
            located = True
        elif zlib.crc32(data[start:end]) != batch["crc32"]:
            located = True
            now = found_batches.get(start)
            wanted = _unpack(batch["images_crc32"]) if "images_crc32" in batch else None
            got = _unpack(now["images_crc32"]) if now and "images_crc32" in now else None
            differing = []
            if wanted is not None and got is not None and len(wanted) == len(got):
                differing = [k for k in range(len(wanted)) if wanted[k] != got[k]]
            ids = _ids(data[start:end], data) if differing else None
            for k in differing:
                who = f" (id={ids[k]!r})" if ids and k < len(ids) else ""
                check.problems.append(
                    f"{path}: row {row + k}{who}: its image bytes differ from the prepared ones (record batch {number})"
                )
                check.damaged_rows.append(row + k)
            if not differing:
                check.problems.append(
                    f"{path}: rows {row}..{last} (record batch {number}) differ from the prepared bytes"
                )
                check.damaged_rows.extend(range(row, last + 1))
        row = last + 1
    return located


def _ids(message: pa.Buffer, data: pa.Buffer) -> list[str] | None:
    # The damaged batch may still decode (a flip inside image bytes): its ids name the rows.
    try:
        schema = pa.ipc.open_stream(pa.BufferReader(data)).schema
        batch = pa.ipc.read_record_batch(pa.ipc.read_message(message), schema)
        return batch.column(batch.schema.get_field_index("id")).to_pylist()
    except (pa.ArrowException, OSError, ValueError, KeyError):
        return None


def load_files(report_path: str) -> dict[str, dict[str, Any]] | None:
    """The `files` section of a prepare report, or None for a report written before checksums existed."""
    with open(report_path, encoding="utf-8") as f:
        return json.load(f).get("files")
