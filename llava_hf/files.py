"""A file is a config: the user's own LLaVA-format files (`.json` arrays, `.jsonl`, either `.gz`) as a source.

`llava_hf.load_dataset("my_data.jsonl", image_dir=...)` and `datasets.load_dataset("llava_hf",
data_files=..., image_dir=...)` build such a config with the same builder, schema, cache and errors as
the catalog configs. The pieces live here:

- `data_file_paths` turns a path, a glob, a list or datasets' `DataFilesDict` into the files to read;
- `FileSource` is the catalog-like entry of a file config (no Hub repo, no expected count);
- `file_identity` names the files by content for the cache key;
- `plan_files` scans every file once in bounded memory, decides the schema (`images`, a list per row,
  when any record holds a list of images; `image` otherwise) and cuts the records into byte-offset
  shards of whole batches, which `convert.convert_shard` reads through `FilesSpec.bind`.

A `.gz` cannot be seeked, so it is decompressed once, streaming, into `<cache_dir>/llava_hf_files/`
(named by the sha256 of the compressed file, written to a temporary name and renamed into place): the
copy is then scanned and sharded like any other file, so `num_proc` and streaming shards work on it,
which reading it sequentially in one shard would not allow.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
from datasets.data_files import DataFilesDict

from .catalog import CONFIG_NAMES, Source
from .convert import Plan, ShardSpec
from .errors import SourceError
from .features import FEATURES, MULTI_IMAGE_FEATURES, MULTI_IMAGE_SCHEMA
from .images import ImageRoot
from .records import TEXT_ONLY, Row, parse_record, record_id
from .sources import (
    _CHUNK,
    _MAX_RECORD,
    BATCH_ROWS,
    MIN_SHARDS,
    SHARD_ROWS,
    Inputs,
    content_hash,
    image_root_identity,
    index_json_array,
    read_batches,
)

# The file names a file config reads; the content decides between a JSON array and JSON Lines.
SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
DECOMPRESSED_DIR = "llava_hf_files"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BASE64 = re.compile(r"^[A-Za-z0-9+/\r\n]+={0,2}$")
# Shorter strings could be file names; no image encodes to fewer characters than this.
_BASE64_MIN = 128


def file_stem(path: str) -> str:
    """The config and `source` name of a file: its name without `.gz` and `.json`/`.jsonl`."""
    name = os.path.basename(path)
    for suffix in (".gz", ".jsonl", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def data_file_paths(data_files: Any) -> tuple[str, ...]:
    """The absolute paths named by `data_files`: a path, a glob, a list of them, or `{"train": ...}` (what
    datasets passes, already resolved). Globs are expanded in sorted order; lists keep their order.

    Raises ValueError for a split other than "train", a file that is not `.json`/`.jsonl` (optionally
    `.gz`) or the same file twice; FileNotFoundError for a path or glob that matches nothing.
    """
    # datasets' DataFilesDict holds resolved paths (a name may contain "[": no glob); anything else may be a glob.
    resolved = isinstance(data_files, DataFilesDict)
    if isinstance(data_files, dict):  # a DataFilesDict, or {"train": ...} given by the user
        splits = set(data_files)
        if splits != {"train"}:
            raise ValueError(f"llava_hf file configs have one split, 'train'; got data_files for {sorted(splits)}")
        data_files = data_files["train"]
    if isinstance(data_files, (str, os.PathLike)):
        data_files = [data_files]
    if not isinstance(data_files, Sequence) or not data_files:
        raise ValueError(f"data_files must be a path, a glob or a list of them, got {data_files!r}")
    paths: list[str] = []
    for item in data_files:
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"data_files must be a path, a glob or a list of them, got {item!r} in the list")
        pattern = os.path.abspath(os.path.expanduser(os.fspath(item)))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) and not resolved else [pattern]
        matches = [match for match in matches if os.path.isfile(match)]  # a glob may match folders too
        if not matches:
            raise FileNotFoundError(f"data_files: {os.fspath(item)} matches no file")
        paths.extend(matches)
    for path in paths:
        if not path.lower().endswith(SUFFIXES):
            raise ValueError(f"data_files: {path} is not a LLaVA-format file; expected one of {', '.join(SUFFIXES)}")
    if len(set(paths)) != len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"data_files names {twice} twice")
    return tuple(paths)


# Characters a config name cannot hold: globs in the card's data_files and the push's deletions, or refused
# by datasets and the Hub.
_UNSAFE_NAME = re.compile(r"[\[\]*?{}<>:\\|]")


def file_config_name(name: str | None, paths: tuple[str, ...]) -> str:
    """The config name of a file config: `name`, or the stem of its first file. A catalog name is refused,
    because it would share the cache and the meaning of a catalog config."""
    if name is None:  # the file's stem, made safe: glob characters would break the Hub card's paths
        name = _UNSAFE_NAME.sub("_", file_stem(paths[0])).lstrip(".") or "data"
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if _UNSAFE_NAME.search(name) or name.startswith("."):
        raise ValueError(
            f"name {name!r} cannot name a config: the characters [ ] * ? {{ }} < > : \\ | are globs or refused on "
            "the Hub, and a name starting with '.' is a hidden folder there; pass another name="
        )
    if name in CONFIG_NAMES:
        raise ValueError(
            f"{name!r} is a catalog config; a config built from data_files needs another name (pass name=...)"
        )
    return name


@dataclass(frozen=True)
class FileSource(Source):
    """The catalog-like entry of a file config: its files, no Hub repo, no expected record count."""

    paths: tuple[str, ...] = ()

    @property
    def homepage(self) -> str:
        return ""

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(os.path.basename(p) for p in self.paths)


def file_source(name: str, paths: tuple[str, ...]) -> FileSource:
    """The `FileSource` of config `name` reading `paths`."""
    listed = ", ".join(os.path.basename(p) for p in paths)
    return FileSource(
        name=name,
        repo_id="",
        filename=os.path.basename(paths[0]),
        num_records=0,
        image_layout="image paths relative to image_dir, as the records name them",
        license="unknown",
        citation="",
        description=f"LLaVA-format records from {listed}.",
        sample_data_dir="",
        sample_image_dir=None,
        paths=paths,
    )


def file_identity(paths: tuple[str, ...], *, image_dir: str | None, embed_images: bool) -> dict[str, Any]:
    """What the cache key holds about a file config's inputs: every file by the sha256 of its content (a
    `.gz` by its compressed bytes), in order, and the image root as catalog configs name it."""
    identity: dict[str, Any] = {"files": [content_hash(p) for p in paths]}
    if image_dir is not None:
        identity["images"] = image_root_identity(image_dir, embed_images=embed_images)
    return identity


@dataclass(frozen=True)
class FileIndex:
    """One scanned file: where each batch of `BATCH_ROWS` records starts (and, for JSON Lines, on which
    line), so memory grows by a few bytes per batch, not per record."""

    path: str  # the file read: the user's file, or the decompressed copy of a .gz
    origin: str  # the user's file
    label: str  # its name in messages
    format: Literal["json", "jsonl"]
    num_records: int
    batch_starts: array  # byte offset of records 0, BATCH_ROWS, 2 * BATCH_ROWS, ..., then the end
    batch_lines: array | None  # JSON Lines: line number (from 1) of the same records
    size: int
    sha256: str  # of the user's file
    multi_image: bool


@dataclass(frozen=True)
class FilesSummary:
    """The totals of a file config's files, where catalog plans have their chat file's index."""

    path: str
    num_records: int
    size: int


def _has_image_list(record: Any) -> bool:
    return isinstance(record, dict) and isinstance(record.get("image"), list)


def _sniff(path: str) -> str:
    """The first character after a UTF-8 byte order mark and blank space ("" for a blank file)."""
    with open(path, "rb") as f:
        head = b""
        while not head:  # blank so far: read on (any number of blank lines before the data)
            chunk = f.read(1 << 16)
            if not chunk:
                break
            head = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("latin-1")


def _line_record(text: bytes) -> Any:
    # UTF-8, as json.loads(bytes) decodes UTF-8 (surrogatepass), but never guessed: json.loads would take a
    # line that starts with a NUL byte for UTF-16 or UTF-32, where a JSON array's scan refuses the same bytes.
    if text.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, on any line, as json.loads(bytes) takes it
        text = text[3:]
    return json.loads(text.decode("utf-8", "surrogatepass"))


def index_jsonl(path: str, label: str) -> FileIndex:
    """Scan a JSON Lines file once: every non-blank line is parsed (so a malformed one fails here, before
    anything is written, naming its line) and the starts of every `BATCH_ROWS`-th record are kept."""
    starts, lines = array("q"), array("q")
    count = 0
    multi = False
    sha = hashlib.sha256()
    offset = 0  # file offset of buf[0]
    line_number = 0
    buf = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            sha.update(chunk)
            buf += chunk
            pos = 0
            while True:
                end = buf.find(b"\n", pos)
                if end < 0 and chunk:
                    if len(buf) - pos > _MAX_RECORD:  # a bound on memory, whatever the file holds
                        raise SourceError(
                            label, f"line {line_number + 1} is longer than {_MAX_RECORD:,} bytes: not a record", count
                        )
                    break  # the line goes on in the next chunk
                line = buf[pos:] if end < 0 else buf[pos:end]
                line_number += 1
                text = line.strip()
                if line_number == 1 and text.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                    text = text[3:].lstrip()
                if text:  # blank lines (a trailing newline, spacing) are no records
                    try:
                        record = _line_record(text)
                    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                        raise SourceError(
                            label, f"line {line_number}: not one JSON record per line: {e}", count
                        ) from None
                    except ValueError as e:
                        raise SourceError(label, f"line {line_number}: cannot be decoded: {e}", count) from None
                    if count % BATCH_ROWS == 0:
                        starts.append(offset + pos)
                        lines.append(line_number)
                    multi = multi or _has_image_list(record)
                    count += 1
                if end < 0:
                    pos = len(buf)
                    break
                pos = end + 1
            offset += pos
            buf = buf[pos:]
            if not chunk:
                break
    starts.append(offset)
    return FileIndex(path, path, label, "jsonl", count, starts, lines, offset, sha.hexdigest(), multi)


def index_json(path: str, label: str) -> FileIndex:
    """Scan a JSON array file once (`sources.index_json_array`) and keep the starts of its batches."""
    seen = {"multi": False}

    def visit(record: Any) -> None:
        if not seen["multi"] and _has_image_list(record):
            seen["multi"] = True

    index = index_json_array(path, label, visit)
    starts = array("q", index.starts[::BATCH_ROWS])
    if index.num_records % BATCH_ROWS:
        starts.append(index.starts[-1])
    return FileIndex(
        path, path, label, "json", index.num_records, starts, None, index.size, index.sha256, seen["multi"]
    )


def decompressed(path: str, work_dir: str) -> str:
    """The decompressed copy of the `.gz` at `path` in `work_dir`, made once (streaming, bounded memory)
    and named by the compressed file's sha256; a copy being written by another process is never read."""
    digest = content_hash(path)
    target = os.path.join(work_dir, DECOMPRESSED_DIR, f"{digest[:32]}-{os.path.basename(path)[:-3]}")
    if os.path.exists(target) and _whole_copy(path, target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Host and pid: two machines sharing the cache may decompress the same file at once; the last rename wins.
    tmp = f"{target}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise SourceError(os.path.basename(path), f"cannot be decompressed: {e}") from None
    os.replace(tmp, target)
    return target


def _whole_copy(path: str, target: str) -> bool:
    """Whether `target` has the size the `.gz` at `path` states (its trailer: the size modulo 2**32 of its
    last member). A copy damaged since (truncated) is decompressed again, never read as the data; a file of
    several gzip members, whose trailer tells its last member only, is decompressed again too."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            stated = int.from_bytes(f.read(4), "little")
        return os.path.getsize(target) % 2**32 == stated
    except OSError:
        return False


def index_file(path: str, work_dir: str) -> FileIndex:
    """Scan one data file (decompressing a `.gz` first); the content decides JSON array or JSON Lines."""
    label = os.path.basename(path)
    readable = decompressed(path, work_dir) if path.lower().endswith(".gz") else path
    first = _sniff(readable)
    if first == "[":
        index = index_json(readable, label)
    elif first == "{":
        index = index_jsonl(readable, label)
    else:
        found = "an empty file" if not first else f"{first!r}"
        raise SourceError(label, f"expected a JSON array of records or one JSON record per line, found {found}")
    sha = index.sha256 if readable == path else content_hash(path)
    return replace(index, origin=path, sha256=sha)


@dataclass(frozen=True)
class FileShard:
    """Records [start, stop) of file `file` of the config; `offsets` (and for JSON Lines `lines`) are
    where its batches start. `index` numbers the shards of the whole config."""

    index: int
    file: int
    start: int
    stop: int
    offsets: tuple[int, ...]
    lines: tuple[int, ...] | None = None


def plan_file_shards(indexes: Sequence[FileIndex]) -> list[FileShard]:
    """Cut each file into contiguous shards of whole batches, at least `MIN_SHARDS` in all when there are
    enough batches, about `SHARD_ROWS` records each on big files, in file order."""
    total = sum(index.num_records for index in indexes)
    wanted = max(MIN_SHARDS, -(-total // SHARD_ROWS))
    shards: list[FileShard] = []
    for number, index in enumerate(indexes):
        batches = len(index.batch_starts) - 1
        if batches == 0:
            continue
        share = min(batches, max(1, round(wanted * index.num_records / total)))
        for i in range(share):
            first, last = i * batches // share, (i + 1) * batches // share
            start, stop = first * BATCH_ROWS, min(last * BATCH_ROWS, index.num_records)
            lines = tuple(index.batch_lines[first:last]) if index.batch_lines is not None else None
            offsets = tuple(index.batch_starts[first : last + 1])
            shards.append(FileShard(len(shards), number, start, stop, offsets, lines))
    return shards


@dataclass(frozen=True)
class DataFile:
    """What a worker needs to read one file of a file config."""

    path: str
    label: str
    stem: str
    format: Literal["json", "jsonl"]


@dataclass(frozen=True)
class FilesSpec(ShardSpec):
    """The `ShardSpec` of a file config: several files, each read by its own `FileReader`."""

    files: tuple[DataFile, ...] = ()

    def bind(self, shard: FileShard) -> FileReader:  # type: ignore[override]
        return FileReader(self, self.files[shard.file])


class FileReader:
    """Reads the shards of one data file and parses their records, naming that file (and for JSON Lines
    the line) in errors. Made per shard in the worker, never pickled."""

    def __init__(self, spec: FilesSpec, data_file: DataFile):
        self.spec = spec
        self.file = data_file
        self.json_label = data_file.label
        self.embed_images = spec.embed_images
        self.on_bad_image = spec.on_bad_image
        self.multi_image = spec.multi_image
        self._lines: dict[int, int] = {}

    def open_images(self) -> ImageRoot | None:
        return self.spec.open_images()

    def batches(self, shard: FileShard) -> Iterator[tuple[int, list[Any], None]]:
        if self.file.format == "json":
            records = read_batches(self.file.path, shard.offsets, shard.start, shard.stop, self.json_label)
            for k, batch in enumerate(records):
                yield shard.start + k * BATCH_ROWS, batch, None
            return
        with open(self.file.path, "rb") as f:
            for k, (begin, end) in enumerate(zip(shard.offsets, shard.offsets[1:])):
                first = shard.start + k * BATCH_ROWS
                f.seek(begin)
                data = f.read(end - begin)
                expected = min(first + BATCH_ROWS, shard.stop) - first
                yield first, self._jsonl_batch(data, first, shard.lines[k], expected), None

    def _jsonl_batch(self, data: bytes, first: int, line: int, expected: int) -> list[Any]:
        records: list[Any] = []
        self._lines = {}
        for number, text in enumerate(data.split(b"\n"), start=line):
            text = text.strip()
            if number == 1 and text.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                text = text[3:].lstrip()
            if not text:
                continue  # blank lines are no records (the scan skipped them too)
            try:
                records.append(_line_record(text))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise SourceError(
                    self.json_label, f"line {number}: not one JSON record per line: {e}", first + len(records)
                ) from None
            except ValueError as e:  # an integer too long to convert
                raise SourceError(
                    self.json_label, f"line {number}: cannot be decoded: {e}", first + len(records)
                ) from None
            self._lines[first + len(records) - 1] = number
        if len(records) != expected:
            raise SourceError(self.json_label, f"records from {first}: the file changed while it was being read")
        return records

    def parse(self, raw: Any, meta: Any, index: int) -> Row:
        """The validated row of record `index`; SourceError naming file, record, id (and line) otherwise."""
        line = self._lines.get(index)
        try:
            unsupported(raw, self.json_label, index)
            row = parse_record(
                raw, file=self.json_label, index=index, config=self.file.stem, multi_image=self.multi_image
            )
        except SourceError as e:
            if line is None:
                raise
            raise SourceError(e.file, f"line {line}: {e.problem}", e.index, e.record_id, reason=e.reason) from None
        # Each row's `source` is its file's stem, text-only rows too: mixed files keep their origin.
        return replace(row, source=self.file.stem) if row.source == TEXT_ONLY else row


def _image_problem(name: Any, where: str) -> str | None:
    if not isinstance(name, str):
        return None  # parse_record names the wrong type
    if name.startswith("data:") or (len(name) >= _BASE64_MIN and _BASE64.match(name)):
        return f"{where} is inline base64 data ({name[:24]}...); expected a file name under image_dir"
    if _URL.match(name):
        return f"{where} is a URL ({name[:80]}); expected a file name under image_dir (download the images first)"
    return None


def unsupported(raw: Any, file: str, index: int) -> None:
    """SourceError (reason "unsupported") for a record a file config cannot build: one with a `video`,
    `images` in place of `image`, an image given as a URL or inline base64, or no `conversations`."""
    if not isinstance(raw, dict):
        return  # parse_record says what a record must be
    rid = record_id(raw)
    if "video" in raw:
        raise SourceError(
            file,
            "has a 'video' key: video records are not supported; expected images only",
            index,
            rid,
            reason="unsupported",
        )
    if "images" in raw and "image" not in raw:
        # LLaMA-Factory's and TRL's key: taken for an extra key, its pictures would be silently lost.
        raise SourceError(
            file,
            "has 'images' but no 'image'; LLaVA-format records name their image files in 'image' (a name or a list)",
            index,
            rid,
            reason="unsupported",
        )
    image = raw.get("image")
    names = image if isinstance(image, list) else [image]
    for k, name in enumerate(names):
        problem = _image_problem(name, f"image {k}" if isinstance(image, list) else "'image'")
        if problem:
            raise SourceError(file, problem, index, rid, reason="unsupported")
    if "conversations" not in raw:
        keys = ", ".join(map(repr, raw))
        raise SourceError(
            file,
            f"has no 'conversations' (found keys {keys}); expected LLaVA-format turns: "
            '"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]',
            index,
            rid,
            reason="unsupported",
        )


@dataclass(frozen=True)
class FilePlan(Plan):
    """The `Plan` of a file config, which lists every file it read."""

    indexes: tuple[FileIndex, ...] = field(default=())

    def files(self) -> dict[str, Any]:
        return {
            "files": [
                {
                    "file": index.label,
                    "path": index.origin,
                    "format": index.format + (".gz" if index.origin.lower().endswith(".gz") else ""),
                    "records": index.num_records,
                    "bytes": os.path.getsize(index.origin),
                    "sha256": index.sha256,
                }
                for index in self.indexes
            ]
        }


def plan_files(
    source: FileSource,
    *,
    image_dir: str | None,
    work_dir: str,
    embed_images: bool = True,
    on_bad_image: Literal["raise", "skip"] = "raise",
) -> FilePlan:
    """Scan the files of `source`, decide its schema, and cut it into shards.

    Raises FileNotFoundError for a missing file or image_dir, SourceError for malformed files (naming the
    file, the record and for JSON Lines the line) or when the files hold no record at all.
    """
    if image_dir is not None and not os.path.exists(image_dir):
        raise FileNotFoundError(f"{source.name}: image_dir {image_dir} does not exist (not mounted, or mistyped?)")
    indexes = tuple(index_file(path, work_dir) for path in source.paths)
    total = sum(index.num_records for index in indexes)
    if total == 0:
        raise SourceError(", ".join(index.label for index in indexes), "holds no record: there is nothing to prepare")
    stems = [file_stem(index.origin) for index in indexes]
    spec = FilesSpec(
        config=source.name,
        json_path=indexes[0].path,
        json_label=indexes[0].label,
        metadata_path=None,
        metadata_label=None,
        image_location=image_dir,
        image_aliases=(),
        source_from="config",
        embed_images=embed_images,
        on_bad_image=on_bad_image,
        multi_image=any(index.multi_image for index in indexes),
        records=total,
        files=tuple(DataFile(i.path, i.label, stem, i.format) for i, stem in zip(indexes, stems)),
    )
    inputs = Inputs(indexes[0].origin, None, image_dir, "files")
    summary = FilesSummary(", ".join(i.label for i in indexes), total, sum(i.size for i in indexes))
    return FilePlan(inputs, summary, None, plan_file_shards(indexes), spec, indexes)  # type: ignore[arg-type]


def wrap_images(table: pa.Table) -> pa.Table:
    """`table` (the `image` schema) in the multi-image schema, without copying an image's bytes."""
    # Each row's image becomes a one-element list (a text-only row's null a null list), bytes untouched.
    image = table.column("image").combine_chunks()
    offsets = pa.array(np.arange(len(image) + 1, dtype=np.int32))
    images = pa.ListArray.from_arrays(
        offsets, image, type=MULTI_IMAGE_SCHEMA.field("images").type, mask=image.is_null()
    )
    columns = [images if name == "images" else table.column(name) for name in MULTI_IMAGE_SCHEMA.names]
    return pa.Table.from_arrays(columns, schema=MULTI_IMAGE_SCHEMA)


def as_multi_image(dataset: datasets.Dataset | datasets.IterableDataset) -> datasets.Dataset | datasets.IterableDataset:
    """`dataset` (a config with the `image` column) in the multi-image schema (`images`, a list per row):
    each image becomes a one-element list, a text-only row a null list. A dataset that already has
    `images` is returned as it is. Use it to mix single- and multi-image configs with
    `datasets.interleave_datasets` / `concatenate_datasets`; recipes do it themselves.

    A map-style dataset is rewritten once into its cache folder (the image bytes are copied, never
    decoded). Raises ValueError for a dataset without the llava_hf columns.
    """
    if "images" in dataset.features and dataset.features == MULTI_IMAGE_FEATURES:
        return dataset
    if dataset.features != FEATURES:
        raise ValueError(
            f"as_multi_image takes a llava_hf dataset (columns {', '.join(FEATURES)}), got columns "
            f"{', '.join(dataset.features or ())}"
        )
    return (
        dataset.with_format("arrow")
        .map(wrap_images, batched=True, features=MULTI_IMAGE_FEATURES, remove_columns=list(FEATURES))
        .with_format(None)
    )
