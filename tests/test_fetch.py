"""Issue 11 end to end over HTTP: `datasets.load_dataset("llava_hf", "detail_23k")` with COCO's archive served
by the local range server (tests/httpserver.py, 127.0.0.1 only), images fetched by range requests into the
store, reused, resumed after a SIGKILL, through faults; each error of the issue's point 6; `image_dir=URL`,
`LLAVA_HF_IMAGE_SOURCES`, and `llava-hf fetch-images` over HTTP.

Every test runs as the issue says tests run: `HF_HUB_OFFLINE=1` with `HF_DATASETS_OFFLINE=0` ("no Hub, but
fetch images"), with `datasets.config.HF_DATASETS_OFFLINE` (read at datasets' import) patched to match.
"""

from __future__ import annotations

import json
import logging
import os
import re
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
import llava_hf.remote as remote
import llava_hf.store as store_module
from llava_hf import SourceError
from llava_hf.cli import main
from llava_hf.zipdir import _TAIL

COCO = ("000000033471.jpg", "000000052846.jpg", "000000319154.jpg", "000000334872.jpg")
COCO += ("000000398214.jpg", "000000520873.jpg")


@pytest.fixture(autouse=True)
def no_hub_but_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    # The archives' last identities are remembered per machine: here, per test (child processes too).
    monkeypatch.setattr(store_module, "_memo_path", lambda: str(tmp_path / "hf-datasets" / "archives.json"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "store"
    monkeypatch.setenv("LLAVA_HF_IMAGE_STORE", str(folder))
    return folder


def zip_under(folder: Path, target: Path, top: str = "train2017", skip: tuple[str, ...] = ()) -> Path:
    """A zip of `folder`'s files under one top folder (with its directory entry), as COCO's train2017.zip."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr(top + "/", b"")
        for path in sorted(folder.iterdir()):
            if path.name not in skip:
                zf.write(path, f"{top}/{path.name}")
    return target


@pytest.fixture
def www(release, tmp_path) -> Path:
    """The folder the server serves: zips/train2017.zip holding the fake release's COCO images."""
    zip_under(release.image_dir("detail_23k"), tmp_path / "www" / "zips" / "train2017.zip")
    return tmp_path / "www"


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


def folder_rows(release, name: str, cache_dir) -> list[dict]:
    return raw_rows(llava_hf.load_dataset(name, cache_dir=cache_dir, **release.options(name)))


def load(release, name: str, url: str, cache_dir, **options):
    return datasets.load_dataset(
        "llava_hf",
        name,
        data_dir=str(release.data_dir(name)),
        image_sources={"coco/train2017": url},
        cache_dir=str(cache_dir),
        split="train",
        **options,
    )


def member_spans(archive: Path) -> dict[str, tuple[int, int]]:
    """{name under train2017/: (offset of its local header, bytes up to the next member)}."""
    with zipfile.ZipFile(archive) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        directory = zf.start_dir
    ends = [i.header_offset for i in infos[1:]] + [directory]
    return {i.filename.split("/", 1)[1]: (i.header_offset, end - i.header_offset) for i, end in zip(infos, ends)}


def directory_bytes(archive: Path) -> int:
    """What a reader must fetch to learn the directory: the tail the end record may lie in, and the central
    directory when it starts before that tail."""
    size = archive.stat().st_size
    with zipfile.ZipFile(archive) as zf:
        start = min(zf.start_dir, max(0, size - _TAIL))
    return size - start


def tail_members(archive: Path) -> set[str]:
    """Members that lie wholly inside the directory's tail read (they arrive with it)."""
    start = max(0, archive.stat().st_size - _TAIL)
    return {name for name, (offset, _) in member_spans(archive).items() if offset >= start}


def member_requests(server, archive: Path) -> Counter:
    """How many times each member's bytes were sent, from the server's log of ranges (206 answers only)."""
    spans = member_spans(archive)
    sent: Counter = Counter()
    for hit in server.log:
        if hit.status != 206 or not hit.range:
            continue
        first, last = hit.range.removeprefix("bytes=").split("-")
        if not first:  # a suffix range: the tail read for the directory
            continue
        start, stop = int(first), int(last) + 1 if last else archive.stat().st_size
        for name, (offset, length) in spans.items():
            if offset < stop and start < offset + length:
                sent[name] += 1
    return sent


# -- the rows of a local prepare, over HTTP ---------------------------------------------------------------


def test_detail_23k_over_http_gives_the_rows_of_a_folder_prepare(release, store, www, serve, tmp_path):
    expected = folder_rows(release, "detail_23k", tmp_path / "folder-cache")
    server = serve(www)
    url = server.url("zips/train2017.zip")
    rows = raw_rows(load(release, "detail_23k", url, tmp_path / "cache"))
    assert digest(rows) == digest(expected)
    assert [r["image"]["path"] for r in rows] == ["000000319154.jpg", "000000398214.jpg", "000000033471.jpg"]
    coco = release.image_dir("detail_23k")
    kept = sorted(p.name for p in (store / "coco" / "train2017").glob("*.jpg"))
    assert kept == ["000000033471.jpg", "000000319154.jpg", "000000398214.jpg"]
    assert all((store / "coco" / "train2017" / n).read_bytes() == (coco / n).read_bytes() for n in kept)
    # Every request went to the archive, each a range request (this zip is smaller than the tail read).
    assert {(hit.path, hit.status) for hit in server.log} == {("zips/train2017.zip", 206)}


def write_many(tmp_path: Path, count: int) -> tuple[Path, Path, list[str]]:
    """A train2017.zip of `count` images of ~6 KB and a detail_23k.json naming every other one, so that no
    two referenced members are neighbours (no merged reads). Returns (data_dir, the zip, referenced names)."""
    names = [f"{i:012d}.jpg" for i in range(count)]
    archive = tmp_path / "www" / "zips" / "train2017.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train2017/", b"")
        for i, name in enumerate(names):
            # Bytes after the JPEG's end marker make each member distinct and large; readers ignore them.
            zf.writestr(f"train2017/{name}", jpeg(i % 20) + i.to_bytes(4, "big") * 1200)
    referenced = names[::2]
    records = [
        {
            "id": name[:-4],
            "image": name,
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}],
        }
        for name in referenced
    ]
    write_json(tmp_path / "data" / "detail_23k.json", records)
    return tmp_path / "data", archive, referenced


