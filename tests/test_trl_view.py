"""`to_messages` of a Dataset is a real Dataset: it composes the way TRL users combine datasets."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pytest
from conftest import ROOT, jpeg, sha256

import llava_hf
from llava_hf import formats, trl_view
from llava_hf.formats import TRL_FEATURES, to_messages

IMAGE = {"type": "image", "text": None}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def load(release, name, cache_dir, **kw):
    return llava_hf.load_dataset(name, cache_dir=cache_dir, **{**release.options(name), **kw})


@pytest.fixture
def views(release, cache_dir):
    """(detail_23k view, mix665k view, mix665k dataset): 3 rows with images; 7 with images and 1 text-only."""
    mix = load(release, "llava_v1_5_mix665k", cache_dir)
    return to_messages(load(release, "detail_23k", cache_dir)), to_messages(mix), mix


def summary(row) -> tuple:
    """(first user turn's blocks, image sizes) of one row: enough to tell rows apart."""
    return row["messages"][0]["content"], [im.size for im in row["images"]]


def test_features_are_the_trl_columns_and_rows_are_unchanged(views):
    detail, mix, _ = views
    assert detail.features == TRL_FEATURES and mix.features == TRL_FEATURES
    assert mix.column_names == ["messages", "images"]
    assert mix[7]["images"] == []  # the text-only row
    assert [len(r) for r in mix[:8]["images"]] == [1] * 7 + [0]
    assert mix[0]["messages"][0]["content"] == [IMAGE, text("What are the colors of the bus in the image?")]
    # a prepared cache's text-only rows hold no image data: one list chunk per source chunk, no fallback
    assert mix.data.column("images").num_chunks == views[2].data.column("image").num_chunks


def test_image_lists_share_the_image_bytes():
    image = pa.chunked_array(
        [
            pa.array(
                [{"bytes": b"a", "path": "a"}, None, None, {"bytes": b"bc", "path": "b"}, {"bytes": b"d", "path": "d"}]
            )
        ]
    )
    lists = trl_view.image_lists(image)
    assert lists.to_pylist() == [
        [{"bytes": b"a", "path": "a"}],
        [],
        [],
        [{"bytes": b"bc", "path": "b"}],
        [{"bytes": b"d", "path": "d"}],
    ]
    assert lists.num_chunks == 1  # one list chunk per source chunk, the text-only rows skipped by offsets
    assert lists.chunk(0).offsets.to_pylist() == [0, 1, 1, 1, 2, 3]
    source_bytes = image.chunk(0).field("bytes").buffers()[2]
    values = lists.chunk(0).values.field("bytes").buffers()[2]
    assert (values.address, values.size) == (source_bytes.address, source_bytes.size)  # the same buffer, no copy


def test_image_lists_of_a_sliced_chunk_with_bytes_missing():
    image = pa.array(
        [{"bytes": b"zz", "path": "z"}, {"bytes": b"a", "path": "a"}, None, {"bytes": None, "path": "/abs/b.jpg"}]
    )
    lists = trl_view.image_lists(pa.chunked_array([image.slice(1)]))
    assert lists.to_pylist() == [[{"bytes": b"a", "path": "a"}], [], [{"bytes": None, "path": "/abs/b.jpg"}]]
    assert lists.num_chunks == 1
    lists.validate(full=True)
    # a chunk of text-only rows only, and an empty chunk
    lists = trl_view.image_lists(pa.chunked_array([pa.nulls(2, image.type), image.slice(0, 0), image.slice(1, 1)]))
    assert lists.to_pylist() == [[], [], [{"bytes": b"a", "path": "a"}]]
    lists.validate(full=True)


def test_image_lists_where_a_null_image_holds_data():
    # A null struct over children that still hold bytes: the buffer does not run on unbroken over the
    # images, so each run of rows with an image is its own list chunk (still no copy).
    children = [pa.array([b"a", b"xx", b"b"]), pa.array(["a", "x", "b"])]
    image = pa.StructArray.from_arrays(children, names=["bytes", "path"], mask=pa.array([False, True, False]))
    lists = trl_view.image_lists(pa.chunked_array([image]))
    assert lists.to_pylist() == [[{"bytes": b"a", "path": "a"}], [], [{"bytes": b"b", "path": "b"}]]
    assert lists.num_chunks == 2
    assert lists.chunk(1).values.field("bytes").buffers()[2].address == children[0].buffers()[2].address


def test_list_images_reads_a_null_list_as_empty_without_a_copy():
    item = {"bytes": b"a", "path": "a"}
    images = pa.array([[item, item], None, [], [item]], TRL_FEATURES.arrow_schema.field("images").type)
    lists = trl_view.list_images(pa.chunked_array([images]))
    assert lists.to_pylist() == [[item, item], [], [], [item]]
    assert lists.null_count == 0
    assert (
        lists.chunk(0).values.field("bytes").buffers()[2].address == images.values.field("bytes").buffers()[2].address
    )


def test_concatenate_keeps_the_columns(views):
    detail, mix, _ = views
    both = datasets.concatenate_datasets([detail, mix])
    assert both.features == TRL_FEATURES
    assert len(both) == 11
    assert [summary(both[i]) for i in range(11)] == [summary(detail[i]) for i in range(3)] + [
        summary(mix[i]) for i in range(8)
    ]
    assert both[3]["messages"][0]["role"] == "user"  # not the raw `from`/`value` turns
    both = pickle.loads(pickle.dumps(both))
    assert [summary(r) for r in both][3:] == [summary(r) for r in mix]


def test_interleave_keeps_the_columns(views):
    detail, mix, _ = views
    mixed = datasets.interleave_datasets([detail, mix])  # alternates until the shorter one ends
    assert len(mixed) == 6
    assert [summary(r) for r in mixed] == [summary(x) for pair in zip(detail, mix) for x in pair]
    assert mixed.features == TRL_FEATURES


def test_to_iterable_dataset_and_shards(views):
    _, mix, _ = views
    stream = mix.to_iterable_dataset(num_shards=2)
    assert stream.features == TRL_FEATURES
    assert [summary(r) for r in stream] == [summary(r) for r in mix]


def test_shuffle_select_map_filter(views):
    _, mix, _ = views
    shuffled = mix.shuffle(seed=0)
    order = datasets.Dataset.from_dict({"i": list(range(8))}).shuffle(seed=0)["i"]
    assert [summary(r) for r in shuffled] == [summary(mix[i]) for i in order]
    with_count = mix.map(lambda row: {"n_images": len(row["images"])})
    assert with_count["n_images"] == [1] * 7 + [0]  # a column added by map is a real column
    assert set(with_count.features) == {"messages", "images", "n_images"}
    text_only = mix.filter(lambda row: not row["images"])
    assert len(text_only) == 1 and text_only[0]["messages"][0]["content"][0]["text"].startswith("How to tell")


def test_a_selection_of_the_source_follows_its_index_mapping(views):
    _, mix, ds = views
    picked = to_messages(ds.select([7, 2, 0]))
    assert [summary(r) for r in picked] == [summary(mix[i]) for i in (7, 2, 0)]


def _first_sizes(ds):
    return [[im.size for im in r["images"]] for r in ds]


def test_pickled_copy_reopens_the_files(views):
    _, mix, _ = views
    state = pickle.dumps(mix)
    # the image bytes are in the Arrow file, not in the pickle
    image_bytes = sum(len(b) for b in mix.data.column("images").combine_chunks().flatten().field("bytes").to_pylist())
    assert len(state) < image_bytes
    again = pickle.loads(state)
    blocks = [type(b) for row in again.data.blocks for b in row]
    assert blocks == [datasets.table.MemoryMappedTable, trl_view.ImageListsBlock]
    assert [summary(r) for r in again] == [summary(r) for r in mix]
    assert again.features == TRL_FEATURES


def test_spawned_worker_reads_the_same_rows(views):
    _, mix, _ = views
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_first_sizes, (mix,)) == _first_sizes(mix)


