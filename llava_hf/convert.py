"""One shard in, Arrow tables out: parse its records, read its images, count what is skipped.

This is the loop the builder's `_generate_tables` runs in every worker; it holds one batch of
`sources.BATCH_ROWS` records (and their image bytes) at a time.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

import pyarrow as pa

from .catalog import Source
from .errors import BadImage, SourceError
from .features import rows_to_table
from .image_collections import is_url
from .images import BAD_IMAGE_REASONS, ImageRoot, open_root, read_directory_ahead
from .records import Row, parse_record, text_problem
from .sources import (
    Inputs,
    JsonIndex,
    Shard,
    first_mismatch,
    in_child,
    index_json_array,
    index_json_array_split,
    plan_shards,
    read_batches,
    resolve_inputs,
)
from .store import StoreSpec, offline, plan_store

logger = logging.getLogger("llava_hf")

# A table is cut early when its images reach this size (Arrow binary arrays hold at most 2 GB); with the
# reads in flight (images.READ_AHEAD) it bounds the image bytes a worker holds, whatever the files weigh.
MAX_TABLE_BYTES = 256 << 20
# Tables (each one Arrow record batch in the cache) gather JSON batches up to TABLE_ROWS rows, or until
# their images reach TABLE_IMAGE_BYTES: every record batch costs ~6.6 KB of memory in each process that
# opens the file (pyarrow's buffers and arrays, datasets' batch list), 66 bytes a row at 100 rows (37 MB
# at 558K rows), 7 at 1,000; and a batch of big images stays small, so a random row's read advice stays
# near its own bytes.
TABLE_ROWS = 1000
TABLE_IMAGE_BYTES = 8 << 20
# How many skipped records per reason the report lists by name.
SKIP_EXAMPLES = 20
# Record errors that on_bad_image="skip" counts and skips instead of raising: a multi-image record whose
# `<image>` tokens do not match its images, and what file configs do not support (video, URL or inline
# images, no conversations).
SKIPPABLE_RECORD_REASONS = ("image_count", "unsupported")


@dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs besides its shards; small, so it pickles cheaply to every job."""

    config: str
    json_path: str
    json_label: str
    metadata_path: str | None
    metadata_label: str | None
    image_location: str | None
    image_aliases: tuple[tuple[str, str], ...]
    source_from: Literal["config", "image_collection"]
    embed_images: bool
    on_bad_image: Literal["raise", "skip"]
    # The config's schema has `images` (a list per row) instead of `image` (features.MULTI_IMAGE_FEATURES).
    multi_image: bool = False
    # No image_dir, images from their collections: the store, filled from each collection's upstream.
    image_store: StoreSpec | None = None
    # The config's records (all shards): how much of a zip the prepare will read (`ZipRoot.expect`).
    records: int = 0

    def open_images(self) -> ImageRoot | None:
        if self.image_store is not None:
            return self.image_store.open()
        return open_root(self.image_location, self.image_aliases) if self.image_location else None

    def bind(self, shard: Shard) -> ShardSpec:
        """The spec that reads `shard` (file configs keep one spec per file; catalog configs have one)."""
        return self

    def batches(self, shard: Shard) -> Iterator[tuple[int, list[Any], list[Any] | None]]:
        return iter_batches(shard, self)

    def parse(self, raw: Any, meta: Any, index: int) -> Row:
        return parse_record(
            raw,
            file=self.json_label,
            index=index,
            config=self.config,
            source_from=self.source_from,
            metadata=meta,
            metadata_file=self.metadata_label,
            multi_image=self.multi_image,
        )


def check_options(source: Source, *, data_dir: Any, image_dir: Any, sample: bool, image_sources: Any = None) -> None:
    """ValueError for inputs that cannot work, before anything is read."""
    if sample and (data_dir or image_dir):
        raise ValueError(f"{source.name}: sample=True reads the embedded sample; drop data_dir and image_dir")
    if sample and image_sources:
        raise ValueError(f"{source.name}: sample=True reads the embedded sample's images; drop image_sources")
    # With no image_dir, configs of the image collections fetch their images into the store (store.py).
    if not sample and image_dir is None and source.image_archive is None and not source.image_collections:
        raise ValueError(
            f"{source.name} needs image_dir: the folder of its images ({source.image_layout}); "
            "or pass sample=True for the embedded sample"
        )