@pytest.fixture
def many(tmp_path) -> tuple[Path, Path, list[str]]:
    """400 images (larger than the directory's tail read), 200 referenced."""
    return write_many(tmp_path, 400)


def test_the_server_sends_the_referenced_members_and_the_directory(store, many, serve, tmp_path):
    data_dir, archive, referenced = many
    server = serve(archive.parent.parent)
    url = server.url("zips/train2017.zip")
    ds = datasets.load_dataset(
        "llava_hf", "detail_23k", data_dir=str(data_dir), image_sources={"coco/train2017": url},
        cache_dir=str(tmp_path / "cache"), split="train",
    )  # fmt: skip
    with zipfile.ZipFile(archive) as zf:
        assert [sha256(r["bytes"]) for r in ds.cast_column("image", datasets.Image(decode=False))["image"]] == [
            sha256(zf.read(f"train2017/{n}")) for n in referenced
        ]
    spans = member_spans(archive)
    members = sum(spans[n][1] for n in referenced)
    assert archive.stat().st_size > 2 * members  # the other half of the archive is never needed
    # The directory is read twice: once for the cache key (the archive's ETag and size), once to prepare.
    assert server.bytes_sent <= 1.1 * members + 2 * directory_bytes(archive)
    sent = member_requests(server, archive)
    assert set(referenced) - tail_members(archive) <= set(sent) <= set(referenced)
    assert all(n == 1 for n in sent.values())


def test_a_second_config_reuses_the_store(release, store, www, serve, tmp_path):
    server = serve(www)
    url = server.url("zips/train2017.zip")
    load(release, "detail_23k", url, tmp_path / "cache")
    first = len(list((store / "coco" / "train2017").glob("*.jpg")))
    server.reset_stats()
    ds = load(release, "llava_instruct_150k", url, tmp_path / "cache")
    assert digest(raw_rows(ds)) == digest(folder_rows(release, "llava_instruct_150k", tmp_path / "folder"))
    # llava_instruct_150k names 3 distinct images, 2 of them detail_23k's: one more file in the store.
    assert (first, len(list((store / "coco" / "train2017").glob("*.jpg")))) == (3, 4)