def test_messages_file_is_written_once_and_reused(release, cache_dir):
    ds = load(release, "detail_23k", cache_dir)
    first = to_messages(ds)
    (path,) = [f["filename"] for f in first.cache_files if "trl-messages" in f["filename"]]
    mtime = os.stat(path).st_mtime_ns
    again = to_messages(ds)
    assert [f["filename"] for f in again.cache_files if "trl-messages" in f["filename"]] == [path]
    assert os.stat(path).st_mtime_ns == mtime
    # another role map is another file
    other = to_messages(ds, roles={"gpt": "model"})
    (other_path,) = [f["filename"] for f in other.cache_files if "trl-messages" in f["filename"]]
    assert other_path != path and other[0]["messages"][1]["role"] == "model"
    assert os.path.basename(os.path.dirname(path)) == "llava_hf_views"
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp-")]


def test_in_memory_dataset(release, cache_dir):
    ds = load(release, "detail_23k", cache_dir)
    memory = datasets.Dataset.from_list(ds.to_list(), features=ds.features)
    assert [summary(r) for r in to_messages(memory)] == [summary(r) for r in to_messages(ds)]


def test_iterable_source_still_maps(release, cache_dir):
    stream = to_messages(load(release, "detail_23k", cache_dir, streaming=True))
    assert isinstance(stream, datasets.IterableDataset)
    assert [summary(r) for r in stream] == [summary(r) for r in to_messages(load(release, "detail_23k", cache_dir))]
    assert stream.features == formats.TRL_FEATURES


