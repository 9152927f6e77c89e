"""Statistics of a prepared dataset: counts, distributions, image sizes and formats, and PNG histograms.

`compute_stats(ds)` makes one pass over the dataset in Arrow batches and returns plain figures (a
JSON-serialisable dict); `format_stats`, `stats_markdown` and `write_histograms` only render that dict,
so the dataset card and the CLI show the same numbers.

Conventions, so that every figure is exact and reproducible:
- percentiles are nearest-rank (the smallest observed value with at least p% of values at or below it);
- a word is a whitespace-separated piece of a turn's text with the `<image>` token removed;
- images are counted once per distinct name (`image["path"]`): sizes and formats describe unique images,
  read from the file header with `PIL.Image.open` (no pixel decode).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont

from .records import IMAGE_TOKEN

PERCENTILES = (10, 50, 90, 99)
HISTOGRAM_BINS = 30
# Header bytes handed to PIL first; enough for the size of nearly every JPEG/PNG/GIF. If PIL cannot find
# the size there (a JPEG with a big EXIF block before its frame header), the whole file is used.
HEAD_BYTES = 64 << 10
BATCH_ROWS = 1000


class _Tally:
    """Counts of integer observations: exact percentiles and histograms in memory bounded by distinct values."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()

    def add(self, values: Iterable[int]) -> None:
        self.counts.update(int(v) for v in values)

    def add_counts(self, values: np.ndarray) -> None:
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


def compute_stats(ds: datasets.Dataset | datasets.IterableDataset, *, progress: bool = False) -> dict[str, Any]:
    """Figures about a dataset in the llava_hf schema, as a JSON-serialisable dict.

    Keys: rows, image_rows, text_only_rows, unique_images, sources (rows per `source`), image_token
    (rows with an image by where `<image>` sits in its turn: start, end, inside, absent), turns (per
    conversation), words_per_turn ({"all": ..., "by_speaker": {"human": ..., "gpt": ...}}), image_width and
    image_height (pixels, per unique image), image_formats (unique images per PIL format; "unreadable" for
    files PIL cannot open). Distributions are {count, min, max, mean, p10, p50, p90, p99, histogram:
    {edges, counts}}.

    Reads the text and each unique image's header; nothing is decoded. Raises KeyError when a column of
    the llava_hf schema is missing.
    """
    from datasets.utils.tqdm import tqdm

    rows = image_rows = 0
    sources: Counter[str] = Counter()
    token_places: Counter[str] = Counter()
    turns, words = _Tally(), _Tally()
    words_by_speaker: dict[str, _Tally] = {}
    widths, heights = _Tally(), _Tally()
    formats: Counter[str] = Counter()
    seen: set[str] = set()

    columns = ["image", "conversations", "source"]
    batches = ds.select_columns(columns).with_format("arrow").iter(batch_size=BATCH_ROWS)
    total = len(ds) if isinstance(ds, datasets.Dataset) else None
    with tqdm(total=total, unit=" rows", desc="statistics", disable=not progress) as bar:
        for batch in batches:
            rows += batch.num_rows
            sources.update(batch.column("source").to_pylist())
            conversations = batch.column("conversations").combine_chunks()
            turns.add_counts(pc.list_value_length(conversations).to_numpy(zero_copy_only=False))
            values = conversations.flatten()
            counts = _word_counts(values.field("value"))
            words.add_counts(counts)
            speakers = values.field("from").to_numpy(zero_copy_only=False)
            for speaker in np.unique(speakers).tolist():
                words_by_speaker.setdefault(speaker, _Tally()).add_counts(counts[speakers == speaker])
            image = batch.column("image").combine_chunks()
            present = pc.is_valid(image).to_numpy(zero_copy_only=False)
            image_rows += int(present.sum())
            _count_token_places(conversations, present, token_places)
            _read_new_images(image, present, seen, widths, heights, formats)
            bar.update(batch.num_rows)

    return {
        "rows": rows,
        "image_rows": image_rows,
        "text_only_rows": rows - image_rows,
        "unique_images": len(seen),
        "sources": dict(sorted(sources.items())),
        "image_token": {place: token_places[place] for place in ("start", "end", "inside", "absent")},
        "turns": turns.summary(),
        "words_per_turn": {
            "all": words.summary(),
            "by_speaker": {speaker: tally.summary() for speaker, tally in sorted(words_by_speaker.items())},
        },
        "image_width": widths.summary(),
        "image_height": heights.summary(),
        "image_formats": dict(sorted(formats.items(), key=lambda item: (-item[1], item[0]))),
    }


def _word_counts(values: pa.Array) -> np.ndarray:
    text = pc.utf8_trim_whitespace(pc.replace_substring(values, IMAGE_TOKEN, " "))
    # Splitting "" gives one empty piece; a turn that is only whitespace (or only `<image>`) has no words.
    pieces = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
    return np.where(pc.equal(text, "").to_numpy(zero_copy_only=False), 0, pieces)


def _count_token_places(conversations: pa.ListArray, present: np.ndarray, places: Counter[str]) -> None:
    for has_image, turns in zip(present.tolist(), conversations.to_pylist(), strict=True):
        if not has_image:
            continue
        text = next((t["value"] for t in turns if IMAGE_TOKEN in t["value"]), None)
        if text is None:
            places["absent"] += 1
        elif text.startswith(IMAGE_TOKEN):
            places["start"] += 1
        elif text.endswith(IMAGE_TOKEN):
            places["end"] += 1
        else:
            places["inside"] += 1