def test_a_second_config_fetches_no_member_twice(store, many, serve, tmp_path):
    data_dir, archive, referenced = many
    server = serve(archive.parent.parent)
    url = server.url("zips/train2017.zip")
    options = {"image_sources": {"coco/train2017": url}, "cache_dir": str(tmp_path / "cache"), "split": "train"}
    datasets.load_dataset("llava_hf", "detail_23k", data_dir=str(data_dir), **options)
    first = member_requests(server, archive)
    # conversation_58k of this release: the first 100 of detail_23k's images and 50 others.
    others = [f"{i:012d}.jpg" for i in range(1, 100, 2)]
    records = json.loads((data_dir / "detail_23k.json").read_text())[:100]
    records += [{**records[0], "id": n[:-4], "image": n} for n in others]
    write_json(tmp_path / "data2" / "conversation_58k.json", records)
    server.reset_stats()
    ds = datasets.load_dataset("llava_hf", "conversation_58k", data_dir=str(tmp_path / "data2"), **options)
    assert len(ds) == 150
    second = member_requests(server, archive)
    assert not set(first) & set(second)
    # Members inside the directory's tail read come with it; every other one of the 50 is fetched once.
    assert set(others) - tail_members(archive) <= set(second) <= set(others)
    assert all(n == 1 for n in second.values())


# -- a prepare killed halfway ----------------------------------------------------------------------------

_PREPARE = textwrap.dedent(
    """
    import sys, datasets
    import llava_hf  # installs the "llava_hf" name in datasets.load_dataset
    data_dir, url, cache_dir = sys.argv[1:]
    datasets.load_dataset("llava_hf", "detail_23k", data_dir=data_dir, image_sources={"coco/train2017": url},
                          cache_dir=cache_dir, split="train")
    """
)


@pytest.mark.slow
def test_a_killed_prepare_then_fetches_at_most_10_percent_more(store, serve, tmp_path):
    # 1,000 referenced members (6 MB): what a killed run loses (its directory reads, its requests in flight)
    # is fixed, so the archive must be large enough for 10% to mean "only what it lacked".
    data_dir, archive, referenced = write_many(tmp_path, 2000)
    # One clean run, with its own store and cache, for the bytes a whole prepare costs.
    server = serve(archive.parent.parent, latency=0.02)
    url = server.url("zips/train2017.zip")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    clean = {**env, "LLAVA_HF_IMAGE_STORE": str(tmp_path / "clean-store")}
    subprocess.run(
        [sys.executable, "-c", _PREPARE, str(data_dir), url, str(tmp_path / "clean-cache")],
        env=clean,
        cwd=tmp_path,  # not the repo root, whose llava_hf/ folder datasets would take for a dataset folder
        check=True,
    )
    one_run = server.bytes_sent
    server.reset_stats()

    folder = store / "coco" / "train2017"
    child = subprocess.Popen(
        [sys.executable, "-c", _PREPARE, str(data_dir), url, str(tmp_path / "cache")],
        env={**env, "LLAVA_HF_IMAGE_STORE": str(store)},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not folder.is_dir() or sum(1 for p in folder.iterdir() if p.suffix == ".jpg") < 300:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    kept = {p.name for p in folder.iterdir() if p.suffix == ".jpg"}
    assert 300 <= len(kept) < len(referenced)
    ds = datasets.load_dataset(
        "llava_hf", "detail_23k", data_dir=str(data_dir), image_sources={"coco/train2017": url},
        cache_dir=str(tmp_path / "cache"), split="train",
    )  # fmt: skip
    assert [r["path"] for r in ds.cast_column("image", datasets.Image(decode=False))["image"]] == referenced
    assert server.bytes_sent <= 1.1 * one_run, (server.bytes_sent, one_run)


# -- faults -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_a_fifth_of_the_range_requests_failing_still_gives_the_exact_rows(
    store, many, serve, tmp_path, fault, monkeypatch
):
    data_dir, archive, referenced = many
    # The retry schedule as shipped, 20 times shorter: the same retries, in a fraction of a second.
    wait = remote.Retry.wait
    monkeypatch.setattr(remote.Retry, "wait", lambda self, offset, attempt: wait(self, offset, attempt) / 20)
    server = serve(archive.parent.parent, fault_rate=0.2, faults=(fault,), seed=11)
    url = server.url("zips/train2017.zip")
    ds = datasets.load_dataset(
        "llava_hf", "detail_23k", data_dir=str(data_dir), image_sources={"coco/train2017": url},
        cache_dir=str(tmp_path / "cache"), split="train",
    )  # fmt: skip
    images = ds.cast_column("image", datasets.Image(decode=False))["image"]
    with zipfile.ZipFile(archive) as zf:
        assert [(r["path"], sha256(r["bytes"])) for r in images] == [
            (n, sha256(zf.read(f"train2017/{n}"))) for n in referenced
        ]
    assert sum(1 for hit in server.log if hit.fault == fault) >= 10  # the faults did happen


