"""Statistics of a prepared dataset: counts, distributions, image sizes and formats, and PNG histograms.

`compute_stats(ds)` makes one pass over the dataset in Arrow batches and returns plain figures (a
JSON-serialisable dict); `StatsAccumulator` is that pass one batch at a time, for a pass that reads the
rows anyway (the Hub export puts the figures in its card without reading the rows twice).
`format_stats`, `stats_markdown`, `write_histograms` and `write_stats` only render that dict, so the
dataset card and the CLI show the same numbers.

Conventions, so that every figure is exact and reproducible:
- percentiles are nearest-rank (the smallest observed value with at least p% of values at or below it);
- a word is a whitespace-separated piece of a turn's text with the `<image>` token removed;
- images are counted once per distinct name (`image["path"]`): sizes and formats describe unique images,
  read from the file header with `PIL.Image.open` (no pixel decode).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import Counter
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont

from .records import IMAGE_TOKEN

PERCENTILES = (10, 50, 90, 99)
HISTOGRAM_BINS = 30
BATCH_ROWS = 1000
STATS_FILENAME = "stats.json"
COLUMNS = ("image", "conversations", "source")
_PLACES = ("start", "end", "inside", "absent")


class _Tally:
    """Counts of integer observations: exact percentiles and histograms in memory bounded by distinct values."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()

    def add(self, values: np.ndarray) -> None:
        uniques, counts = np.unique(values, return_counts=True)
        for value, count in zip(uniques.tolist(), counts.tolist(), strict=True):
            self.counts[value] += count

    def summary(self) -> dict[str, Any]:
        n = sum(self.counts.values())
        if not n:
            return {"count": 0}
        keys = sorted(self.counts)
        cumulative = np.cumsum([self.counts[k] for k in keys])
        figures: dict[str, Any] = {
            "count": n,
            "min": keys[0],
            "max": keys[-1],
            "mean": round(sum(k * c for k, c in self.counts.items()) / n, 2),
        }
        for p in PERCENTILES:
            rank = max(1, math.ceil(p / 100 * n))
            figures[f"p{p}"] = keys[int(np.searchsorted(cumulative, rank))]
        # Bins cover min..p99: LLaVA's long tails (ShareGPT answers of thousands of words) would otherwise
        # squash the body of the distribution into one bar; values past the last bin count as "overflow".
        figures["histogram"] = self._histogram(keys[0], figures["p99"])
        return figures

    def _histogram(self, low: int, high: int) -> dict[str, Any]:
        # Integer bins of equal width [edge_i, edge_i+1), so a bin never splits one value.
        width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BINS))
        bins = math.ceil((high - low + 1) / width)
        edges = [low + i * width for i in range(bins + 1)]
        counts = [0] * bins
        overflow = 0
        for value, count in self.counts.items():
            if value >= edges[-1]:
                overflow += count
            else:
                counts[(value - low) // width] += count
        return {"edges": edges, "counts": counts, "overflow": overflow}


class StatsAccumulator:
    """The figures of `compute_stats`, gathered one Arrow batch at a time: `add` each batch, then `result`.

    Memory is bounded by the distinct values counted, plus the set of image names already seen (unique
    images are counted by name): about 100 bytes per unique image.
    """

    def __init__(self) -> None:
        self.rows = self.image_rows = 0
        self.sources: Counter[str] = Counter()
        self.token_places: Counter[str] = Counter()
        self.turns, self.words = _Tally(), _Tally()
        self.words_by_speaker: dict[str, _Tally] = {}
        self.widths, self.heights = _Tally(), _Tally()
        self.formats: Counter[str] = Counter()
        self.seen: set[str] = set()

    def add(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Count `rows`; they need the image, conversations and source columns (KeyError if not)."""
        # Record batch by record batch: combining a table's chunks would copy its image bytes.
        for batch in rows.to_batches() if isinstance(rows, pa.Table) else (rows,):
            self._add_batch(batch)

    def _add_batch(self, batch: pa.RecordBatch) -> None:
        if "images" in batch.schema.names:
            # A multi-image config: a row has images when its list is not empty; every image is counted.
            images = batch.column("images")
            present = pc.fill_null(pc.greater(pc.list_value_length(images), 0), False).to_numpy(zero_copy_only=False)
            image = pc.list_flatten(images)
            flat_present = pc.is_valid(image).to_numpy(zero_copy_only=False)
        else:
            image = batch.column("image")
            present = flat_present = pc.is_valid(image).to_numpy(zero_copy_only=False)
        conversations, source = batch.column("conversations"), batch.column("source")
        self.rows += batch.num_rows
        for item in pc.value_counts(source).to_pylist():
            self.sources[item["values"]] += item["counts"]
        self.turns.add(pc.list_value_length(conversations).to_numpy(zero_copy_only=False))
        turns = conversations.flatten()
        values = turns.field("value")
        counts = _word_counts(values)
        self.words.add(counts)
        speakers = turns.field("from").to_numpy(zero_copy_only=False)
        for speaker in np.unique(speakers).tolist():
            self.words_by_speaker.setdefault(speaker, _Tally()).add(counts[speakers == speaker])
        self.image_rows += int(present.sum())
        self._count_token_places(values, pc.list_parent_indices(conversations).to_numpy(), present)
        self._read_new_images(image, flat_present)

    def result(self) -> dict[str, Any]:
        """The figures as `compute_stats` returns them."""
        return {
            "rows": self.rows,
            "image_rows": self.image_rows,
            "text_only_rows": self.rows - self.image_rows,
            "unique_images": len(self.seen),
            "sources": dict(sorted(self.sources.items())),
            "image_token": {place: self.token_places[place] for place in _PLACES},
            "turns": self.turns.summary(),
            "words_per_turn": {
                "all": self.words.summary(),
                "by_speaker": {speaker: tally.summary() for speaker, tally in sorted(self.words_by_speaker.items())},
            },
            "image_width": self.widths.summary(),
            "image_height": self.heights.summary(),
            "image_formats": dict(sorted(self.formats.items(), key=lambda item: (-item[1], item[0]))),
        }

    def _count_token_places(self, values: pa.StringArray, parents: np.ndarray, present: np.ndarray) -> None:
        # Where `<image>` sits in the first turn that holds it (`values` are the turns' texts, `parents`
        # their rows), for the rows with an image.
        holds = np.flatnonzero(pc.match_substring(values, IMAGE_TOKEN).to_numpy(zero_copy_only=False))
        rows, first = np.unique(parents[holds], return_index=True)
        texts = values.take(pa.array(holds[first], pa.int64()))
        start = pc.starts_with(texts, IMAGE_TOKEN).to_numpy(zero_copy_only=False)
        end = pc.ends_with(texts, IMAGE_TOKEN).to_numpy(zero_copy_only=False) & ~start
        with_image = present[rows]
        self.token_places["start"] += int((start & with_image).sum())
        self.token_places["end"] += int((end & with_image).sum())
        self.token_places["inside"] += int((~start & ~end & with_image).sum())
        self.token_places["absent"] += int(present.sum() - with_image.sum())

    def _read_new_images(self, image: pa.StructArray, present: np.ndarray) -> None:
        paths = image.field("path").to_pylist()
        data = image.field("bytes")
        for i in np.flatnonzero(present).tolist():
            if paths[i] in self.seen:
                continue
            self.seen.add(paths[i])
            header = _image_header(data[i].as_buffer(), paths[i])
            if header is None:
                self.formats["unreadable"] += 1
                continue
            (width, height), fmt = header
            self.widths.counts[width] += 1
            self.heights.counts[height] += 1
            self.formats[fmt] += 1


def compute_stats(ds: datasets.Dataset | datasets.IterableDataset, *, progress: bool = False) -> dict[str, Any]:
    """Figures about a dataset in the llava_hf schema, as a JSON-serialisable dict.

    Keys: rows, image_rows, text_only_rows, unique_images, sources (rows per `source`), image_token
    (rows with an image by where `<image>` sits in its turn: start, end, inside, absent), turns (per
    conversation), words_per_turn ({"all": ..., "by_speaker": {"human": ..., "gpt": ...}}), image_width and
    image_height (pixels, per unique image), image_formats (unique images per PIL format; "unreadable" for
    files PIL cannot open). Distributions are {count, min, max, mean, p10, p50, p90, p99, histogram:
    {edges, counts, overflow}}.

    Reads the text and each unique image's header; nothing is decoded. Raises KeyError when a column of
    the llava_hf schema is missing.
    """
    from datasets.utils.tqdm import tqdm

    accumulator = StatsAccumulator()
    columns = (
        list(COLUMNS)
        if "image" in (ds.features or {}) or "images" not in (ds.features or {})
        else ["images", *COLUMNS[1:]]
    )
    batches = ds.select_columns(columns).with_format("arrow").iter(batch_size=BATCH_ROWS)
    total = len(ds) if isinstance(ds, datasets.Dataset) else None
    with tqdm(total=total, unit=" rows", desc="statistics", disable=not progress) as bar:
        for batch in batches:
            accumulator.add(batch)
            bar.update(batch.num_rows)
    return accumulator.result()


def _word_counts(values: pa.Array) -> np.ndarray:
    text = pc.utf8_trim_whitespace(pc.replace_substring(values, IMAGE_TOKEN, " "))
    # Splitting "" gives one empty piece; a turn that is only whitespace (or only `<image>`) has no words.
    pieces = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
    return np.where(pc.equal(text, "").to_numpy(zero_copy_only=False), 0, pieces)


def _image_header(data: pa.Buffer | None, path: str) -> tuple[tuple[int, int], str] | None:
    """((width, height), format) of one image, or None when PIL cannot read it.

    PIL reads only the header from the file object, wherever in the file the frame header is: the embedded
    bytes are wrapped without a copy, and an image prepared with embed_images=False (`path` a local path or
    a zip:// URL) is opened with fsspec.
    """
    try:
        if data is not None:
            try:
                return _header(pa.BufferReader(data))
            except Exception:  # noqa: BLE001
                # Some of PIL's format probes (TIFF, small WEBP) call what a BufferReader lacks (readline, a
                # seek past the end): those images alone are read again from a copy.
                return _header(io.BytesIO(memoryview(data)))
        import fsspec

        with fsspec.open(path, "rb") as f:
            return _header(f)
    except Exception:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) on malformed data
        return None


def _header(file: Any) -> tuple[tuple[int, int], str]:
    with Image.open(file) as im:
        return im.size, im.format or "unknown"


# --- rendering ------------------------------------------------------------------------------------------


def _distributions(stats: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(file slug, label, distribution) of every distribution with observations, in display order."""
    words = stats["words_per_turn"]
    rows = [("turns", "turns per conversation", stats["turns"]), ("words_per_turn", "words per turn", words["all"])]
    for speaker, d in words["by_speaker"].items():
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", speaker)
        rows.append((f"words_per_turn_{slug}", f"words per turn ({speaker})", d))
    rows += [
        ("image_width", "image width (px)", stats["image_width"]),
        ("image_height", "image height (px)", stats["image_height"]),
    ]
    return [row for row in rows if row[2].get("count")]


def _share(count: int, total: int) -> str:
    return f"{count:,} ({100 * count / total:.1f}%)" if total else f"{count:,}"


def format_stats(stats: dict[str, Any], name: str = "dataset") -> str:
    """The figures as plain text, for a terminal."""
    rows = stats["rows"]
    lines = [
        f"{name}: {rows:,} rows, {stats['unique_images']:,} unique images, "
        f"{_share(stats['text_only_rows'], rows)} text-only rows",
        "sources: " + ", ".join(f"{s} {_share(c, rows)}" for s, c in stats["sources"].items()),
        "<image> in its turn: " + ", ".join(f"{p} {c:,}" for p, c in stats["image_token"].items() if c),
        "image formats: " + (", ".join(f"{f} {c:,}" for f, c in stats["image_formats"].items()) or "none"),
        "",
    ]
    header = ("", "min", *(f"p{p}" for p in PERCENTILES), "max", "mean")
    table = [header] + [
        (label, d["min"], *(d[f"p{p}"] for p in PERCENTILES), d["max"], d["mean"])
        for _, label, d in _distributions(stats)
    ]
    widths = [max(len(f"{row[i]}") for row in table) for i in range(len(header))]
    for row in table:
        cells = [f"{row[0]}".ljust(widths[0])] + [f"{c}".rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


STATS_CONVENTIONS = (
    "Percentiles are nearest-rank; words are whitespace-separated, `<image>` not counted; image sizes "
    "count each distinct image name once."
)


def stats_markdown(stats: dict[str, Any], heading: str = "## Statistics", *, conventions: bool = True) -> str:
    """A dataset card section (Markdown) with the figures of `compute_stats`, under `heading`.

    conventions: end with the line that says how the figures are counted (`STATS_CONVENTIONS`); a card
    with several such sections says it once instead.
    """
    rows = stats["rows"]
    lines = [
        heading,
        "",
        "| | |",
        "|---|---:|",
        f"| rows | {rows:,} |",
        f"| rows with an image | {_share(stats['image_rows'], rows)} |",
        f"| text-only rows | {_share(stats['text_only_rows'], rows)} |",
        f"| unique images | {stats['unique_images']:,} |",
        "",
        "| distribution | min | " + " | ".join(f"p{p}" for p in PERCENTILES) + " | max | mean |",
        "|---|" + "---:|" * (len(PERCENTILES) + 3),
    ]
    for _, label, d in _distributions(stats):
        cells = [d["min"], *(d[f"p{p}"] for p in PERCENTILES), d["max"], d["mean"]]
        lines.append(f"| {label} | " + " | ".join(f"{c:,}" for c in cells) + " |")
    lines += ["", "- Rows per source: " + ", ".join(f"`{s}` {_share(c, rows)}" for s, c in stats["sources"].items())]
    if stats["image_formats"]:
        formats = ", ".join(f"{f} {c:,}" for f, c in stats["image_formats"].items())
        lines.append(f"- Image formats (unique images, read from the file headers): {formats}.")
    places = ", ".join(f"{p} {c:,}" for p, c in stats["image_token"].items() if c)
    if places:
        lines.append(f"- Where `<image>` sits in its turn: {places}.")
    if conventions:
        lines += ["", STATS_CONVENTIONS]
    return "\n".join(lines) + "\n"


def write_histograms(stats: dict[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """Draw one PNG bar chart per distribution of `stats` into `out_dir`; return the file paths.

    Files: turns.png, words_per_turn.png, words_per_turn_<speaker>.png, image_width.png, image_height.png
    (a distribution with no observations gets no file).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for slug, label, d in _distributions(stats):
        title = f"{label}, unique images" if slug.startswith("image_") else label
        path = os.path.join(os.fspath(out_dir), f"{slug}.png")
        draw_histogram(d["histogram"], title, f"n={d['count']:,}  p50={d['p50']:,}  p90={d['p90']:,}").save(path)
        paths.append(path)
    return paths


def write_stats(stats: dict[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """Write `stats` to `out_dir/stats.json` and its histograms beside it (`write_histograms`).

    Returns the paths written, stats.json first. The folder is created if missing.
    """
    paths = write_histograms(stats, out_dir)
    path = os.path.join(os.fspath(out_dir), STATS_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    return [path, *paths]


def draw_histogram(histogram: dict[str, list[int]], title: str, note: str = "", size=(720, 420)) -> Image.Image:
    """A bar chart of `{edges, counts, overflow}` (integer bins [edge_i, edge_i+1), then one grey bar for
    the values beyond the last edge) drawn with Pillow."""
    width, height = size
    left, right, top, bottom = 70, 20, 50, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    edges, counts = histogram["edges"], list(histogram["counts"])
    overflow = histogram.get("overflow", 0)
    if overflow:
        counts.append(overflow)  # drawn as a last, grey bar: every value beyond the last edge
    peak = max(counts) or 1
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.text((left, 12), title, fill="black", font=font)
    if note:
        draw.text((left, 28), note, fill="#555555", font=font)
    bar_w = plot_w / len(counts)
    for i, count in enumerate(counts):
        x0 = left + i * bar_w
        y0 = top + plot_h * (1 - count / peak)
        if count:
            colour = "#999999" if overflow and i == len(counts) - 1 else "#3a6ea5"
            draw.rectangle((x0 + 1, y0, x0 + bar_w - 1, top + plot_h), fill=colour)
    draw.line((left, top, left, top + plot_h, left + plot_w, top + plot_h), fill="black")
    for value, y in ((peak, top), (peak // 2, top + plot_h / 2), (0, top + plot_h)):
        label = f"{value:,}"
        draw.text((left - 8 - draw.textlength(label, font=font), y - 6), label, fill="black", font=font)
    # About six x labels: a bar's value under its middle when bins are single values, else bin edges.
    bins = len(edges) - 1
    single = edges[1] - edges[0] == 1
    step = max(1, bins // 6)
    ticks = [(f"{edges[i]:,}", left + i * bar_w + (bar_w / 2 if single else 0)) for i in range(0, bins, step)]
    if overflow:
        ticks.append((f">{edges[-1] - 1:,}", left + bins * bar_w + bar_w / 2))
    elif not single:
        ticks.append((f"{edges[-1]:,}", left + bins * bar_w))
    for label, x in ticks:
        draw.text((x - draw.textlength(label, font=font) / 2, top + plot_h + 6), label, fill="black", font=font)
    return image