@dataclass(frozen=True)
class Plan:
    """A config's inputs, resolved and indexed, cut into shards, with the spec every worker gets."""

    inputs: Inputs
    chat: JsonIndex
    metadata: JsonIndex | None
    shards: list[Shard]
    spec: ShardSpec

    @property
    def images(self) -> str | None:
        """Where the images are read from, for logs and reports."""
        store = self.spec.image_store
        return store.describe() if store is not None else self.inputs.image_location

    def files(self) -> dict[str, dict[str, Any]]:
        """Name, size and sha256 of each source file (for reports and cards)."""
        return {
            role: {"file": os.path.basename(index.path), "bytes": index.size, "sha256": index.sha256}
            for role, index in (("chat", self.chat), ("metadata", self.metadata))
            if index is not None
        }


def plan_source(
    source: Source,
    *,
    data_dir: str | None,
    image_dir: str | None,
    sample: bool,
    revision: str | None = None,
    token: bool | str | None = None,
    embed_images: bool = True,
    on_bad_image: Literal["raise", "skip"] = "raise",
    image_sources: dict[str, str] | None = None,
    parallel: bool = False,
) -> Plan:
    """Resolve and scan the source files of `source` and cut them into shards; with `parallel` (a prepare
    with num_proc > 1), the metadata file is scanned in a child process while this one scans the chat file.

    Raises FileNotFoundError for a missing source file, SourceError for malformed JSON or chat and
    metadata files that are not parallel (reason "not_parallel", naming the first differing row).
    With no image_dir, a config of the image collections reads its images through the store
    (`store.plan_store`, which raises for a missing image source or an OCR-VQA copy nobody gave).
    """
    inputs = resolve_inputs(
        source, data_dir=data_dir, image_dir=image_dir, sample=sample, revision=revision, token=token
    )
    image_store = None
    if image_dir is None and not sample and inputs.image_location is None:
        image_store = plan_store(source, image_sources, on_bad_image=on_bad_image, token=token)
    if image_dir is not None and is_url(image_dir) and offline():
        raise FileNotFoundError(
            f"{source.name}: image_dir {image_dir} is a URL and HF_DATASETS_OFFLINE is set, so nothing is fetched; "
            "pass image_dir=<a local folder or zip of the images>"
        )
    # One stat of the root, nothing under it, and only when the sources are read (a prepared cache loads
    # without its images): a mistyped or unmounted folder fails here, not as N missing images.
    location = inputs.image_location
    if location is not None and not is_url(location) and not os.path.exists(location):
        raise FileNotFoundError(f"{source.name}: image_dir {location} does not exist (not mounted, or mistyped?)")
    # The workers a parallel prepare forks share one parse of a local zip's directory, made meanwhile.
    with read_directory_ahead(location if parallel and image_store is None else None):
        chat, metadata = _index_pair(inputs, source, parallel)
    if metadata is not None and metadata.num_records != chat.num_records:
        raise first_mismatch(chat, metadata, source.filename, source.metadata_filename)
    if chat.num_records == 0:
        raise SourceError(source.filename, "holds an empty array: there is nothing to prepare")
    spec = ShardSpec(
        config=source.name,
        json_path=inputs.json_path,
        json_label=source.filename,
        metadata_path=inputs.metadata_path,
        metadata_label=source.metadata_filename,
        image_location=inputs.image_location,
        image_aliases=source.image_aliases,
        source_from=source.source_from,
        embed_images=embed_images,
        on_bad_image=on_bad_image,
        image_store=image_store,
        records=chat.num_records,
    )
    return Plan(inputs, chat, metadata, plan_shards(chat, metadata), spec)