@pytest.mark.parametrize(
    ("server_options", "error"),
    [
        (
            {"ignore_range": True},
            f"the server ignores range requests (HTTP 200 with the whole file for 'bytes=-{_TAIL}'); download "
            "the file and give its local path instead",
        ),
        ({"status": {"zips/train2017.zip": 404}}, "HTTP 404 Not Found"),
    ],
    ids=["ignores-range", "404"],
)
def test_an_archive_that_cannot_be_read_names_url_and_record_or_is_skipped(
    release, store, www, serve, tmp_path, server_options, error, caplog
):
    server = serve(www)
    url = server.url("zips/train2017.zip")
    load(release, "detail_23k", url, tmp_path / "cache")  # 3 of conversation_58k's images are now in the store
    server.configure(**server_options)
    server.reset_stats()
    with caplog.at_level(logging.WARNING, logger="llava_hf"), pytest.raises(SourceError) as info:
        load(release, "conversation_58k", url, tmp_path / "cache")
    assert str(info.value) == (
        f"conversation_58k.json: record 1 (id='000000052846'): image archive {url} cannot be opened: {url}: "
        f"{error}; it is not in the image store {store / 'coco' / 'train2017'} either"
    )
    assert f"{url}: {error}; the cache key takes the last identity seen on this machine, if any" in caplog.messages
    assert not list((tmp_path / "cache").glob("**/conversation_58k/**/dataset_info.json"))
    # Asked once for the cache key, once by the prepare; never read to the end when it ignores Range.
    assert server.requests == 2 and all(hit.range == f"bytes=-{_TAIL}" for hit in server.log)
    # Skipped and counted: the image already in the store gives its row.
    ds = load(release, "conversation_58k", url, tmp_path / "cache", on_bad_image="skip")
    assert [r["id"] for r in ds] == ["000000033471"]
    assert llava_hf.prepare_report(ds)["skipped"]["counts"] == {"unreadable": 2}


def test_a_member_the_archive_lacks_names_url_and_record_or_is_skipped(release, store, serve, tmp_path):
    www = tmp_path / "www"
    zip_under(release.image_dir("detail_23k"), www / "train2017.zip", skip=("000000398214.jpg",))
    url = serve(www).url("train2017.zip")
    with pytest.raises(SourceError) as info:
        load(release, "detail_23k", url, tmp_path / "cache")
    assert str(info.value) == (
        f"detail_23k.json: record 1 (id='000000398214'): image '000000398214.jpg' not found under {url} (also "
        "tried 'COCO_train2014_000000398214.jpg', 'COCO_val2014_000000398214.jpg'); it is not in the image "
        f"store {store / 'coco' / 'train2017'} either"
    )
    assert not list((tmp_path / "cache").rglob("dataset_info.json"))
    ds = load(release, "detail_23k", url, tmp_path / "cache", on_bad_image="skip")
    assert [r["id"] for r in ds] == ["000000319154", "000000033471"]
    report = llava_hf.prepare_report(ds)
    assert report["skipped"]["counts"] == {"missing": 1}


def test_offline_sends_nothing_and_says_how_to_give_it(release, store, www, serve, tmp_path, monkeypatch):
    server = serve(www)
    url = server.url("zips/train2017.zip")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
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
    assert server.requests == 0


# -- other ways to name the server ------------------------------------------------------------------------


