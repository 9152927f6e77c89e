"""`to_messages` of a map-style dataset: a real `Dataset` over the source's own Arrow files.

A formatted view (`with_transform`) is what `datasets` drops on `concatenate_datasets` and refuses in
`to_iterable_dataset`, and its `features` are the source's. So the TRL columns are real columns:

- `messages` is computed once from the text (ids, turns and each row's number of images; no image is
  read) and written as one Arrow file in `llava_hf_views/` beside the dataset's files, named by a key over
  those files' identity (path, size, mtime, datasets' replays) and the role map: the next call memory-maps it.
- `images` is `list<struct<bytes, path>>` built over the source's memory-mapped image column without
  copying an image: for single-image data, one-item lists over the images alone (new offsets over the
  source's own data buffers step over the text-only rows, which become empty lists); for a multi-image
  config, its own `images` lists (a null, text-only row read as an empty list). Arrow cannot cast a struct
  to a list, so `datasets` has no replay for this; `ImageListsBlock` is a `MemoryMappedTable` that replays
  it when it is unpickled. Both kinds have the same features, so their views concatenate and interleave.

The rows of the source's index mapping (after `select`, `shuffle`, `filter`) are the view's index mapping:
the columns cover the source table, in its order, and a row outside the mapping that could not be a
message is stored as null (it is never read; `check_rows` refused the rows inside).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping

import datasets
import datasets.table
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Features
from datasets.fingerprint import Hasher
from datasets.table import ConcatenationTable, InMemoryTable, MemoryMappedTable, Table

from .formats import TRL_FEATURES, content_blocks
from .records import IMAGE_TOKEN

logger = logging.getLogger("llava_hf")

# Part of the messages file's key: bump it when what the file holds changes.
VIEW_VERSION = "trl-messages-1"
MESSAGES_FEATURES = Features({"messages": TRL_FEATURES["messages"]})
IMAGES_FEATURES = Features({"images": TRL_FEATURES["images"]})
VIEWS_FOLDER = "llava_hf_views"
# Rows converted per batch while writing the messages file.
TEXT_BATCH_ROWS = 10_000


def image_lists(image: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each row's image as a one-item list, or an empty list where it is null, without copying a byte of it.

    A list array needs the values of its rows contiguous, and a text-only row's null image between two
    images would be one of them. So the values are the images alone, compacted: a struct over the source's
    own `bytes` and `path` data buffers with new offsets that step over the null rows (a null image holds no
    data, so the buffers run on unbroken). Only offsets are computed (a few bytes a row), and there is one
    list chunk per source chunk. A chunk whose null rows do hold data falls back to one list chunk per run
    of rows with an image (offsets `0, 0, 1, 2, 2, 2` over two images), which copies nothing either.
    """
    item_type = image.type.storage_type if isinstance(image.type, pa.ExtensionType) else image.type
    chunks: list[pa.Array] = []
    for chunk in image.chunks:
        if isinstance(chunk, pa.ExtensionArray):
            chunk = chunk.storage
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        offsets = pa.array(np.concatenate([[0], np.cumsum(valid, dtype=np.int64)]).astype(np.int32))
        values = _compacted(chunk, np.flatnonzero(valid))
        if values is not None:
            chunks.append(pa.ListArray.from_arrays(offsets, values, type=pa.list_(item_type)))
        else:
            chunks.extend(_run_lists(chunk, valid))
    return pa.chunked_array(chunks, pa.list_(item_type))


def _compacted(images: pa.StructArray, rows: np.ndarray) -> pa.StructArray | None:
    """The images at `rows` as a struct over the same data buffers, or None when that cannot be done."""
    children = [_compacted_child(images.field(k), rows) for k in range(images.type.num_fields)]
    if any(child is None for child in children):
        return None
    return pa.StructArray.from_arrays(children, fields=list(images.type))