def _index_pair(inputs: Inputs, source: Source, parallel: bool) -> tuple[JsonIndex, JsonIndex | None]:
    """The scans of the chat file and of the metadata file (None without one). Each is a serial pass that
    decodes every record (~3 us a record: 1.9 s for blip_558k's chat file, 1.2 s for its metadata) before
    any worker starts; `parallel` runs the second in a forked child, so that a prepare with num_proc > 1
    waits for the longer one only; a lone big file is scanned in halves at once (`index_json_array_split`).
    Errors are the scan's own, from whichever file has one (chat first)."""
    if inputs.metadata_path is None:
        if parallel:  # one file (mix665k's is 1 GB): its halves at once
            return index_json_array_split(inputs.json_path, source.filename), None
        return index_json_array(inputs.json_path, source.filename), None
    if not parallel:
        chat = index_json_array(inputs.json_path, source.filename)
        return chat, index_json_array(inputs.metadata_path, source.metadata_filename)
    with in_child(index_json_array, inputs.metadata_path, source.metadata_filename) as pending:
        chat = index_json_array(inputs.json_path, source.filename)
        if pending is None:
            return chat, index_json_array(inputs.metadata_path, source.metadata_filename)
        return chat, pending.result()


def iter_batches(shard: Shard, spec: ShardSpec) -> Iterator[tuple[int, list[Any], list[Any] | None]]:
    """(index of the first record, chat records, metadata records or None) for each batch of `shard`."""
    chat_batches = read_batches(spec.json_path, shard.chat, shard.start, shard.stop, spec.json_label)
    if spec.metadata_path is not None and shard.metadata is not None:
        meta_batches = read_batches(spec.metadata_path, shard.metadata, shard.start, shard.stop, spec.metadata_label)
    else:
        meta_batches = repeat(None)
    index = shard.start
    for chat, meta in zip(chat_batches, meta_batches):
        if meta is not None and len(meta) != len(chat):
            raise SourceError(spec.json_label, f"{spec.metadata_label} is not parallel to it", index)
        yield index, chat, meta
        index += len(chat)


