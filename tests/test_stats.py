"""Statistics (figures checked exactly on the fake mix665k), PNG histograms, and the HTML preview."""

from __future__ import annotations

import base64
import io
import json
import re

import datasets
import pytest
from conftest import jpeg
from PIL import Image

import llava_hf
from llava_hf.cli import main
from llava_hf.features import FEATURES
from llava_hf.preview import write_preview
from llava_hf.stats import (
    STATS_CONVENTIONS,
    StatsAccumulator,
    _Tally,
    compute_stats,
    stats_markdown,
    write_histograms,
    write_stats,
)


def load(release, name, cache_dir, **kw):
    return llava_hf.load_dataset(name, cache_dir=cache_dir, **{**release.options(name), **kw})


def table_of(rows: list[dict]) -> datasets.Dataset:
    """A dataset in the llava_hf schema from literal rows (image as {bytes, path} or None)."""
    full = [{"source": "test", "caption": None, "blip_caption": None, "url": None, "extra": None, **r} for r in rows]
    return datasets.Dataset.from_list(full, features=FEATURES)


def turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


# Words per turn of the fake mix665k, counted by hand (`<image>` not a word):
#   human: 10 (bus), 12 + 5 (gqa), 4 + 7 (ocr_vqa book), 5 (comedy), 13 (textvqa), 12 (vg region), 5 (sky),
#          14 (ShareGPT question)
#   gpt:   9, 1 + 1, 2 + 1, 1, 1, 3, 1, 23 (the three bullet points)
MIX_HUMAN = {
    "count": 10,
    "min": 4,
    "max": 14,
    "mean": 8.7,
    "p10": 4,
    "p50": 7,
    "p90": 13,
    "p99": 14,
    "histogram": {"edges": list(range(4, 16)), "counts": [1, 3, 0, 1, 0, 0, 1, 0, 2, 1, 1], "overflow": 0},
}


def test_mix665k_figures_exactly(release, cache_dir):
    stats = compute_stats(load(release, "llava_v1_5_mix665k", cache_dir))
    assert {k: stats[k] for k in ("rows", "image_rows", "text_only_rows", "unique_images")} == {
        "rows": 8,
        "image_rows": 7,
        "text_only_rows": 1,
        "unique_images": 7,
    }
    assert stats["sources"] == {"coco": 1, "gqa": 1, "ocr_vqa": 2, "text_only": 1, "textvqa": 1, "vg": 2}
    assert stats["image_token"] == {"start": 6, "end": 1, "inside": 0, "absent": 0}
    assert stats["turns"] == {
        "count": 8,
        "min": 2,
        "max": 4,
        "mean": 2.5,
        "p10": 2,
        "p50": 2,
        "p90": 4,
        "p99": 4,
        "histogram": {"edges": [2, 3, 4, 5], "counts": [6, 0, 2], "overflow": 0},
    }
    assert stats["words_per_turn"]["by_speaker"]["human"] == MIX_HUMAN
    gpt = stats["words_per_turn"]["by_speaker"]["gpt"]
    assert {k: gpt[k] for k in ("count", "min", "p10", "p50", "p90", "p99", "max", "mean")} == {
        "count": 10,
        "min": 1,
        "p10": 1,
        "p50": 1,
        "p90": 9,
        "p99": 23,
        "max": 23,
        "mean": 4.3,
    }
    words = stats["words_per_turn"]["all"]
    assert (words["count"], words["p50"], words["p90"], words["mean"]) == (20, 5, 13, 6.5)
    # unique images by name, sizes from the headers: GIF and PNG under .jpg names are told by content
    assert stats["image_formats"] == {"JPEG": 5, "GIF": 1, "PNG": 1}
    for key, side in (("image_width", 96), ("image_height", 72)):
        assert stats[key] == {
            "count": 7,
            "min": side,
            "max": side,
            "mean": float(side),
            **{f"p{p}": side for p in (10, 50, 90, 99)},
            "histogram": {"edges": [side, side + 1], "counts": [7], "overflow": 0},
        }
    assert json.loads(json.dumps(stats)) == stats


def test_repeated_images_count_once_and_streams_give_the_same_figures(release, cache_dir):
    ds = load(release, "llava_instruct_150k", cache_dir)
    stats = compute_stats(ds)
    assert (stats["rows"], stats["unique_images"], stats["image_width"]["count"]) == (4, 3, 3)
    assert compute_stats(load(release, "llava_instruct_150k", cache_dir, streaming=True)) == stats
    assert compute_stats(ds.select([0, 3]))["unique_images"] == 1  # the same bus picture twice