EDGE_ROWS = [
    ([("human", "<image>\nWhat is this?"), ("gpt", "A bus.")], True),
    ([("human", "What is this?\n<image>"), ("gpt", "A bus.")], True),
    ([("human", "Left\n<image>\nright"), ("gpt", "")], True),
    ([("human", "<image>\n\nTwo newlines"), ("gpt", "x")], True),
    ([("system", "Be brief."), ("human", "Describe."), ("gpt", "A")], True),  # image block goes to the user turn
    ([("gpt", "No user turn"), ("gpt", "at all")], True),  # ... or to the first turn
    ([("human", "Text only"), ("gpt", "ok")], False),
    ([("human", "<image>")], True),
    ([("human", "")], False),
    ([], False),
]
BAD_ROWS = [
    ([("human", "<image> and <image>")], True),  # two tokens, one image
    ([("human", "<image>")], False),  # a token in a text-only row
    ([("bot", "hi")], False),  # a speaker with no role
    ([], True),  # an image and no turn to put it in
]


def test_messages_array_is_conversation_to_messages_row_for_row():
    rows = EDGE_ROWS + BAD_ROWS
    turns = pa.array(
        [[{"from": f, "value": v} for f, v in turns] for turns, _ in rows],
        pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])),
    )
    has_image = pa.array([image for _, image in rows]).to_numpy(zero_copy_only=False)
    got = trl_view.messages_array(turns, has_image, formats.DEFAULT_ROLES).to_pylist()
    expected = [
        formats.conversation_to_messages([{"from": f, "value": v} for f, v in turns], has_image=image)
        for turns, image in EDGE_ROWS
    ]
    assert got == expected + [None] * len(BAD_ROWS)
    assert got[4][1]["content"] == [IMAGE, text("Describe.")] and got[5][0]["content"][0] == IMAGE


def test_a_read_only_cache_keeps_the_messages_in_memory(release, cache_dir, monkeypatch):
    ds = load(release, "detail_23k", cache_dir)
    expected = [summary(r) for r in to_messages(ds)]  # written to the cache, before it turns read-only

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(trl_view.tempfile, "mkstemp", refuse)
    view = to_messages(ds, roles={"gpt": "model"})  # another key: a file that is not there yet
    assert [f for f in view.cache_files if "trl-messages" in f["filename"]] == []
    assert [summary(r) for r in view] == expected and view[0]["messages"][1]["role"] == "model"


# --- multi-image configs --------------------------------------------------------------------------------


def turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


MULTI_RECORDS = [
    {"id": "m0", "image": ["img0.jpg", "img1.jpg"], "conversations": turns("First <image> then\n<image>\nok?", "Yes.")},
    {"id": "m1", "image": "img2.jpg", "conversations": turns("<image>\nWhat?", "A picture.")},
    # LLaVA-NeXT's images-first habit: no token at all.
    {"id": "m2", "image": ["img2.jpg", "img0.jpg", "img1.jpg"], "conversations": turns("Order?", "2, 0, 1.")},
    {"id": "m3", "image": [], "conversations": turns("Hello.", "Hi.")},  # an empty list: text-only
    {"id": "m4", "conversations": turns("Text only.", "Yes.")},  # no image key: text-only
    {"id": "m5", "image": ["img1.jpg"], "conversations": turns("One\n<image>", "Ok.")},
]
# The image names of each row, in order.
MULTI_IMAGES = [["img0.jpg", "img1.jpg"], ["img2.jpg"], ["img2.jpg", "img0.jpg", "img1.jpg"], [], [], ["img1.jpg"]]


