"""Scan a source without building it and report every problem: `llava_hf.verify` / `llava-hf verify`.

Preparing only checks what embedding needs (the file is there, not empty, starts like an image). Training
needs more, and finding out hours into a run is expensive, so `verify` also decodes every image in full
(in parallel), compares its format with its file name, guards against decompression bombs, and checks the
conversations: turns present, no empty value, human/gpt alternating from a human turn, and as many
`<image>` tokens as images.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

from PIL import Image

from .catalog import get_source
from .convert import ShardSpec, check_options, plan_source
from .errors import BadImage, SourceError
from .files import data_file_paths, file_config_name, file_source, plan_files
from .image_collections import absolute_location
from .images import BAD_IMAGE_REASONS, ImageRoot, sniff_format
from .records import IMAGE_TOKEN, Row, text_problem
from .sources import Shard, index_json_array, resolve_inputs

logger = logging.getLogger("llava_hf")

# Every reason verify reports, in the order its summary lists them.
PROBLEM_REASONS = (
    "bad_record",
    "bad_text",
    *BAD_IMAGE_REASONS,
    "undecodable",
    "decompression_bomb",
    "extension_mismatch",
    "no_turns",
    "empty_value",
    "first_turn_not_human",
    "roles_not_alternating",
    "image_token_count",
    "images_first",
)
# Reasons counted but no problem: LLaVA-NeXT's multi-image records with no <image> token (images first).
NOTE_REASONS = ("images_first",)

_EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jp2": "JPEG2000",
}
# How many problems per reason the summary and the JSON report list in full (all are counted).
EXAMPLES_PER_REASON = 1000


@dataclass(frozen=True)
class Problem:
    """One problem of one record: where it is (file, index, id, image) and what is wrong."""

    reason: str
    file: str
    index: int | None
    id: str | None
    detail: str
    image: str | None = None

    def __str__(self) -> str:
        where = self.file if self.index is None else f"{self.file}: record {self.index} (id={self.id!r})"
        return f"{where}: {self.reason}: {self.detail}"


@dataclass
class VerifyReport:
    """What `verify` found. `clean` is True when no problem (outside `ignored`) was found."""

    config: str
    records: int
    images: int
    counts: dict[str, int]
    problems: list[Problem]
    ignored: tuple[str, ...] = ()
    decoded: bool = True
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not any(
            count for reason, count in self.counts.items() if reason not in self.ignored and reason not in NOTE_REASONS
        )

    def bad_records(self) -> list[tuple[int, str | None]]:
        """(index, id) of the records with a problem not in `ignored`, in file order, each once. Ids repeat
        in some files (llava_instruct_150k), so the index is what names one record."""
        seen: dict[tuple[int, str | None], None] = {}
        for problem in sorted(self.problems, key=lambda p: (p.index is None, p.index or 0)):
            if problem.reason not in self.ignored and problem.index is not None:
                seen.setdefault((problem.index, problem.id), None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "records": self.records,
            "images": self.images,
            "decoded": self.decoded,
            "clean": self.clean,
            "ignored": list(self.ignored),
            "counts": self.counts,
            "files": self.files,
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self) -> str:
        lines = [f"{self.config}: {self.records:,} records, {self.images:,} images checked"]
        if not self.counts:
            lines.append("no problems found")
        width = max((len(r) for r in self.counts), default=0)
        for reason, count in self.counts.items():
            first = next(p for p in self.problems if p.reason == reason)
            note = " (ignored)" if reason in self.ignored else ""
            lines.append(f"  {reason:<{width}}  {count:>9,}{note}  e.g. {first}")
        return "\n".join(lines)


def check_conversation(row: Row) -> Iterator[tuple[str, str]]:
    """(reason, detail) for each conversation problem of `row`; nothing for a well-formed row."""
    turns = row.conversations
    if not turns:
        yield "no_turns", "the conversation has no turns"
        return
    for k, (_, value) in enumerate(turns):
        if not value.strip():
            yield "empty_value", f"turn {k} has an empty value"
            break
    if turns[0][0] != "human":
        yield "first_turn_not_human", f"the first turn is from {turns[0][0]!r}, expected 'human'"
    else:
        for k, (role, _) in enumerate(turns):
            expected = "human" if k % 2 == 0 else "gpt"
            if role != expected:
                yield "roles_not_alternating", f"turn {k} is from {role!r}, expected {expected!r}"
                break
    tokens = sum(value.count(IMAGE_TOKEN) for _, value in turns)
    images = len(row.image_names())
    if row.images is not None and tokens == 0 and images:
        yield "images_first", f"no {IMAGE_TOKEN} token for {images} image{'s' if images != 1 else ''}: images first"
    elif tokens != images:
        yield "image_token_count", f"{tokens} {IMAGE_TOKEN} tokens for {images} image{'s' if images != 1 else ''}"


def check_image_bytes(name: str, data: bytes, decode: bool = True) -> Iterator[tuple[str, str]]:
    """(reason, detail) for each problem of an image file's bytes: format vs extension, and with `decode`,
    a decompression bomb (checked from the header, before any pixel is decoded) or a failed full decode.
    Never raises for bad bytes."""
    fmt = sniff_format(data[:16])
    expected = _EXTENSIONS.get(os.path.splitext(name)[1].lower())
    if fmt is not None and expected is not None and fmt != expected:
        yield "extension_mismatch", f"{fmt} data under the name {name!r}"
    if not decode:
        return
    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit (and refuses above twice the limit): both are reported below.
            # Its other warnings (corrupt EXIF...) concern images that decode, which training can use.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                limit = Image.MAX_IMAGE_PIXELS
                if limit and width * height > limit:
                    yield "decompression_bomb", f"{width}x{height} pixels, more than Pillow's limit of {limit:,}"
                    return
                image.load()
    except Image.DecompressionBombError as e:
        yield "decompression_bomb", str(e)
    except Image.UnidentifiedImageError:
        yield "undecodable", "Pillow recognises no image format in these bytes"
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on hostile input
        yield "undecodable", f"{type(e).__name__}: {e}"


def _verify_shard(shard: Shard, spec: ShardSpec, decode: bool) -> tuple[list[Problem], Counter, int]:
    problems: list[Problem] = []
    counts: Counter = Counter()
    images_checked = 0
    root: ImageRoot | None = spec.open_images()
    spec = spec.bind(shard)

    def add(reason: str, index: int | None, rid: Any, detail: str, image: str | None = None) -> None:
        counts[reason] += 1
        if counts[reason] <= EXAMPLES_PER_REASON:
            problems.append(Problem(reason, spec.json_label, index, None if rid is None else str(rid), detail, image))

    for first, chat, meta in spec.batches(shard):
        rows: list[tuple[int, Row]] = []
        for k, raw in enumerate(chat):
            try:
                rows.append((first + k, spec.parse(raw, meta[k] if meta is not None else None, first + k)))
            except SourceError as e:
                add("bad_record", first + k, e.record_id, e.problem)
        named = [name for _, row in rows for name in row.image_names()]
        found = iter(root.read_many(named) if root is not None and named else [])
        for index, row in rows:
            text = text_problem(row)
            first_image = next(iter(row.image_names()), None)
            if text:
                add("bad_text", index, row.id, text, first_image)
            for reason, detail in check_conversation(row):
                add(reason, index, row.id, detail, first_image)
            for name in row.image_names():
                images_checked += 1
                result = next(found) if root is not None else BadImage("missing", f"image {name!r} has no image root")
                if isinstance(result, BadImage):
                    add(result.reason, index, row.id, str(result), name)
                    continue
                for reason, detail in check_image_bytes(name, result[1], decode):
                    add(reason, index, row.id, detail, name)
    return problems, counts, images_checked


def verify(
    name: str | os.PathLike | list | None = None,
    *,
    data_files: str | os.PathLike | list | None = None,
    data_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    sample: bool = False,
    revision: str | None = None,
    token: bool | str | None = None,
    num_proc: int | None = None,
    decode: bool = True,
    ignore: Iterable[str] = (),
    progress: bool = True,
) -> VerifyReport:
    """Check every record and image of config `name` (same inputs as `load_dataset`) without building it.

    Returns a `VerifyReport`: counts per reason, and each problem with file, record index, id and detail.
    `num_proc` processes decode images (default: all cores); `decode=False` skips the full decode;
    `ignore` lists reasons that do not make the report unclean. Raises ValueError for an unknown config
    or reason, FileNotFoundError for missing source files, SourceError for a file that is not a JSON array.
    `name` may be the user's own files, or with `data_files` the name of their config (as for load_dataset).
    """
    from .load import is_data_files

    ignored = tuple(ignore)
    unknown = [r for r in ignored if r not in PROBLEM_REASONS]
    if unknown:
        raise ValueError(f"unknown problem reason(s) {unknown}; choose from {', '.join(PROBLEM_REASONS)}")
    if data_files is None and is_data_files(name):
        name, data_files = None, name
    if data_files is not None:
        import datasets

        paths = data_file_paths(data_files)
        name = file_config_name(name, paths)
        if sample or data_dir:
            raise ValueError(f"{name}: data_files names the files to read; drop data_dir and sample")
        plan = plan_files(
            file_source(name, paths),
            image_dir=absolute_location(image_dir) if image_dir else None,
            work_dir=str(datasets.config.HF_DATASETS_CACHE),
        )
        return _verify_plan(name, plan, decode, num_proc, progress, ignored)
    source = get_source(name)
    check_options(source, data_dir=data_dir, image_dir=image_dir, sample=sample)
    try:
        plan = plan_source(
            source,
            data_dir=os.fspath(data_dir) if data_dir else None,
            image_dir=absolute_location(image_dir) if image_dir else None,
            sample=sample,
            revision=revision,
            token=token,
        )
    except SourceError as error:
        if error.reason != "not_parallel":
            raise
        # Chat and metadata files that are not parallel: one problem, the first row where they part.
        problem = Problem("bad_record", error.file, error.index, error.record_id, error.problem)
        json_path = resolve_inputs(
            source, data_dir=data_dir, image_dir=None, sample=sample, revision=revision
        ).json_path
        records = index_json_array(json_path, source.filename).num_records
        return VerifyReport(name, records, 0, {"bad_record": 1}, [problem], ignored, decode)
    return _verify_plan(name, plan, decode, num_proc, progress, ignored)


def _verify_plan(name: str, plan, decode: bool, num_proc: int | None, progress: bool, ignored: tuple) -> VerifyReport:
    logger.info(
        "%s: verifying %s records of %s, images from %s%s",
        name,
        f"{plan.chat.num_records:,}",
        plan.inputs.json_path,
        plan.inputs.image_location,
        "" if decode else " (no decoding)",
    )
    problems: list[Problem] = []
    counts: Counter = Counter()
    images = 0
    for shard_problems, shard_counts, shard_images in _run(plan.shards, plan.spec, decode, num_proc, progress):
        problems.extend(shard_problems)
        counts.update(shard_counts)
        images += shard_images
    order = {reason: i for i, reason in enumerate(PROBLEM_REASONS)}
    problems.sort(key=lambda p: (order[p.reason], p.index or 0))
    kept: list[Problem] = []
    for reason in sorted(counts, key=order.__getitem__):
        kept.extend([p for p in problems if p.reason == reason][:EXAMPLES_PER_REASON])
    ordered_counts = {reason: counts[reason] for reason in sorted(counts, key=order.__getitem__)}
    return VerifyReport(name, plan.chat.num_records, images, ordered_counts, kept, ignored, decode, plan.files())


def _run(shards: list[Shard], spec: ShardSpec, decode: bool, num_proc: int | None, progress: bool):
    from datasets.utils.tqdm import tqdm  # datasets' bar: off under datasets.disable_progress_bars(), like the rest

    workers = max(1, min(num_proc or os.cpu_count() or 1, len(shards)))
    bar = tqdm(total=sum(s.stop - s.start for s in shards), unit=" records", desc="Verifying", disable=not progress)
    with bar:
        if workers == 1:
            for shard in shards:
                result = _verify_shard(shard, spec, decode)
                bar.update(shard.stop - shard.start)
                yield result
            return
        # fork: the workers need nothing but the shard and the spec, and start at once
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = {pool.submit(_verify_shard, shard, spec, decode): shard for shard in shards}
            for future in as_completed(futures):
                shard = futures[future]
                bar.update(shard.stop - shard.start)
                yield future.result()


def write_report(report: VerifyReport, path: str | os.PathLike) -> None:
    """Write `report` as JSON to `path`."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=1, ensure_ascii=False)


def write_fix_list(report: VerifyReport, path: str | os.PathLike) -> int:
    """Write the records to skip to `path`, one "index<TAB>id" line each; returns how many.

    Drop them with `ds.select(i for i in range(len(ds)) if i not in skip)` on a dataset prepared from
    the same file (row i is record i unless rows were skipped while preparing)."""
    records = report.bad_records()
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{index}\t{rid}\n" for index, rid in records)
    return len(records)