def _compacted_child(child: pa.Array, rows: np.ndarray) -> pa.Array | None:
    """The items at `rows` of a binary or string array over its own data buffer, new offsets only; None when
    another type, or when a skipped item holds data (the buffer would not run on unbroken over `rows`)."""
    kind = child.type
    if pa.types.is_binary(kind) or pa.types.is_string(kind):
        width = np.int32
    elif pa.types.is_large_binary(kind) or pa.types.is_large_string(kind):
        width = np.int64
    else:
        return None
    if not len(child):
        return child
    _, offsets_buffer, data = child.buffers()
    offsets = np.frombuffer(offsets_buffer, width)[child.offset : child.offset + len(child) + 1]
    starts, ends = offsets[rows], offsets[rows + 1]
    if (starts[1:] != ends[:-1]).any():
        return None
    new_offsets = np.append(starts, ends[-1:]) if len(rows) else offsets[:1]
    mask = None
    null_count = 0
    if child.null_count:
        # A valid image may lack bytes (prepared with embed_images=False): its null is kept.
        present = child.is_valid().to_numpy(zero_copy_only=False)[rows]
        null_count = int(len(rows) - present.sum())
        mask = pa.array(present).buffers()[1] if null_count else None
    buffers = [mask, pa.py_buffer(np.ascontiguousarray(new_offsets, width)), data]
    return pa.Array.from_buffers(kind, len(rows), buffers, null_count=null_count)


def _run_lists(chunk: pa.Array, valid: np.ndarray) -> list[pa.ListArray]:
    """One list chunk per run of rows with an image, the text-only rows around it empty lists at its ends."""
    ones = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
    # A new list chunk starts where a run of images follows a text-only row.
    starts = np.flatnonzero(valid[1:] & ~valid[:-1]) + 1
    lists = []
    for start, end in zip([0, *starts.tolist()], [*starts.tolist(), len(chunk)], strict=True):
        offsets = ones[start : end + 1] - ones[start]
        first = start + int(np.argmax(valid[start:end])) if offsets[-1] else start
        values = chunk.slice(first, int(offsets[-1]))
        lists.append(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values))
    return lists


def list_images(images: pa.ChunkedArray) -> pa.ChunkedArray:
    """A multi-image config's `images` column with a null (text-only) row read as an empty list.

    Zero copy: it already is a list column, and a null row's offsets span nothing, so dropping the null mask
    leaves an empty list. A chunk whose null rows span items (llava_hf writes none) is rebuilt from its items,
    a copy.
    """
    chunks = []
    for chunk in images.chunks:
        if isinstance(chunk, pa.ExtensionArray):
            chunk = chunk.storage
        if not chunk.null_count:
            chunks.append(chunk)
            continue
        offsets = chunk.offsets
        lengths = np.diff(offsets.to_numpy())
        if lengths[~chunk.is_valid().to_numpy(zero_copy_only=False)].any():
            lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy()
            chunks.append(pa.ListArray.from_arrays(_offsets(lengths), pc.list_flatten(chunk), type=chunk.type))
        else:
            chunks.append(pa.ListArray.from_arrays(offsets, chunk.values, type=chunk.type))
    list_type = images.type.storage_type if isinstance(images.type, pa.ExtensionType) else images.type
    return pa.chunked_array(chunks, list_type)


def _image_column(table: pa.Table | Table) -> str:
    """The source's image column: `image` (one per row) or `images` (a multi-image config's lists)."""
    return "images" if "images" in table.column_names else "image"


def _images_table(source: pa.Table) -> pa.Table:
    """The `images` column of the view over the source's image column, with the TRL schema's metadata."""
    if "images" in source.column_names:
        column = list_images(source.column("images"))
    else:
        column = image_lists(source.column("image"))
    return pa.Table.from_arrays([column], schema=IMAGES_FEATURES.arrow_schema)


class ImageListsBlock(MemoryMappedTable):
    """The `images` column over one memory-mapped file: pickles as the file's path and two replay lists.

    `source_replays` bring the file's table to the source's (`datasets`' own replays, then a selection of
    the `image` column); the list view is built on that; `replays` are what was done to the view since.
    Every table method of `MemoryMappedTable` is wrapped so that its result stays an `ImageListsBlock`.
    """

    def __init__(self, table: pa.Table, path: str, replays=None, *, source_replays=None):
        super().__init__(table, path, replays)
        self.source_replays = list(source_replays or [])

    @classmethod
    def over(cls, block: MemoryMappedTable) -> ImageListsBlock:
        name = _image_column(block)
        source_replays = [*block.replays, ("select", ([name],), {})]
        return cls(_images_table(block.table.select([name])), block.path, [], source_replays=source_replays)

    def __getstate__(self):
        # MemoryMappedTable's own state (looked up now: llava_hf's reader may add its marker to it).
        state = MemoryMappedTable.__getstate__(self)
        state["source_replays"] = self.source_replays
        return state

    def __setstate__(self, state):
        source = datasets.table._memory_mapped_arrow_table_from_file(state["path"])
        source = self._apply_replays(source, state["source_replays"])
        table = self._apply_replays(_images_table(source), state["replays"])
        ImageListsBlock.__init__(self, table, state["path"], state["replays"], source_replays=state["source_replays"])


