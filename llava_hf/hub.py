"""Export prepared configs to the Hub layout (Parquet shards and a generated dataset card), and push it.

An export folder is one Hub dataset repo:

    README.md                              the card, rendered from dataset_card.md and the files below
    <config>/train-00000-of-00002.parquet  rows in prepared order, image bytes embedded
    <config>/llava_hf_export.json          what the card says about the config: counts, source, shards

`datasets.load_dataset(folder_or_repo, config)` needs nothing from llava_hf: the card's YAML names each
config's files and features, and every Parquet file carries the `datasets` features in its Arrow schema
metadata, so `image` loads as `Image()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import string
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.naming import filenames_for_dataset_split
from datasets.splits import SplitDict, SplitInfo
from datasets.utils import tqdm
from datasets.utils.metadata import MetadataConfigs
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import CommitInfo, DatasetCard, DatasetCardData, HfApi

from .catalog import CATALOG, CONFIG_NAMES, get_source
from .features import FEATURES, MULTI_IMAGE_FEATURES, MULTI_IMAGE_SCHEMA, SCHEMA
from .files import data_file_paths, file_config_name
from .images import BAD_IMAGE_REASONS
from .load import is_data_files, load_builder, prepare_report
from .stats import STATS_CONVENTIONS, StatsAccumulator, stats_markdown

logger = logging.getLogger("llava_hf")

SPLIT = "train"
CARD_FILENAME = "README.md"
EXPORT_FILENAME = "llava_hf_export.json"
REPO_PLACEHOLDER = "<org>/<name>"

# datasets' bound for push_to_hub shards (datasets.config.MAX_SHARD_SIZE, "500MB").
MAX_SHARD_SIZE = 500_000_000
# datasets.config.MAX_ROW_GROUP_SIZE, what push_to_hub uses for image datasets in datasets 5.x (where
# PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS is None). The dataset viewer reads a whole row group to serve
# a page of rows and refuses groups over ~286 MiB ("TooBigContentError"; huggingface/dataset-viewer#1519,
# #1771, recommended 100-300 MB). One row group is also what an export holds in memory at a time.
ROW_GROUP_SIZE = 100_000_000

# The size estimate of a row adds to its bytes and strings what Arrow and Parquet add per value (offsets,
# length prefixes, levels); a row group adds page headers. Images are stored uncompressed and text
# compresses, so the estimate stays above the bytes a row group takes in the file.
_ROW_OVERHEAD = 64
_TURN_OVERHEAD = 16
_GROUP_OVERHEAD = 4096
# Room kept for a shard's footer (schema, row-group metadata, page index): measured 4 KB + 1.5 KB a group
# (11 KB for five row groups of 100 MB).
_FOOTER_BASE = 32 << 10
_FOOTER_PER_GROUP = 4 << 10

# Content-defined page boundaries (as datasets' push_to_hub writes them): a re-export that changes a few
# rows changes a few pages, and the Hub's Xet storage uploads only those. Fixed here rather than read from
# datasets.config so the files do not change with the datasets version.
_CDC = {"min_chunk_size": 256 << 10, "max_chunk_size": 1 << 20, "norm_level": 0}
_IMAGE_BYTES = "image.bytes"
_IMAGES_BYTES = "images.list.element.bytes"  # the same leaf in a multi-image config


def _leaf_paths(name: str, type_: pa.DataType) -> list[str]:
    # Parquet options name leaf columns by path (`conversations.list.element.value`).
    if pa.types.is_struct(type_):
        return [leaf for field in type_ for leaf in _leaf_paths(f"{name}.{field.name}", field.type)]
    if pa.types.is_list(type_):
        return _leaf_paths(f"{name}.list.element", type_.value_type)
    return [name]


def _parquet_options(schema: pa.Schema = SCHEMA) -> dict[str, Any]:
    leaves = [leaf for field in schema for leaf in _leaf_paths(field.name, field.type)]
    image_bytes = _IMAGE_BYTES if _IMAGE_BYTES in leaves else _IMAGES_BYTES
    text = [leaf for leaf in leaves if leaf != image_bytes]
    # Image files are compressed already: compressing them again costs CPU for nothing, a dictionary
    # never repeats, and min/max statistics of JPEG bytes help no reader.
    return {
        "compression": {leaf: "none" if leaf == image_bytes else "snappy" for leaf in leaves},
        "use_dictionary": text,
        "column_encoding": {image_bytes: "PLAIN"},
        "write_statistics": text,
        "use_content_defined_chunking": _CDC,
        "write_page_index": True,
    }


_PARQUET_OPTIONS = _parquet_options()
_MULTI_IMAGE_PARQUET_OPTIONS = _parquet_options(MULTI_IMAGE_SCHEMA)


def _lengths(array: pa.Array) -> np.ndarray:
    return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _row_sizes(batch: pa.RecordBatch) -> np.ndarray:
    """Estimated Parquet bytes of each row: its bytes and strings plus per-value overhead."""
    sizes = np.full(batch.num_rows, _ROW_OVERHEAD, dtype=np.int64)
    for column in batch.columns:
        if pa.types.is_struct(column.type):
            for child in column.flatten():
                sizes += _lengths(child)
        elif pa.types.is_list(column.type):
            turns = column.flatten()
            turn_sizes = np.full(len(turns), _TURN_OVERHEAD, dtype=np.int64)
            for child in turns.flatten():
                turn_sizes += _lengths(child)
            ends = np.concatenate([[0], np.cumsum(turn_sizes)])
            offsets = column.offsets.to_numpy(zero_copy_only=False)
            offsets = offsets - offsets[0]
            sizes += ends[offsets[1:]] - ends[offsets[:-1]]
        else:
            sizes += _lengths(column)
    return sizes


def _row_groups(
    batches: Iterable[pa.RecordBatch], row_group_size: int, schema: pa.Schema = SCHEMA
) -> Iterator[tuple[pa.Table, int]]:
    """Cut a stream of batches into row groups of at most `row_group_size` estimated bytes (and at least one
    row), yielding each with its estimate. The cuts depend only on the rows, not on how they were batched,
    so the same rows always give the same files."""
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0
    for batch in batches:
        ends = np.concatenate([[0], np.cumsum(_row_sizes(batch))])
        start = 0
        while start < batch.num_rows:
            room = row_group_size - pending_bytes
            stop = max(start, int(np.searchsorted(ends, ends[start] + room, side="right")) - 1)
            if stop == start:
                if pending:
                    yield pa.Table.from_batches(pending, schema=schema), pending_bytes + _GROUP_OVERHEAD
                    pending, pending_bytes = [], 0
                    continue
                stop = start + 1  # a single row larger than a row group gets a group of its own
            pending.append(batch.slice(start, stop - start))
            pending_bytes += int(ends[stop] - ends[start])
            start = stop
    if pending:
        yield pa.Table.from_batches(pending, schema=schema), pending_bytes + _GROUP_OVERHEAD


class _HashingFile(io.RawIOBase):
    """A write-only file that counts and hashes what is written, so a shard is never read back."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        written = self._file.write(data)
        self.sha256.update(memoryview(data)[:written])
        self.size += written
        return written

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _ShardWriter:
    """Writes row groups into `train-NNNNN` Parquet files, starting a new file at the byte bound."""

    def __init__(self, folder: str, max_shard_size: int, schema: pa.Schema = SCHEMA):
        self.folder = folder
        self.schema = schema
        self.max_shard_size = max_shard_size
        self.shards: list[dict[str, Any]] = []
        self._file: _HashingFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._groups = 0
        self._rows = 0

    def write(self, table: pa.Table, estimate: int) -> None:
        if self._writer is not None:
            footer = _FOOTER_BASE + _FOOTER_PER_GROUP * (self._groups + 1)
            if self._file.size + estimate + footer > self.max_shard_size:
                self._close()
        if self._writer is None:
            self._open()
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._groups += 1
        self._rows += table.num_rows

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard and give every shard its final `train-XXXXX-of-YYYYY.parquet` name."""
        if self._writer is None and not self.shards:
            self._open()  # a config whose every row was skipped still loads, with no rows
        if self._writer is not None:
            self._close()
        for index, shard in enumerate(self.shards):
            final = f"{SPLIT}-{index:05d}-of-{len(self.shards):05d}.parquet"
            os.rename(os.path.join(self.folder, shard["file"]), os.path.join(self.folder, final))
            shard["file"] = final
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()

    def _open(self) -> None:
        self._file = _HashingFile(os.path.join(self.folder, f"{SPLIT}-{len(self.shards):05d}.partial"))
        options = _PARQUET_OPTIONS if self.schema == SCHEMA else _MULTI_IMAGE_PARQUET_OPTIONS
        self._writer = pq.ParquetWriter(self._file, self.schema, **options)
        self._groups = self._rows = 0

    def _close(self) -> None:
        self._writer.close()
        self._file.close()
        name = os.path.basename(self._file.path)
        self.shards.append(
            {"file": name, "rows": self._rows, "bytes": self._file.size, "sha256": self._file.sha256.hexdigest()}
        )
        self._writer = self._file = None


def _prepared_batches(paths: Sequence[str], schema: pa.Schema = SCHEMA) -> Iterator[pa.RecordBatch]:
    for path in paths:
        # Read as a stream, not memory-mapped: pyarrow advises the kernel to read a whole mapped file when
        # it is opened, and a stream keeps one batch in memory whatever the dataset size.
        with pa.OSFile(path) as source:
            reader = pa.ipc.open_stream(source)
            if not reader.schema.equals(schema, check_metadata=False):
                raise ValueError(f"{path} was prepared with another schema than llava_hf's; prepare it again")
            yield from reader


def _size(value: int | str, name: str) -> int:
    try:
        size = convert_file_size_to_int(value)
    except ValueError:
        size = None
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"{name} must be a positive number of bytes or a size like '500MB', got {value!r}")
    return size


def _names(configs: str | Sequence[str], data_files: Any = None) -> list[str]:
    names = [configs] if isinstance(configs, str) else list(configs)
    if not names:
        raise ValueError(f"no config to export; choose from: {', '.join(CONFIG_NAMES)}")
    if data_files is not None:  # one file config, named by `configs`
        if len(names) != 1:
            raise ValueError(f"data_files makes one config; give it one name, got {names}")
        return [file_config_name(names[0], data_file_paths(data_files))]
    for name in names:
        get_source(name)
    if len(set(names)) != len(names):
        raise ValueError(f"configs listed twice: {names}")
    return names


def read_exports(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The figures of every config exported into `out_dir` (its `<config>/llava_hf_export.json`), by name."""
    out_dir = os.fspath(out_dir)
    figures = {}
    if os.path.isdir(out_dir):
        for entry in sorted(os.listdir(out_dir)):
            path = os.path.join(out_dir, entry, EXPORT_FILENAME)
            if not entry.startswith(".") and os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    figures[entry] = json.load(f)
    return figures