@pytest.fixture
def multi(tmp_path, cache_dir):
    """(multi-image view, its source dataset, {image name: sha256}) over MULTI_RECORDS."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    for k in range(3):
        (folder / f"img{k}.jpg").write_bytes(jpeg(100 + k))
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MULTI_RECORDS), encoding="utf-8")
    ds = llava_hf.load_dataset(str(path), image_dir=str(folder), cache_dir=cache_dir)
    digests = {f"img{k}.jpg": sha256((folder / f"img{k}.jpg").read_bytes()) for k in range(3)}
    return to_messages(ds), ds, digests


def image_digests(ds) -> list[list[str]]:
    """The sha256 of each row's images, in order, read from the view's own column (no decode)."""
    raw = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return [[sha256(im["bytes"]) for im in row["images"]] for row in raw]


def multi_summary(row) -> tuple:
    return row["messages"], [im.size for im in row["images"]]


def test_multi_image_rows_put_each_block_where_its_token_stood(multi):
    view, _, digests = multi
    assert view.features == TRL_FEATURES and view.column_names == ["messages", "images"]
    assert image_digests(view) == [[digests[name] for name in names] for names in MULTI_IMAGES]
    assert view[0]["messages"] == [
        {"role": "user", "content": [text("First "), IMAGE, text(" then"), IMAGE, text("ok?")]},
        {"role": "assistant", "content": [text("Yes.")]},
    ]
    assert view[1]["messages"][0]["content"] == [IMAGE, text("What?")]
    assert view[2]["messages"][0]["content"] == [IMAGE, IMAGE, IMAGE, text("Order?")]  # images first
    assert view[3]["messages"][0]["content"] == [text("Hello.")] and view[3]["images"] == []
    assert view[4]["messages"][0]["content"] == [text("Text only.")] and view[4]["images"] == []
    assert view[5]["messages"][0]["content"] == [text("One"), IMAGE]
    assert [len(r) for r in view[:]["images"]] == [2, 1, 3, 0, 0, 1]
    # the view's lists are the source's own (null rows read as []), over the same memory-mapped bytes
    source, lists = multi[1].data.column("images"), view.data.column("images")
    assert lists.num_chunks == source.num_chunks and lists.null_count == 0 and source.null_count == 1
    assert [c.values.field("bytes").buffers()[2].address for c in lists.chunks] == [
        c.values.field("bytes").buffers()[2].address for c in source.chunks
    ]
    # the same messages as the row-by-row conversion of the stream
    stream = to_messages(multi[1].to_iterable_dataset())
    assert isinstance(stream, datasets.IterableDataset)
    assert [multi_summary(r) for r in stream] == [multi_summary(r) for r in view]


def test_multi_image_view_composes(multi):
    view, _, digests = multi
    expected = [multi_summary(r) for r in view]
    assert [multi_summary(r) for r in view.shuffle(seed=3)] == [
        expected[i] for i in datasets.Dataset.from_dict({"i": list(range(6))}).shuffle(seed=3)["i"]
    ]
    stream = view.to_iterable_dataset(num_shards=2)
    assert stream.features == TRL_FEATURES
    assert [multi_summary(r) for r in stream] == expected
    counted = view.map(lambda row: {"n": len(row["images"])})
    assert counted["n"] == [2, 1, 3, 0, 0, 1]
    many = view.filter(lambda row: len(row["images"]) > 1)
    assert image_digests(many) == [[digests[n] for n in MULTI_IMAGES[i]] for i in (0, 2)]
    again = pickle.loads(pickle.dumps(view))
    assert [type(b) for row in again.data.blocks for b in row] == [
        datasets.table.MemoryMappedTable,
        trl_view.ImageListsBlock,
    ]
    assert [multi_summary(r) for r in again] == expected
    twice = datasets.concatenate_datasets([view, view])
    assert [multi_summary(r) for r in twice] == expected * 2
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(image_digests, (view,)) == image_digests(view)


def test_a_selection_of_a_multi_image_source(multi):
    view, ds, _ = multi
    picked = to_messages(ds.select([4, 2, 0]))
    assert [multi_summary(r) for r in picked] == [multi_summary(view[i]) for i in (4, 2, 0)]


def test_an_in_memory_multi_image_dataset(multi):
    view, ds, _ = multi
    memory = datasets.Dataset.from_list(ds.to_list(), features=ds.features)
    assert [multi_summary(r) for r in to_messages(memory)] == [multi_summary(r) for r in view]


def test_single_and_multi_image_views_concatenate_and_interleave(views, multi):
    detail, _, _ = views
    view, _, digests = multi
    assert detail.features == view.features == TRL_FEATURES
    assert detail.data.schema.field("images").type == view.data.schema.field("images").type
    both = datasets.concatenate_datasets([detail, view])
    assert both.features == TRL_FEATURES and len(both) == 9
    assert image_digests(both) == image_digests(detail) + [[digests[n] for n in names] for names in MULTI_IMAGES]
    assert [multi_summary(r) for r in both] == [multi_summary(r) for r in detail] + [multi_summary(r) for r in view]
    mixed = datasets.interleave_datasets([detail, view], stopping_strategy="all_exhausted")
    order = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 0), (1, 3), (0, 1), (1, 4), (0, 2), (1, 5)]
    sources = (detail, view)
    assert [multi_summary(r) for r in mixed] == [multi_summary(sources[s][i]) for s, i in order]
    back = pickle.loads(pickle.dumps(both))
    assert image_digests(back) == image_digests(both)


def test_multi_image_rows_with_the_wrong_token_count_are_refused(tmp_path, cache_dir):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(1))
    records = [{"id": "ok", "image": ["a.jpg"], "conversations": turns("<image>", "x")}]
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ds = llava_hf.load_dataset(str(path), image_dir=str(folder), cache_dir=cache_dir)
    # A row changed after prepare (map): two tokens for one image.
    bad = ds.map(lambda row: {"conversations": turns("<image> <image>", "x")})
    with pytest.raises(ValueError, match=r"row 0 \(id='ok'\): 2 '<image>' tokens for 1 images; expected 1 or none"):
        to_messages(bad)


def test_messages_array_with_image_counts():
    rows = [
        ([("human", "<image> and <image>")], 2),
        ([("system", "s"), ("human", "Compare."), ("gpt", "x")], 2),  # both blocks open the user turn
        ([("human", "<image>")], 2),  # one token for two images
        ([("human", "No images")], 0),
        ([], 3),  # images and no turn to put them in
    ]
    turns_array = pa.array(
        [[{"from": f, "value": v} for f, v in turns] for turns, _ in rows],
        pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])),
    )
    got = trl_view.messages_array(turns_array, np.array([n for _, n in rows]), formats.DEFAULT_ROLES).to_pylist()
    assert got[0] == [{"role": "user", "content": [IMAGE, text(" and "), IMAGE]}]
    assert got[1][1]["content"] == [IMAGE, IMAGE, text("Compare.")]
    assert got[1] == formats.conversation_to_messages(
        [{"from": f, "value": v} for f, v in rows[1][0]], has_image=True, num_images=2
    )
    assert got[2] is None and got[4] is None
    assert got[3] == [{"role": "user", "content": [text("No images")]}]


def test_bench_script_runs_at_its_smallest(tmp_path):
    # Nothing timed: it runs, the two layouts agree (the script checks) and the chunk counts are reported.
    command = [sys.executable, str(ROOT / "scripts" / "bench_trl_view.py"), "--rows", "3000", "--text-only", "300"]
    result = subprocess.run(
        [*command, "--repeats", "1", "--work", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "to_messages of 3,000 rows (300 text-only, 3 chunks, " in result.stdout
    assert "images column, compacted (3 chunks)" in result.stdout
    assert "ratio runs / compacted" in result.stdout