@dataclass
class SkipLog:
    """Rows dropped with on_bad_image="skip": counts per reason and the first few records by name."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Every skipped row as [index, image name]: a reused entry re-checks just these images.
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, reason: str, index: int, record_id: str, image: str, detail: str) -> None:
        self.counts[reason] += 1
        self.rows.append([index, image])
        listed = self.examples.setdefault(reason, [])
        if len(listed) < SKIP_EXAMPLES:
            listed.append({"index": index, "id": record_id, "image": image, "detail": detail})

    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        order = {reason: i for i, reason in enumerate(BAD_IMAGE_REASONS)}
        reasons = sorted(self.counts, key=lambda r: order.get(r, len(order)))
        return {
            "counts": {r: self.counts[r] for r in reasons},
            "examples": {r: sorted(self.examples[r], key=lambda e: e["index"]) for r in reasons},
            "rows": sorted(self.rows),
        }

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def merge(cls, parts: list[dict[str, Any]]) -> SkipLog:
        log = cls()
        for part in parts:
            log.counts.update(part["counts"])
            log.rows.extend(part.get("rows", []))
            for reason, listed in part["examples"].items():
                log.examples.setdefault(reason, []).extend(listed)
        for listed in log.examples.values():
            listed.sort(key=lambda e: e["index"])
            del listed[SKIP_EXAMPLES:]
        log.rows.sort()
        return log

    def summary(self) -> str:
        return ", ".join(f"{reason}: {count:,}" for reason, count in self.to_dict()["counts"].items())


def convert_shard(shard: Shard, spec: ShardSpec, images: ImageRoot | None, skips: SkipLog) -> Iterator[pa.Table]:
    """Arrow tables of the rows of `shard`, in source order, without the rows skipped for bad images.

    Raises SourceError (file, record index, id, problem) for a bad record, and for a bad image unless
    `spec.on_bad_image == "skip"`, in which case the row is counted in `skips` instead (so is a record
    refused for a reason in `SKIPPABLE_RECORD_REASONS`).
    """
    spec = spec.bind(shard)
    kept, pictures, size = [], [], 0
    for first, chat, meta in spec.batches(shard):
        rows, record_error = [], None
        for k, raw in enumerate(chat):
            try:
                rows.append((first + k, spec.parse(raw, meta[k] if meta is not None else None, first + k)))
            except SourceError as e:
                if spec.on_bad_image == "skip" and e.reason in SKIPPABLE_RECORD_REASONS:
                    rid = None if e.record_id is None else str(e.record_id)
                    skips.add(e.reason, first + k, rid, "", e.problem)
                    continue
                record_error = e  # raised after the images of the records before it, in file order
                break
        if spec.multi_image:
            named = [name for _, row in rows for name in row.image_names()]
        else:
            named = [row.image for _, row in rows if row.image is not None]
        if images is None:
            found = None
        elif spec.embed_images and hasattr(images, "read_views"):
            found = images.read_views(named)  # bytes-like views: joined into the table's buffer, copied once
        else:
            found = images.read_many(named, spec.embed_images)
        if not spec.multi_image:  # one image or none a row: no list a row
            for index, row in rows:
                name = row.image
                if name is None:
                    picture = None
                else:
                    result = next(found) if found is not None else _no_root(name)
                    if isinstance(result, BadImage):
                        if spec.on_bad_image == "raise":
                            raise SourceError(spec.json_label, str(result), index, row.id, reason=result.reason)
                        skips.add(result.reason, index, row.id, name, str(result))
                        continue
                    if spec.embed_images:
                        picture = (result[1], name)  # the name the source uses as `path`: the cache is portable
                        size += len(result[1])
                    else:
                        picture = (None, result)
                kept.append((index, row))
                pictures.append(picture)
                if size >= MAX_TABLE_BYTES:
                    yield _table(kept, pictures, spec)
                    kept, pictures, size = [], [], 0
        else:
            for index, row in rows:
                picture, bad, bad_name = [], None, None
                for name in row.image_names():
                    result = next(found) if found is not None else _no_root(name)
                    if isinstance(result, BadImage):
                        bad, bad_name = bad or result, bad_name or name  # the row's first bad image names it
                        continue
                    # Embedded bytes keep the name the source uses as `path`, so the cache is portable.
                    picture.append((result[1], name) if spec.embed_images else (None, result))
                if bad is not None:
                    if spec.on_bad_image == "raise":
                        raise SourceError(spec.json_label, str(bad), index, row.id, reason=bad.reason)
                    skips.add(bad.reason, index, row.id, bad_name, str(bad))
                    continue
                picture = picture if row.images is not None else None
                kept.append((index, row))
                pictures.append(picture)
                if picture:
                    size += sum(len(p[0]) for p in picture if p[0])
                if size >= MAX_TABLE_BYTES:
                    yield _table(kept, pictures, spec)
                    kept, pictures, size = [], [], 0
        if kept and (record_error is not None or len(kept) >= TABLE_ROWS or size >= TABLE_IMAGE_BYTES):
            yield _table(kept, pictures, spec)
            kept, pictures, size = [], [], 0
        if record_error is not None:
            raise record_error
    if kept:
        yield _table(kept, pictures, spec)


def _table(rows: list[tuple[int, Row]], pictures: list, spec: ShardSpec) -> pa.Table:
    try:
        return rows_to_table([row for _, row in rows], pictures, spec.multi_image)
    except UnicodeEncodeError:
        # Text Arrow cannot store (an unpaired UTF-16 surrogate, written as a lone \ud83d escape in the
        # JSON): name the record instead of failing somewhere inside pyarrow.
        for index, row in rows:
            problem = text_problem(row)
            if problem:
                raise SourceError(spec.json_label, problem, index, row.id, reason="bad_text") from None
        raise


def _no_root(name: str) -> BadImage:
    return BadImage("missing", f"image {name!r} has no image root (pass image_dir)")
