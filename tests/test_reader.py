"""Lazy opening of prepared files: residency after a cold open, bytes per random row, rows unchanged."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pytest
from conftest import ROOT, write_json

import llava_hf
from llava_hf import reader
from llava_hf.pagecache import evict, resident_bytes

PROCESS = str(ROOT / "tests" / "reader_process.py")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A prepared detail_23k of ~300 MB: 2,400 rows of ~125 KB incompressible images, prepared elsewhere."""
    root = tmp_path_factory.mktemp("lazy")
    images = root / "images"
    images.mkdir()
    rng = random.Random(7)
    for i in range(24):
        (images / f"{i:012d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.randbytes(120_000 + 500 * i))
    records = [
        {
            "id": f"r{i:05d}",
            "image": f"{i % 24:012d}.jpg",
            "conversations": [
                {"from": "human", "value": f"<image>\nRow {i}?"},
                {"from": "gpt", "value": "x" * (i % 50)},
            ],
        }
        for i in range(2_400)
    ]
    write_json(root / "data" / "detail_23k.json", records)
    paths = [str(root / "data"), str(images), str(root / "cache")]
    code = "import sys, llava_hf; llava_hf.load_dataset('detail_23k', data_dir=sys.argv[1], image_dir=sys.argv[2], cache_dir=sys.argv[3])"
    subprocess.run([sys.executable, "-c", code, *paths], check=True, capture_output=True)
    builder = llava_hf.load_builder("detail_23k", data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    files = sorted(os.path.join(builder.cache_dir, f) for f in os.listdir(builder.cache_dir) if f.endswith(".arrow"))
    assert sum(os.path.getsize(f) for f in files) > 290e6
    return paths, files


def run(*args, env=None) -> dict:
    result = subprocess.run(
        [sys.executable, PROCESS, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def cold(files):
    for f in files:
        evict(f)
    assert sum(resident_bytes(f) for f in files) == 0


def test_cold_open_reads_headers_only_and_rows_cost_their_own_bytes(big, tmp_path):
    paths, files = big
    cold(files)
    lazy = run("open", *paths, "--pickle", tmp_path / "ds.pkl")
    assert lazy["open_fraction"] < 0.05
    assert lazy["read_over_payload"] < 1.2
    cold(files)
    stock = run("open", *paths, env={"LLAVA_HF_LAZY": "0"})
    assert stock["open_fraction"] > 0.9  # datasets' own open reads (nearly) everything
    assert stock["digest"] == lazy["digest"]
    # a spawned process that unpickles the dataset, without importing llava_hf itself
    cold(files)
    spawned = run("unpickle", tmp_path / "ds.pkl")
    assert spawned["llava_hf_imported"] is True
    assert spawned["open_fraction"] < 0.05
    assert spawned["read_over_payload"] < 1.2
    assert spawned["digest"] == lazy["digest"]


def digest_of_pass(ds) -> str:
    """sha256 of every row, read in one sequential pass (`ds.iter`), as Arrow IPC bytes."""
    digest = hashlib.sha256()
    for table in ds.with_format("arrow").iter(batch_size=500):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    return digest.hexdigest()


def test_off_switch_argument_and_identical_rows_in_sequential_passes(big):
    paths, files = big
    options = dict(data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    total = sum(os.path.getsize(f) for f in files)
    stock = llava_hf.load_dataset("detail_23k", lazy=False, **options)
    expected = digest_of_pass(stock)
    del stock
    gc.collect()
    cold(files)
    lazy = llava_hf.load_dataset("detail_23k", lazy=True, **options)
    assert sum(resident_bytes(f) for f in files) / total < 0.05
    assert digest_of_pass(lazy) == expected
    # the sequential pass read the whole file, ahead of itself
    assert sum(resident_bytes(f) for f in files) / total > 0.99
    del lazy
    gc.collect()
    reader.set_policy(os.path.dirname(files[0]), None)


def test_map_with_workers_and_a_shuffled_view(big):
    paths, _ = big
    ds = llava_hf.load_dataset("detail_23k", data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    raw = ds.cast_column("image", datasets.Image(decode=False))  # the images are random bytes
    lengths = raw.select(range(300)).map(
        lambda row: {"n": len(row["image"]["bytes"])},
        num_proc=2,
        remove_columns=ds.column_names,
        features=datasets.Features({"n": datasets.Value("int64")}),
    )
    expected = [4 + 120_000 + 500 * (i % 24) for i in range(300)]
    assert list(lengths["n"]) == expected
    shuffled = ds.shuffle(seed=0).select_columns(["id"])
    assert sorted(shuffled["id"]) == [f"r{i:05d}" for i in range(2_400)]


def test_pickles_of_llava_hf_tables_carry_the_policy(big):
    paths, files = big
    ds = llava_hf.load_dataset("detail_23k", data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    state = ds.data.blocks[0][0].__getstate__() if hasattr(ds.data, "blocks") else ds.data.__getstate__()
    assert state["llava_hf"].folder == os.path.dirname(files[0])
    assert b"llava_hf.reader" in pickle.dumps(ds)


def test_other_datasets_open_as_datasets_opens_them(tmp_path):
    ds = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    ds.save_to_disk(tmp_path / "plain")
    (path,) = [str(p) for p in (tmp_path / "plain").glob("*.arrow")]
    assert reader.policy(path) is None
    assert b"llava_hf" not in pickle.dumps(datasets.load_from_disk(str(tmp_path / "plain")))


def test_value_spans_cover_exactly_the_values_of_a_slice():
    values = [b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 40]
    array = pa.array(values, pa.binary())
    spans = reader.value_spans(array.slice(1, 2))
    data = array.buffers()[2]
    assert (data.address + 10, 50) in spans  # bytes of rows 1 and 2: 20 + 30
    nested = pa.array(
        [[{"from": "human", "value": "hello"}], [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "bye"}]]
    )
    spans = reader.value_spans(nested.slice(1, 1))
    value_data = nested.flatten().field("value").buffers()[2]
    assert (value_data.address + 5, 5) in spans  # "hi" + "bye"
    numbers = pa.array(np.arange(100, dtype=np.int64))
    assert reader.value_spans(numbers.slice(10, 5)) == [(numbers.buffers()[1].address + 80, 41)]


def _read_in_child(ds, picks, queue):
    payload = 0
    raw = ds.with_format("arrow")
    for i in picks:
        payload += len(raw[i].column("image")[0]["bytes"].as_py())
    queue.put(payload)


def test_forked_workers_read_only_their_rows(big):
    paths, files = big
    cold(files)
    ds = llava_hf.load_dataset("detail_23k", data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    opened = sum(resident_bytes(f) for f in files)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    picks = [[3, 700, 1500, 2300], [10, 900, 1800, 2399]]
    workers = [context.Process(target=_read_in_child, args=(ds, p, queue)) for p in picks]
    for w in workers:
        w.start()
    payload = queue.get(timeout=60) + queue.get(timeout=60)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    read = sum(resident_bytes(f) for f in files) - opened
    assert payload > 900_000
    assert read / payload < 1.2


def test_row_advice_asks_for_exactly_the_rows_values(tmp_path, monkeypatch):
    """Columns over WHOLE_COLUMN bytes are asked for row by row: offsets entries, validity bytes, values."""
    n = 1_000
    turns = [[{"from": "human", "value": f"q{i}" * 9}, {"from": "gpt", "value": "a" * (i % 40)}] for i in range(n)]
    table = pa.table(
        {
            "id": pa.array([f"id{i:05d}" for i in range(n)]),  # 12 KB in all: asked for whole
            "image": pa.array(
                [None if i == 3 else {"bytes": bytes([i % 256]) * 100, "path": f"{i}.jpg"} for i in range(n)],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "conversations": pa.array(turns),
            "count": pa.array(range(n), pa.int64()),
        }
    )
    path = tmp_path / "rows.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    lazy = reader.open_lazy(str(path))
    reader.advise_rows(lazy.slice(0, 1))  # works out the batch's layout
    id_buffers = [b for b in lazy.column("id").chunk(0).buffers() if b is not None]
    (layout,) = reader._layouts[reader._mapping_of(id_buffers[0].address)[0]].values()
    # id (11 KB) and count (8 KB) are asked for whole, page-aligned; image and conversations row by row.
    assert sum(length for _, length in layout.whole) >= sum(b.size for b in id_buffers) + 8 * n
    assert len(layout.programs) == 2
    image_buffers = lazy.column("image").chunk(0).buffers()
    bitmaps = sum(image_buffers[k] is not None for k in (0, 1, 4))  # struct, bytes, path
    assert bitmaps == 1  # the null image is null in the struct only
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(reader, "_merged", lambda spans, gap=0: asked.extend(spans) or [])
    for i in (0, 3, 517):
        asked.clear()
        reader.advise_rows(lazy.slice(i, 1))
        row_bytes = sum(length for _, length in asked) - sum(length for _, length in layout.whole)
        image = (
            bitmaps + 8 + (0 if i == 3 else 100) + 8 + (0 if i == 3 else len(f"{i}.jpg"))
        )  # bitmaps, offsets, values
        talk = 8 + 12 + len("humangpt") + 12 + 9 * len(f"q{i}") + i % 40  # list offsets, then from and value
        assert row_bytes == image + talk
    del lazy
    gc.collect()


def _mostly_images(tmp_path, image_bytes: int) -> tuple[pa.Table, object]:
    """A file of 2 record batches of 500 rows that are mostly image bytes, with their text in several
    columns over WHOLE_COLUMN (TEXT_FIRST applies)."""
    n = 1_000
    table = pa.table(
        {
            "id": pa.array([f"id{i:05d}" for i in range(n)]),
            "image": pa.array(
                [{"bytes": bytes([i % 256]) * image_bytes, "path": f"images/{i:08d}.jpg"} for i in range(n)],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "conversations": pa.array(
                [
                    [{"from": "human", "value": "q" * (60 + i % 50)}, {"from": "gpt", "value": "a" * 90}]
                    for i in range(n)
                ]
            ),
            "caption": pa.array(["c" * (40 + i % 30) for i in range(n)]),
        }
    )
    path = tmp_path / "mostly_images.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=500)  # 2 record batches
    return table, path


def _record_advice(monkeypatch) -> list[tuple[int, int]]:
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(reader, "_madvise", lambda address, length, advice: asked.append((address, length)) or 0)
    return asked


def _covered(asked: list[tuple[int, int]], address: int, length: int) -> bool:
    reach = address  # requests come in pieces: the bytes are covered when the pieces reach past them
    for a, size in sorted(asked):
        if a <= reach < a + size:
            reach = a + size
    return reach >= address + length


def _image_bytes_and_text(lazy: pa.Table, k: int) -> tuple[pa.Buffer, list[pa.Buffer]]:
    """Record batch k's image bytes buffer, and every other buffer of the batch (its text)."""
    images = lazy.column("image").chunk(k).field("bytes").buffers()[2]
    others = [b for column in lazy.columns for b in column.chunk(k).buffers() if b is not None and b.size]
    return images, [b for b in others if b.address != images.address]


def _two_pages(start: int, length: int) -> bool:
    return start // 4096 != (start + length - 1) // 4096


@pytest.mark.parametrize("image_bytes", [6_000, 3_000])
def test_a_batch_of_mostly_image_bytes_has_its_text_asked_for_once(tmp_path, monkeypatch, image_bytes):
    """A record batch that is mostly image bytes, with its text in several columns over WHOLE_COLUMN, has
    every buffer but its image bytes asked for on its first query; each later query of the batch asks for
    its row's image bytes alone, and only when they lie on two pages or more (on one page, they fault in
    as fast)."""
    table, path = _mostly_images(tmp_path, image_bytes)
    lazy = reader.open_lazy(str(path))
    asked = _record_advice(monkeypatch)
    covered = functools.partial(_covered, asked)

    def two_pages(start: int) -> bool:
        return _two_pages(start, image_bytes)

    for k in range(2):
        images, others = _image_bytes_and_text(lazy, k)
        asked.clear()
        reader.advise_rows(lazy.slice(500 * k + 7, 1))  # the batch's first query
        assert all(covered(b.address, b.size) for b in others)  # all its text, whole
        assert covered(images.address + 7 * image_bytes, image_bytes) is two_pages(images.address + 7 * image_bytes)
        text = sum(b.size for b in others)
        assert sum(length for _, length in asked) < text + image_bytes + 3 * 4096 + 64 * 1024  # gaps, pages
        # Rows on one page and on two, where there are both (6,000 bytes always lie on two pages).
        on_one = next((j for j in range(100, 499) if not two_pages(images.address + j * image_bytes)), None)
        on_two = next(j for j in range(100, 499) if two_pages(images.address + j * image_bytes))
        assert (on_one is None) is (image_bytes > 4096)
        for j in sorted({123, 499, on_two} | ({on_one} if on_one is not None else set())):
            asked.clear()
            reader.advise_rows(lazy.slice(500 * k + j, 1))
            start = images.address + j * image_bytes
            if two_pages(start):
                assert covered(start, image_bytes)
                assert sum(length for _, length in asked) <= image_bytes + 2 * 4096
            else:
                assert asked == []
    # The rows read the same.
    rows = lazy.slice(490, 20).to_pylist()
    assert rows == table.slice(490, 20).to_pylist()
    del lazy
    gc.collect()


@pytest.mark.parametrize("image_bytes", [6_000, 3_000])
def test_rows_by_index_ask_for_what_a_row_query_asks_for(tmp_path, monkeypatch, image_bytes):
    """`ds[i]` on the row path gives the same advice as a row query: a batch's text on its first row, then
    each row's image bytes alone, when they lie on two pages or more; and the same rows."""
    table, path = _mostly_images(tmp_path, image_bytes)
    reader.install()
    reader.set_policy(str(tmp_path), True)
    data = datasets.Dataset.from_file(str(path))
    assert reader._row_index(data._data) is not None
    asked = _record_advice(monkeypatch)
    monkeypatch.setattr(reader, "want_advice", lambda: reader.ADVISE)
    covered = functools.partial(_covered, asked)
    lazy = data._data.table
    for k in range(2):
        images, others = _image_bytes_and_text(lazy, k)
        asked.clear()
        assert data[500 * k + 7] == table.slice(500 * k + 7, 1).to_pylist()[0]
        assert all(covered(b.address, b.size) for b in others)  # the batch's text, whole
        rows = [j for j in range(100, 499) if not _two_pages(images.address + j * image_bytes, image_bytes)][:3]
        rows += [j for j in range(100, 499) if _two_pages(images.address + j * image_bytes, image_bytes)][:3]
        assert len(rows) == (3 if image_bytes > 4096 else 6)
        for j in rows:
            asked.clear()
            assert data[500 * k + j] == table.slice(500 * k + j, 1).to_pylist()[0]
            start = images.address + j * image_bytes
            if _two_pages(start, image_bytes):
                assert covered(start, image_bytes)
                assert sum(length for _, length in asked) <= image_bytes + 2 * 4096
            else:
                assert asked == []
    reader.set_policy(str(tmp_path), None)
    del data, lazy, images, others
    gc.collect()


def test_a_gather_asks_for_every_rows_image_bytes(tmp_path, monkeypatch):
    """A gather of rows (a DataLoader batch) from batches of mostly image bytes asks for each row's image
    bytes, those on one page too, so that they are read at once; and gives the same rows."""
    image_bytes = 3_000
    table, path = _mostly_images(tmp_path, image_bytes)
    reader.install()
    reader.set_policy(str(tmp_path), True)
    data = datasets.Dataset.from_file(str(path))
    asked = _record_advice(monkeypatch)
    monkeypatch.setattr(reader, "want_advice", lambda: reader.ADVISE)
    lazy = data._data.table
    picks = [7, 507, 130, 731, 499, 999, 250]
    data.__getitems__(picks[:2])  # each batch's first query: its text
    asked.clear()
    rows = data.__getitems__(picks)
    assert rows == [table.slice(i, 1).to_pylist()[0] for i in picks]
    spans = []
    for i in picks:
        images = lazy.column("image").chunk(i // 500).field("bytes").buffers()[2]
        spans.append((images.address + i % 500 * image_bytes, image_bytes))
    assert all(_covered(asked, *span) for span in spans)
    assert sum(_two_pages(*span) for span in spans) < len(picks)  # some lie on one page, asked for as well
    assert sum(length for _, length in asked) <= len(picks) * (image_bytes + 2 * 4096)
    reader.set_policy(str(tmp_path), None)
    del data, lazy, images
    gc.collect()


def test_forked_children_leave_inherited_objects_out_of_their_gc():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: everything it inherited is frozen, so its gc.collect() writes none of it
        os.write(write, str(gc.get_freeze_count()).encode())
        os._exit(0)
    os.close(write)
    frozen_in_child = int(os.read(read, 64))
    os.waitpid(pid, 0)
    assert frozen_in_child > 10_000  # the modules' objects, at least
    assert gc.get_freeze_count() == 0  # the parent's collector is as it was


def test_gc_freeze_across_fork_can_be_turned_off():
    code = "import os, gc, llava_hf\npid = os.fork()\nif pid == 0:\n    print(gc.get_freeze_count()); os._exit(0)\nos.waitpid(pid, 0)"
    env = {**os.environ, "LLAVA_HF_GC_FREEZE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_gathered_rows_are_combined_into_one_chunk_with_the_same_values(big, monkeypatch):
    """A gather of at most COMBINE_ROWS rows reaches formatting as one chunk per column; values unchanged."""
    paths, _ = big
    options = dict(data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    lazy = llava_hf.load_dataset("detail_23k", **options).cast_column("image", datasets.Image(decode=False))
    stock = llava_hf.load_dataset("detail_23k", lazy=False, **options).cast_column(
        "image", datasets.Image(decode=False)
    )
    picks = random.Random(3).sample(range(2_400), 32)
    rows = lazy.__getitems__(picks)
    assert rows == stock.__getitems__(picks)
    assert [row["id"] for row in rows] == [f"r{i:05d}" for i in picks]
    assert [len(row["image"]["bytes"]) for row in rows] == [4 + 120_000 + 500 * (i % 24) for i in picks]
    gathered = lazy.with_format("arrow")[picks]
    assert gathered.column("image").num_chunks == 1
    assert gathered.equals(stock.with_format("arrow")[picks])
    trims = []
    monkeypatch.setattr(reader, "_malloc_trim", lambda pad: trims.append(pad))
    monkeypatch.setattr(reader, "_combined", 0)
    for start in range(0, 2 * reader.TRIM_EVERY * 8, 8):
        lazy[list(range(start, start + 8))]  # (a DataLoader batch, __getitems__, takes the row path)
    assert trims == [0, 0]  # the heap's free pages given back every TRIM_EVERY gathers
    many = list(range(0, 2_400, 2))[: reader.COMBINE_ROWS + 1]  # over the bound: left as datasets gives it
    wide = lazy.with_format("arrow")[many]
    assert wide.column("id").num_chunks > 1
    assert wide.column("id").to_pylist() == [f"r{i:05d}" for i in many]
    del lazy, stock, gathered, wide
    gc.collect()


def test_batch_layouts_share_one_template_per_schema(tmp_path):
    """Every record batch of a file keeps its addresses in one small array; the program nodes are shared."""
    n = 1_000
    table = pa.table(
        {
            "id": pa.array([f"id{i:05d}" for i in range(n)]),
            "text": pa.array(["t" * (100 + i % 60) for i in range(n)]),  # ~32 KB a batch: row by row
            "count": pa.array(range(n), pa.int64()),
        }
    )
    path = tmp_path / "batches.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=250)  # 4 record batches
    lazy = reader.open_lazy(str(path))
    assert lazy.column(0).num_chunks == 4
    for row in (0, 300, 600, 900):
        reader.advise_rows(lazy.slice(row, 1))
    layouts = reader._layouts[reader._mapping_of(lazy.column("text").chunk(0).buffers()[1].address)[0]]
    assert len(layouts) == 4
    templates = {id(layout.template) for layout in layouts.values()}
    assert len(templates) == 1
    for k, layout in enumerate(layouts.values()):
        # the text column is the one program, its addresses this batch's; id and count are asked for whole
        (program,) = layout.programs
        chunk = lazy.column("text").chunk(k)
        assert program[2] == chunk.buffers()[1].address and program[4] == chunk.buffers()[2].address
    del lazy
    gc.collect()


def test_batches_sharing_a_plan_get_the_layouts_worked_out_alone(tmp_path):
    """Layouts made from a file's shared plans (_plan, _row_plan) equal those worked out batch by batch,
    over batches with and without validity bitmaps, an all-null batch of a column, small and big columns."""
    n = 1_200
    table = pa.table(
        {
            "id": pa.array([f"id{i:05d}" for i in range(n)]),
            "image": pa.array(
                [
                    None if 300 <= i < 400 else {"bytes": bytes([i % 256]) * (900 + i % 7), "path": f"{i}.jpg"}
                    for i in range(n)
                ],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "caption": pa.array([None if i >= 900 else "c" * (40 + i % 30) for i in range(n)]),
            "conversations": pa.array([[{"from": "human", "value": "q" * (i % 90)}] for i in range(n)]),
        }
    )
    path = tmp_path / "plans.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=300)  # 4 batches: plain, nulls in image, plain, null captions
    lazy = reader.open_lazy(str(path))
    plans, row_plans, views = {}, {}, {}
    for batch in lazy.to_batches():
        for j in (0, 17, batch.num_rows - 1):
            one = pa.Table.from_batches([batch.slice(j, 1)])
            mapping = reader._mapping_of(one.column("id").chunk(0).buffers()[1].address)
            shared, once = reader._layout(one, 0, mapping, plans)
            alone, alone_once = reader._layout(one, 0, mapping)
            assert shared is not reader._FALLBACK
            assert (shared.template, list(shared.at), shared.pieces, once) == (
                alone.template,
                list(alone.at),
                alone.pieces,
                alone_once,
            )
            ours, theirs = reader._row_layout(batch, j, views, row_plans), reader._row_layout(batch, j, views)
            assert ours[0] == theirs[0] and list(ours[1]) == list(theirs[1]) and ours[2:] == theirs[2:]
    assert len(plans) == 3 and len(row_plans) == 3  # batches 0 and 2 share theirs
    del lazy, batch, one, ours, theirs, views
    gc.collect()


def test_views_of_one_file_with_other_column_types_get_their_own_layouts(tmp_path):
    """Two select_columns views of a file with as many columns and the same last one, but other types (an
    int32-offset string against an int64-offset one), never share a plan: each batch's layout is the one
    worked out alone (each column ~30 KB a batch: row by row)."""
    n = 900
    table = pa.table(
        {
            "a": pa.array(["a" * (60 + i % 90) for i in range(n)], pa.string()),
            "b": pa.array(["b" * (60 + i % 90) for i in range(n)], pa.large_string()),
            "c": pa.array(["c" * (60 + i % 90) for i in range(n)], pa.string()),
        }
    )
    path = tmp_path / "views.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=300)
    lazy = reader.open_lazy(str(path))
    for names in (["a", "c"], ["b", "c"]):
        view = lazy.select(names)
        for row in (5, 305, 605):
            reader.advise_rows(view.slice(row, 1))
            one = view.slice(row, 1)
            mapping = reader._mapping_of(one.column("c").chunk(0).buffers()[1].address)
            key = next(b.address for b in one.column(0).chunk(0).buffers() if b is not None and b.size)
            kept = reader._layouts[mapping[0]][(key, reader._view(view))]
            alone, _ = reader._layout(one, 0, mapping)
            assert (kept.template, list(kept.at)) == (alone.template, list(alone.at))
    widths = {node[3] for plans in reader._plans[mapping[0]].values() for plan in plans.values() for node in plan[0]}
    assert widths == {4, 8}
    # A cast of the last column (its values copied off the file, the first column still mapped) is another
    # view: it gets its own layout (datasets' walk of the row: c is not in the mapping), not [a, c]'s.
    view = lazy.select(["a", "c"])
    cast = view.cast(pa.schema([("a", pa.string()), ("c", pa.large_string())]))
    one = cast.slice(305, 1)
    key = next(b.address for b in one.column(0).chunk(0).buffers() if b is not None and b.size)
    assert key == next(b.address for b in view.slice(305, 1).column(0).chunk(0).buffers() if b is not None and b.size)
    reader.advise_rows(one)
    assert reader._layouts[mapping[0]][(key, reader._view(cast))] is reader._FALLBACK
    assert reader._layouts[mapping[0]][(key, reader._view(view))] is not reader._FALLBACK
    del lazy, view, one, cast
    gc.collect()


def test_columns_without_a_layout_are_read_and_advised_without_errors(tmp_path):
    """Fixed-size lists (datasets' `List(length=...)`), maps and large lists in a lazily opened file: row
    queries are advised (a fixed-size list's values, a large list's 8-byte offsets) and read as pyarrow
    reads them."""
    n = 2_000
    table = pa.table(
        {
            "v": pa.array([[float(i)] * 4 for i in range(n)], pa.list_(pa.float32(), 4)),
            "m": pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
            "l": pa.array([[str(i)] * 3 for i in range(n)], pa.large_list(pa.string())),
        }
    )
    path = tmp_path / "kinds.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1_000)
    lazy = reader.open_lazy(str(path))
    values = lazy.column("v").chunk(1).flatten().buffers()[1]
    assert reader.value_spans(lazy.column("v").chunk(1).slice(500, 2)) == [(values.address + 500 * 16, 2 * 16 + 1)]
    offsets = lazy.column("l").chunk(1).buffers()[1]
    assert reader.value_spans(lazy.column("l").chunk(1).slice(500, 2))[0] == (offsets.address + 500 * 8, 3 * 8)
    assert reader.value_spans(lazy.column("m").chunk(1).slice(500, 2)) == []  # a map: left to page faults
    assert reader.advise_rows(lazy.slice(1_500, 3)) is False
    assert lazy.slice(1_500, 3).to_pylist() == table.slice(1_500, 3).to_pylist()
    del lazy, values, offsets
    gc.collect()


def test_rows_of_a_concatenation_s_in_memory_part_are_not_advised(tmp_path, monkeypatch):
    """`concatenate_datasets` of a lazily opened dataset and one in memory: the row path reads both, and
    asks the kernel for nothing about the in-memory rows."""
    table, path = _mostly_images(tmp_path, 3_000)
    reader.install()
    reader.set_policy(str(tmp_path), True)
    both = datasets.concatenate_datasets([datasets.Dataset.from_file(str(path)), datasets.Dataset(table)])
    assert reader._row_index(both._data) is not None
    asked = _record_advice(monkeypatch)
    monkeypatch.setattr(reader, "want_advice", lambda: reader.ADVISE)
    for i in (1_007, 1_500, 1_999):
        assert both[i] == table.slice(i - 1_000, 1).to_pylist()[0]
    assert asked == []
    assert both[7] == table.slice(7, 1).to_pylist()[0] and asked != []  # the lazy part is advised
    reader.set_policy(str(tmp_path), None)
    del both
    gc.collect()


def test_rows_by_index_are_datasets_rows(big):
    """`ds[i]` read from the record batch directly gives datasets' own dict: values, order, errors, views."""
    paths, files = big
    options = dict(data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    plain = datasets.Image(decode=False)
    lazy = llava_hf.load_dataset("detail_23k", **options).cast_column("image", plain)
    stock = llava_hf.load_dataset("detail_23k", lazy=False, **options).cast_column("image", plain)
    assert reader._row_index(lazy._data) is not None
    assert reader._row_index(stock._data) is None  # not lazily mapped: datasets' path
    for i in (0, 1, 99, 100, 517, 2_399, -1, -2_400):
        row = lazy[i]
        assert row == stock[i]
        assert list(row) == list(stock.features)
        assert row["id"] == f"r{i % 2_400:05d}"
        assert len(row["image"]["bytes"]) == 4 + 120_000 + 500 * (i % 2_400 % 24)
    for bad in (2_400, -2_401):
        with pytest.raises(IndexError) as ours:
            lazy[bad]
        with pytest.raises(IndexError) as theirs:
            stock[bad]
        assert str(ours.value) == str(theirs.value) == f"Invalid key: {bad} is out of bounds for size 2400"
    shuffled, stock_shuffled = lazy.shuffle(seed=1), stock.shuffle(seed=1)
    assert [shuffled[i] for i in range(0, 2_400, 97)] == [stock_shuffled[i] for i in range(0, 2_400, 97)]
    window, stock_window = lazy.select(range(150, 450)), stock.select(range(150, 450))  # sliced batches
    assert window._indices is None and reader._row_index(window._data) is not None
    assert [window[i] for i in range(0, 300, 13)] == [stock_window[i] for i in range(0, 300, 13)]
    picked = lazy.select_columns(["conversations", "id"])
    assert picked[5] == {"conversations": stock[5]["conversations"], "id": "r00005"}
    # a format set: datasets' own path
    assert lazy.with_format("numpy")[3]["id"] == "r00003"

    # text-only rows (a null image struct) in a file of the same cache folder, written by a map
    def drop(row, i):
        return {"image": None if i % 3 == 0 else row["image"]}

    reader.set_policy(os.path.dirname(files[0]), True)  # the stock open above set the folder's to False
    some = lazy.select(range(300)).map(drop, with_indices=True)
    assert reader._row_index(some._data) is not None
    expected = [{**stock[i], "image": None if i % 3 == 0 else stock[i]["image"]} for i in range(0, 300, 7)]
    assert [some[i] for i in range(0, 300, 7)] == expected
    assert some[0]["image"] is None and some[1]["image"]["path"] == stock[1]["image"]["path"]
    del lazy, stock, shuffled, stock_shuffled, picked, some, window, stock_window
    gc.collect()
    reader.set_policy(os.path.dirname(files[0]), None)


def test_dataloader_batches_are_datasets_rows_read_by_the_row_path(big, monkeypatch):
    """`__getitems__` (a DataLoader batch) reads its rows as `ds[i]` does, with no table query: the same
    list of dicts as datasets' gather, through negative keys, repeats, an indices mapping and decoding;
    out-of-range keys and bigger batches take datasets' path and its errors."""
    import datasets.arrow_dataset

    paths, _ = big
    options = dict(data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    plain = datasets.Image(decode=False)
    lazy = llava_hf.load_dataset("detail_23k", **options).cast_column("image", plain)
    stock = llava_hf.load_dataset("detail_23k", lazy=False, **options).cast_column("image", plain)
    stock_getitems = datasets.Dataset.__getitems__.__wrapped__
    queried = []
    ours = datasets.arrow_dataset.query_table
    monkeypatch.setattr(reader, "_query_hook", None)  # set below: the row path runs only under its own hook
    monkeypatch.setattr(datasets.arrow_dataset, "query_table", lambda *a, **k: queried.append(a[1]) or ours(*a, **k))
    monkeypatch.setattr(reader, "_query_hook", datasets.arrow_dataset.query_table)
    keys = [5, 2_399, -1, 0, 5, 1_234, -2_400, 100, 99]
    rows = lazy.__getitems__(keys)
    assert queried == []  # no gathered table
    assert rows == stock.__getitems__(keys) == stock_getitems(lazy, keys)
    assert [row["id"] for row in rows] == [f"r{k % 2_400:05d}" for k in keys]
    assert [len(row["image"]["bytes"]) for row in rows] == [4 + 120_000 + 500 * (k % 2_400 % 24) for k in keys]
    shuffled, stock_shuffled = lazy.shuffle(seed=2), stock.shuffle(seed=2)
    picks = random.Random(4).sample(range(2_400), 32)
    expected = stock_shuffled.__getitems__(picks)
    queried.clear()
    assert shuffled.__getitems__(picks) == expected
    assert queried == []
    with pytest.raises(IndexError) as theirs:
        stock.__getitems__([3, 2_400])
    queried.clear()
    with pytest.raises(IndexError) as mine:
        lazy.__getitems__([3, 2_400])
    assert str(mine.value) == str(theirs.value)
    many = list(range(reader.COMBINE_ROWS + 1))  # over the bound: datasets' gather
    assert [row["id"] for row in lazy.__getitems__(many)] == [f"r{i:05d}" for i in many]
    assert queried == [[3, 2_400], many]  # the out-of-range batch and the big one: the table query
    # a negative key through an indices mapping: datasets' gather refuses it, and so does this one
    with pytest.raises(IndexError) as theirs:
        stock_shuffled.__getitems__([4, -1])
    queried.clear()
    with pytest.raises(IndexError) as mine:
        shuffled.__getitems__([4, -1])
    assert str(mine.value) == str(theirs.value) and queried == [[4, -1]]

    class Tagged(datasets.Dataset):  # a subclass's own __getitem__ sees every batch, as with datasets
        def __getitem__(self, key):
            out = super().__getitem__(key)
            return {**out, "tag": [1] * len(out["id"])} if isinstance(key, list) else out

    tagged = Tagged(lazy._data, info=lazy.info.copy())
    assert tagged.__getitems__([2, 7]) == [{**row, "tag": 1} for row in stock.__getitems__([2, 7])]
    del lazy, stock, shuffled, stock_shuffled, tagged
    gc.collect()


def test_rows_by_index_decode_what_datasets_decodes(release, cache_dir):
    """Columns whose features need decoding (Image) go through datasets' decode_nested_example."""
    lazy = llava_hf.load_dataset("detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    stock = llava_hf.load_dataset("detail_23k", cache_dir=cache_dir, lazy=False, **release.options("detail_23k"))
    assert reader._row_index(lazy._data) is not None
    for i in range(len(lazy)):
        ours, theirs = lazy[i], stock[i]
        assert ours["image"].size == theirs["image"].size and ours["image"].tobytes() == theirs["image"].tobytes()
        assert {k: v for k, v in ours.items() if k != "image"} == {k: v for k, v in theirs.items() if k != "image"}
    # and a DataLoader batch of them (the gather row path), decoded the same
    keys = list(range(len(lazy)))[::-1]
    for ours, theirs in zip(lazy.__getitems__(keys), stock.__getitems__(keys)):
        assert ours["image"].tobytes() == theirs["image"].tobytes()
        assert {k: v for k, v in ours.items() if k != "image"} == {k: v for k, v in theirs.items() if k != "image"}
    # an extension-typed column (a user's map) is left to datasets
    shaped = lazy.map(
        lambda row: {"grid": [[1, 2], [3, 4]]},
        features=datasets.Features({**lazy.features, "grid": datasets.Array2D((2, 2), "int32")}),
    )
    assert reader._row_index(shaped._data) is None
    assert shaped[0]["grid"] == [[1, 2], [3, 4]]


def test_rows_read_from_buffers_equal_pyarrows_scalars(tmp_path):
    """Every type the row path reads (text, bytes, large variants, lists and structs of them, nulls at
    every level, unicode, empty values), from whole and sliced batches, as `Scalar.as_py` gives it."""
    n = 700
    rng = random.Random(5)

    def text(i):
        return None if i % 11 == 0 else ["", "é", "日本語", "x" * (i % 90), "\n\t\"'"][i % 5] + str(i)

    turn = pa.struct([("from", pa.string()), ("value", pa.large_string())])
    table = pa.table(
        {
            "s": pa.array([text(i) for i in range(n)], pa.string()),
            "b": pa.array([None if i % 7 == 0 else rng.randbytes(i % 50) for i in range(n)], pa.large_binary()),
            "l": pa.array(
                [
                    None if i % 13 == 0 else [{"from": text(i + k), "value": text(k)} for k in range(i % 4)]
                    for i in range(n)
                ],
                pa.large_list(turn),
            ),
            "t": pa.array(
                [None if i % 5 == 0 else [text(i), None, ""][: i % 4] for i in range(n)], pa.list_(pa.string())
            ),
            "z": pa.array([None] * n, pa.null()),
        }
    )
    path = tmp_path / "kinds.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=256)
    lazy = reader.open_lazy(str(path))
    for source in (lazy, lazy.slice(123, 400)):
        views = {}
        for batch in source.to_batches():
            for j in range(batch.num_rows):
                layout = reader._row_layout(batch, j, views)
                assert layout is not None
                template, at, first, *mapped = layout
                got = reader._row_reader(template, tuple(batch.schema.names))(at, first + j, *mapped)
                assert got == {name: column[j].as_py() for name, column in zip(batch.schema.names, batch.columns)}
        assert len(views) == 1  # one mapping, one set of views
    del lazy, source, batch, views, layout
    gc.collect()


@pytest.mark.parametrize("depth", [19, 25])
def test_lists_nested_past_pythons_block_limit_open_and_read_as_datasets_does(tmp_path, depth):
    """A row reader is Python source, one `for` block a list level: past CPython's 20 nested blocks none is
    made (the file still opens, and its rows take datasets' path); up to it, the reader reads the rows."""
    kind, value = pa.string(), "x"
    for _ in range(depth):
        kind, value = pa.list_(kind), [value]
    table = pa.table({"deep": pa.array([value, None], kind)})
    path = tmp_path / "deep.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    lazy = reader.open_lazy(str(path))
    (batch,) = lazy.to_batches()
    template, at, first, *mapped = reader._row_layout(batch, 0, {})
    read = reader._row_reader(template, ("deep",))
    if depth > 20:
        assert read is None
    else:
        assert [read(at, first + j, *mapped) for j in range(2)] == [{"deep": value}, {"deep": None}]
    del lazy, batch, mapped
    gc.collect()


def test_the_row_path_gives_way_to_subclasses_other_hooks_and_changed_features(big, monkeypatch):
    """A subclass's own _getitem, a query hook installed after llava_hf's, and features changed in place
    are all honoured: datasets' path runs, or the row path sees the change."""
    import datasets.arrow_dataset

    paths, _ = big
    options = dict(data_dir=paths[0], image_dir=paths[1], cache_dir=paths[2])
    lazy = llava_hf.load_dataset("detail_23k", **options).cast_column("image", datasets.Image(decode=False))
    stock_getitem = datasets.Dataset.__getitem__.__wrapped__

    class Tagged(datasets.Dataset):
        def _getitem(self, key, **kwargs):
            out = super()._getitem(key, **kwargs)
            return {**out, "tag": 1} if isinstance(key, int) else out

    tagged = Tagged(lazy._data, info=lazy.info.copy())
    assert tagged[4] == {**stock_getitem(lazy, 4), "tag": 1}
    queried = []
    ours = datasets.arrow_dataset.query_table
    monkeypatch.setattr(datasets.arrow_dataset, "query_table", lambda *a, **k: queried.append(a[1]) or ours(*a, **k))
    assert lazy[9] == stock_getitem(lazy, 9) and queried == [9, 9]  # both went through the new hook
    monkeypatch.undo()
    assert isinstance(lazy[2]["image"], dict)
    lazy.info.features["image"] = datasets.Image(decode=True)  # in place: the next row decodes it
    from PIL import UnidentifiedImageError

    with pytest.raises(UnidentifiedImageError):  # the fixture's images are random bytes: decoding fails
        lazy[2]
    with pytest.raises(UnidentifiedImageError):
        stock_getitem(lazy, 2)
    lazy.info.features["image"] = datasets.Image(decode=False)
    assert lazy[2] == stock_getitem(lazy, 2)
    assert datasets.Dataset.__getitem__.__name__ == "__getitem__"
    concatenated = datasets.concatenate_datasets([lazy.select(range(10)), lazy.select(range(10, 20))])
    assert [concatenated[i] for i in range(20)] == [stock_getitem(lazy, i) for i in range(20)]
    del lazy, tagged, concatenated
    gc.collect()


def test_binary_array_takes_any_bytes_like_value():
    from llava_hf.features import binary_array

    values = [b"ab", None, memoryview(b"xyz").cast("c"), pa.py_buffer(b"pq"), np.frombuffer(b"\x01\x02", np.int8)]
    assert binary_array(values).to_pylist() == [b"ab", None, b"xyz", b"pq", b"\x01\x02"]


def test_a_mapping_at_an_address_reused_before_the_old_finalizer_keeps_its_entry():
    # CPython unmaps a file before its finalizer runs: another thread can map a new file at the same address
    # in between. The old finalizer must leave the new entry (and its lookups) alone.
    start = 1 << 46  # far from any real mapping of this process
    old = reader._register(start, 4096)
    new = reader._register(start, 8192)  # the new file at the same address, the old finalizer not yet run
    try:
        assert reader._mapping_of(start + 5000) == (start, start + 8192)
        reader._unregister(start, old)  # the old finalizer, late
        assert reader._mapping_of(start + 5000) == (start, start + 8192)
        assert reader._mappings[0].count(start) == 1
    finally:
        reader._unregister(start, new)
    assert reader._mapping_of(start + 5000) is None
    assert start not in reader._mappings[0] and start not in reader._mappings[1]


def test_files_opened_and_dropped_in_two_threads_at_once(tmp_path):
    import threading
    import time

    paths = [
        llava_hf.load_dataset(config, sample=True, cache_dir=str(tmp_path)).cache_files[0]["filename"]
        for config in ("detail_23k", "blip_558k")
    ]
    errors, rows = [], [0, 0]
    until = time.monotonic() + 3

    def churn(k: int) -> None:
        while time.monotonic() < until:
            try:
                ds = datasets.Dataset.from_file(paths[k])
                assert ds[0]["id"] == ds[[0, 1]]["id"][0]
                rows[k] += 1
                del ds
            except Exception as e:  # noqa: BLE001 (any error in a thread is the finding)
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert min(rows) > 10