def _read_new_images(
    image: pa.StructArray, present: np.ndarray, seen: set[str], widths: _Tally, heights: _Tally, formats: Counter
) -> None:
    paths = image.field("path").to_pylist()
    heads = pc.binary_slice(image.field("bytes"), 0, HEAD_BYTES).to_pylist()
    for i, (has_image, path, head) in enumerate(zip(present.tolist(), paths, heads, strict=True)):
        if not has_image or path in seen:
            continue
        seen.add(path)
        header = _image_header(head, path, lambda i=i: image.field("bytes")[i].as_py())
        if header is None:
            formats["unreadable"] += 1
            continue
        (width, height), fmt = header
        widths.add((width,))
        heights.add((height,))
        formats[fmt] += 1


def _image_header(head: bytes | None, path: str, read_whole: Callable[[], bytes]) -> tuple[tuple[int, int], str] | None:
    """((width, height), format) from an image's first bytes, or None when PIL cannot read it.

    `read_whole` gives the whole file, for the rare header that does not fit in `head`.
    """
    if head is None:
        # Prepared with embed_images=False: `path` is a local path or a zip:// URL that fsspec opens.
        import fsspec

        def read_whole() -> bytes:
            with fsspec.open(path, "rb") as f:
                return f.read()

        try:
            with fsspec.open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
        except OSError:
            return None
    try:
        return _header(head)
    except Exception:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) on malformed data
        if len(head) < HEAD_BYTES:
            return None  # the head was the whole file
    try:
        return _header(read_whole())
    except Exception:
        return None


def _header(data: bytes) -> tuple[tuple[int, int], str]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size, im.format or "unknown"


# --- rendering ------------------------------------------------------------------------------------------

_DISTRIBUTIONS = (
    ("turns", "turns per conversation"),
    ("image_width", "image width (px)"),
    ("image_height", "image height (px)"),
)


def _distribution_rows(stats: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(label, stats[key]) for key, label in _DISTRIBUTIONS[:1]]
    rows.append(("words per turn", stats["words_per_turn"]["all"]))
    rows += [(f"words per turn ({s})", d) for s, d in stats["words_per_turn"]["by_speaker"].items()]
    rows += [(label, stats[key]) for key, label in _DISTRIBUTIONS[1:]]
    return [(label, d) for label, d in rows if d.get("count")]


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
        for label, d in _distribution_rows(stats)
    ]
    widths = [max(len(f"{row[i]}") for row in table) for i in range(len(header))]
    for row in table:
        cells = [f"{row[0]}".ljust(widths[0])] + [f"{c}".rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def stats_markdown(stats: dict[str, Any], heading: str = "## Statistics") -> str:
    """A dataset card section (Markdown) with the figures of `compute_stats`."""
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
    for label, d in _distribution_rows(stats):
        cells = [d["min"], *(d[f"p{p}"] for p in PERCENTILES), d["max"], d["mean"]]
        lines.append(f"| {label} | " + " | ".join(f"{c:,}" for c in cells) + " |")
    lines += ["", "Rows per source: " + ", ".join(f"`{s}` {_share(c, rows)}" for s, c in stats["sources"].items())]
    if stats["image_formats"]:
        formats = ", ".join(f"{f} {c:,}" for f, c in stats["image_formats"].items())
        lines.append(f"Image formats (unique images, read from the file headers): {formats}.")
    places = ", ".join(f"{p} {c:,}" for p, c in stats["image_token"].items() if c)
    if places:
        lines.append(f"Where `<image>` sits in its turn: {places}.")
    lines += [
        "",
        "Percentiles are nearest-rank; words are whitespace-separated, `<image>` not counted; image sizes "
        "count each distinct image name once.",
    ]
    return "\n".join(lines) + "\n"


def write_histograms(stats: dict[str, Any], out_dir: str | os.PathLike) -> list[str]:
    """Draw one PNG bar chart per distribution of `stats` into `out_dir`; return the file paths.

    Files: turns.png, words_per_turn.png, words_per_turn_<speaker>.png, image_width.png, image_height.png
    (a distribution with no observations gets no file).
    """
    os.makedirs(out_dir, exist_ok=True)
    charts = [("turns", "turns per conversation", stats["turns"])]
    charts.append(("words_per_turn", "words per turn", stats["words_per_turn"]["all"]))
    for speaker, d in stats["words_per_turn"]["by_speaker"].items():
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", speaker)
        charts.append((f"words_per_turn_{slug}", f"words per turn ({speaker})", d))
    charts += [
        ("image_width", "image width (px), unique images", stats["image_width"]),
        ("image_height", "image height (px), unique images", stats["image_height"]),
    ]
    paths = []
    for slug, title, d in charts:
        if not d.get("count"):
            continue
        path = os.path.join(os.fspath(out_dir), f"{slug}.png")
        draw_histogram(d["histogram"], title, f"n={d['count']:,}  p50={d['p50']:,}  p90={d['p90']:,}").save(path)
        paths.append(path)
    return paths


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
