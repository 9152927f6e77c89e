"""Exports to the formats trainers read: TRL messages, LLaMA-Factory sharegpt, LLaVA JSON + image folder.

One row and what each format makes of it:

    conversations=[{from: "human", value: "<image>\\nWhat are the colors of the bus?"},
                   {from: "gpt", value: "White and red."}], image={bytes: ..., path: "000000033471.jpg"}

    TRL (to_messages, to_trl):
        messages=[{role: "user", content: [{type: "image", text: None},
                                           {type: "text", text: "What are the colors of the bus?"}]},
                  {role: "assistant", content: [{type: "text", text: "White and red."}]}],
        images=[<PIL.Image>]
    LLaMA-Factory (to_llamafactory):
        {"id": ..., "conversations": <as in the source>, "images": ["images/000000033471.jpg"]}
    LLaVA (to_llava):
        the source record, key for key, and the image file at images/000000033471.jpg

Every content block carries the same two keys, `type` and `text` (None in image blocks). A list of blocks is
one Arrow column, and Arrow gives every struct in a list the union of their keys: blocks with different keys
would come back from Parquet or `Dataset.map` with extra keys set to None. A text block holding `image: None`
is exactly what breaks chat templates that test `'image' in content` (Qwen2-VL's does), while `text: None` on
an image block is harmless: templates choose a block by `type`, and TRL fills `image` into image blocks only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Literal, TextIO

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value

from .catalog import CATALOG
from .errors import BadImage
from .images import safe_name
from .records import IMAGE_TOKEN, restore_record

logger = logging.getLogger("llava_hf")

# LLaVA speaker names -> chat roles. `system` is a role in TRL, transformers chat templates and LLaMA-Factory
# alike, so it passes through; any other name is refused (pass `roles=` to map it) rather than guessed.
DEFAULT_ROLES: dict[str, str] = {"human": "user", "gpt": "assistant", "system": "system"}

TRL_FEATURES = Features(
    {
        "messages": List(
            {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
        ),
        "images": List(Image()),
    }
)

# Rows per Arrow batch while exporting: about 13 MB of images at LLaVA's ~130 KB per image.
BATCH_ROWS = 100
# How many offending rows an error message lists by index and id.
LISTED_ROWS = 5
# A TRL Parquet file is closed once it holds this many bytes of images and text.
MAX_PARQUET_BYTES = 512 << 20


# --- TRL messages -------------------------------------------------------------------------------------


def content_blocks(text: str) -> list[dict[str, str | None]]:
    """The content blocks of one turn: text pieces, and an image block wherever `<image>` stood.

    The newline that separates `<image>` from the text (`"<image>\\nWhat...?"`, `"What...?\\n<image>"`) is
    dropped with the token; everything else in the text is kept as it is.
    """
    pieces = text.split(IMAGE_TOKEN)
    blocks: list[dict[str, str | None]] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            blocks.append({"type": "image", "text": None})
            piece = piece.removeprefix("\n")
        if i < len(pieces) - 1:
            piece = piece.removesuffix("\n")
        if piece:
            blocks.append({"type": "text", "text": piece})
    return blocks or [{"type": "text", "text": ""}]


def conversation_to_messages(
    turns: Sequence[Mapping[str, str]],
    *,
    has_image: bool,
    roles: Mapping[str, str] = DEFAULT_ROLES,
    where: str = "row",
    num_images: int | None = None,
) -> list[dict[str, Any]]:
    """TRL messages for one conversation (`turns` as in the `conversations` column).

    A row with an image and no `<image>` in its text gets the image block first in its first user turn,
    where LLaVA and TRL put it. Raises ValueError (naming `where`) for a speaker not in `roles`, more than
    one `<image>` in a row (LLaVA rows have at most one image), or `<image>` in a text-only row.
    With `num_images` (a multi-image row), each image block stands where its `<image>` stood; with no token
    at all (images first) the `num_images` blocks open the first user turn; any other count is refused.
    """
    problem = _token_problem([turn["value"] for turn in turns], has_image, num_images)
    problem = problem or _role_problem(turns, roles)
    if problem:
        raise ValueError(f"{where}: {problem}")
    messages = [{"role": roles[turn["from"]], "content": content_blocks(turn["value"])} for turn in turns]
    if has_image and not any(block["type"] == "image" for m in messages for block in m["content"]):
        first_user = next((m for m in messages if m["role"] == "user"), messages[0] if messages else None)
        if first_user is None:
            raise ValueError(f"{where}: has an image but no turns to put it in")
        first_user["content"][:0] = [{"type": "image", "text": None} for _ in range(num_images or 1)]
    return messages


def _token_problem(values: Sequence[str], has_image: bool, num_images: int | None = None) -> str | None:
    tokens = sum(value.count(IMAGE_TOKEN) for value in values)
    if num_images is not None:  # a multi-image row: one token per image, or none (images first)
        if tokens and tokens != num_images:
            return f"{tokens} {IMAGE_TOKEN!r} tokens for {num_images} images; expected {num_images} or none"
        return None
    if tokens > 1:
        return f"{tokens} {IMAGE_TOKEN!r} tokens but at most one image"
    if tokens and not has_image:
        return f"{IMAGE_TOKEN!r} in a text-only row (no image to put there)"
    return None


def _role_problem(turns: Sequence[Mapping[str, str]], roles: Mapping[str, str]) -> str | None:
    for turn in turns:
        if turn["from"] not in roles:
            return (
                f"speaker {turn['from']!r} has no chat role (known: {', '.join(roles)}); pass roles={{...}} to map it"
            )
    return None


def to_messages(
    ds: datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict, *, roles: Mapping[str, str] | None = None
) -> datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict:
    """The dataset in TRL's conversational vision format: columns `messages` and `images`, nothing else.

    `messages` is a list of `{"role", "content"}` with content blocks `{"type": "image", "text": None}` and
    `{"type": "text", "text": ...}` (an image block wherever `<image>` stood); `images` holds the row's image,
    or a multi-image config's images in order (an empty list for text-only rows). Give it to
    `trl.SFTTrainer(train_dataset=...)` with a vision-language processor. `roles` adds to or overrides
    `DEFAULT_ROLES`.

    A `Dataset` gives a plain `Dataset` whose `features` are `TRL_FEATURES`: it concatenates, interleaves,
    shuffles, maps, filters, converts with `to_iterable_dataset()` and pickles to DataLoader workers like
    any other, and views of single- and multi-image configs concatenate with each other. Its `messages`
    column is computed once from the text (no image is read) and cached as an Arrow file in
    `llava_hf_views/` beside the dataset's own files, keyed by their identity and `roles`; its `images`
    column is a list view over the source's memory-mapped image column: no image byte is copied, and a
    pickled copy re-opens the same file. An `IterableDataset` gets a `map` instead.

    For a `Dataset` the conversations are checked first (one pass over the text, no images): ValueError lists
    the first offending rows by index and id when a speaker has no role, a row holds more than one `<image>`,
    or a text-only row holds one (a multi-image row: `<image>` tokens neither one per image nor none).
    Filter such rows out (`ds.filter`) or map the speaker with `roles=`.
    """
    role_map = {**DEFAULT_ROLES, **(roles or {})}
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(ds)({split: to_messages(part, roles=role_map) for split, part in ds.items()})
    if isinstance(ds, datasets.IterableDataset):
        # Streaming rows are checked as they arrive; errors then name the row's id.
        return ds.map(
            partial(_messages_batch, roles=role_map),
            batched=True,
            remove_columns=list(ds.features or ds.column_names or ()),
            features=TRL_FEATURES,
        )
    check_rows(ds, roles=role_map)
    from .trl_view import messages_view

    return messages_view(ds, role_map)


def _messages_batch(batch: dict[str, list], *, roles: Mapping[str, str]) -> dict[str, list]:
    ids = batch.get("id") or [None] * len(batch["conversations"])
    # A streamed multi-image config has `images` (a list per row, None for text-only), not `image`.
    multi = "image" not in batch and "images" in batch
    pictures = batch["images"] if multi else batch["image"]
    messages, images = [], []
    for rid, turns, image in zip(ids, batch["conversations"], pictures, strict=True):
        where = f"row id={rid!r}" if rid is not None else "row"
        if multi:
            image = list(image or [])
            messages.append(
                conversation_to_messages(turns, has_image=bool(image), roles=roles, where=where, num_images=len(image))
            )
            images.append(image)
            continue
        messages.append(conversation_to_messages(turns, has_image=image is not None, roles=roles, where=where))
        images.append([] if image is None else [image])
    return {"messages": messages, "images": images}


def check_rows(
    ds: datasets.Dataset, *, roles: Mapping[str, str] | None = DEFAULT_ROLES, turns_needed: bool = True
) -> None:
    """Raise ValueError listing the rows (index and id) that cannot become TRL messages or LLaMA-Factory
    records: more than one `<image>`, `<image>` in a text-only row, images and no turns (unless
    `turns_needed` is False), or (unless `roles` is None) a speaker not in `roles`.

    Reads the text columns and the image column's null mask only, never image bytes.
    """
    bad: list[str] = []
    total = 0
    offset = 0
    multi = "images" in ds.features
    for batch, present in _text_batches(ds):
        turns = batch.column("conversations").combine_chunks()
        values = turns.flatten()
        parents = pc.list_parent_indices(turns).to_numpy()
        counts = pc.count_substring(values.field("value"), IMAGE_TOKEN).to_numpy().astype(float)
        tokens = np.bincount(parents, counts, len(turns))
        unknown_rows = np.zeros(len(turns), bool)
        if roles is not None:
            unknown = pc.invert(pc.is_in(values.field("from"), value_set=pa.array(list(roles), pa.string())))
            unknown_rows = np.bincount(parents, unknown.to_numpy(zero_copy_only=False).astype(float), len(turns)) > 0
        # One token per image (a single-image row: at most one, and none without an image); a multi-image
        # row may have none at all (images first).
        bad_tokens = (tokens > 0) & (tokens != present) if multi else (tokens > 1) | ((tokens > 0) & ~present)
        # An image needs a turn to go in: a row with images and no turns has no messages to give.
        lengths = pc.fill_null(pc.list_value_length(turns), 0).to_numpy()
        no_turns = (lengths == 0) & (present > 0) & turns_needed
        rows = np.flatnonzero(bad_tokens | unknown_rows | no_turns)
        total += len(rows)
        if rows.size and len(bad) < LISTED_ROWS:
            for i in rows[: LISTED_ROWS - len(bad)]:
                row = batch.slice(int(i), 1).to_pylist()[0]
                turns_i = row["conversations"]
                problem = _token_problem(
                    [t["value"] for t in turns_i], bool(present[i]), int(present[i]) if multi else None
                )
                problem = problem or _role_problem(turns_i, roles or {})
                if not problem:
                    many = multi and int(present[i]) > 1
                    problem = (
                        "has images but no turns to put them in" if many else "has an image but no turns to put it in"
                    )
                bad.append(f"row {offset + int(i)} (id={row['id']!r}): {problem}")
        offset += batch.num_rows
    if total:
        raise ValueError(
            f"{total:,} rows cannot be exported: " + "; ".join(bad) + ("; ..." if total > len(bad) else "") + ". "
            "Filter them out first (ds.filter) or map unknown speakers with roles={...}."
        )


def _text_batches(ds: datasets.Dataset, batch_rows: int = 10_000) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """(id + conversations batch, image-present mask) pairs over `ds`, without touching image bytes; for a
    multi-image config, the number of images of each row instead of the mask."""
    if "images" in ds.features:
        present = pc.fill_null(pc.list_value_length(ds.data.column("images")), 0)
    else:
        present = pc.is_valid(ds.data.column("image"))
    # After select/shuffle/filter a Dataset is an index mapping onto its Arrow table; the mask must follow it.
    if ds._indices is not None:
        present = present.take(ds._indices.column(0))
    present = present.to_numpy(zero_copy_only=False)
    start = 0
    for batch in ds.select_columns(["id", "conversations"]).with_format("arrow").iter(batch_size=batch_rows):
        yield batch, present[start : start + batch.num_rows]
        start += batch.num_rows


def to_trl(
    ds: datasets.Dataset | datasets.IterableDataset, out_dir: str | os.PathLike, *, progress: bool = True
) -> dict:
    """Write `to_messages(ds)` as Parquet files (`train-00000.parquet`, ...) in `out_dir`.

    `datasets.load_dataset("parquet", data_dir=out_dir, split="train")` reads them back as `messages` and
    `images` (decoded to PIL), ready for TRL, without llava_hf. Image bytes are copied from the Arrow files
    as they are (no decode, no re-encode); memory stays at one batch of rows.

    Returns {"files": [...], "rows": n, "images": n}. Raises ValueError like `check_rows`, or when `out_dir`
    already holds `train-*.parquet` files (they would mix with the new ones). The files are written under
    hidden temporary names and take their names only when every row is written: a failed export leaves
    nothing that loads as a (partial) dataset. A dataset of no rows is a ValueError (datasets loads no
    Parquet split of no rows).
    """
    os.makedirs(out_dir, exist_ok=True)
    stale = sorted(f for f in os.listdir(out_dir) if f.startswith("train-") and f.endswith(".parquet"))
    if stale:
        raise ValueError(f"{out_dir} already holds {stale[0]} (and {len(stale) - 1} more); choose an empty folder")
    if isinstance(ds, datasets.Dataset):
        check_rows(ds)
    schema = TRL_FEATURES.arrow_schema
    files: list[str] = []
    temporary: list[str] = []  # files[k] is written as temporary[k], renamed when all are written
    writer: pq.ParquetWriter | None = None
    written = rows = images = 0
    done = False
    try:
        multi = "images" in (ds.features or {})
        columns = ["id", "images" if multi else "image", "conversations"]
        for batch in _progress(_arrow_batches(ds, columns), ds, progress, "TRL Parquet"):
            records = batch.select(["id", "conversations"]).to_pylist()
            if multi:
                # A multi-image config: its lists as they are, a null (text-only) list as an empty one.
                lists = batch.column("images").combine_chunks()
                counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
                offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
                image_lists = pa.ListArray.from_arrays(offsets, pc.list_flatten(lists))
                messages = [
                    conversation_to_messages(
                        r["conversations"],
                        has_image=bool(n),
                        where=f"row {rows + i} (id={r['id']!r})",
                        num_images=int(n),
                    )
                    for i, (r, n) in enumerate(zip(records, counts.tolist(), strict=True))
                ]
            else:
                image = batch.column("image").combine_chunks()
                present = pc.is_valid(image)
                messages = [
                    conversation_to_messages(
                        r["conversations"], has_image=bool(p), where=f"row {rows + i} (id={r['id']!r})"
                    )
                    for i, (r, p) in enumerate(zip(records, present.to_pylist(), strict=True))
                ]
                # Each row's `images` list is its one image or nothing: a list view over the image structs.
                offsets = pa.array(np.concatenate([[0], np.cumsum(present.to_numpy(zero_copy_only=False))]), pa.int32())
                image_lists = pa.ListArray.from_arrays(offsets, image.filter(present))
            table = pa.Table.from_arrays(
                [pa.array(messages, schema.field("messages").type), image_lists], schema=schema
            )
            if writer is None:
                files.append(os.path.join(out_dir, f"train-{len(files):05d}.parquet"))
                temporary.append(os.path.join(out_dir, f".{os.path.basename(files[-1])}.{os.getpid()}.tmp"))
                writer = pq.ParquetWriter(temporary[-1], schema)
            writer.write_table(table)
            written += table.nbytes
            rows += table.num_rows
            images += len(image_lists.flatten())
            if written >= MAX_PARQUET_BYTES:
                writer.close()
                writer, written = None, 0
        if writer is not None:
            writer.close()
            writer = None
        if not files:  # datasets loads no Parquet split of no rows: say so, rather than leave a folder it refuses
            raise ValueError(f"no rows to export to {out_dir}: the dataset is empty")
        for tmp, path in zip(temporary, files, strict=True):
            os.replace(tmp, path)
        done = True
    finally:
        if writer is not None:
            writer.close()
        if not done:
            for tmp in temporary:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
    return {"files": files, "rows": rows, "images": images}


# --- files on disk: image folder and JSON writers ------------------------------------------------------


class ImageFolder:
    """Writes image bytes under `root` by their source names, each name once, never over another file.

    A name seen again with other bytes (two different pictures under one name, e.g. in a mixture of
    sources) raises instead of silently keeping one of them. A file already in the folder (an earlier
    export) is kept when it holds the same bytes and is an error when it holds others: rows of that export
    would show another picture. No write goes through a symbolic link or into a folder that resolves
    outside `within` (the export folder). `discard()` removes what this writer created, for a failed export.
    """

    def __init__(self, root: str, within: str | None = None):
        self.root = root
        self.within = os.path.realpath(within or root)
        self.written = 0
        self.created: list[str] = []
        self._seen: dict[str, tuple[int, int]] = {}

    def write(self, image: Mapping[str, Any], where: str) -> str:
        """Write one `{bytes, path}` image; return its name relative to `root`."""
        if image.get("bytes") is None:
            raise ValueError(
                f"{where}: image {image.get('path')!r} has no embedded bytes. A dataset prepared with "
                "embed_images=False keeps absolute paths, not the source's names; prepare it with "
                "embed_images=True to export it"
            )
        try:
            name = safe_name(image["path"])
        except BadImage as e:
            raise ValueError(f"{where}: {e}") from None
        data = image["bytes"]
        fingerprint = (len(data), zlib.crc32(data))
        seen = self._seen.get(name)
        if seen is None:
            self._put(os.path.join(self.root, name), data, where)
            self._seen[name] = fingerprint
            self.written += 1
        elif seen != fingerprint:
            raise ValueError(f"{where}: image name {name!r} was already written with other bytes")
        return name

    def _put(self, path: str, data: bytes, where: str) -> None:
        folder = os.path.dirname(path)
        _check_inside(folder, self.within, where)
        os.makedirs(folder, exist_ok=True)
        try:
            # O_EXCL: never over an existing file, nor through a symlink (O_EXCL does not follow the last one).
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
        except FileExistsError:
            self._check_same(path, data, where)
            return
        self.created.append(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def _check_same(self, path: str, data: bytes, where: str) -> None:
        remedy = "export into an empty folder, or remove it first"
        if os.path.islink(path):
            raise ValueError(f"{where}: {path} is a symbolic link; an export never writes through one ({remedy})")
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{where}: {path} exists and is not a regular file ({remedy})")
            if st.st_size != len(data) or f.read(len(data) + 1) != data:
                raise ValueError(
                    f"{where}: {path} already exists with other bytes (from an earlier export?); replacing it "
                    f"would change the picture of that export's rows: {remedy}"
                )

    def discard(self) -> None:
        """Remove the image files this writer created (the folders stay)."""
        for path in self.created:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self.created.clear()


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO under an image name must not block the check
# The export's own record of the files it wrote, so that a later export may replace them and nothing else.
EXPORT_MANIFEST = ".llava_hf_export.json"


def _check_inside(path: str, folder_real: str, where: str) -> None:
    """ValueError unless `path`, its symlinks resolved, stays inside `folder_real`."""
    real = os.path.realpath(path)
    if real != folder_real and not real.startswith(folder_real.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"{where}: {path} resolves to {real}, outside the export folder {folder_real} (a symbolic link?); "
            "an export never writes outside its folder"
        )


def _own_files(out: str) -> set[str]:
    """The file names (relative to `out`) that earlier llava_hf exports wrote there."""
    path = os.path.join(out, EXPORT_MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return set(json.load(f).get("files", []))
    except FileNotFoundError:
        return set()
    except (ValueError, AttributeError) as e:
        raise ValueError(
            f"{path} is not an export record llava_hf wrote ({e}); remove it or choose another folder"
        ) from e


def _check_targets(out: str, names: Sequence[str], overwrite: bool) -> None:
    """Refuse, before anything is written, files of these names that llava_hf did not write (unless
    `overwrite`), and any of them that is a link or resolves outside `out`."""
    os.makedirs(out, exist_ok=True)
    out_real = os.path.realpath(out)
    own = _own_files(out)
    for name in names:
        path = os.path.join(out, name)
        _check_inside(os.path.dirname(path), out_real, name)
        if os.path.islink(path):
            raise ValueError(f"{path} is a symbolic link; an export never writes through one: remove it first")
        if os.path.lexists(path) and name not in own and not overwrite:
            raise ValueError(
                f"{path} already exists and was not written by a llava_hf export; pass overwrite=True (--overwrite) to "
                "replace it, or choose another folder"
            )


def _record_own(out: str, names: Sequence[str]) -> None:
    with _replaced_on_success(os.path.join(out, EXPORT_MANIFEST)) as f:
        json.dump({"files": sorted(_own_files(out) | set(names))}, f, indent=1)


@contextlib.contextmanager
def _replaced_on_success(path: str) -> Iterator[TextIO]:
    """A text file written under a temporary name beside `path`, renamed to `path` only when the block
    succeeds: a failed export leaves nothing that looks complete."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def _discarded_on_failure(folder: ImageFolder) -> Iterator[ImageFolder]:
    """Remove the image files `folder` created when the block fails: a failed export adds nothing."""
    try:
        yield folder
    except BaseException:
        folder.discard()
        raise


