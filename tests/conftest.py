"""Fixtures that lay out fake copies of the LLaVA release (JSON files, small JPEGs, zips) in tmp folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("make_sample", ROOT / "scripts" / "make_sample.py")
make_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_sample)

# Where each config's files sit in a release folder written by make_sample.write_sample.
DATA_DIRS = {
    "conversation_58k": "LLaVA-Instruct-150K",
    "detail_23k": "LLaVA-Instruct-150K",
    "complex_reasoning_77k": "LLaVA-Instruct-150K",
    "llava_instruct_150k": "LLaVA-Instruct-150K",
    "llava_instruct_80k": "LLaVA-Instruct-150K",
    "llava_v1_5_mix665k": "LLaVA-Instruct-150K",
    "cc3m_595k": "LLaVA-CC3M-Pretrain-595K",
    "blip_558k": "LLaVA-Pretrain",
}
IMAGE_DIRS = {name: "images/coco/train2017" for name in DATA_DIRS}
IMAGE_DIRS.update({"llava_v1_5_mix665k": "images", "cc3m_595k": None, "blip_558k": None})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path) -> list:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def jpeg(seed: int) -> bytes:
    return make_sample.encode(make_sample.picture(seed), "JPEG")


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return target


class Release:
    """A fake LLaVA release on disk, laid out like the Hub repos plus an image folder."""

    def __init__(self, root: Path):
        self.root = root

    def data_dir(self, name: str) -> Path:
        return self.root / DATA_DIRS[name]

    def image_dir(self, name: str) -> Path | None:
        rel = IMAGE_DIRS[name]
        return self.root / rel if rel else None

    def options(self, name: str) -> dict:
        image_dir = self.image_dir(name)
        return {"data_dir": str(self.data_dir(name)), "image_dir": str(image_dir) if image_dir else None}

    def records(self, name: str) -> list:
        from llava_hf.catalog import get_source

        return read_json(self.data_dir(name) / get_source(name).filename)

    def metadata(self, name: str) -> list:
        from llava_hf.catalog import get_source

        return read_json(self.data_dir(name) / get_source(name).metadata_filename)

    def image_bytes(self, name: str, image: str) -> bytes:
        image_dir = self.image_dir(name)
        if image_dir is not None:
            return (image_dir / image).read_bytes()
        with zipfile.ZipFile(self.data_dir(name) / "images.zip") as zf:
            return zf.read(image)


@pytest.fixture(scope="session")
def release_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release-template")
    make_sample.write_sample(root)
    return root


@pytest.fixture
def release(release_template, tmp_path) -> Release:
    """A private copy of the fake release that a test may damage."""
    root = tmp_path / "release"
    shutil.copytree(release_template, root)
    return Release(root)


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture(autouse=True)
def _no_real_image_archives(tmp_path_factory, monkeypatch):
    """Tests never fetch from the collections' real hosts, nor fill the user's image store: the store is a
    tmp folder, and every collection's source a local path that does not exist unless a test makes it."""
    root = tmp_path_factory.getbasetemp() / "image-sources-guard"
    root.mkdir(exist_ok=True)
    from llava_hf.image_collections import COLLECTION_NAMES

    mapping = {name: str(root / "absent" / name.replace("/", "-")) for name in COLLECTION_NAMES}
    (root / "sources.json").write_text(json.dumps(mapping), encoding="utf-8")
    monkeypatch.setenv("LLAVA_HF_IMAGE_SOURCES", str(root / "sources.json"))
    monkeypatch.setenv("LLAVA_HF_IMAGE_STORE", str(tmp_path_factory.mktemp("image-store")))


@pytest.fixture
def serve():
    """`serve(folder, **options)` starts a tests.httpserver.RangeServer on 127.0.0.1 for this test only."""
    from httpserver import RangeServer

    servers = []

    def start(folder, **options) -> RangeServer:
        servers.append(RangeServer(folder, **options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