def _keeps_class(name: str):
    stock = getattr(MemoryMappedTable, name)

    def method(self, *args, **kwargs):
        out = stock(self, *args, **kwargs)
        return ImageListsBlock(out.table, self.path, out.replays, source_replays=self.source_replays)

    method.__name__ = name
    method.__doc__ = stock.__doc__
    return method


for _name in (
    "slice",
    "filter",
    "flatten",
    "combine_chunks",
    "cast",
    "replace_schema_metadata",
    "add_column",
    "append_column",
    "remove_column",
    "set_column",
    "rename_columns",
    "drop",
    "select",
):
    setattr(ImageListsBlock, _name, _keeps_class(_name))


def _row_blocks(table: Table) -> list[list]:
    """The source table as datasets holds it: rows of blocks (files, or in-memory tables) side by side."""
    if isinstance(table, ConcatenationTable):
        return table.blocks
    return [[table]]


def _images_column(table: Table) -> Table:
    """The `images` column over `table`, one block per file holding the source's `image` (or `images`) column."""
    blocks = []
    for row_block in _row_blocks(table):
        (block,) = [b for b in row_block if {"image", "images"} & set(b.column_names)]
        if isinstance(block, MemoryMappedTable):
            blocks.append([ImageListsBlock.over(block)])
        else:
            # In-memory data is copied by pickling anyway (that is what in memory means in datasets).
            blocks.append([InMemoryTable(_images_table(block.table.select([_image_column(block)])))])
    return ConcatenationTable.from_blocks(blocks)


def _files_key(table: Table, roles: Mapping[str, str]) -> str | None:
    """A key over the files under `table` and `roles`, or None when part of it lives only in memory."""
    parts: list = [VIEW_VERSION, sorted(roles.items())]
    for row_block in _row_blocks(table):
        for block in row_block:
            if not isinstance(block, MemoryMappedTable):
                return None
            st = os.stat(block.path)
            parts.append((block.path, st.st_size, st.st_mtime_ns, block.replays))
    return Hasher.hash(parts)


def messages_array(turns: pa.ListArray, num_images: np.ndarray, roles: Mapping[str, str]) -> pa.ListArray:
    """`conversation_to_messages` of every row at once (null where a row cannot convert).

    `num_images` is each row's number of images (a bool mask for single-image data): a row's `<image>`
    tokens must be that many (each becomes an image block where it stood) or none (all its image blocks
    open its first user turn, or its first turn). The per-turn text is split in Python (only the string
    work), the lists and structs are built by Arrow from flat arrays: about ten times faster than building
    nested dicts row by row.
    """
    n = len(turns)
    num_images = np.asarray(num_images).astype(np.int64)
    lengths = pc.fill_null(pc.list_value_length(turns), 0).to_numpy()
    values = turns.flatten()
    parents = np.repeat(np.arange(n), lengths)
    keys = pa.array(list(roles), pa.string())
    role = pa.array(list(roles.values()), pa.string()).take(pc.index_in(values.field("from"), value_set=keys))
    unknown = role.is_null().to_numpy(zero_copy_only=False)
    texts = values.field("value").to_pylist()
    tokens = np.fromiter((t.count(IMAGE_TOKEN) for t in texts), np.int64, len(texts))
    row_tokens = np.bincount(parents, tokens, n)
    # One token per image, or none: for a single-image row that is at most one, and none without an image.
    bad = ((row_tokens > 0) & (row_tokens != num_images)) | (np.bincount(parents, unknown, n) > 0)
    # A row with images and no token gets their blocks first in its first user turn (or first turn).
    needs_block = (num_images > 0) & (row_tokens == 0)
    bad |= needs_block & (lengths == 0)
    first_turn = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    is_user = pc.equal(role, "user").to_numpy(zero_copy_only=False)
    user_turns = np.flatnonzero(is_user)
    user_rows, first_user = np.unique(parents[user_turns], return_index=True)
    target = first_turn.copy()
    target[user_rows] = user_turns[first_user]
    insert_at = np.zeros(len(texts), np.int64)
    rows = np.flatnonzero(needs_block & (lengths > 0))
    insert_at[target[rows]] = num_images[rows]

    block_types: list[str] = []
    block_texts: list[str | None] = []
    counts = np.empty(len(texts), np.int64)
    for k, value in enumerate(texts):
        before = len(block_types)
        if insert_at[k]:
            block_types.extend(["image"] * int(insert_at[k]))
            block_texts.extend([None] * int(insert_at[k]))
        if tokens[k]:
            for block in content_blocks(value):
                block_types.append(block["type"])
                block_texts.append(block["text"])
        else:
            block_types.append("text")
            block_texts.append(value)
        counts[k] = len(block_types) - before
    blocks = pa.StructArray.from_arrays(
        [pa.array(block_types, pa.string()), pa.array(block_texts, pa.string())], names=["type", "text"]
    )
    content = pa.ListArray.from_arrays(_offsets(counts), blocks)
    message = pa.StructArray.from_arrays([role, content], names=["role", "content"])
    return pa.ListArray.from_arrays(_offsets(lengths), message, mask=pa.array(bad))


