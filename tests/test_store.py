"""The image store: images fetched from each collection's source (here local zips and folders standing in
for the archives), kept in LLaVA's layout, reused across configs, resumed after a kill; mirrors, offline
mode, OCR-VQA, the fetch-images command.

The autouse fixture in conftest points every collection at a local path that does not exist and the store
at a tmp folder, so nothing here reaches a real host or the user's cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import Counter
from pathlib import Path

import datasets
import pytest
from conftest import ROOT, jpeg, sha256, write_json

import llava_hf
import llava_hf.store as store_module
from llava_hf import SourceError
from llava_hf.cli import main
from llava_hf.image_collections import COLLECTION_NAMES, check_sources, get_collection, resolve_sources
from llava_hf.store import StoreRoot, default_store, fetch_images

MIX_FOLDERS = ("gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K", "vg/VG_100K_2")


def raw_rows(ds) -> list[dict]:
    return ds.cast_column("image", datasets.Image(decode=False)).to_list()


def digest(rows: list[dict]) -> list[tuple]:
    """Every column, with the image as (path, sha256 of its bytes)."""
    out = []
    for row in rows:
        image = row["image"]
        picture = None if image is None else (image["path"], sha256(image["bytes"]))
        out.append((row["id"], picture, json.dumps(row["conversations"]), row["source"], row["extra"]))
    return out


def zip_under(folder: Path, target: Path, top: str, skip: tuple[str, ...] = ()) -> Path:
    """A zip of `folder`'s files under one top folder, as COCO's train2017.zip keeps them."""
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr(top + "/", b"")  # the directory entry real archives carry
        for path in sorted(folder.iterdir()):
            if path.name not in skip:
                zf.write(path, f"{top}/{path.name}")
    return target


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "store"
    monkeypatch.setenv("LLAVA_HF_IMAGE_STORE", str(folder))
    return folder


@pytest.fixture
def coco_zip(release, tmp_path) -> Path:
    return zip_under(release.image_dir("detail_23k"), tmp_path / "train2017.zip", "train2017")


@pytest.fixture
def upstream_reads(monkeypatch) -> Counter:
    """Every name the store asks an upstream root for, counted (so "fetched once" is an assertion)."""
    asked: Counter = Counter()
    opened = store_module.open_root

    def counting_open_root(location, aliases=()):
        root = opened(location, aliases)
        read_many = root.read_many

        def counted(names, embed=True):
            names = list(names)
            asked.update(names)
            return read_many(names, embed)

        root.read_many = counted
        return root

    monkeypatch.setattr(store_module, "open_root", counting_open_root)
    return asked


def folder_rows(release, name: str, cache_dir) -> list[dict]:
    return raw_rows(llava_hf.load_dataset(name, cache_dir=cache_dir, **release.options(name)))


def test_detail_23k_from_a_zip_gives_the_rows_of_a_folder_prepare(release, store, coco_zip, upstream_reads, tmp_path):
    expected = folder_rows(release, "detail_23k", tmp_path / "folder-cache")
    ds = datasets.load_dataset(
        "llava_hf",
        "detail_23k",
        data_dir=str(release.data_dir("detail_23k")),
        image_sources={"coco/train2017": str(coco_zip)},
        cache_dir=str(tmp_path / "cache"),
        split="train",
    )
    rows = raw_rows(ds)
    assert digest(rows) == digest(expected)
    assert [r["image"]["path"] for r in rows] == ["000000319154.jpg", "000000398214.jpg", "000000033471.jpg"]
    # In the store in LLaVA's layout, byte for byte, each fetched once.
    coco = release.image_dir("detail_23k")
    kept = sorted(p.name for p in (store / "coco" / "train2017").iterdir())
    assert kept == ["000000033471.jpg", "000000319154.jpg", "000000398214.jpg"]
    assert all((store / "coco" / "train2017" / n).read_bytes() == (coco / n).read_bytes() for n in kept)
    assert upstream_reads == Counter({n: 1 for n in kept})
    report = llava_hf.prepare_report(ds)
    assert report["source"]["images"] == f"the image store {store} (coco/train2017 from {coco_zip})"


def test_num_proc_2_and_streaming_give_the_same_rows(release, store, coco_zip, tmp_path):
    expected = digest(folder_rows(release, "llava_instruct_150k", tmp_path / "folder"))
    options = dict(
        data_dir=release.data_dir("llava_instruct_150k"),
        image_sources={"coco/train2017": str(coco_zip)},
        cache_dir=tmp_path / "cache",
    )
    streamed = llava_hf.load_dataset("llava_instruct_150k", streaming=True, **options)
    assert digest(list(streamed.cast_column("image", datasets.Image(decode=False)))) == expected
    shutil.rmtree(store)
    assert digest(raw_rows(llava_hf.load_dataset("llava_instruct_150k", num_proc=2, **options))) == expected
    names = ["000000033471.jpg", "000000319154.jpg", "000000520873.jpg"]
    assert sorted(p.name for p in (store / "coco" / "train2017").iterdir()) == names


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_the_sources_file_named_by_the_setting(release, store, coco_zip, tmp_path, monkeypatch, suffix):
    expected = folder_rows(release, "detail_23k", tmp_path / "folder-cache")
    sources = tmp_path / f"sources{suffix}"
    text = f"coco/train2017: {coco_zip.name}\n" if suffix == ".yaml" else json.dumps({"coco/train2017": str(coco_zip)})
    sources.write_text(text, encoding="utf-8")  # the YAML one relative to its own folder
    monkeypatch.setenv("LLAVA_HF_IMAGE_SOURCES", str(sources))
    assert resolve_sources(None)["coco/train2017"] == str(coco_zip)
    assert resolve_sources(None)["gqa/images"] == get_collection("gqa/images").archive_url
    ds = llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"), cache_dir=tmp_path / "cache")
    assert digest(raw_rows(ds)) == digest(expected)
    assert len(list((store / "coco" / "train2017").iterdir())) == 3


def test_image_dir_wins_over_image_sources(release, store, tmp_path, upstream_reads):
    ds = llava_hf.load_dataset(
        "detail_23k",
        image_sources={"coco/train2017": str(tmp_path / "no-such.zip")},
        cache_dir=tmp_path / "cache",
        **release.options("detail_23k"),
    )
    assert len(ds) == 3 and not store.exists() and not upstream_reads


def test_a_second_config_reuses_the_store(release, store, coco_zip, upstream_reads, tmp_path):
    options = dict(image_sources={"coco/train2017": str(coco_zip)}, cache_dir=tmp_path / "cache")
    first = llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"), **options)
    second = llava_hf.load_dataset("conversation_58k", data_dir=release.data_dir("conversation_58k"), **options)
    # 000000033471.jpg is named by both: fetched by the first, read from the store by the second.
    assert upstream_reads == Counter(
        {f"{n}.jpg": 1 for n in ("000000319154", "000000398214", "000000033471", "000000052846", "000000334872")}
    )
    assert digest(raw_rows(second)) == digest(folder_rows(release, "conversation_58k", tmp_path / "folder"))
    assert len(first) == 3
    # The store is an --image_folder for LLaVA: the JSON's names resolve under it.
    for record in release.records("conversation_58k"):
        assert (store / "coco" / "train2017" / record["image"]).is_file()


def mix_sources(release, coco_zip, *, without: tuple[str, ...] = ()) -> dict[str, str]:
    images = release.image_dir("llava_v1_5_mix665k")
    sources = {"coco/train2017": str(coco_zip), **{name: str(images / name) for name in MIX_FOLDERS}}
    return {name: location for name, location in sources.items() if name not in without}


def test_mix665k_routes_each_prefix_to_its_collection(release, store, coco_zip, upstream_reads, tmp_path):
    ds = llava_hf.load_dataset(
        "llava_v1_5_mix665k",
        data_dir=release.data_dir("llava_v1_5_mix665k"),
        image_sources=mix_sources(release, coco_zip),
        cache_dir=tmp_path / "cache",
    )
    rows = raw_rows(ds)
    assert digest(rows) == digest(folder_rows(release, "llava_v1_5_mix665k", tmp_path / "folder"))
    names = [r["image"]["path"] for r in rows if r["image"] is not None]
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*.jpg")) == sorted(names)
    # Each collection's root is asked for its own names, without the prefix.
    assert upstream_reads == Counter(
        {
            "000000033471.jpg": 1,
            "n161313.jpg": 1,
            "140031996.jpg": 1,
            "1446306166.jpg": 1,
            "0a3c1d5f2f0d1a9e.jpg": 1,
            "2386.jpg": 1,
            "1592.jpg": 1,
        }
    )


def test_a_name_in_no_collection_names_the_record(release, store, coco_zip, tmp_path):
    data = tmp_path / "data"
    records = release.records("llava_v1_5_mix665k")
    records[1]["image"] = "sam/images/1.jpg"
    write_json(data / "llava_v1_5_mix665k.json", records)
    with pytest.raises(SourceError) as info:
        llava_hf.load_dataset(
            "llava_v1_5_mix665k",
            data_dir=data,
            image_sources=mix_sources(release, coco_zip),
            cache_dir=tmp_path / "cache",
        )
    assert str(info.value) == (
        "llava_v1_5_mix665k.json: record 1 (id='n161313'): image 'sam/images/1.jpg' is in no image collection: "
        "its path must start with one of coco/train2017/, gqa/images/, ocr_vqa/images/, textvqa/train_images/, "
        "vg/VG_100K/, vg/VG_100K_2/"
    )


def test_ocr_vqa_without_a_copy_says_what_to_download(release, store, coco_zip, tmp_path, monkeypatch):
    monkeypatch.delenv("LLAVA_HF_IMAGE_SOURCES")  # OCR-VQA's default: no archive
    options = dict(
        data_dir=release.data_dir("llava_v1_5_mix665k"),
        image_sources=mix_sources(release, coco_zip, without=("ocr_vqa/images",)),
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(FileNotFoundError) as info:
        llava_hf.load_dataset("llava_v1_5_mix665k", **options)
    folder = store / "ocr_vqa" / "images"
    assert str(info.value) == (
        "llava_v1_5_mix665k needs the images of ocr_vqa/images, and OCR-VQA has no archive: download "
        "dataset.json and loadDataset.py from https://ocr-vqa.github.io/, run it to fetch the book covers, save "
        f"every file as <id>.jpg, and put them in {folder} (or pass image_sources={{'ocr_vqa/images': '<the "
        "folder holding 140031996.jpg>'})"
    )
    assert not any(store.rglob("*.jpg"))  # refused before any image was read
    # Skipping: the two OCR-VQA rows are dropped and counted, with the same advice.
    ds = llava_hf.load_dataset("llava_v1_5_mix665k", on_bad_image="skip", **options)
    report = llava_hf.prepare_report(ds)
    assert (len(ds), report["skipped"]["counts"]) == (6, {"missing": 2})
    example = report["skipped"]["examples"]["missing"][0]
    assert (example["index"], example["id"], example["image"]) == (2, "140031996", "ocr_vqa/images/140031996.jpg")
    assert example["detail"].startswith(
        f"image '140031996.jpg' is not in the image store {folder}, and OCR-VQA has no archive: download"
    )


def test_offline_nothing_is_fetched_and_the_error_says_how_to_give_it(release, store, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    url = "http://127.0.0.1:9/zips/train2017.zip"  # never contacted: offline
    with pytest.raises(SourceError) as info:
        llava_hf.load_dataset(
            "detail_23k",
            data_dir=release.data_dir("detail_23k"),
            image_sources={"coco/train2017": url},
            cache_dir=tmp_path / "cache",
        )
    assert str(info.value) == (
        f"detail_23k.json: record 0 (id='000000319154'): image '000000319154.jpg' is not in the image store "
        f"{store / 'coco' / 'train2017'}, and HF_DATASETS_OFFLINE is set, so collection coco/train2017 is not "
        f"fetched from {url}; give it locally: image_sources={{'coco/train2017': '<a zip or folder of its "
        "images>'} (or the file LLAVA_HF_IMAGE_SOURCES names), or image_dir=<a folder holding all of the "
        "config's images>"
    )
    assert not list(store.rglob("*.jpg")) and not list((tmp_path / "cache").rglob("dataset_info.json"))


def test_offline_an_image_dir_url_is_refused(release, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    url = "http://127.0.0.1:9/zips/train2017.zip"
    with pytest.raises(FileNotFoundError) as info:
        llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"), image_dir=url, cache_dir=tmp_path)
    assert str(info.value) == (
        f"detail_23k: image_dir {url} is a URL and HF_DATASETS_OFFLINE is set, so nothing is fetched; pass "
        "image_dir=<a local folder or zip of the images>"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_HUB_OFFLINE": "1"}, True),
        ({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "0"}, False),  # no Hub, but fetch images
    ],
)
def test_offline_is_what_datasets_says(env, expected):
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    code = "import llava_hf.store as s; print(s.offline())"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_offline_with_every_image_in_the_store_prepares(release, store, coco_zip, tmp_path, monkeypatch):
    fetch_images(
        ["detail_23k"], data_dir=release.data_dir("detail_23k"), image_sources={"coco/train2017": str(coco_zip)}
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    opened = []
    monkeypatch.setattr(store_module, "open_root", lambda *a: opened.append(a))
    ds = llava_hf.load_dataset(
        "detail_23k",
        data_dir=release.data_dir("detail_23k"),
        image_sources={"coco/train2017": "http://127.0.0.1:9/zips/train2017.zip"},
        cache_dir=tmp_path / "cache",
    )
    assert digest(raw_rows(ds)) == digest(folder_rows(release, "detail_23k", tmp_path / "folder"))
    assert opened == []  # no upstream was even opened


def test_a_changed_archive_is_a_new_cache_entry_and_a_moved_one_is_not(release, store, coco_zip, tmp_path):
    def cache_path(zip_path) -> str:
        return llava_hf.load_builder(
            "detail_23k",
            data_dir=release.data_dir("detail_23k"),
            image_sources={"coco/train2017": str(zip_path)},
            cache_dir=tmp_path / "cache",
        ).cache_dir

    moved = tmp_path / "elsewhere" / "train2017.zip"
    moved.parent.mkdir()
    moved.write_bytes(coco_zip.read_bytes())
    changed = zip_under(
        release.image_dir("detail_23k"), tmp_path / "changed.zip", "train2017", skip=("000000520873.jpg",)
    )
    assert cache_path(moved) == cache_path(coco_zip)
    assert cache_path(changed) != cache_path(coco_zip)


def test_embed_images_false_stores_paths_into_the_store(release, store, coco_zip, tmp_path):
    ds = llava_hf.load_dataset(
        "detail_23k",
        data_dir=release.data_dir("detail_23k"),
        image_sources={"coco/train2017": str(coco_zip)},
        embed_images=False,
        cache_dir=tmp_path / "cache",
    )
    images = ds.cast_column("image", datasets.Image(decode=False))["image"]
    folder = store / "coco" / "train2017"
    assert [(i["bytes"], i["path"]) for i in images] == [
        (None, str(folder / "000000319154.jpg")),
        (None, str(folder / "000000398214.jpg")),
        (None, str(folder / "000000033471.jpg")),
    ]


def test_a_broken_copy_in_the_store_is_fetched_again(release, store, coco_zip, upstream_reads):
    folder = store / "coco" / "train2017"
    folder.mkdir(parents=True)
    (folder / "000000319154.jpg").write_bytes(b"")  # what a crash before the data reached the disk leaves
    (folder / "000000398214.jpg").write_bytes((release.image_dir("detail_23k") / "000000398214.jpg").read_bytes())
    root = StoreRoot(str(folder), collection="coco/train2017", upstream=str(coco_zip))
    results = list(root.read_many(["000000319154.jpg", "000000398214.jpg", "../x.jpg"]))
    coco = release.image_dir("detail_23k")
    assert results[0] == ("000000319154.jpg", (coco / "000000319154.jpg").read_bytes())
    assert results[1] == ("000000398214.jpg", (coco / "000000398214.jpg").read_bytes())
    assert (results[2].reason, str(results[2])) == ("unsafe_path", "image path '../x.jpg' leaves the image root ('..')")
    assert upstream_reads == Counter({"000000319154.jpg": 1})
    assert (root.counts.present, root.counts.fetched, dict(root.counts.failed)) == (1, 1, {"unsafe_path": 1})
    assert (folder / "000000319154.jpg").read_bytes() == (coco / "000000319154.jpg").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["000000319154.jpg", "000000398214.jpg"]  # no temp files


def test_parts_a_killed_writer_left_are_swept_on_the_folders_first_write(release, store, coco_zip):
    folder = store / "coco" / "train2017"
    folder.mkdir(parents=True)
    old, fresh = folder / ".000000319154.jpg.0a1b.part", folder / ".000000398214.jpg.2c3d.part"
    old.write_bytes(b"half an image")
    fresh.write_bytes(b"another host, writing now")
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)
    root = StoreRoot(str(folder), collection="coco/train2017", upstream=str(coco_zip))
    assert [r[0] for r in root.read_many(["000000319154.jpg"])] == ["000000319154.jpg"]
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name, "000000319154.jpg"]


def test_no_image_dir_and_no_source_names_the_collection(release, store, tmp_path):
    absent = json.loads(Path(os.environ["LLAVA_HF_IMAGE_SOURCES"]).read_text())["coco/train2017"]
    with pytest.raises(FileNotFoundError) as info:
        llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"), cache_dir=tmp_path / "cache")
    assert str(info.value) == (
        f"detail_23k: the image source of coco/train2017, {absent}, does not exist (image_sources or "
        "LLAVA_HF_IMAGE_SOURCES; not mounted, or mistyped?)"
    )


def test_bad_image_sources_are_refused_naming_value_and_choices(release, tmp_path, monkeypatch):
    with pytest.raises(ValueError) as info:
        llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"), image_sources={"coco": "/x"})
    assert str(info.value) == (
        "unknown image collection 'coco'. Choose one of: coco/train2017, gqa/images, ocr_vqa/images, "
        "textvqa/train_images, vg/VG_100K, vg/VG_100K_2"
    )
    with pytest.raises(ValueError) as info:
        check_sources({"gqa/image": "/x"})
    assert "Did you mean 'gqa/images'?" in str(info.value)
    with pytest.raises(ValueError) as info:
        check_sources({"gqa/images": 3})
    assert str(info.value) == "image_sources['gqa/images'] must be a URL or a path (a zip or a folder), got 3"
    with pytest.raises(ValueError) as info:
        check_sources("/data/train2017.zip")
    assert str(info.value) == (
        "image_sources must map collection names to a URL, a zip or a folder, e.g. "
        "{'coco/train2017': '/data/train2017.zip'}; got '/data/train2017.zip'"
    )
    bad = tmp_path / "sources.yaml"
    bad.write_text("coco/train2017: [1, 2\n", encoding="utf-8")
    monkeypatch.setenv("LLAVA_HF_IMAGE_SOURCES", str(bad))
    with pytest.raises(ValueError) as info:
        resolve_sources(None)
    assert str(info.value).startswith(f"LLAVA_HF_IMAGE_SOURCES={bad}: not valid YAML: ")
    with pytest.raises(ValueError) as info:
        llava_hf.load_dataset("detail_23k", sample=True, image_sources={"coco/train2017": "/x"})
    assert str(info.value) == ("detail_23k: sample=True reads the embedded sample's images; drop image_sources")


def test_the_store_follows_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAVA_HF_IMAGE_STORE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert default_store() == str(tmp_path / "hf" / "llava_hf" / "images")
    monkeypatch.setenv("LLAVA_HF_IMAGE_STORE", "~/images")
    assert default_store() == os.path.expanduser("~/images")


def test_the_collection_table(release):
    assert COLLECTION_NAMES == (
        "coco/train2017",
        "gqa/images",
        "ocr_vqa/images",
        "textvqa/train_images",
        "vg/VG_100K",
        "vg/VG_100K_2",
    )
    assert [get_collection(n).archive_url for n in COLLECTION_NAMES] == [
        "http://images.cocodataset.org/zips/train2017.zip",
        "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip",
        None,
        "https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
    ]
    assert llava_hf.CATALOG["detail_23k"].image_collections == ("coco/train2017",)
    assert llava_hf.CATALOG["llava_v1_5_mix665k"].image_collections == COLLECTION_NAMES
    assert llava_hf.CATALOG["blip_558k"].image_collections == ()


# -- the fetch-images command ------------------------------------------------------------------------------


def fetch_args(release, coco_zip, *more: str) -> list[str]:
    data = str(release.data_dir("detail_23k"))
    return ["fetch-images", *more, "--data-dir", data, "--image-source", f"coco/train2017={coco_zip}", "-q"]


def counts_line(out: str) -> str:
    # The one line with figures that vary (MB and seconds) made comparable.
    return re.sub(r"\(\d[\d,.]* MB in \d+\.\d s\)", "(MB in s)", out.splitlines()[0])


def test_fetch_images_counts_and_exit_status(release, coco_zip, tmp_path, capsys):
    to = tmp_path / "playground" / "data"
    assert main(fetch_args(release, coco_zip, "detail_23k", "llava_instruct_150k", "--to", str(to))) == 0
    out = capsys.readouterr().out
    # detail_23k names 3 images, llava_instruct_150k 3 distinct ones, 2 of them the same: 4 in all.
    assert counts_line(out) == "4 images: 4 fetched (MB in s), 0 already there, failed: none"
    assert out.splitlines()[-1] == f"store: {to}"
    assert sorted(p.name for p in (to / "coco" / "train2017").iterdir()) == [
        "000000033471.jpg",
        "000000319154.jpg",
        "000000398214.jpg",
        "000000520873.jpg",
    ]
    assert main(fetch_args(release, coco_zip, "detail_23k", "conversation_58k", "--to", str(to))) == 0
    out = capsys.readouterr().out
    assert counts_line(out) == "5 images: 2 fetched (MB in s), 3 already there, failed: none"


def test_fetch_images_failures_name_the_record_and_exit_1(release, tmp_path, capsys, store):
    partial = zip_under(
        release.image_dir("detail_23k"), tmp_path / "partial.zip", "train2017", skip=("000000398214.jpg",)
    )
    assert main(fetch_args(release, partial, "detail_23k")) == 1
    lines = capsys.readouterr().out.splitlines()
    assert counts_line("\n".join(lines)) == "3 images: 2 fetched (MB in s), 0 already there, failed: missing 1"
    assert lines[1] == (
        f"  missing: detail_23k.json: record 1 (id='000000398214'): image '000000398214.jpg' not found under "
        f"{partial} (also tried 'COCO_train2014_000000398214.jpg', 'COCO_val2014_000000398214.jpg'); it is not "
        f"in the image store {store / 'coco' / 'train2017'} either"
    )
    assert lines[2] == f"store: {store}"


def test_fetch_images_refuses_a_pretrain_config(release, capsys):
    assert main(["fetch-images", "blip_558k", "-q"]) == 2
    assert capsys.readouterr().err == (
        "llava-hf fetch-images: blip_558k: its images are the repo's images.zip, read in place; there is nothing "
        "to fetch\n"
    )


def test_prepare_fetches_first_with_its_counts(release, coco_zip, store, tmp_path, capsys):
    args = ["prepare", "detail_23k", "--data-dir", str(release.data_dir("detail_23k")), "-q"]
    args += ["--image-source", f"coco/train2017={coco_zip}", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert counts_line("\n".join(lines)) == "3 images: 3 fetched (MB in s), 0 already there, failed: none"
    assert lines[2].startswith("detail_23k: 3 rows of 3 records, ")
    # Prepared already: its images are in the cache, so a cleared store is not filled again.
    shutil.rmtree(store)
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("detail_23k: 3 rows of 3 records, ")
    assert not store.exists()
    # Another config that needs fetching is fetched first.
    args[1:2] = ["conversation_58k"]
    args[3] = str(release.data_dir("conversation_58k"))
    assert main(args) == 0
    assert counts_line(capsys.readouterr().out) == "3 images: 3 fetched (MB in s), 0 already there, failed: none"


# -- a prepare killed halfway --------------------------------------------------------------------------------

_SLOW_PREPARE = textwrap.dedent(
    """
    import sys, time
    import llava_hf, llava_hf.store as store
    opened = store.open_root

    def slow_open_root(location, aliases=()):
        root = opened(location, aliases)
        read_many = root.read_many

        def slow(names, embed=True):
            for result in read_many(names, embed):
                time.sleep(0.01)  # a far server: one image every 10 ms
                yield result

        root.read_many = slow
        return root

    store.open_root = slow_open_root
    data_dir, zip_path, cache_dir = sys.argv[1:]
    llava_hf.load_dataset("detail_23k", data_dir=data_dir, image_sources={"coco/train2017": zip_path}, cache_dir=cache_dir)
    """
)


@pytest.fixture
def many_images(tmp_path) -> tuple[Path, Path, list[str]]:
    """A detail_23k.json of 300 records, each naming its own image, and their zip under train2017/."""
    names = [f"{i:012d}.jpg" for i in range(300)]
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(f"train2017/{name}", jpeg(i % 20) + i.to_bytes(4, "big"))
    records = [
        {
            "id": name[:-4],
            "image": name,
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}],
        }
        for name in names
    ]
    write_json(tmp_path / "data" / "detail_23k.json", records)
    return tmp_path / "data", archive, names


def test_a_killed_prepare_then_fetches_only_what_it_lacked(many_images, store, upstream_reads, tmp_path):
    data_dir, archive, names = many_images
    folder = store / "coco" / "train2017"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREPARE, str(data_dir), str(archive), str(tmp_path / "cache")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    deadline = time.time() + 120
    while not folder.is_dir() or sum(1 for p in folder.iterdir() if p.suffix == ".jpg") < 100:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    kept = {p.name for p in folder.iterdir() if p.suffix == ".jpg"}
    assert 100 <= len(kept) < 300
    with zipfile.ZipFile(archive) as zf:  # what arrived is whole: each file is a complete member
        assert all((folder / n).read_bytes() == zf.read(f"train2017/{n}") for n in kept)

    ds = llava_hf.load_dataset(
        "detail_23k", data_dir=data_dir, image_sources={"coco/train2017": str(archive)}, cache_dir=tmp_path / "cache"
    )
    assert upstream_reads == Counter({n: 1 for n in names if n not in kept})  # only what it lacked
    assert [r["path"] for r in ds.cast_column("image", datasets.Image(decode=False))["image"]] == names
    with zipfile.ZipFile(archive) as zf:
        assert [sha256(r["bytes"]) for r in ds.cast_column("image", datasets.Image(decode=False))["image"]] == [
            sha256(zf.read(f"train2017/{n}")) for n in names
        ]
