"""File configs: the user's own LLaVA-format files (JSON, JSONL, .gz), multi-image records, what is refused."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import datasets
import pytest
from conftest import jpeg, sha256

import llava_hf
from llava_hf import SourceError, load_dataset, prepare_report
from llava_hf.features import MULTI_IMAGE_FEATURES

N = 250  # three batches of 100, so shards and batch offsets are exercised


def turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def single_records(n: int = N) -> list[dict]:
    records = []
    for i in range(n):
        if i % 10 == 3:  # text-only rows: no image key
            records.append({"id": f"t{i}", "conversations": turns(f"Say {i}.", f"{i}.")})
        else:
            token = "<image>\nWhat is this?" if i % 2 else "What is this?\n<image>"
            records.append({"id": i, "image": f"img{i % 3}.jpg", "conversations": turns(token, f"Picture {i % 3}.")})
    return records


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for k in range(3):
        (folder / f"img{k}.jpg").write_bytes(jpeg(100 + k))
    return folder


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list, blank_every: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, record in enumerate(records):
        lines.append(json.dumps(record))
        if blank_every and i % blank_every == 0:
            lines.append("")  # blank lines are not records
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def raw(ds) -> list[dict]:
    column = "images" if "images" in ds.features else "image"
    feature = datasets.List(datasets.Image(decode=False)) if column == "images" else datasets.Image(decode=False)
    return ds.cast_column(column, feature).to_list()


def test_json_jsonl_and_gz_give_identical_rows(tmp_path, images, cache_dir):
    records = single_records()
    paths = [
        write_json(tmp_path / "a" / "mine.json", records),
        write_jsonl(tmp_path / "b" / "mine.jsonl", records, blank_every=7),
        write_jsonl(tmp_path / "c" / "mine.jsonl.gz", records),
    ]
    loaded = [raw(load_dataset(str(p), image_dir=str(images), cache_dir=cache_dir)) for p in paths]
    assert len(loaded[0]) == N
    assert loaded[1] == loaded[0]
    assert loaded[2] == loaded[0]
    first = loaded[0][0]
    assert (first["id"], first["image"]["path"], first["source"]) == ("0", "img0.jpg", "mine")
    assert sha256(first["image"]["bytes"]) == sha256((images / "img0.jpg").read_bytes())
    text_only = loaded[0][3]
    assert (text_only["id"], text_only["image"], text_only["source"]) == ("t3", None, "mine")
    assert json.loads(loaded[0][1]["extra"]) == {"@id": 1}
    # Two worker processes give the same rows, in the same order.
    two = raw(load_dataset(str(paths[1]), image_dir=str(images), cache_dir=cache_dir + "2", num_proc=2))
    assert two == loaded[0]
    report = prepare_report(load_dataset(str(paths[2]), image_dir=str(images), cache_dir=cache_dir))
    assert (report["records"], report["rows"], report["config"]) == (N, N, "mine")
    (listed,) = report["source"]["files"]
    assert listed["file"] == "mine.jsonl.gz"
    assert listed["format"] == "jsonl.gz"
    assert listed["records"] == N
    assert listed["sha256"] == sha256(paths[2].read_bytes())
    # The .gz was decompressed once into the cache folder, named by its sha256.
    (copy,) = os.listdir(os.path.join(cache_dir, "llava_hf_files"))
    assert copy == f"{listed['sha256'][:32]}-mine.jsonl"


def test_single_image_files_keep_the_catalog_schema(tmp_path, images, cache_dir):
    path = write_json(tmp_path / "mine.json", single_records(5))
    ds = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    assert ds.features == llava_hf.FEATURES


def test_datasets_load_dataset_shares_the_cache_and_name_names_the_config(tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "mine.jsonl", single_records(20))
    ours = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    theirs = datasets.load_dataset(
        "llava_hf", data_files=str(path), image_dir=str(images), cache_dir=cache_dir, split="train"
    )
    assert theirs.cache_files == ours.cache_files
    assert "/llava_hf/mine-" in ours.cache_files[0]["filename"]
    named = load_dataset("my_set", data_files=[str(path)], image_dir=str(images), cache_dir=cache_dir)
    named_theirs = datasets.load_dataset(
        "llava_hf", "my_set", data_files=str(path), image_dir=str(images), cache_dir=cache_dir, split="train"
    )
    assert named.cache_files == named_theirs.cache_files
    assert "/llava_hf/my_set-" in named.cache_files[0]["filename"]
    assert prepare_report(named)["config"] == "my_set"
    # The cache key names the files by content: a copy elsewhere finds the same prepared data.
    copy = tmp_path / "elsewhere" / "mine.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    again = load_dataset(str(copy), image_dir=str(images), cache_dir=cache_dir)
    assert again.cache_files == ours.cache_files


def test_several_files_and_globs(tmp_path, images, cache_dir):
    write_json(tmp_path / "parts" / "one.json", single_records(30))
    write_jsonl(tmp_path / "parts" / "two.jsonl", single_records(12))
    ds = load_dataset(str(tmp_path / "parts" / "*"), image_dir=str(images), cache_dir=cache_dir)
    assert len(ds) == 42
    sources = ds["source"]
    assert list(sources) == ["one"] * 30 + ["two"] * 12
    assert prepare_report(ds)["config"] == "one"
    assert [f["file"] for f in prepare_report(ds)["source"]["files"]] == ["one.json", "two.jsonl"]
    two = load_dataset(str(tmp_path / "parts" / "*"), image_dir=str(images), cache_dir=cache_dir + "2", num_proc=2)
    assert raw(two) == raw(ds)  # one shard per file here: each worker reads its own file


def test_options_are_refused_by_name(tmp_path, images, cache_dir):
    path = write_json(tmp_path / "mine.json", single_records(3))
    with pytest.raises(ValueError, match="'detail_23k' is a catalog config; a config built from data_files needs"):
        load_dataset("detail_23k", data_files=str(path), image_dir=str(images), cache_dir=cache_dir)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes.txt is not a LLaVA-format file; expected one of .json, .jsonl"):
        load_dataset("mine", data_files=str(tmp_path / "notes.txt"), cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="data_files: .*missing.json matches no file"):
        load_dataset(str(tmp_path / "missing.json"), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="data_files names the files to read; drop data_dir and sample"):
        load_dataset(str(path), data_dir=str(tmp_path), cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"one split, 'train'; got data_files for \['test', 'train'\]"):
        load_dataset("mine", data_files={"train": str(path), "test": str(path)}, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="data_files names .*mine.json twice"):
        load_dataset([str(path), str(path)], cache_dir=cache_dir)


def multi_records() -> list[dict]:
    return [
        {"id": "m0", "image": ["img0.jpg", "img1.jpg"], "conversations": turns("<image>\n<image>\nCompare.", "Same.")},
        {"id": "m1", "image": "img2.jpg", "conversations": turns("<image>\nWhat?", "A picture.")},
        # LLaVA-NeXT's images-first habit: no token at all.
        {"id": "m2", "image": ["img2.jpg", "img0.jpg", "img1.jpg"], "conversations": turns("Order?", "2, 0, 1.")},
        {"id": "m3", "image": [], "conversations": turns("Hello.", "Hi.")},
        {"id": "m4", "conversations": turns("Text only.", "Yes.")},
    ]


def test_multi_image_records_keep_every_image_in_order(tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "multi.jsonl", multi_records())
    ds = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    assert ds.features == MULTI_IMAGE_FEATURES
    assert "image" not in ds.features
    rows = raw(ds)
    digest = {k: sha256((images / f"img{k}.jpg").read_bytes()) for k in range(3)}
    assert [[sha256(i["bytes"]) for i in rows[0]["images"]]] == [[digest[0], digest[1]]]
    assert [i["path"] for i in rows[2]["images"]] == ["img2.jpg", "img0.jpg", "img1.jpg"]
    assert [sha256(i["bytes"]) for i in rows[2]["images"]] == [digest[2], digest[0], digest[1]]
    assert [i["path"] for i in rows[1]["images"]] == ["img2.jpg"]  # one name: a one-element list
    assert (rows[3]["images"], rows[4]["images"]) == ([], None)
    assert [r["source"] for r in rows] == ["multi"] * 5
    decoded = ds[0]["images"]
    assert [im.size for im in decoded] == [(96, 72), (96, 72)]


def test_image_token_count_must_match(tmp_path, images, cache_dir):
    records = multi_records()
    records.insert(2, {"id": "bad", "image": ["img0.jpg", "img1.jpg"], "conversations": turns("<image> one", ".")})
    path = write_jsonl(tmp_path / "multi.jsonl", records)
    with pytest.raises(SourceError) as caught:
        load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    assert str(caught.value) == (
        "multi.jsonl: record 2 (id='bad'): line 3: has 2 images but 1 '<image>' tokens; expected 2 (one per "
        "image, in order) or none (images first)"
    )
    assert caught.value.reason == "image_count"
    ds = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir, on_bad_image="skip")
    assert [r["id"] for r in ds] == ["m0", "m1", "m2", "m3", "m4"]
    report = prepare_report(ds)
    assert (report["records"], report["rows"], report["skipped"]["counts"]) == (6, 5, {"image_count": 1})
    assert report["skipped"]["examples"]["image_count"][0]["id"] == "bad"
    assert report["skipped"]["examples"]["image_count"][0]["index"] == 2


def test_json_array_errors_name_file_record_and_id(tmp_path, images, cache_dir):
    records = multi_records()
    records[1] = {"id": "bad", "image": ["img0.jpg"], "conversations": turns("<image><image>", ".")}
    path = write_json(tmp_path / "multi.json", records)
    with pytest.raises(SourceError, match=r"^multi.json: record 1 \(id='bad'\): has 1 images but 2 '<image>' tokens"):
        load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)


UNSUPPORTED = [
    (
        {"id": "v", "video": "clip.mp4", "conversations": turns("<video>", ".")},
        "has a 'video' key: video records are not supported; expected images only",
    ),
    (
        {"id": "u", "image": "https://example.com/a.jpg", "conversations": turns("<image>", ".")},
        "'image' is a URL (https://example.com/a.jpg); expected a file name under image_dir (download the "
        "images first)",
    ),
    (
        {"id": "u2", "image": ["img0.jpg", "s3://bucket/b.jpg"], "conversations": turns("<image><image>", ".")},
        "image 1 is a URL (s3://bucket/b.jpg); expected a file name under image_dir (download the images first)",
    ),
    (
        {"id": "b", "image": "data:image/png;base64,iVBORw0KGgo=", "conversations": turns("<image>", ".")},
        "'image' is inline base64 data (data:image/png;base64,iV...); expected a file name under image_dir",
    ),
    (
        {"id": "b2", "image": "/9j/" + "A" * 200, "conversations": turns("<image>", ".")},
        "'image' is inline base64 data (/9j/AAAAAAAAAAAAAAAAAAAA...); expected a file name under image_dir",
    ),
    (
        {"id": "i", "images": ["img0.jpg"], "conversations": turns("<image>", ".")},
        "has 'images' but no 'image'; LLaVA-format records name their image files in 'image' (a name or a list)",
    ),
    (
        {"id": "n", "image": "img0.jpg", "messages": [{"role": "user", "content": "hi"}]},
        "has no 'conversations' (found keys 'id', 'image', 'messages'); expected LLaVA-format turns: "
        '"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]',
    ),
]


@pytest.mark.parametrize(("record", "problem"), UNSUPPORTED, ids=[r["id"] for r, _ in UNSUPPORTED])
def test_unsupported_records_say_so(tmp_path, images, cache_dir, record, problem):
    records = single_records(4)
    records.insert(2, record)
    path = write_jsonl(tmp_path / "mine.jsonl", records, blank_every=1)  # a blank line after every record
    with pytest.raises(SourceError) as caught:
        load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    # Record 2 is on line 5: records 0 and 1 each have a blank line after them.
    assert str(caught.value) == f"mine.jsonl: record 2 (id={record['id']!r}): line 5: {problem}"
    assert caught.value.reason == "unsupported"
    ds = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir, on_bad_image="skip")
    assert [r["id"] for r in ds] == ["0", "1", "2", "t3"]
    report = prepare_report(ds)
    assert (report["records"], report["rows"], report["skipped"]["counts"]) == (5, 4, {"unsupported": 1})


def test_malformed_jsonl_line_is_named_before_anything_is_written(tmp_path, images, cache_dir):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(single_records(1)[0]) + "\n\n{not json}\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"^mine.jsonl: record 1: line 3: not one JSON record per line: Expecting"):
        load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    assert not [p for p in Path(cache_dir).rglob("*.arrow")]
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"id": 1}\n' * 1000)[:60])
    with pytest.raises(SourceError, match=r"^cut.jsonl.gz: cannot be decompressed: Compressed file ended"):
        load_dataset(str(truncated), cache_dir=cache_dir)
    assert os.listdir(os.path.join(cache_dir, "llava_hf_files")) == []  # no partial copy left behind
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(SourceError, match="empty.jsonl: expected a JSON array of records or one JSON record per line"):
        load_dataset(str(empty), cache_dir=cache_dir)


# --- mixing with catalog configs --------------------------------------------------------------------------


def test_recipe_mixes_a_file_with_a_catalog_config(release, tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "mine.jsonl", single_records(4))
    recipe = {
        "seed": 0,
        "stopping_strategy": "concatenate",
        "sources": [
            {"config": "detail_23k", **release.options("detail_23k")},
            {"data_files": str(path), "image_dir": str(images), "name": "my_set", "choose": 3},
        ],
    }
    ds, report = llava_hf.mix(recipe, cache_dir=cache_dir)
    detail = release.records("detail_23k")
    assert ds.features == llava_hf.FEATURES
    assert len(ds) == len(detail) + 3
    assert list(ds["source"]) == ["detail_23k"] * len(detail) + ["mine"] * 3  # each row names its file
    assert [(c.config, c.records, c.selected) for c in report.sources] == [
        ("detail_23k", len(detail), len(detail)),
        ("my_set", 4, 3),
    ]
    assert report.recipe["sources"][1]["name"] == "my_set"
    assert report.recipe["sources"][1]["data_files"] == str(path)
    # The same rows streamed, in the same order.
    stream, _ = llava_hf.mix(recipe, cache_dir=cache_dir, streaming=True)
    assert [r["id"] for r in stream] == list(ds["id"])


def test_single_and_multi_image_configs_mix(release, tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "multi.jsonl", multi_records())
    recipe = {
        "seed": 0,
        "stopping_strategy": "concatenate",
        "sources": [
            {"config": "detail_23k", **release.options("detail_23k")},
            {"data_files": str(path), "image_dir": str(images)},
        ],
    }
    ds, report = llava_hf.mix(recipe, cache_dir=cache_dir)
    assert ds.features == MULTI_IMAGE_FEATURES
    detail = release.records("detail_23k")
    rows = raw(ds)
    assert len(rows) == len(detail) + 5
    # Rows of the single-image config get one-element lists, bytes untouched.
    first = detail[0]
    assert [i["path"] for i in rows[0]["images"]] == [first["image"]]
    assert sha256(rows[0]["images"][0]["bytes"]) == sha256(release.image_bytes("detail_23k", first["image"]))
    assert [i["path"] for i in rows[len(detail)]["images"]] == ["img0.jpg", "img1.jpg"]
    assert report.sources[1].config == "multi"
    # Streamed, the same rows in the same order, image bytes and all.
    stream, _ = llava_hf.mix(recipe, cache_dir=cache_dir, streaming=True)
    assert stream.features == MULTI_IMAGE_FEATURES
    assert list(stream.cast_column("images", datasets.List(datasets.Image(decode=False)))) == rows


def test_interleave_datasets_with_the_helper(release, tmp_path, images, cache_dir):
    single = load_dataset("detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    multi = load_dataset(str(write_jsonl(tmp_path / "multi.jsonl", multi_records())), image_dir=str(images))
    mixed = datasets.interleave_datasets([llava_hf.as_multi_image(single), multi], stopping_strategy="all_exhausted")
    assert mixed.features == MULTI_IMAGE_FEATURES
    detail = release.records("detail_23k")
    expected = []
    for k in range(max(len(detail), 5)):
        expected += [detail[k % len(detail)]["id"], f"m{k % 5}"]
    assert list(mixed["id"]) == expected[: len(mixed)]
    rows = raw(mixed)
    assert [i["path"] for i in rows[0]["images"]] == [detail[0]["image"]]
    text_only = raw(
        llava_hf.as_multi_image(
            load_dataset(
                str(write_json(tmp_path / "t.json", single_records(5))), image_dir=str(images), cache_dir=cache_dir
            )
        )
    )
    assert text_only[3]["images"] is None
    assert [i["path"] for i in text_only[0]["images"]] == ["img0.jpg"]


def test_llava_next_yaml_naming_two_files_outside_the_catalog(release, tmp_path, images, cache_dir):
    one = write_json(tmp_path / "data" / "sharegpt4v_mine.json", single_records(10))
    two = write_jsonl(tmp_path / "data" / "m4_instruct.jsonl", multi_records())
    detail = release.data_dir("detail_23k") / "detail_23k.json"
    path = tmp_path / "next.yaml"
    path.write_text(
        "datasets:\n"
        f"  - json_path: {one}\n"
        '    sampling_strategy: "first:30%"\n'
        f"  - json_path: {two}\n"
        '    sampling_strategy: "end:2"\n'
        f"  - json_path: {detail}\n"
        "    sampling_strategy: all\n"
    )
    loaded = llava_hf.load_recipe(path)
    assert [(s.config, s.data_files, s.where) for s in loaded.sources] == [
        ("sharegpt4v_mine", str(one), "datasets[0] (sharegpt4v_mine.json)"),
        ("m4_instruct", str(two), "datasets[1] (m4_instruct.jsonl)"),
        ("detail_23k", None, "datasets[2] (detail_23k.json)"),
    ]
    # LLaVA-NeXT's one --image_folder: here a mapping, the catalog config reading its own folder.
    image_dir = {"*": str(images), "detail_23k": str(release.image_dir("detail_23k"))}
    ds, report = llava_hf.mix(path, image_dir=image_dir, cache_dir=cache_dir)
    ids = ["0", "1", "2"] + ["m3", "m4"] + [r["id"] for r in release.records("detail_23k")]
    assert list(ds["id"]) == ids
    assert ds.features == MULTI_IMAGE_FEATURES
    assert [c.selected for c in report.sources] == [3, 2, len(release.records("detail_23k"))]


# --- downstream: formats, verify, stats, preview, Hub export ----------------------------------------------


def test_to_messages_puts_each_image_block_where_its_token_stood(tmp_path, images, cache_dir):
    records = [
        {
            "id": "a",
            "image": ["img0.jpg", "img1.jpg"],
            "conversations": turns("First <image> then\n<image>\nok?", "Yes."),
        },
        {"id": "b", "image": ["img2.jpg", "img0.jpg"], "conversations": turns("Compare them.", "Same.")},
        {"id": "c", "conversations": turns("Text.", "Only.")},
    ]
    ds = load_dataset(str(write_json(tmp_path / "multi.json", records)), image_dir=str(images), cache_dir=cache_dir)
    messages = llava_hf.to_messages(ds)
    first = messages[0]
    assert first["messages"][0]["content"] == [
        {"type": "text", "text": "First "},
        {"type": "image", "text": None},
        {"type": "text", "text": " then"},
        {"type": "image", "text": None},
        {"type": "text", "text": "ok?"},
    ]
    assert [im.size for im in first["images"]] == [(96, 72), (96, 72)]
    # Images first (no token): every image block opens the first user turn.
    assert messages[1]["messages"][0]["content"] == [
        {"type": "image", "text": None},
        {"type": "image", "text": None},
        {"type": "text", "text": "Compare them."},
    ]
    assert messages[2]["images"] == []
    streamed = llava_hf.to_messages(load_dataset(str(tmp_path / "multi.json"), image_dir=str(images), streaming=True))
    assert [r["messages"] for r in streamed] == [messages[i]["messages"] for i in range(3)]
    out = llava_hf.to_trl(ds, tmp_path / "trl", progress=False)
    assert (out["rows"], out["images"]) == (3, 4)
    back = datasets.load_dataset("parquet", data_dir=str(tmp_path / "trl"), split="train")
    assert back[0]["messages"] == first["messages"]
    assert [
        sha256(i["bytes"]) for i in back.cast_column("images", datasets.List(datasets.Image(decode=False)))[1]["images"]
    ] == [
        sha256((images / "img2.jpg").read_bytes()),
        sha256((images / "img0.jpg").read_bytes()),
    ]


def test_to_llava_and_llamafactory_keep_the_lists(tmp_path, images, cache_dir):
    records = multi_records()
    records[1]["model"] = ""  # an extra key, restored in place after the known ones
    path = write_jsonl(tmp_path / "multi.jsonl", records)
    ds = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    out = llava_hf.to_llava(ds, tmp_path / "llava", progress=False)
    back = json.loads((tmp_path / "llava" / "llava.json").read_text(encoding="utf-8"))
    assert back == records
    assert [list(r) for r in back] == [list(r) for r in records]  # key order too
    assert (out["rows"], out["images"], out["text_only"]) == (5, 3, 2)
    assert (tmp_path / "llava" / "images" / "img1.jpg").read_bytes() == (images / "img1.jpg").read_bytes()
    factory = llava_hf.to_llamafactory(ds, tmp_path / "lf", name="mine", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "lf" / "mine.jsonl").read_text().splitlines()]
    assert lines[0]["images"] == ["images/img0.jpg", "images/img1.jpg"]
    assert lines[2]["images"] == ["images/img2.jpg", "images/img0.jpg", "images/img1.jpg"]
    # LLaMA-Factory counts tokens against images: an images-first record gets one token per image.
    assert lines[2]["conversations"][0]["value"] == "<image>\n<image>\n<image>\nOrder?"
    assert (lines[3]["images"], lines[4]["images"]) == ([], [])
    assert factory["image_token_added"] == 1


def test_verify_stats_and_preview_of_a_file_config(tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "multi.jsonl", multi_records())
    report = llava_hf.verify(str(path), image_dir=str(images), num_proc=1, progress=False)
    assert report.config == "multi"
    assert (report.records, report.images) == (5, 6)
    assert report.counts == {"images_first": 1}
    assert report.clean
    (note,) = report.problems
    assert (note.file, note.index, note.id) == ("multi.jsonl", 2, "m2")
    ds = load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)
    stats = llava_hf.compute_stats(ds)
    assert (stats["rows"], stats["image_rows"], stats["text_only_rows"], stats["unique_images"]) == (5, 3, 2, 3)
    assert stats["sources"] == {"multi": 5}
    page = llava_hf.write_preview(ds, tmp_path / "preview.html", n=5, seed=None)
    assert (page["rows"], page["images"], page["unreadable"]) == (5, 6, 0)


def test_hub_export_of_a_file_config_round_trips(tmp_path, images, cache_dir):
    single = write_jsonl(tmp_path / "mine.jsonl", single_records(12))
    multi = write_jsonl(tmp_path / "multi.jsonl", multi_records())
    out = tmp_path / "export"
    llava_hf.export("my_set", out, data_files=str(single), image_dir=str(images), cache_dir=cache_dir)
    figures = llava_hf.export(str(multi), out, image_dir=str(images), cache_dir=cache_dir)
    assert list(figures) == ["multi"]
    assert sorted(os.listdir(out)) == ["README.md", "multi", "my_set"]
    hub_cache = str(tmp_path / "hub-cache")
    for name, path in (("my_set", single), ("multi", multi)):
        expected = raw(load_dataset(name, data_files=str(path), image_dir=str(images), cache_dir=cache_dir))
        back = datasets.load_dataset(str(out), name, split="train", cache_dir=hub_cache)
        assert raw(back) == expected
    card = (out / "README.md").read_text(encoding="utf-8")
    assert (
        f"`mine.jsonl` (jsonl, 12 records, {single.stat().st_size:,} bytes), sha256 `{sha256(single.read_bytes())}`"
        in card
    )
    assert f"sha256 `{sha256(multi.read_bytes())}`" in card
    assert "the user's own LLaVA-format files" in card
    assert str(tmp_path) not in card  # no local path is published


def test_cli_takes_data_files_wherever_it_takes_a_config(tmp_path, images, cache_dir, capsys, monkeypatch):
    from llava_hf.cli import main

    path = write_jsonl(tmp_path / "multi.jsonl", multi_records())
    common = ["--image-dir", str(images), "--cache-dir", cache_dir, "-q"]
    assert main(["prepare", str(path), *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("multi: 5 rows of 5 records, ")
    assert main(["prepare", str(path), "--name", "my_set", *common]) == 0
    assert capsys.readouterr().out.startswith("my_set: 5 rows of 5 records, ")
    monkeypatch.chdir(tmp_path)
    assert main(["verify", str(path), "--image-dir", str(images), "--num-proc", "1", "-q"]) == 0
    assert "multi: 5 records, 6 images checked" in capsys.readouterr().out
    assert json.loads((tmp_path / "multi-verify.json").read_text())["counts"] == {"images_first": 1}
    assert main(["stats", str(path), *common]) == 0
    assert main(["preview", str(path), "--out", str(tmp_path / "p.html"), *common]) == 0
    assert "5 rows, 6 images" in capsys.readouterr().out
    assert main(["export", str(path), "-o", str(tmp_path / "hub"), *common]) == 0
    assert sorted(os.listdir(tmp_path / "hub")) == ["README.md", "multi"]
    assert main(["export", str(path), "--format", "llava", "-o", str(tmp_path / "back"), *common]) == 0
    assert json.loads((tmp_path / "back" / "llava.json").read_text()) == multi_records()
    with pytest.raises(SystemExit) as info:
        main(["prepare", "my_data.txt"])
    assert info.value.code == 2
    assert "invalid choice: 'my_data.txt'" in capsys.readouterr().err


# --- inputs a review found: each named by file and line, none taken silently ------------------------------


def test_jsonl_lines_are_utf8_and_integers_too_long_are_named(tmp_path, images, cache_dir):
    records = single_records(3)
    lines = [json.dumps(r).encode() for r in records]
    utf16 = tmp_path / "utf16.jsonl"  # json.loads(bytes) would guess UTF-16 for this line and take it
    utf16.write_bytes(lines[0] + b"\n" + json.dumps(records[1]).encode("utf-16-le") + b"\n" + lines[2] + b"\n")
    with pytest.raises(SourceError, match=r"^utf16.jsonl: record 1: line 2: not one JSON record per line: "):
        load_dataset(str(utf16), image_dir=str(images), cache_dir=cache_dir)
    long = tmp_path / "long.jsonl"
    long.write_bytes(lines[0] + b"\n" + lines[1][:-1] + b', "score": ' + b"9" * 4301 + b"}\n" + lines[2] + b"\n")
    with pytest.raises(SourceError) as caught:
        load_dataset(str(long), image_dir=str(images), cache_dir=cache_dir)
    assert str(caught.value) == (
        "long.jsonl: record 1: line 2: cannot be decoded: Exceeds the limit (4300 digits) for integer string "
        "conversion: value has 4301 digits; use sys.set_int_max_str_digits() to increase the limit"
    )
    assert not list(Path(cache_dir).rglob("*.arrow"))
    # A UTF-8 byte order mark on a later line is still taken, as json.loads(bytes) took it.
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(b"\n" + b"\xef\xbb\xbf" + lines[0] + b"\n" + b"\xef\xbb\xbf" + lines[1] + b"\n")
    assert load_dataset(str(marked), image_dir=str(images), cache_dir=cache_dir)["id"] == ["0", "1"]


def test_blank_space_before_the_data_is_not_an_empty_file(tmp_path, images, cache_dir):
    records = single_records(3)
    for name, body in (
        ("spaced.jsonl", "\n".join(json.dumps(r) for r in records)),
        ("spaced.json", json.dumps(records)),
    ):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + b" \n" * 5000 + body.encode() + b"\n")
        assert load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)["id"] == ["0", "1", "2"]


def test_a_damaged_gz_is_named_and_leaves_no_partial_copy(tmp_path, cache_dir):
    import random
    import zlib

    rng = random.Random(0)
    data = "\n".join(json.dumps({"id": i, "conversations": turns(str(rng.random()), "x")}) for i in range(200))
    whole = gzip.compress(data.encode(), 6)
    for at in range(len(whole) // 2, len(whole)):  # damage in the deflate stream that zlib itself refuses
        damaged = bytearray(whole)
        for k in range(at, at + 40):
            damaged[k] ^= 0xA5
        try:
            gzip.decompress(bytes(damaged))
        except zlib.error:
            break
        except (OSError, EOFError):
            continue  # gzip's own errors (a CRC, the end of the stream), caught before
    else:
        pytest.fail("no damage zlib refuses")
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(SourceError, match=r"^bad.jsonl.gz: cannot be decompressed: Error -3 while decompressing data"):
        load_dataset(str(path), cache_dir=cache_dir)
    assert os.listdir(os.path.join(cache_dir, "llava_hf_files")) == []


def test_config_names_that_would_be_globs_or_hidden_on_the_hub(tmp_path):
    from llava_hf.files import file_config_name

    assert file_config_name(None, (str(tmp_path / "mine[v2].jsonl"),)) == "mine_v2_"
    assert file_config_name(None, (str(tmp_path / ".hidden.json.gz"),)) == "hidden"
    assert file_config_name("my-set_2.0", (str(tmp_path / "a.json"),)) == "my-set_2.0"
    for name in ("[d]etail_23k", "a*b", ".x", "a?b", "c:d"):
        with pytest.raises(ValueError, match=rf"^name {re.escape(repr(name))} cannot name a config: the characters"):
            file_config_name(name, (str(tmp_path / "a.json"),))


def test_a_file_rewritten_after_the_key_was_made_is_not_prepared_under_it(tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "mine.jsonl", single_records(5))
    builder = llava_hf.load_builder(str(path), image_dir=str(images), cache_dir=cache_dir)  # keyed by this content
    write_jsonl(path, single_records(6))  # rewritten before the prepare reads it
    with pytest.raises(SourceError, match=r"^mine.jsonl: changed while it was being prepared"):
        builder.download_and_prepare()
    assert not list(Path(cache_dir).rglob("*.arrow"))
    assert len(load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)) == 6  # its own key now


def test_a_damaged_decompressed_copy_is_made_again(tmp_path, images, cache_dir):
    path = write_jsonl(tmp_path / "mine.jsonl.gz", single_records(N))
    assert len(load_dataset(str(path), image_dir=str(images), cache_dir=cache_dir)) == N
    (copy,) = Path(cache_dir, "llava_hf_files").iterdir()
    whole = copy.read_bytes()
    copy.write_bytes(whole[: whole.index(b"\n", len(whole) // 2) + 1])  # cut at a line: still valid JSON Lines
    elsewhere = tmp_path / "same-images"
    shutil.copytree(images, elsewhere)  # another image folder: another cache entry, the same work folder
    again = load_dataset(str(path), image_dir=str(elsewhere), cache_dir=cache_dir)
    assert len(again) == N  # the new entry read a copy decompressed again, not the cut one
    assert copy.read_bytes() == whole