class JsonArrayWriter:
    """A JSON array written into `file` one record at a time; `end()` closes the array."""

    def __init__(self, file: TextIO):
        self.file = file
        self.file.write("[")
        self.count = 0

    def add(self, record: Any) -> None:
        self.file.write(",\n" if self.count else "\n")
        self.file.write(json.dumps(record, ensure_ascii=False))
        self.count += 1

    def end(self) -> None:
        self.file.write("\n]\n")


# --- back to LLaVA --------------------------------------------------------------------------------------


def to_llava(
    ds: datasets.Dataset | datasets.IterableDataset,
    out_dir: str | os.PathLike,
    *,
    json_name: str | None = None,
    metadata_name: str | None = None,
    image_folder: str = "images",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the dataset as LLaVA's training code reads it: a JSON array plus an image folder.

    `out_dir/<json_name>` holds the source records rebuilt key for key (the `extra` column restores int ids,
    extra record and turn keys); `out_dir/<image_folder>/<name>` holds each image's bytes under its name in
    the source, so LLaVA's `--data_path out/x.json --image_folder out/images` works. Pretrain configs also
    get their metadata file (`metadata.json`, `blip_laion_cc_sbu_558k_meta.json`), rows parallel to the chat
    file. Names default to the source's file names (`llava.json` when the dataset is not one config).
    Streams: one batch of rows in memory, every image written once.

    The export never destroys what it did not write: a JSON file of the same name that no llava_hf export
    wrote there is refused (pass `overwrite=True` to replace it); an image file already in the folder is
    kept when it holds the same bytes and refused when it holds others (an earlier export's rows would
    show another picture); nothing is written through a symbolic link or outside `out_dir`. A failed export
    removes the image files it created and leaves the JSON files as they were.

    Returns {"json", "metadata", "image_folder", "rows", "images", "text_only", "metadata_rows_not_written"}.
    Raises ValueError for a row whose image has no embedded bytes (prepared with embed_images=False), an
    image name that escapes the folder, one name used for two different images, or a file it must not
    replace (the message names it).
    """
    source = CATALOG.get(ds.info.config_name or "")
    json_name = json_name or (source.filename if source else "llava.json")
    metadata_name = metadata_name or (source.metadata_filename if source else None)
    out = os.fspath(out_dir)
    json_path = os.path.join(out, json_name)
    metadata_path = os.path.join(out, metadata_name) if metadata_name else None
    _check_targets(out, [json_name, *([metadata_name] if metadata_name else [])], overwrite)
    folder = ImageFolder(os.path.join(out, image_folder), within=out)
    text_only = lost_metadata = 0
    with _discarded_on_failure(folder), contextlib.ExitStack() as files:
        chat = JsonArrayWriter(files.enter_context(_replaced_on_success(json_path)))
        metadata = JsonArrayWriter(files.enter_context(_replaced_on_success(metadata_path))) if metadata_path else None
        for row, where in _rows(ds, progress, "LLaVA JSON"):
            if "images" in row:  # a multi-image config: every image written, the names kept as a list
                names = [folder.write(image, where) for image in row["images"]] if row["images"] is not None else None
                text_only += not names
                record, meta = restore_record({**row, "images": names}, with_metadata=metadata is not None)
            else:
                name = folder.write(row["image"], where) if row["image"] is not None else None
                text_only += name is None
                record, meta = restore_record({**row, "image": name}, with_metadata=metadata is not None)
            chat.add(record)
            if metadata is not None:
                metadata.add(meta)
            elif any(row[k] is not None for k in ("caption", "blip_caption", "url")):
                lost_metadata += 1
        for writer in (chat, metadata):
            if writer is not None:
                writer.end()
    _record_own(out, [json_name, *([metadata_name] if metadata_name else [])])
    if lost_metadata:
        logger.warning(
            "%s rows carry pretrain metadata (caption, blip_caption, url) that the chat JSON does not hold; "
            "pass metadata_name= to write it",
            f"{lost_metadata:,}",
        )
    return {
        "json": json_path,
        "metadata": metadata_path,
        "image_folder": folder.root,
        "rows": chat.count,
        "images": folder.written,
        "text_only": text_only,
        "metadata_rows_not_written": lost_metadata,
    }


# --- LLaMA-Factory ------------------------------------------------------------------------------------

# The sharegpt tags that read the source's own `from`/`value` turns (LLaMA-Factory's defaults, spelled out).
LLAMAFACTORY_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}


def llamafactory_stanza(name: str, file_name: str) -> dict[str, Any]:
    """The `dataset_info.json` entry that registers an exported file with LLaMA-Factory."""
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images"},
            "tags": dict(LLAMAFACTORY_TAGS),
        }
    }


def to_llamafactory(
    ds: datasets.Dataset | datasets.IterableDataset,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    image_folder: str = "images",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write LLaMA-Factory's sharegpt layout: `<name>.jsonl`, an image folder and `dataset_info.json`.

    Each line is `{"id", "conversations", "images"}`: the turns as in the source (`<image>` tokens in the
    text, which LLaMA-Factory counts against `images`), and image paths relative to `out_dir`. Use
    `dataset_dir: out_dir` and `dataset: <name>` in the LLaMA-Factory config; the entry is added to (or
    replaces the same name in) `out_dir/dataset_info.json`. A row with an image and no `<image>` gets one
    before its first human turn's text, where LLaVA puts it.

    LLaMA-Factory skips, with only a log line, conversations whose speakers do not alternate human/gpt
    (an optional system turn first) or that end on a human turn; those rows are written anyway and counted
    in "llamafactory_skips" with the first ids, so nothing is dropped without you knowing.

    Like `to_llava`, it never replaces a `<name>.jsonl` it did not write (unless `overwrite=True`) nor an
    image file with other bytes, and never writes through a symbolic link or outside `out_dir`.

    Returns {"name", "file", "dataset_info", "stanza", "rows", "images", "image_token_added",
    "llamafactory_skips": {"count", "examples"}}. Raises ValueError like `check_rows` and `to_llava`.
    """
    name = name or f"llava_hf_{ds.info.config_name or 'dataset'}"
    out = os.fspath(out_dir)
    path = os.path.join(out, f"{name}.jsonl")
    if isinstance(ds, datasets.Dataset):
        # Speakers LLaMA-Factory does not know are counted below, not refused; a row with an image and no
        # turn is refused by the writer itself, naming the row.
        check_rows(ds, roles=None, turns_needed=False)
    _check_targets(out, [f"{name}.jsonl", "dataset_info.json"], overwrite=True)
    _check_targets(out, [f"{name}.jsonl"], overwrite)
    # The existing dataset_info.json read (and refused when it is no object) before anything is written.
    info_path = os.path.join(out, "dataset_info.json")
    info: dict[str, Any] = {}
    if os.path.exists(info_path):
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{info_path} is not JSON ({e}); fix or remove it, then export again") from None
        if not isinstance(info, dict):
            raise ValueError(
                f"{info_path} holds a JSON {type(info).__name__}, not the object of datasets LLaMA-Factory "
                "reads; fix or remove it, then export again"
            )
    folder = ImageFolder(os.path.join(out, image_folder), within=out)
    rows = added = skipped = 0
    skips: list[str] = []
    with _discarded_on_failure(folder), _replaced_on_success(path) as f:
        for row, where in _rows(ds, progress, "LLaMA-Factory"):
            record, token_added = _llamafactory_record(row, where, folder, image_folder)
            added += token_added
            reason = _llamafactory_skip_reason(record["conversations"])
            if reason:
                skipped += 1
                if len(skips) < LISTED_ROWS:
                    skips.append(f"{where}: {reason}")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            rows += 1
    stanza = llamafactory_stanza(name, os.path.basename(path))
    with _replaced_on_success(info_path) as f:
        json.dump({**info, **stanza}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    _record_own(out, [f"{name}.jsonl"])
    if skipped:
        logger.warning("%s rows will be skipped by LLaMA-Factory: %s", f"{skipped:,}", "; ".join(skips))
    return {
        "name": name,
        "file": path,
        "dataset_info": info_path,
        "stanza": stanza,
        "rows": rows,
        "images": folder.written,
        "image_token_added": added,
        "llamafactory_skips": {"count": skipped, "examples": skips},
    }


def _llamafactory_record(
    row: Mapping[str, Any], where: str, folder: ImageFolder, image_folder: str
) -> tuple[dict[str, Any], bool]:
    """(the JSONL record of one row, whether an `<image>` token was added to its text)."""
    turns = [{"from": t["from"], "value": t["value"]} for t in row["conversations"]]
    pictures = (row["images"] or []) if "images" in row else [row["image"]] if row["image"] is not None else []
    num_images = len(pictures) if "images" in row else None
    problem = _token_problem([t["value"] for t in turns], bool(pictures), num_images)
    if problem:
        raise ValueError(f"{where}: {problem}")
    images = []
    added = False
    if pictures:
        images.extend(f"{image_folder}/{folder.write(picture, where)}" for picture in pictures)
        # LLaMA-Factory counts `<image>` tokens against images; LLaVA puts a missing one before the question.
        if not any(IMAGE_TOKEN in t["value"] for t in turns):
            if not turns:
                raise ValueError(f"{where}: has an image but no turns to put it in")
            first = next((t for t in turns if t["from"] == "human"), turns[0])
            first["value"] = f"{IMAGE_TOKEN}\n" * len(pictures) + first["value"]
            added = True
    return {"id": row["id"], "conversations": turns, "images": images}, added


def _llamafactory_skip_reason(turns: Sequence[Mapping[str, str]]) -> str | None:
    # LLaMA-Factory's sharegpt converter: a leading system turn is the system prompt; then human and gpt
    # must alternate, starting with human, and there must be an even number of them.
    speakers = [t["from"] for t in turns]
    if speakers and speakers[0] == LLAMAFACTORY_TAGS["system_tag"]:
        speakers = speakers[1:]
    expected = (LLAMAFACTORY_TAGS["user_tag"], LLAMAFACTORY_TAGS["assistant_tag"])
    for i, speaker in enumerate(speakers):
        if speaker != expected[i % 2]:
            return f"turn {i} is {speaker!r}, LLaMA-Factory expects {expected[i % 2]!r}"
    if not speakers or len(speakers) % 2:
        return f"{len(speakers)} human/gpt turns, LLaMA-Factory expects an even number"
    return None


# --- prepared configs -> trainer formats -----------------------------------------------------------------

TrainerFormat = Literal["trl", "llamafactory", "llava"]
# What each format of `export_for_trainer` writes (and `llava-hf export --format` shows).
TRAINER_FORMATS: dict[str, str] = {
    "trl": "TRL messages (Parquet)",
    "llamafactory": "LLaMA-Factory sharegpt (JSONL + images + dataset_info.json)",
    "llava": "LLaVA JSON + image folder",
}


def export_for_trainer(
    configs: str | Sequence[str],
    out_dir: str | os.PathLike,
    format: TrainerFormat,
    *,
    num_proc: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **load_options: Any,
) -> dict[str, dict]:
    """Load configs and write each in a trainer's format: into `out_dir` for one config, into
    `out_dir/<config>` for several.

    Each config is `llava_hf.load_dataset(config, num_proc=num_proc, **load_options)` (prepared once, then
    from the cache). format: "trl" (`to_trl`), "llamafactory" (`to_llamafactory`) or "llava" (`to_llava`).
    Returns, by config name, what that function returns plus "out_dir" (the folder written). Raises
    ValueError for an unknown format or config, and what loading and the writer raise. `overwrite`:
    "llamafactory" and "llava" replace files of their names that no llava_hf export wrote (see `to_llava`);
    "trl" refuses a folder holding Parquet files whatever it is.
    """
    from .load import load_dataset

    writers = {"trl": to_trl, "llamafactory": to_llamafactory, "llava": to_llava}
    if format not in writers:
        raise ValueError(f"format must be one of {tuple(writers)}, got {format!r}")
    names = [configs] if isinstance(configs, str) else list(configs)
    results = {}
    for name in names:
        ds = load_dataset(name, num_proc=num_proc, **load_options)
        out = os.fspath(out_dir) if len(names) == 1 else os.path.join(out_dir, name)
        logger.info("%s: %s rows; writing %s to %s", name, f"{len(ds):,}", TRAINER_FORMATS[format], out)
        options = {"overwrite": overwrite} if format != "trl" else {}
        results[name] = {"out_dir": out, **writers[format](ds, out, progress=progress, **options)}
    return results


# --- shared iteration -----------------------------------------------------------------------------------


def _arrow_batches(
    ds: datasets.Dataset | datasets.IterableDataset, columns: Sequence[str], batch_rows: int = BATCH_ROWS
) -> Iterator[pa.Table]:
    # Arrow batches are never decoded: image bytes stay bytes, and a Dataset without an index mapping is
    # sliced from its memory-mapped files without a copy.
    yield from ds.select_columns(list(columns)).with_format("arrow").iter(batch_size=batch_rows)


def _rows(ds: datasets.Dataset | datasets.IterableDataset, progress: bool, desc: str) -> Iterator[tuple[dict, str]]:
    """(row with the image as {bytes, path}, "row i (id=...)") pairs, one batch in memory."""
    index = 0
    for batch in _progress(_arrow_batches(ds, list(ds.features)), ds, progress, desc):
        for row in batch.to_pylist():
            yield row, f"row {index} (id={row['id']!r})"
            index += 1


def _progress(batches: Iterator[pa.Table], ds: Any, progress: bool, desc: str) -> Iterator[pa.Table]:
    from datasets.utils.tqdm import tqdm

    total = len(ds) if isinstance(ds, datasets.Dataset) else None
    with tqdm(total=total, unit=" rows", desc=desc, disable=not progress) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.num_rows)