def test_percentiles_are_nearest_rank_and_the_tail_overflows():
    tally = _Tally()
    tally.add(range(1, 101))
    summary = tally.summary()
    assert [summary[f"p{p}"] for p in (10, 50, 90, 99)] == [10, 50, 90, 99]
    assert (summary["min"], summary["max"], summary["mean"]) == (1, 100, 50.5)
    histogram = summary["histogram"]
    assert histogram["edges"][:3] == [1, 5, 9] and histogram["edges"][-1] == 101  # 25 bins of 4 up to p99
    assert (sum(histogram["counts"]), histogram["overflow"]) == (100, 0)
    tally.add([5000])  # one ShareGPT-length answer
    assert tally.summary()["histogram"]["overflow"] == 1  # past the last bin [97, 101)
    assert _Tally().summary() == {"count": 0}


def test_words_ignore_the_image_token_and_whitespace():
    ds = table_of(
        [
            {"id": "a", "image": None, "conversations": turns("  two\twords \n", "<image>")},
            {"id": "b", "image": None, "conversations": turns("", "one<image>two")},
        ]
    )
    words = compute_stats(ds)["words_per_turn"]["all"]
    assert (words["count"], words["min"], words["max"], words["mean"]) == (4, 0, 2, 1.0)


def test_image_sizes_come_from_headers_even_when_far_into_the_file():
    picture = Image.new("RGB", (640, 480), "red")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", icc_profile=b"\0" * 80_000)  # the frame header comes after 80 KB
    ds = table_of(
        [
            {
                "id": "big",
                "image": {"bytes": buffer.getvalue(), "path": "big.jpg"},
                "conversations": turns("<image>\nq", "a"),
            },
            {"id": "bad", "image": {"bytes": b"GIF89a-broken", "path": "bad.gif"}, "conversations": turns("q", "a")},
            {"id": "mid", "image": {"bytes": jpeg(2), "path": "mid.jpg"}, "conversations": turns("q <image> q", "a")},
            {"id": "end", "image": {"bytes": jpeg(3), "path": "end.jpg"}, "conversations": turns("q", "a\n<image>")},
        ]
    )
    stats = compute_stats(ds)
    assert stats["image_formats"] == {"JPEG": 3, "unreadable": 1}
    assert (stats["image_width"]["max"], stats["image_height"]["max"]) == (640, 480)
    assert (stats["image_width"]["min"], stats["image_height"]["min"]) == (96, 72)
    # the first turn that holds `<image>` decides, whoever speaks it
    assert stats["image_token"] == {"start": 1, "end": 1, "inside": 1, "absent": 1}


def test_accumulator_gives_the_figures_of_compute_stats_whatever_the_batches(release, cache_dir):
    ds = load(release, "llava_v1_5_mix665k", cache_dir)
    table = ds.with_format("arrow")[:]
    for size in (1, 3, 8):
        accumulator = StatsAccumulator()
        for batch in table.to_batches(max_chunksize=size):
            accumulator.add(batch)
        assert accumulator.result() == compute_stats(ds)
    with pytest.raises(KeyError):
        StatsAccumulator().add(table.drop_columns(["source"]))


def test_paths_of_unembedded_images_are_read(release, cache_dir):
    stats = compute_stats(load(release, "blip_558k", cache_dir, embed_images=False))  # zip:// URLs
    assert stats["image_formats"] == {"JPEG": 4}


def test_markdown_section_and_histograms(release, cache_dir, tmp_path):
    stats = compute_stats(load(release, "llava_v1_5_mix665k", cache_dir))
    markdown = stats_markdown(stats)
    assert markdown.startswith("## Statistics\n")
    assert "| rows | 8 |" in markdown
    assert "| text-only rows | 1 (12.5%) |" in markdown
    assert "| words per turn (human) | 4 | 4 | 7 | 13 | 14 | 14 | 8.7 |" in markdown
    assert "| turns per conversation | 2 | 2 | 2 | 4 | 4 | 4 | 2.5 |" in markdown
    assert "Image formats (unique images, read from the file headers): JPEG 5, GIF 1, PNG 1." in markdown
    paths = write_histograms(stats, tmp_path)
    names = ["turns", "words_per_turn", "words_per_turn_gpt", "words_per_turn_human", "image_width", "image_height"]
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"{n}.png" for n in names]
    for path in paths:
        with Image.open(path) as im:
            assert (im.format, im.size) == ("PNG", (720, 420))
    written = write_stats(stats, tmp_path / "all")
    assert written == [str(tmp_path / "all" / "stats.json"), *(str(tmp_path / "all" / f"{n}.png") for n in names)]
    assert json.loads((tmp_path / "all" / "stats.json").read_text()) == stats
    assert not stats_markdown(stats, conventions=False).endswith(STATS_CONVENTIONS + "\n")
    assert stats_markdown(stats).endswith("\n\n" + STATS_CONVENTIONS + "\n")