def _card_default(out_dir: str) -> str | None:
    path = os.path.join(out_dir, CARD_FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        return MetadataConfigs.from_dataset_card_data(DatasetCard.load(path).data).get_default_config_name()
    except ValueError:  # a card edited by hand into an invalid state: pick the default again
        return None


def _public_source(source: Mapping[str, Any]) -> dict[str, Any]:
    # Only what identifies the source: the export is published, and local paths or host names have no
    # place in it (nor in byte-identical re-exports).
    public = {key: source.get(key) for key in ("repo_id", "origin", "revision")}
    for role in ("chat", "metadata"):
        if source.get(role):
            public[role] = {key: source[role][key] for key in ("file", "bytes", "sha256")}
    if source.get("files"):  # a file config: the user's files, by name and content (not their local paths)
        public["files"] = [
            {key: f[key] for key in ("file", "format", "records", "bytes", "sha256")} for f in source["files"]
        ]
    return public


def _write_shards(
    paths: Sequence[str],
    folder: str,
    num_rows: int,
    max_shard_size: int,
    row_group_size: int,
    desc: str,
    schema: pa.Schema = SCHEMA,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One pass over the prepared Arrow files: the Parquet shards in `folder`, and the statistics of the rows.

    The statistics read the row groups on their way to the writer, so the image bytes are read once and
    memory stays at one row group.
    """
    writer = _ShardWriter(folder, max_shard_size, schema)
    statistics = StatsAccumulator()
    try:
        with tqdm(total=num_rows, unit=" rows", desc=desc) as progress:
            for table, estimate in _row_groups(_prepared_batches(paths, schema), row_group_size, schema):
                writer.write(table, estimate)
                statistics.add(table)
                progress.update(table.num_rows)
        return writer.finish(), statistics.result()
    except BaseException:
        writer.abort()
        raise


def _replace_folder(staging: str, final: str) -> None:
    # Swapped whole, so the folder never mixes shards of two exports (stale shards would be loaded).
    if os.path.exists(final):
        old = staging + ".old"
        os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old)
    else:
        os.rename(staging, final)


def _export_config(
    name: str,
    out_dir: str,
    load_options: dict[str, Any],
    prepare_options: dict[str, Any],
    max_shard_size: int,
    row_group_size: int,
) -> dict[str, Any]:
    from ._version import __version__

    builder = load_builder(name, **load_options)
    builder.download_and_prepare(**prepare_options)
    report = prepare_report(builder)
    multi_image = "images" in builder.info.features  # a file config with list-valued images
    split = builder.info.splits[SPLIT]
    paths = filenames_for_dataset_split(builder.cache_dir, builder.dataset_name, SPLIT, "arrow", split.shard_lengths)
    logger.info(
        "%s: %s rows prepared (%.1f MB in %d Arrow files); writing Parquet shards of at most %.0f MB to %s",
        name,
        f"{split.num_examples:,}",
        split.num_bytes / 1e6,
        len(paths),
        max_shard_size / 1e6,
        os.path.join(out_dir, name),
    )
    # Hidden (push ignores it) and fixed, so a killed export's leftovers are cleared by the next one.
    staging = os.path.join(out_dir, f".{name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(staging + ".old", ignore_errors=True)
    os.makedirs(staging)
    try:
        shards, stats = _write_shards(
            paths,
            staging,
            split.num_examples,
            max_shard_size,
            row_group_size,
            desc=f"Exporting {name}",
            schema=MULTI_IMAGE_SCHEMA if multi_image else SCHEMA,
        )
        if stats["rows"] != split.num_examples:
            raise RuntimeError(
                f"{name}: the prepared dataset has {split.num_examples} rows but {stats['rows']} were read"
            )
        figures = {
            "config": name,
            "rows": stats["rows"],
            "images": stats["image_rows"],
            "text_only": stats["text_only_rows"],
            "turns": stats["words_per_turn"]["all"]["count"],  # one word count per turn
            "records": report["records"],
            "skipped": report["skipped"]["counts"],
            "on_bad_image": report["options"]["on_bad_image"],
            "source": _public_source(report["source"]),
            "num_bytes": split.num_bytes,
            "download_size": sum(shard["bytes"] for shard in shards),
            "shards": shards,
            "max_shard_size": max_shard_size,
            "row_group_size": row_group_size,
            "stats": stats,
            "llava_hf": __version__,
        }
        if multi_image:
            figures["multi_image"] = True
        with open(os.path.join(staging, EXPORT_FILENAME), "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)
            f.write("\n")
        _replace_folder(staging, os.path.join(out_dir, name))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return figures


def export(
    configs: str | Sequence[str],
    out_dir: str | os.PathLike,
    *,
    max_shard_size: int | str = MAX_SHARD_SIZE,
    row_group_size: int | str | None = None,
    default: str | None = None,
    num_proc: int | None = None,
    download_mode: datasets.DownloadMode | str | None = None,
    **load_options: Any,
) -> dict[str, dict[str, Any]]:
    """Write configs in the Hub layout: `<out_dir>/<config>/train-XXXXX-of-YYYYY.parquet` and `README.md`.

    Each config is prepared (or taken from the cache) as `llava_hf.load_dataset(config, **load_options)`
    would, then streamed into Parquet shards with the image bytes embedded; memory holds one row group at
    a time, whatever the dataset size. The same pass computes the config's statistics (`compute_stats`:
    text, and each unique image's header) for the card. Configs already in `out_dir` are kept; an exported
    config replaces its previous export whole. The card is then rendered from every config in the folder.

    max_shard_size: bytes (or "500MB") per Parquet file. Row groups are added to a shard while the file,
        with the next group and room for its footer, stays within the bound; a shard is larger only when it
        holds a single row group that is larger by itself (one image over the bound).
    row_group_size: estimated bytes per row group (at least one row each); None is what datasets and the
        Hub's dataset viewer use (100 MB), or a fifth of a smaller max_shard_size.
    default: the config `load_dataset(repo)` loads when no name is given; by default the card's current
        default, or the first of `configs`.
    num_proc, download_mode: passed to the preparation.

    Returns the figures the card shows for each exported config (what `llava_hf_export.json` holds: rows,
    images, text_only, turns, skipped, source, shards, stats, ...). Re-exporting unchanged inputs writes
    byte-identical Parquet files. Raises ValueError for an unknown config or option (for instance
    embed_images=False: the Hub copy must carry the images), and whatever preparing raises.
    """
    if load_options.get("data_files") is None and is_data_files(configs):
        # The user's own files: one config named after the first file (pass a name and data_files to name it).
        load_options["data_files"] = configs
        configs = file_config_name(None, data_file_paths(configs))
    names = _names(configs, load_options.get("data_files"))
    if load_options.get("embed_images", True) is not True:
        raise ValueError("export embeds the image bytes so the Hub copy loads anywhere; drop embed_images=False")
    max_shard_size = _size(max_shard_size, "max_shard_size")
    if row_group_size is None:
        row_group_size = min(ROW_GROUP_SIZE, max_shard_size // 5) or 1
    row_group_size = _size(row_group_size, "row_group_size")
    if row_group_size > max_shard_size:
        raise ValueError(f"row_group_size ({row_group_size:,}) must not exceed max_shard_size ({max_shard_size:,})")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if default is not None and default not in names and default not in read_exports(out_dir):
        raise ValueError(f"default {default!r} is neither exported now nor in {out_dir}")
    if os.path.isfile(os.path.join(out_dir, CARD_FILENAME)) and not read_exports(out_dir):
        raise ValueError(f"{out_dir} holds a {CARD_FILENAME} that llava_hf did not write; export into another folder")
    os.makedirs(out_dir, exist_ok=True)

    prepare_options = {"num_proc": num_proc, "download_mode": download_mode}
    default = default or _card_default(out_dir) or names[0]
    exported = {}
    for name in names:
        exported[name] = _export_config(name, out_dir, load_options, prepare_options, max_shard_size, row_group_size)
        # After each config, so a later config that fails leaves a card that matches the folder.
        write_card(out_dir, default=default)
    return exported


def write_card(
    out_dir: str | os.PathLike,
    default: str | None = None,
    repo_id: str | None = None,
    more_figures: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Render `<out_dir>/README.md` from the configs exported there (plus `more_figures`); returns its path.

    `default` is marked as the default config; None, or a config not in the folder yet (export writes the
    card after each config), keeps the card's current default, or else takes the first config. Raises
    ValueError when the folder holds no export.
    """
    out_dir = os.fspath(out_dir)
    figures = {**(more_figures or {}), **read_exports(out_dir)}
    if not figures:
        raise ValueError(f"{out_dir} holds no llava_hf export (no <config>/{EXPORT_FILENAME}); run export first")
    default = default or _card_default(out_dir)
    if default not in figures:
        default = _ordered(figures)[0]
    path = os.path.join(out_dir, CARD_FILENAME)
    text = render_card(figures, default=default, repo_id=repo_id)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _ordered(figures: Mapping[str, Any]) -> list[str]:
    return [n for n in CONFIG_NAMES if n in figures] + sorted(n for n in figures if n not in CATALOG)


def _size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "1M<n<10M" if rows < 10_000_000 else "10M<n<100M"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: int = 0) -> str:
    """A Markdown table; the last `numeric` columns are right-aligned."""
    align = ["---"] * (len(header) - numeric) + ["---:"] * numeric
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))