def test_image_dir_a_zip_url(release, store, www, serve, tmp_path):
    server = serve(www)
    ds = datasets.load_dataset(
        "llava_hf",
        "detail_23k",
        data_dir=str(release.data_dir("detail_23k")),
        image_dir=server.url("zips/train2017.zip"),
        cache_dir=str(tmp_path / "cache"),
        split="train",
    )
    assert digest(raw_rows(ds)) == digest(folder_rows(release, "detail_23k", tmp_path / "folder"))
    assert not store.exists()  # an image_dir is read in place, not through the store
    assert server.requests >= 1


def test_the_sources_file_points_at_the_server(release, store, www, serve, tmp_path, monkeypatch):
    server = serve(www)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"coco/train2017: {server.url('zips/train2017.zip')}\n", encoding="utf-8")
    monkeypatch.setenv("LLAVA_HF_IMAGE_SOURCES", str(sources))
    ds = datasets.load_dataset(
        "llava_hf", "detail_23k", data_dir=str(release.data_dir("detail_23k")), cache_dir=str(tmp_path / "cache"),
        split="train",
    )  # fmt: skip
    assert digest(raw_rows(ds)) == digest(folder_rows(release, "detail_23k", tmp_path / "folder"))
    assert len(list((store / "coco" / "train2017").glob("*.jpg"))) == 3
    assert server.requests >= 1