def _offsets(counts: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))


def _messages_table(table: Table, roles: Mapping[str, str]) -> pa.Table:
    """The `messages` column for every row of `table`, in its order (null where a row cannot convert)."""
    source = table.table
    if "images" in source.column_names:
        present = pc.fill_null(pc.list_value_length(source.column("images")), 0)
    else:
        present = source.column("image").is_valid()
    message_type = MESSAGES_FEATURES.arrow_schema.field("messages").type
    chunks = []
    start = 0
    for batch in source.select(["conversations"]).to_batches(max_chunksize=TEXT_BATCH_ROWS):
        num_images = present.slice(start, batch.num_rows).to_numpy(zero_copy_only=False)
        start += batch.num_rows
        # A row outside the index mapping may be one that cannot convert (null); rows inside were checked.
        chunks.append(messages_array(batch.column(0), num_images, roles).cast(message_type))
    column = pa.chunked_array(chunks, message_type)
    return pa.Table.from_arrays([column], schema=MESSAGES_FEATURES.arrow_schema)


def _cached_messages(table: Table, roles: Mapping[str, str]) -> Table:
    """The messages column, memory-mapped from its file beside the source's files (written on first use)."""
    key = _files_key(table, roles)
    if key is None:
        return InMemoryTable(_messages_table(table, roles))
    # A folder of its own beside the dataset's files: nothing that lists the prepared files meets it.
    folder = os.path.join(os.path.dirname(_row_blocks(table)[0][0].path), VIEWS_FOLDER)
    path = os.path.join(folder, f"llava_hf-trl-messages-{key}.arrow")
    if not os.path.exists(path):
        messages = _messages_table(table, roles)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-trl-messages-")
        except OSError as e:
            # A read-only cache (shared storage mounted read-only): keep the column in memory.
            logger.info("cannot write %s (%s); the TRL messages column stays in memory", path, e)
            return InMemoryTable(messages)
        try:
            with os.fdopen(fd, "wb") as f, pa.ipc.new_stream(f, messages.schema) as writer:
                writer.write_table(messages)
            # Renamed only when complete: a reader never maps a half-written file; racing writers agree.
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return MemoryMappedTable.from_file(path)


def messages_view(ds: datasets.Dataset, roles: Mapping[str, str]) -> datasets.Dataset:
    """`to_messages` of a checked map-style dataset (see the module docstring)."""
    table = ConcatenationTable.from_tables([_cached_messages(ds.data, roles), _images_column(ds.data)], axis=1)
    info = datasets.DatasetInfo(
        features=TRL_FEATURES.copy(),
        config_name=ds.info.config_name,
        dataset_name=ds.info.dataset_name,
        description=ds.info.description,
        license=ds.info.license,
        citation=ds.info.citation,
    )
    fingerprint = Hasher.hash([VIEW_VERSION, ds._fingerprint, sorted(roles.items())])
    return datasets.Dataset(table, info=info, split=ds.split, indices_table=ds._indices, fingerprint=fingerprint)