def _repo_link(repo_id: str) -> str:
    return f"[{repo_id}](https://huggingface.co/datasets/{repo_id})"


# The per-config figures in the card's table, as (header, key in the figures).
CARD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rows", "rows"),
    ("images", "images"),
    ("text-only rows", "text_only"),
    ("turns", "turns"),
)


def _source_cell(source: Mapping[str, Any]) -> tuple[str, str]:
    link = _repo_link(source.get("repo_id", ""))
    origin = source.get("origin")
    if origin == "files":
        files = [
            f"`{f['file']}` ({f['format']}, {f['records']:,} records, {f['bytes']:,} bytes), sha256 `{f['sha256']}`"
            for f in source["files"]
        ]
        return "the user's own LLaVA-format files", "<br>".join(files)
    if origin == "hub":
        where = f"{link} at commit `{source.get('revision')}`"
    elif origin == "sample":
        where = "the llava_hf embedded sample (a few records, not the release)"
    else:
        where = f"a local copy of the files of {link}"
    files = [
        f"`{source[role]['file']}` ({source[role]['bytes']:,} bytes), sha256 `{source[role]['sha256']}`"
        for role in ("chat", "metadata")
        if source.get(role)
    ]
    return where, "<br>".join(files)


def _card_data(figures: Mapping[str, Mapping[str, Any]], names: Sequence[str], default: str) -> DatasetCardData:
    """The card's YAML header: license, tags, the `configs` (one default) and each config's `dataset_info`."""
    sources = [CATALOG[n] for n in names if n in CATALOG]
    licenses = list(dict.fromkeys(s.license for s in sources))
    if any(n not in CATALOG for n in names):  # the user's own files declare no license: say so, not guess
        licenses.append("unknown")
    # The Hub takes one license_name and license_link for "other"; configs under several such terms
    # share a name, and the link goes to this card, whose License section lists each one.
    others = list(dict.fromkeys((s.license_name, s.license_link) for s in sources if s.license == "other"))
    other_terms = {}
    if len(others) == 1:
        other_terms = {"license_name": others[0][0], "license_link": others[0][1]}
    elif others:
        other_terms = {"license_name": "-and-".join(n for n, _ in others), "license_link": CARD_FILENAME}
    card_data = DatasetCardData(
        license=licenses[0] if len(licenses) == 1 else licenses,
        **other_terms,
        language=["en"],
        task_categories=["image-text-to-text"],
        size_categories=[_size_category(sum(figures[n]["rows"] for n in names))],
        pretty_name=_pretty_name(figures, names),
        tags=["llava", "llava_hf"],
    )
    MetadataConfigs(
        {
            name: {
                "data_files": [{"split": SPLIT, "path": f"{name}/{SPLIT}-*.parquet"}],
                **({"default": True} if name == default else {}),
            }
            for name in names
        }
    ).to_dataset_card_data(card_data)
    infos = {}
    for name in names:
        splits = SplitDict()
        splits.add(SplitInfo(name=SPLIT, num_bytes=figures[name]["num_bytes"], num_examples=figures[name]["rows"]))
        infos[name] = DatasetInfo(
            features=MULTI_IMAGE_FEATURES if figures[name].get("multi_image") else FEATURES,
            splits=splits,
            download_size=figures[name]["download_size"],
            dataset_size=figures[name]["num_bytes"],
        )
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    return card_data