def test_fetch_images_over_http(release, www, serve, tmp_path, capsys):
    server = serve(www)
    url = server.url("zips/train2017.zip")
    to = tmp_path / "playground" / "data"
    args = ["fetch-images", "detail_23k", "llava_instruct_150k", "--to", str(to), "-q"]
    args += ["--data-dir", str(release.data_dir("detail_23k")), "--image-source", f"coco/train2017={url}"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 images: 4 fetched (") and out[0].endswith(", 0 already there, failed: none")
    assert out[-1] == f"store: {to}"
    coco = release.image_dir("detail_23k")
    names = ["000000033471.jpg", "000000319154.jpg", "000000398214.jpg", "000000520873.jpg"]
    assert sorted(p.name for p in (to / "coco" / "train2017").glob("*.jpg")) == names
    assert all((to / "coco" / "train2017" / n).read_bytes() == (coco / n).read_bytes() for n in names)
    # Again, plus conversation_58k: its 2 new images fetched, the rest already there.
    args[1:3] = ["detail_23k", "conversation_58k"]
    assert main(args) == 0
    assert ", 3 already there, failed: none" in capsys.readouterr().out.splitlines()[0]
    # A member the archive lacks: counted under its reason, exit 1.
    zip_under(coco, www / "zips" / "train2017.zip", skip=("000000334872.jpg",))
    args[1:3] = ["complex_reasoning_77k"]
    other = tmp_path / "other"
    args[args.index("--to") + 1] = str(other)
    assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 images: 1 fetched (") and out[0].endswith(", 0 already there, failed: missing 1")
    assert out[1].startswith("  missing: complex_reasoning_77k.json: record 1 (id=")


def test_the_store_records_which_archive_filled_it(release, store, www, serve, tmp_path, caplog):
    server = serve(www)
    url = server.url("zips/train2017.zip")
    load(release, "detail_23k", url, tmp_path / "cache")
    origin = store / ".llava_hf_origins.json"
    first = json.loads(origin.read_text())["coco/train2017"]
    assert [entry["upstream"] for entry in first] == [url]
    assert first[0]["identity"].startswith(f"{url} etag=")
    # The archive is replaced (another ETag): a warning that the store holds images of the old one.
    zip_under(release.image_dir("detail_23k"), www / "zips" / "train2017.zip", skip=("000000052846.jpg",))
    with caplog.at_level(logging.WARNING, logger="llava_hf"):
        load(release, "llava_instruct_150k", url, tmp_path / "cache")
    second = json.loads(origin.read_text())["coco/train2017"]
    assert len(second) == 2 and second[0] == first[0]
    assert second[1]["identity"].startswith(f"{url} etag=") and second[1]["identity"] != first[0]["identity"]
    warned = [r.getMessage() for r in caplog.records if "was filled from" in r.getMessage()]
    assert len(warned) == 1 and str(store / "coco" / "train2017") in warned[0]


def test_verify_reads_an_image_dir_url(release, www, serve):
    from llava_hf.verify import verify

    server = serve(www)
    url = server.url("zips/train2017.zip")
    report = verify("detail_23k", data_dir=release.data_dir("detail_23k"), image_dir=url, num_proc=1, progress=False)
    assert (report.records, report.images, report.clean, report.problems) == (3, 3, True, [])
    # A member the archive lacks: one problem, naming the URL and the record.
    zip_under(release.image_dir("detail_23k"), www / "zips" / "train2017.zip", skip=("000000033471.jpg",))
    report = verify("detail_23k", data_dir=release.data_dir("detail_23k"), image_dir=url, num_proc=1, progress=False)
    assert [(p.reason, p.index, p.id) for p in report.problems] == [("missing", 2, "000000033471")]
    assert url in report.problems[0].detail


def test_the_load_token_reaches_an_hf_upstream_through_the_store(release, store, tmp_path, monkeypatch):
    opened, identified = [], []

    class Transport:
        def identity(self) -> str:
            return "hf://datasets/me/coco/train2017.zip etag=x size=1"

    def fake_open_transport(location, token=None, **options):
        identified.append((location, token))
        return Transport()

    def fake_open_root(location, aliases=(), token=None):
        opened.append((location, token))
        return store_module.FolderRoot(str(release.image_dir("detail_23k")))

    monkeypatch.setattr(remote, "open_transport", fake_open_transport)
    monkeypatch.setattr(store_module, "open_root", fake_open_root)
    hf_url = "hf://datasets/me/coco/train2017.zip"
    ds = llava_hf.load_dataset(
        "detail_23k",
        data_dir=release.data_dir("detail_23k"),
        image_sources={"coco/train2017": hf_url},
        cache_dir=tmp_path / "cache",
        token="hf_secret",
    )
    assert len(ds) == 3
    assert set(identified) == {(hf_url, "hf_secret")} and opened == [(hf_url, "hf_secret")]
    assert "hf_secret" not in json.dumps(llava_hf.prepare_report(ds))
    # The token is no part of the cache key: another token (or none) finds the same entry.
    options = {"data_dir": release.data_dir("detail_23k"), "image_sources": {"coco/train2017": hf_url}}
    options["cache_dir"] = tmp_path / "cache"
    keys = {llava_hf.load_builder("detail_23k", token=t, **options).cache_dir for t in ("hf_secret", "hf_other", None)}
    assert len(keys) == 1


def test_a_prepare_shows_its_fetch_progress(release, store, www, serve, tmp_path, capsys):
    from datasets.utils.logging import is_progress_bar_enabled

    url = serve(www).url("zips/train2017.zip")
    was_enabled = is_progress_bar_enabled()
    datasets.enable_progress_bars()
    try:
        llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"),
                              image_sources={"coco/train2017": url}, cache_dir=tmp_path / "cache")  # fmt: skip
        err = capsys.readouterr().err
        assert re.search(r"fetching coco/train2017: 3img \[[^]]*, 0\.0 MB, [\d.]+ MB/s\]", err), err
        # Everything in the store: nothing fetched, no bar.
        llava_hf.load_dataset("detail_23k", data_dir=release.data_dir("detail_23k"),
                              image_sources={"coco/train2017": url}, cache_dir=tmp_path / "cache2")  # fmt: skip
        assert "fetching" not in capsys.readouterr().err
        datasets.disable_progress_bars()
        llava_hf.load_dataset("conversation_58k", data_dir=release.data_dir("conversation_58k"),
                              image_sources={"coco/train2017": url}, cache_dir=tmp_path / "cache")  # fmt: skip
        assert "fetching" not in capsys.readouterr().err
        assert len(list((store / "coco" / "train2017").glob("*.jpg"))) == 5
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def test_a_damaged_note_of_archives_is_started_again(release, store, www, serve, tmp_path):
    url = serve(www).url("zips/train2017.zip")
    store.mkdir()
    (store / ".llava_hf_origins.json").write_text('{"coco/train2017": [1, 2]}', encoding="utf-8")
    ds = load(release, "detail_23k", url, tmp_path / "cache")
    assert len(ds) == 3
    notes = json.loads((store / ".llava_hf_origins.json").read_text())
    assert list(notes) == ["coco/train2017"] and [n["upstream"] for n in notes["coco/train2017"]] == [url]