def test_cli_stats(release, cache_dir, tmp_path, capsys):
    options = release.options("llava_v1_5_mix665k")
    out = tmp_path / "stats"
    args = ["stats", "llava_v1_5_mix665k", "--data-dir", options["data_dir"], "--image-dir", options["image_dir"]]
    assert main([*args, "--cache-dir", cache_dir, "--out", str(out), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "llava_v1_5_mix665k: 8 rows, 7 unique images, 1 (12.5%) text-only rows"
    assert lines[3] == "image formats: JPEG 5, GIF 1, PNG 1"
    assert lines[5].split() == ["min", "p10", "p50", "p90", "p99", "max", "mean"]
    assert "words per turn (human)    4    4    7   13   14   14   8.7" in lines
    assert lines[-1].startswith(f"wrote {out}/stats.json and 6 histograms: turns.png, ")
    with open(out / "stats.json") as f:
        assert json.load(f)["words_per_turn"]["by_speaker"]["human"] == MIX_HUMAN


# --- preview ---------------------------------------------------------------------------------------------

IMG = re.compile(r'<img src="data:(image/\w+);base64,([A-Za-z0-9+/=]+)"')


def test_preview_has_one_decodable_img_per_image_row(release, cache_dir, tmp_path):
    ds = load(release, "llava_v1_5_mix665k", cache_dir)
    result = write_preview(ds, tmp_path / "page.html", n=8, seed=None)
    assert result == {"path": str(tmp_path / "page.html"), "rows": 8, "images": 7, "unreadable": 0}
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    found = IMG.findall(page)
    assert len(found) == page.count("<img") == 7
    for mime, data in found:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.size == (96, 72)
            assert f"image/{im.format.lower()}" == mime
    assert page.count('<section class="row">') == 8
    assert "text-only row" in page
    assert "row 2 · id <code>140031996</code> · source <code>ocr_vqa</code>" in page
    assert "ocr_vqa/images/140031996.jpg · GIF 96×72" in page
    # the page is one file: no external references, and `<image>` is text, not a tag
    assert "<image>" not in page and "&lt;image&gt;\nIs it overcast?" in page
    assert 'src="http' not in page and "<link" not in page


def test_preview_escapes_text_and_survives_a_bad_image(tmp_path):
    ds = table_of(
        [
            {
                "id": "<b>x</b>",
                "image": {"bytes": b"\xff\xd8\xffbroken", "path": "a.jpg"},
                "conversations": turns("<script>alert(1)</script>", "ok"),
            },
            {"id": "fine", "image": {"bytes": jpeg(1), "path": "b.jpg"}, "conversations": turns("q", "a")},
        ]
    )
    result = write_preview(ds, tmp_path / "p.html", n=5)
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert (result["rows"], result["images"], result["unreadable"]) == (2, 1, 1)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "id <code>&lt;b&gt;x&lt;/b&gt;</code>" in page
    assert "image &#x27;a.jpg&#x27; could not be decoded" in page
    assert len(IMG.findall(page)) == 1
    with pytest.raises(ValueError) as caught:
        write_preview(ds, tmp_path / "none.html", n=0)
    assert str(caught.value) == "n must be a whole number of at least 1, got 0"
    assert not (tmp_path / "none.html").exists()


def test_preview_sample_is_seeded(release, cache_dir, tmp_path):
    ds = load(release, "llava_v1_5_mix665k", cache_dir)
    pages = []
    for seed in (1, 1, 2):
        write_preview(ds, tmp_path / "p.html", n=3, seed=seed)
        pages.append(re.findall(r"row (\d+) · id", (tmp_path / "p.html").read_text(encoding="utf-8")))
    assert pages[0] == pages[1] != pages[2]
    assert all(len(p) == 3 and p == sorted(p, key=int) for p in pages)


def test_cli_preview(release, cache_dir, tmp_path, capsys):
    name = "blip_558k"
    args = ["preview", name, "--data-dir", release.options(name)["data_dir"], "--cache-dir", cache_dir]
    assert main([*args, "--out", str(tmp_path / "p.html"), "-n", "2", "--first", "-q"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'p.html'}: 2 rows, 2 images\n"
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "blip_caption: select luxury furniture 3 - inch gel memory foam mattress topper" in page
    assert "url: https://example.com/laion/004539375.jpg" in page


@pytest.mark.slow
def test_stats_of_many_rows_stays_fast(tmp_path):
    rows = [
        {"id": str(i), "image": None, "conversations": turns(f"question {i} " * (i % 7), "answer " * (i % 50))}
        for i in range(200_000)
    ]
    stats = compute_stats(table_of(rows))
    assert stats["turns"]["count"] == 200_000 and stats["words_per_turn"]["all"]["count"] == 400_000


@pytest.mark.parametrize("kind", ["TIFF", "WEBP"])
def test_image_headers_of_formats_whose_probes_need_a_real_file(kind):
    import pyarrow as pa
    from PIL import Image

    from llava_hf.stats import _image_header

    out = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 30)).save(out, kind)
    assert _image_header(pa.py_buffer(out.getvalue()), "x") == ((30, 20), kind)