def _pretty_name(figures: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    all_sample = all(figures[n]["source"].get("origin") == "sample" for n in names)
    return "LLaVA training data" + (" (llava_hf embedded sample)" if all_sample else "")


def _config_table(figures: Mapping[str, Mapping[str, Any]], names: Sequence[str], default: str) -> str:
    reasons = [r for r in BAD_IMAGE_REASONS if any(figures[n]["skipped"].get(r) for n in names)]
    reasons += sorted({r for n in names for r in figures[n]["skipped"]} - set(BAD_IMAGE_REASONS) - set(reasons))
    skip_headers = [f"skipped: {r}" for r in reasons] or ["skipped rows"]
    rows = []
    for name in names:
        fig = figures[name]
        label = f"`{name}`" + (" (default)" if name == default else "")
        description = CATALOG[name].description if name in CATALOG else ""
        skipped = [_number(fig["skipped"].get(r, 0)) for r in reasons] or ["0"]
        rows.append(
            [label, description, *(_number(fig.get(key)) for _, key in CARD_COLUMNS), *skipped]
            + [_number(len(fig["shards"])), f"{fig['download_size'] / 1e6:,.1f}"]
        )
    header = ["config", "description", *(h for h, _ in CARD_COLUMNS), *skip_headers, "shards", "Parquet MB"]
    return _md_table(header, rows, numeric=len(header) - 2)


def _skipped_section(figures: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    rows = [[f"`{n}`", r, _number(c)] for n in names for r, c in figures[n]["skipped"].items() if c]
    if not rows:
        return "None: every record of the source files is a row."
    return (
        "Rows whose image was missing, empty, not an image or outside the image folder were left out "
        '(`on_bad_image="skip"`) and are counted here; every other record is a row.\n\n'
        + _md_table(["config", "reason", "skipped rows"], rows, numeric=1)
    )


def _license_section(names: Sequence[str]) -> str:
    by_terms: dict[tuple[str, str | None, str | None], list[str]] = {}
    for name in names:
        if name in CATALOG:
            source = CATALOG[name]
            by_terms.setdefault((source.license, source.license_name, source.license_link), []).append(name)
    lines = []
    for (license_, license_name, license_link), members in by_terms.items():
        links = ", ".join(_repo_link(r) for r in dict.fromkeys(CATALOG[n].repo_id for n in members))
        terms = f"`{license_}`" if license_name is None else f"`{license_}` ([{license_name}]({license_link}))"
        lines.append(f"- {', '.join(f'`{n}`' for n in members)}: {terms}, as declared by {links}.")
    own = [name for name in names if name not in CATALOG]
    if own:
        lines.append(
            f"- {', '.join(f'`{n}`' for n in own)}: `unknown`: built from the user's own files, whose terms apply."
        )
    return "\n".join(lines) + (
        "\n\nThe terms of use of the images and of the generated text are those stated in the source "
        "repositories' cards, which this copy does not change."
    )


def _statistics_section(figures: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    sections = []
    for name in names:
        stats = figures[name].get("stats")
        if stats is None:  # exported by a llava_hf version that did not compute them
            sections.append(f"### `{name}`\n\nNot computed for this config.\n")
        else:
            sections.append(stats_markdown(stats, heading=f"### `{name}`", conventions=False))
    return "\n".join(sections) + "\n" + STATS_CONVENTIONS


_COLUMN_ROWS = {
    "id": "| `id` | string | the record's id; int ids (some mix665k rows) become strings |",
    "image": (
        "| `image` | `Image()` | the image file's bytes as the source ships them, and its name there; null for "
        "text-only rows |"
    ),
    "images": (
        "| `images` | list of `Image()` | every image of the record, in order, each the file's bytes as the source "
        "ships them and its name there; null or empty for text-only rows |"
    ),
    "rest": (
        "| `conversations` | list of `{from, value}` | the turns, text exactly as the file has it |\n"
        "| `source` | string | the config name; for mix665k the image collection (`coco`, `gqa`, `ocr_vqa`, "
        "`textvqa`, `vg`) or `text_only` |\n"
        "| `caption` | string | pretrain metadata: CC3M's original alt-text; null elsewhere |\n"
        "| `blip_caption` | string | pretrain metadata: the BLIP caption |\n"
        "| `url` | string | pretrain metadata: the image URL |\n"
        "| `extra` | string | JSON of whatever the record had beyond these columns; null when nothing |"
    ),
}


def _usage_line(figures: Mapping[str, Any]) -> str:
    if figures.get("multi_image"):
        return 'ds[0]["images"]  # a list of PIL images; None or [] for text-only rows'
    return 'ds[0]["image"]  # a PIL image; None for text-only rows'


def _schema_section(figures: Mapping[str, Mapping[str, Any]], names: list[str]) -> str:
    """The card's Schema: the columns the configs have (a multi-image config's `images` in place of `image`)."""
    multi = [name for name in names if figures[name].get("multi_image")]
    if multi and len(multi) < len(names):
        intro = (
            f"The configs have the same columns, except that {', '.join(f'`{n}`' for n in multi)} "
            f"{'holds' if len(multi) == 1 else 'hold'} `images` (a list of images a row) in place of `image`: "
            "configs of one kind concatenate or interleave without casts (`llava_hf.as_multi_image` turns a "
            "single-image config into the other kind):"
        )
        kinds = ["image", "images"]
    else:
        intro = "Every config has the same columns, so any two concatenate or interleave without casts:"
        kinds = ["images"] if multi else ["image"]
    rows = [_COLUMN_ROWS["id"], *(_COLUMN_ROWS[kind] for kind in kinds), _COLUMN_ROWS["rest"]]
    return "\n".join([intro, "", "| column | type | |", "|---|---|---|", *rows])


def render_card(figures: Mapping[str, Mapping[str, Any]], default: str, repo_id: str | None = None) -> str:
    """The dataset card (README.md text) for the configs in `figures`, one dict of figures per config.

    Each dict holds what an export writes to `llava_hf_export.json`: rows, images, text_only, turns,
    skipped (counts per reason), source (repo_id, origin, revision, files with sha256), num_bytes,
    download_size, shards, and stats (`compute_stats` figures; a config without them is shown as not
    computed). Raises ValueError when `default` is not one of the configs.
    """
    from ._version import __version__

    names = _ordered(figures)
    if default not in figures:
        raise ValueError(f"default config {default!r} is not among {names}")
    sources = [CATALOG[n] for n in names if n in CATALOG]
    citations = list(dict.fromkeys(s.citation for s in sources if s.citation))
    template = resources.files("llava_hf").joinpath("dataset_card.md").read_text(encoding="utf-8")
    text = string.Template(template).substitute(
        card_data=_card_data(figures, names, default).to_yaml(),
        pretty_name=_pretty_name(figures, names),
        repo_id=repo_id or REPO_PLACEHOLDER,
        default_config=default,
        llava_hf_version=__version__,
        config_table=_config_table(figures, names, default),
        usage_line=_usage_line(figures[default]),
        schema_section=_schema_section(figures, names),
        source_table=_md_table(
            ["config", "built from", "source files"], [[f"`{n}`", *_source_cell(figures[n]["source"])] for n in names]
        ),
        statistics_section=_statistics_section(figures, names),
        skipped_section=_skipped_section(figures, names),
        license_section=_license_section(names),
        citation="```bibtex\n" + "\n\n".join(citations) + "\n```" if citations else "See the source repositories.",
    )
    DatasetCard(text)  # parses the YAML header: a broken card fails here, not on the Hub
    return text


def _check_shards(out_dir: str, figures: Mapping[str, Mapping[str, Any]]) -> None:
    for name, fig in figures.items():
        for shard in fig["shards"]:
            path = os.path.join(out_dir, name, shard["file"])
            if not os.path.isfile(path) or os.path.getsize(path) != shard["bytes"]:
                raise ValueError(
                    f"{path} is missing or not the file {EXPORT_FILENAME} lists ({shard['bytes']:,} bytes); "
                    f"export {name} again"
                )


def push(
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload an export folder to the Hub dataset repo `repo_id` (created if missing).

    The token is `token`, else `HF_TOKEN` or the saved `hf auth login`; it is never printed or written.
    `private` applies when the repo is created (an existing repo keeps its visibility). `revision` is a
    branch (created from main if missing) to push to instead of main.

    The repo keeps configs that llava_hf put there earlier and this folder does not hold: the card is
    rendered again from this folder's configs plus theirs (and rewritten in `out_dir`). Each config of the
    folder replaces that config's files on the repo, so no stale shard survives. The data is uploaded
    first (with hf_xet: in several commits if large, resumable by running the push again; unchanged
    files are not uploaded again), then the card in its own commit, so the card never names missing files.

    Returns the `CommitInfo` of the card commit. Raises ValueError when `out_dir` holds no complete
    export, and huggingface_hub's errors for authentication or network problems.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    local = read_exports(out_dir)
    if not local:
        raise ValueError(f"{out_dir} holds no llava_hf export (no <config>/{EXPORT_FILENAME}); run export first")
    _check_shards(out_dir, local)
    if importlib.util.find_spec("hf_xet") is None:
        logger.warning("hf_xet is not installed: the folder goes up in one commit that cannot resume")

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    remote = {}
    for path in api.list_repo_files(repo_id, repo_type="dataset", revision=revision):
        folder, _, filename = path.partition("/")
        if filename == EXPORT_FILENAME and folder not in local:
            downloaded = api.hf_hub_download(repo_id, path, repo_type="dataset", revision=revision)
            with open(downloaded, encoding="utf-8") as f:
                remote[folder] = json.load(f)
    if remote:
        logger.info("%s already holds %s: kept, and listed in the card", repo_id, ", ".join(_ordered(remote)))
    card = write_card(out_dir, repo_id=repo_id, more_figures=remote)

    message = commit_message or f"Upload {', '.join(_ordered(local))} with llava_hf"
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=out_dir,
        revision=revision,
        commit_message=message,
        ignore_patterns=[CARD_FILENAME, ".*", "*/.*"],
        delete_patterns=[f"{name}/*" for name in local],
    )
    return api.upload_file(
        path_or_fileobj=card,
        path_in_repo=CARD_FILENAME,
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        commit_message=f"{message}: dataset card",
    )


def push_to_hub(
    name: str | Sequence[str],
    repo_id: str,
    *,
    out_dir: str | os.PathLike | None = None,
    private: bool | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    source_revision: str | None = None,
    **export_options: Any,
) -> CommitInfo:
    """Export config(s) `name` and push them to the Hub dataset repo `repo_id`; see `export` and `push`.

    out_dir: where the export is written and kept (an existing export folder gains these configs); None
        writes it to a temporary folder removed afterwards. A failed push is resumed by calling again: the
        export is byte-identical, so the upload skips what is already on the Hub.
    revision: the branch of `repo_id` to push to; source_revision: the revision of the LLaVA source repo.
    token: used both to download the sources and to push.
    export_options: `export`'s options and `llava_hf.load_dataset`'s (data_dir, image_dir, sample, ...).
    """
    export_options.setdefault("token", token)
    if source_revision is not None:
        export_options["revision"] = source_revision
    if out_dir is None:
        folder_context = tempfile.TemporaryDirectory(prefix="llava_hf-export-")
    else:
        folder_context = contextlib.nullcontext(os.fspath(out_dir))
    with folder_context as folder:
        export(name, folder, **export_options)
        return push(folder, repo_id, private=private, revision=revision, token=token, commit_message=commit_message)
