"""The builder end to end: download_and_prepare + reload on fake release layouts, every config."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile

import datasets
import pytest
from conftest import DATA_DIRS, jpeg, sha256, zip_folder

import llava_hf
from llava_hf import SourceError, load_dataset, prepare_report

CONFIGS = list(DATA_DIRS)


def raw_rows(ds) -> list[dict]:
    """Rows with the image as {bytes, path}, comparable across loads."""
    return ds.cast_column("image", datasets.Image(decode=False)).to_list()


def load(release, name, cache_dir, **kw):
    return load_dataset(name, cache_dir=cache_dir, **{**release.options(name), **kw})


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_matches_its_source_file(release, cache_dir, name):
    ds = load(release, name, cache_dir)
    source = release.records(name)
    metadata = release.metadata(name) if name in ("cc3m_595k", "blip_558k") else [None] * len(source)
    assert ds.features == llava_hf.FEATURES
    assert len(ds) == len(source)
    for row, raw, meta in zip(raw_rows(ds), source, metadata):
        assert row["id"] == str(raw["id"])
        assert row["conversations"] == [{"from": t["from"], "value": t["value"]} for t in raw["conversations"]]
        if "image" in raw:
            assert row["image"]["path"] == raw["image"]
            assert sha256(row["image"]["bytes"]) == sha256(release.image_bytes(name, raw["image"]))
        else:
            assert row["image"] is None
        for field in ("caption", "blip_caption", "url"):
            assert row[field] == (meta or {}).get(field)
    report = prepare_report(ds)
    assert (report["records"], report["rows"], report["skipped"]["counts"]) == (len(source), len(source), {})


def test_mix665k_quirks(release, cache_dir):
    rows = raw_rows(load(release, "llava_v1_5_mix665k", cache_dir))
    assert [r["id"] for r in rows] == [
        "000000033471",
        "n161313",
        "140031996",
        "1446306166",
        "0a3c1d5f2f0d1a9e",
        "VG_100K_2/2386",
        "VG_100K/1592",
        "i6IyJda_0",
    ]
    assert [r["source"] for r in rows] == ["coco", "gqa", "ocr_vqa", "ocr_vqa", "textvqa", "vg", "vg", "text_only"]
    assert [r["extra"] for r in rows] == [
        None,
        None,
        '{"@id":140031996}',
        None,
        None,
        '{"@turns":[{},{"weight":1.0}]}',
        None,
        '{"model":"","@order":["id","model","conversations"]}',  # model stands before conversations
    ]
    assert rows[7]["image"] is None
    # GIF and PNG files under .jpg names are embedded as they are
    assert rows[2]["image"]["bytes"][:3] == b"GIF"
    assert rows[3]["image"]["bytes"][:4] == b"\x89PNG"


def test_image_token_position_is_kept_as_in_each_file(release, cache_dir):
    conversation = load(release, "conversation_58k", cache_dir)
    instruct = load(release, "llava_instruct_150k", cache_dir)
    assert conversation[0]["conversations"][0]["value"] == "What are the colors of the bus in the image?\n<image>"
    assert instruct[0]["conversations"][0]["value"] == "<image>\nWhat are the colors of the bus in the image?"
    assert instruct["id"] == ["000000033471", "000000319154", "000000520873", "000000033471"]


def test_pretrain_metadata_join(release, cache_dir):
    ds = load(release, "cc3m_595k", cache_dir)
    assert ds.select_columns(["id", "caption", "blip_caption"]).to_list()[:2] == [
        {
            "id": "GCC_train_002582585",
            "caption": "olive oil is a healthy ingredient used liberally .",
            "blip_caption": "a bottle of olive oil",
        },
        {
            "id": "GCC_train_002061354",
            "caption": "a view of the city from the top of the mountain",
            "blip_caption": None,
        },
    ]
    blip = load(release, "blip_558k", cache_dir)
    assert blip[0]["image"].size == (96, 72)
    assert blip.select_columns(["id", "caption", "url"])[0] == {
        "id": "004539375",
        "caption": None,
        "url": "https://example.com/laion/004539375.jpg",
    }
    assert raw_rows(blip)[0]["image"]["path"] == "00453/004539375.jpg"


def test_metadata_not_parallel_names_both_files_and_the_row(release, cache_dir):
    meta_path = release.data_dir("cc3m_595k") / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta[1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SourceError) as info:
        load(release, "cc3m_595k", cache_dir)
    assert str(info.value) == (
        "chat.json: record 1 (id='GCC_train_002061354'): metadata.json record 1 has id 'GCC_train_000656037'; the "
        "chat and metadata files must be parallel (same order, same ids), and they have 4 and 3 records"
    )


def test_metadata_same_length_other_id(release, cache_dir):
    meta_path = release.data_dir("blip_558k") / "blip_laion_cc_sbu_558k_meta.json"
    meta = json.loads(meta_path.read_text())
    meta[2]["id"] = "999999999"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SourceError) as info:
        load(release, "blip_558k", cache_dir)
    assert str(info.value) == (
        "blip_laion_cc_sbu_558k.json: record 2 (id='001265142'): blip_laion_cc_sbu_558k_meta.json has id "
        "'999999999' at the same record; the chat and metadata files must be parallel (same order, same ids)"
    )


@pytest.mark.parametrize("name", ["llava_v1_5_mix665k", "cc3m_595k"])
def test_num_proc_2_gives_the_same_rows_in_the_same_order(release, tmp_path, name):
    one = load(release, name, str(tmp_path / "one"))
    two = load(release, name, str(tmp_path / "two"), num_proc=2)
    assert len(two.cache_files) == 2  # two workers, each wrote its own file
    assert raw_rows(two) == raw_rows(one)


def log_directory_parses(monkeypatch, log):
    """Each zip directory parse, in any process, appends "<pid> <zip name>" to `log` (returned)."""
    from llava_hf import zipdir

    original = zipdir.ZipDirectory.from_transport.__func__

    def counted(cls, transport, label):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {os.path.basename(label)}\n")
        return original(cls, transport, label)

    monkeypatch.setattr(zipdir.ZipDirectory, "from_transport", classmethod(counted))
    return log


def test_num_proc_workers_share_one_parse_of_the_zip_directory(release, tmp_path, monkeypatch):
    """A num_proc=2 prepare parses the zip's directory once, in a child forked while the JSON is scanned;
    the workers use that copy (none parses its own), which is dropped when the prepare ends. With
    num_proc=1 the preparing process parses it itself. The rows are the same."""
    from llava_hf import images

    log = log_directory_parses(monkeypatch, tmp_path / "parses.log")
    two = load(release, "blip_558k", str(tmp_path / "two"), num_proc=2)
    assert len(two.cache_files) == 2
    (parse,) = log.read_text().splitlines()
    pid, name = parse.split()
    assert name == "images.zip" and int(pid) != os.getpid()
    assert images._PARSED == {}
    log.unlink()
    one = load(release, "blip_558k", str(tmp_path / "one"))
    assert log.read_text().splitlines() == [f"{os.getpid()} images.zip"]
    assert raw_rows(two) == raw_rows(one)


@pytest.mark.parametrize("why", ["spawned workers", "no process to spare"])
def test_without_forked_workers_or_a_spare_process_each_worker_parses_the_directory(
    release, tmp_path, monkeypatch, why
):
    """No parse ahead where the workers would not inherit it (a spawn or forkserver pool) or where no
    child can be started: the two workers parse the directory themselves, and the rows are the same."""
    import multiprocess

    from llava_hf import images, sources

    log = log_directory_parses(monkeypatch, tmp_path / "parses.log")
    if why == "spawned workers":
        monkeypatch.setattr(multiprocess, "get_start_method", lambda allow_none=False: "spawn")
        assert images._workers_fork() is False
    else:
        real = sources.in_child

        def no_fork(fn, *args, **kwargs):
            if fn is images._parse_local:
                raise OSError(11, "Resource temporarily unavailable")
            return real(fn, *args, **kwargs)

        monkeypatch.setattr(sources, "in_child", no_fork)
    two = load(release, "blip_558k", str(tmp_path / "two"), num_proc=2)
    parses = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(parses) == 2 and len(set(parses)) == 2 and str(os.getpid()) not in parses  # one a worker
    assert images._PARSED == {}
    monkeypatch.undo()
    assert raw_rows(two) == raw_rows(load(release, "blip_558k", str(tmp_path / "one")))


def test_reload_comes_from_the_cache_without_reading_images(release, cache_dir):
    first = load(release, "llava_v1_5_mix665k", cache_dir)
    shutil.rmtree(release.root / "images")
    again = load(release, "llava_v1_5_mix665k", cache_dir)
    assert again.cache_files == first.cache_files
    assert raw_rows(again) == raw_rows(first)


def test_a_changed_source_file_is_a_new_cache_entry_even_at_the_same_size(release, cache_dir):
    first = load(release, "detail_23k", cache_dir)
    path = release.data_dir("detail_23k") / "detail_23k.json"
    text = path.read_text()
    path.write_text(text.replace("two cooks", "two chefs", 1))  # same length, in the middle
    second = load(release, "detail_23k", cache_dir)
    assert second.cache_files != first.cache_files
    assert "two chefs" in second[0]["conversations"][1]["value"]
    os.utime(path)  # touching the file changes nothing
    assert load(release, "detail_23k", cache_dir).cache_files == second.cache_files


def test_image_folders_with_the_same_tail(release, cache_dir, tmp_path):
    coco = release.image_dir("detail_23k")
    other = tmp_path / "elsewhere" / "coco" / "train2017"
    shutil.copytree(coco, other)
    # Embedded bytes: the same tail is one entry (a cache found through another mount point) ...
    a = load(release, "detail_23k", cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same images: no warning
        b = load(release, "detail_23k", cache_dir, image_dir=str(other))
    assert a.cache_files == b.cache_files
    # ... and different images there are pointed out.
    (other / "000000398214.jpg").write_bytes(jpeg(99))
    with pytest.warns(UserWarning, match=r"reusing data prepared from the images in .*differs in"):
        load(release, "detail_23k", cache_dir, image_dir=str(other))
    # Stored paths depend on the folder: two entries.
    c = load(release, "detail_23k", cache_dir, embed_images=False)
    d = load(release, "detail_23k", cache_dir, embed_images=False, image_dir=str(other))
    assert c.cache_files != d.cache_files
    assert raw_rows(d)[0]["image"]["path"] == str(other / "000000319154.jpg")


@pytest.mark.parametrize("name", ["detail_23k", "llava_v1_5_mix665k", "blip_558k"])
def test_streaming_has_several_shards_and_the_same_rows(release, cache_dir, name):
    stream = load(release, name, None, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert stream.num_shards == len(release.records(name)) > 1
    streamed = list(stream.cast_column("image", datasets.Image(decode=False)))
    assert streamed == raw_rows(load(release, name, cache_dir))


def test_zip_and_folder_image_roots_give_identical_rows(release, tmp_path):
    coco = release.image_dir("detail_23k")
    coco_zip = zip_folder(coco, tmp_path / "coco.zip")
    folder = load(release, "detail_23k", str(tmp_path / "a"))
    zipped = load(release, "detail_23k", str(tmp_path / "b"), image_dir=str(coco_zip))
    assert raw_rows(zipped) == raw_rows(folder)

    unzipped = tmp_path / "lcs"
    with zipfile.ZipFile(release.data_dir("blip_558k") / "images.zip") as zf:
        zf.extractall(unzipped)
    from_zip = load(release, "blip_558k", str(tmp_path / "c"))
    from_folder = load(release, "blip_558k", str(tmp_path / "d"), image_dir=str(unzipped))
    assert raw_rows(from_folder) == raw_rows(from_zip)


def test_coco_train2014_layout_works_without_renaming(release, tmp_path):
    coco = release.image_dir("detail_23k")
    old = tmp_path / "train2014"
    old.mkdir()
    for path in coco.iterdir():
        shutil.copy(path, old / f"COCO_train2014_{path.name}")
    expected = raw_rows(load(release, "detail_23k", str(tmp_path / "a")))
    assert raw_rows(load(release, "detail_23k", str(tmp_path / "b"), image_dir=str(old))) == expected


def test_embed_images_false_stores_openable_paths(release, cache_dir):
    ds = load(release, "detail_23k", cache_dir, embed_images=False)
    row = raw_rows(ds)[0]
    assert row["image"] == {"bytes": None, "path": str(release.image_dir("detail_23k") / "000000319154.jpg")}
    assert ds[0]["image"].size == (96, 72)
    zipped = load(release, "blip_558k", cache_dir, embed_images=False)
    archive = release.data_dir("blip_558k") / "images.zip"
    assert raw_rows(zipped)[0]["image"] == {"bytes": None, "path": f"zip://00453/004539375.jpg::{archive}"}
    assert zipped[0]["image"].size == (96, 72)


# --- bad input -------------------------------------------------------------------------------------------


def damage_detail(release, image: str | None = None, data: bytes | None = None, record_image: str | None = None):
    """Make record 1 of detail_23k bad: rewrite its image file, or point it at another name."""
    if data is not None:
        (release.image_dir("detail_23k") / image).write_bytes(data)
    if record_image is not None:
        path = release.data_dir("detail_23k") / "detail_23k.json"
        records = json.loads(path.read_text())
        records[1]["image"] = record_image
        path.write_text(json.dumps(records, indent=2))


COCO_DIR = "{root}/images/coco/train2017"
BAD_IMAGES = [
    (
        "missing",
        dict(record_image="000000999999.jpg"),
        f"image '000000999999.jpg' not found under {COCO_DIR} (also tried 'COCO_train2014_000000999999.jpg', "
        "'COCO_val2014_000000999999.jpg')",
    ),
    ("empty", dict(image="000000398214.jpg", data=b""), f"image file {COCO_DIR}/000000398214.jpg is empty (0 bytes)"),
    (
        "not_an_image",
        dict(image="000000398214.jpg", data=b"<html>404</html>"),
        f"image file {COCO_DIR}/000000398214.jpg (16 bytes) is not an image: it starts with no known image signature",
    ),
    (
        "unsafe_path",
        dict(record_image="/etc/passwd"),
        "image path '/etc/passwd' is absolute or a URL; expected a path inside the image root",
    ),
    (
        "unsafe_path",
        dict(record_image="../../../LLaVA-Pretrain/images.zip"),
        "image path '../../../LLaVA-Pretrain/images.zip' leaves the image root ('..')",
    ),
    (
        "unsafe_path",
        dict(record_image="https://example.com/x.jpg"),
        "image path 'https://example.com/x.jpg' is absolute or a URL; expected a path inside the image root",
    ),
]


@pytest.mark.parametrize(
    ("reason", "damage", "detail"), BAD_IMAGES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_IMAGES)]
)
@pytest.mark.parametrize("num_proc", [None, 2])
def test_bad_image_raises_naming_file_record_id_and_path(release, cache_dir, reason, damage, detail, num_proc):
    damage_detail(release, **damage)
    with pytest.raises(SourceError) as info:
        load(release, "detail_23k", cache_dir, num_proc=num_proc)
    error = info.value
    assert type(error) is SourceError  # the caller gets our error, not datasets' generic wrapper
    assert str(error) == "detail_23k.json: record 1 (id='000000398214'): " + detail.format(root=release.root)
    assert (error.file, error.index, error.record_id, error.reason) == ("detail_23k.json", 1, "000000398214", reason)
    assert_no_complete_cache(cache_dir)


@pytest.mark.parametrize(
    ("reason", "damage", "detail"), BAD_IMAGES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_IMAGES)]
)
def test_bad_image_skipped_and_counted(release, cache_dir, reason, damage, detail):
    damage_detail(release, **damage)
    ds = load(release, "detail_23k", cache_dir, on_bad_image="skip")
    assert ds["id"] == ["000000319154", "000000033471"]
    report = prepare_report(ds)
    assert report["records"] == 3 and report["rows"] == 2
    assert report["skipped"]["counts"] == {reason: 1}
    image = damage.get("record_image") or damage["image"]
    assert report["skipped"]["examples"][reason] == [
        {"index": 1, "id": "000000398214", "image": image, "detail": detail.format(root=release.root)}
    ]


def test_skip_counts_across_workers(release, cache_dir):
    images = release.image_dir("llava_v1_5_mix665k")
    (images / "gqa/images/n161313.jpg").write_bytes(b"")
    (images / "vg/VG_100K/1592.jpg").unlink()
    (images / "textvqa/train_images/0a3c1d5f2f0d1a9e.jpg").write_bytes(b"GIF")
    ds = load(release, "llava_v1_5_mix665k", cache_dir, on_bad_image="skip", num_proc=2)
    assert ds["id"] == ["000000033471", "140031996", "1446306166", "VG_100K_2/2386", "i6IyJda_0"]
    report = prepare_report(ds)
    assert report["skipped"]["counts"] == {"missing": 1, "empty": 1, "not_an_image": 1}
    assert [
        e["index"] for reason in ("missing", "empty", "not_an_image") for e in report["skipped"]["examples"][reason]
    ] == [6, 1, 4]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            '[{"id": "a", "image": "000000319154.jpg", "conversations": []}, {"id": "b"]',
            "detail_23k.json: record 1: malformed JSON at byte 74 (the record after id='a'): Expecting ',' delimiter",
        ),
        (
            '[{"id": "a", "image": "000000319154.jpg", "conversations": []}, {"id": "b", "image": "x.jpg"}]',
            "detail_23k.json: record 1 (id='b'): expected 'conversations' to be a list of turns, got no 'conversations' key",
        ),
        (
            '[{"id": "a", "image": "000000319154.jpg", "conversations": [{"from": "human", "value": "hi"}, {"value": "yo"}]}]',
            "detail_23k.json: record 0 (id='a'): turn 1: expected a string 'from', it is missing",
        ),
    ],
)
def test_bad_records_fail_the_prepare_cleanly(release, cache_dir, records, message):
    (release.data_dir("detail_23k") / "detail_23k.json").write_text(records)
    with pytest.raises(SourceError) as info:
        load(release, "detail_23k", cache_dir)
    assert str(info.value) == message
    assert_no_complete_cache(cache_dir)


def assert_no_complete_cache(cache_dir):
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(cache_dir) for f in files if not f.endswith(".lock")]
    assert [f for f in leftovers if f.endswith((".arrow", "dataset_info.json"))] == []
    assert [d for d, _, _ in os.walk(cache_dir) if d.endswith(".incomplete")] == []


def test_stale_incomplete_folder_of_a_killed_run_is_emptied(release, cache_dir):
    builder = llava_hf.load_builder("detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    stale = builder.cache_dir + ".incomplete"
    os.makedirs(stale)
    with open(os.path.join(stale, "llava_hf-train-00001-of-00002.arrow"), "wb") as f:
        f.write(b"stale shard of a killed run")
    builder.download_and_prepare()
    assert sorted(os.listdir(builder.cache_dir)) == [
        "LICENSE",
        "dataset_info.json",
        "llava_hf-train.arrow",
        "llava_hf_report.json",
    ]
    assert len(builder.as_dataset("train")) == 3


# --- options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_bad_image": "ignore"}, "on_bad_image must be one of ('raise', 'skip'), got 'ignore'"),
        ({"embed_images": "yes"}, "embed_images must be True or False, got 'yes'"),
        ({"sample": True}, "detail_23k: sample=True reads the embedded sample; drop data_dir and image_dir"),
    ],
)
def test_bad_options_are_refused(release, cache_dir, kwargs, message):
    with pytest.raises(ValueError) as info:
        load(release, "detail_23k", cache_dir, **kwargs)
    assert str(info.value) == message


def test_unknown_config_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        load_dataset("detail23k", sample=True)
    assert str(info.value) == (
        "unknown llava_hf config 'detail23k'. Did you mean 'detail_23k'? Choose one of: conversation_58k, "
        "detail_23k, complex_reasoning_77k, llava_instruct_150k, llava_instruct_80k, llava_v1_5_mix665k, "
        "cc3m_595k, blip_558k"
    )


def test_missing_json_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("detail_23k", data_dir=str(tmp_path), image_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert str(info.value) == (
        f"detail_23k: expected detail_23k.json in data_dir {tmp_path} (the folder holding the files of "
        "liuhaotian/LLaVA-Instruct-150K), but it is not there"
    )


def test_cache_key_ignores_spelling_of_defaults_and_paths(release, cache_dir, monkeypatch):
    plain = llava_hf.load_builder("detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    monkeypatch.chdir(release.root)
    spelled = llava_hf.load_builder(
        "detail_23k",
        cache_dir=cache_dir,
        data_dir="LLaVA-Instruct-150K/",
        image_dir="./images/coco/train2017",
        embed_images=True,
        on_bad_image="raise",
        revision="main",
    )
    assert spelled.cache_dir == plain.cache_dir
    other = llava_hf.load_builder(
        "detail_23k", cache_dir=cache_dir, on_bad_image="skip", **release.options("detail_23k")
    )
    assert other.cache_dir != plain.cache_dir


# --- text, empty and missing inputs ---------------------------------------------------------------------


def test_unpaired_surrogate_names_the_record(release, cache_dir):
    path = release.data_dir("detail_23k") / "detail_23k.json"
    records = json.loads(path.read_text())
    records[2]["conversations"][1]["value"] = "broken emoji \ud83d here"
    path.write_text(json.dumps(records))  # json writes the lone surrogate as the escape \ud83d
    with pytest.raises(SourceError) as info:
        load(release, "detail_23k", cache_dir)
    assert str(info.value) == (
        "detail_23k.json: record 2 (id='000000033471'): turn 1 'value' holds an unpaired UTF-16 surrogate "
        "(\\ud83d at character 13), not valid text"
    )
    assert_no_complete_cache(cache_dir)


def test_every_row_skipped_is_an_error_not_an_empty_cache(release, cache_dir, tmp_path):
    empty = tmp_path / "not-yet-mounted"
    empty.mkdir()
    with pytest.raises(SourceError) as info:
        load(release, "detail_23k", cache_dir, image_dir=str(empty), on_bad_image="skip")
    assert str(info.value) == (
        f"detail_23k.json: all 3 records were skipped for bad images (missing: 3); is image_dir {empty} the "
        "right folder?"
    )
    assert_no_complete_cache(cache_dir)
    assert len(load(release, "detail_23k", cache_dir, on_bad_image="skip")) == 3  # once the images are there


def test_missing_image_dir_and_empty_source(release, cache_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load(release, "detail_23k", cache_dir, image_dir=str(tmp_path / "nope"))
    assert str(info.value) == f"detail_23k: image_dir {tmp_path / 'nope'} does not exist (not mounted, or mistyped?)"
    (release.data_dir("detail_23k") / "detail_23k.json").write_text("[]")
    with pytest.raises(SourceError) as info:
        load(release, "detail_23k", cache_dir)
    assert str(info.value) == "detail_23k.json: holds an empty array: there is nothing to prepare"


def test_a_big_file_that_is_no_image_is_refused_after_16_bytes(tmp_path):
    import tracemalloc

    from llava_hf.images import open_root

    (tmp_path / "zeros.jpg").write_bytes(b"\0" * (40 << 20))
    root = open_root(str(tmp_path))
    tracemalloc.start()
    (result,) = root.read_many(["zeros.jpg"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.reason == "not_an_image"
    assert peak < 1 << 20
