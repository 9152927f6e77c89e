"""The table of image collections: one entry per folder of LLaVA's `playground/data`, data like the catalog.

A collection is where the images of one folder come from: its official archive (a single zip served over
HTTP(S)), its license and homepage, and how the archive's member names map to the names in the JSON.
The folder a zip keeps its members in (`train2017/`, `VG_100K/`) is read from the zip's own directory
(`ZipRoot` strips a single top folder), never assumed here. Sizes and counts are approximate, for messages
and the README; nothing checks them.

Which collections a config needs is a field of its catalog entry (`Source.image_collections`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .catalog import COCO_FLAT_ALIASES, Source

# The setting naming a YAML or JSON file that maps collection names to mirrors, local zips or folders.
SOURCES_ENV = "LLAVA_HF_IMAGE_SOURCES"

# Two characters at least: a one-letter "scheme" is a Windows drive (`C://data` is a path).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations (http, https, s3, gs, hf, memory, ...); plain paths are local. The
    one check every module uses (image_dir, image_sources, the store, the remote transports)."""
    return bool(_URL.match(os.fspath(location)))


def absolute_location(location: str | os.PathLike) -> str:
    """A URL as given; a local path made absolute (`~` expanded), so that one folder reached from two
    working directories is one location."""
    location = os.fspath(location)
    return location if is_url(location) else os.path.abspath(os.path.expanduser(location))


@dataclass(frozen=True)
class Collection:
    """One LLaVA image folder and where its files come from."""

    # The folder under playground/data, and the prefix of its names in llava_v1_5_mix665k.json.
    name: str
    # The official archive, one zip; None when there is none (OCR-VQA: a download script).
    archive_url: str | None
    homepage: str
    license: str
    approx_images: int
    approx_bytes: int
    # How the archive's member names map to the JSON's names (for people; the code reads the directory).
    member_names: str
    # Name rewrites tried when a name is missing from a local copy given for the collection.
    aliases: tuple[tuple[str, str], ...] = ()
    # With no archive: what to download, and how, so that an error can say it.
    how_to_get: str | None = None

    @property
    def prefix(self) -> str:
        return self.name + "/"


COLLECTIONS_TABLE: tuple[Collection, ...] = (
    Collection(
        name="coco/train2017",
        archive_url="http://images.cocodataset.org/zips/train2017.zip",
        homepage="https://cocodataset.org",
        license=(
            "COCO terms of use: the images are Flickr's, each under its own Creative Commons license "
            "(Flickr Terms of Use); the annotations are CC BY 4.0"
        ),
        approx_images=118_287,
        approx_bytes=18_000_000_000,
        member_names="train2017/000000033471.jpg in the zip is 000000033471.jpg in the JSON",
        # A local train2014/val2014 copy given as the collection's source holds COCO_train2014_<name>.
        aliases=COCO_FLAT_ALIASES,
    ),
    Collection(
        name="gqa/images",
        archive_url="https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip",
        homepage="https://cs.stanford.edu/people/dorarad/gqa/",
        license="CC BY 4.0 (GQA); the images are Visual Genome's, from Flickr",
        approx_images=148_854,
        approx_bytes=20_000_000_000,
        member_names="images/n161313.jpg in the zip is gqa/images/n161313.jpg in the JSON",
    ),
    Collection(
        name="ocr_vqa/images",
        archive_url=None,
        homepage="https://ocr-vqa.github.io/",
        license="OCR-VQA's terms (book covers from Amazon; see the homepage): no archive is redistributed",
        approx_images=80_000,
        approx_bytes=4_000_000_000,
        member_names="files named <id>.jpg (GIF and PNG data among them), as LLaVA's instructions save them",
        how_to_get=(
            "OCR-VQA has no archive: download dataset.json and loadDataset.py from https://ocr-vqa.github.io/, "
            "run it to fetch the book covers, save every file as <id>.jpg, and put them in {folder} "
            "(or pass image_sources={{'ocr_vqa/images': '<the folder holding 140031996.jpg>'}})"
        ),
    ),
    Collection(
        name="textvqa/train_images",
        archive_url="https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip",
        homepage="https://textvqa.org",
        license="CC BY 4.0 (TextVQA); the images are Open Images', CC BY 2.0",
        approx_images=25_119,
        approx_bytes=7_000_000_000,
        member_names="train_images/0a3c1d5f2f0d1a9e.jpg in the zip is textvqa/train_images/0a3c1d5f2f0d1a9e.jpg",
    ),
    Collection(
        name="vg/VG_100K",
        archive_url="https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
        homepage="https://homes.cs.washington.edu/~ranjay/visualgenome/",
        license="CC BY 4.0 (Visual Genome); the images are from Flickr",
        approx_images=64_346,
        approx_bytes=9_200_000_000,
        member_names="VG_100K/1592.jpg in images.zip is vg/VG_100K/1592.jpg in the JSON",
    ),
    Collection(
        name="vg/VG_100K_2",
        archive_url="https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
        homepage="https://homes.cs.washington.edu/~ranjay/visualgenome/",
        license="CC BY 4.0 (Visual Genome); the images are from Flickr",
        approx_images=43_903,
        approx_bytes=5_500_000_000,
        # ~170 files of this archive are empty or unopenable; LLaVA's JSON names none of them.
        member_names="VG_100K_2/2386.jpg in images2.zip is vg/VG_100K_2/2386.jpg in the JSON",
    ),
)

COLLECTIONS: dict[str, Collection] = {c.name: c for c in COLLECTIONS_TABLE}
COLLECTION_NAMES: tuple[str, ...] = tuple(COLLECTIONS)


def get_collection(name: str) -> Collection:
    """The entry of a collection; an unknown name raises ValueError listing the valid ones."""
    try:
        return COLLECTIONS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), COLLECTION_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown image collection {name!r}.{hint} Choose one of: {', '.join(COLLECTION_NAMES)}"
        ) from None


def collections_of(source: Source) -> tuple[Collection, ...]:
    """The collections a config's images come from (none for the pretrain configs, which ship a zip)."""
    return tuple(get_collection(name) for name in source.image_collections)


def split_name(name: str, collections: tuple[Collection, ...]) -> tuple[Collection, str] | None:
    """(collection, name inside it) of a JSON image name, or None when no collection holds it.

    With one collection the names are its own (the instruct files: `000000033471.jpg`); with several each
    name starts with its collection's folder (mix665k: `coco/train2017/000000033471.jpg`).
    """
    if len(collections) == 1:
        return collections[0], name
    # Longest prefix first: "vg/VG_100K_2/" must not be taken for "vg/VG_100K/" (the slash also keeps them apart).
    for collection in sorted(collections, key=lambda c: -len(c.name)):
        if name.startswith(collection.prefix):
            return collection, name[len(collection.prefix) :]
    return None


def check_sources(value: Any, what: str = "image_sources") -> dict[str, str] | None:
    """`value` as a {collection: location} dict, locations of local paths made absolute; ValueError naming
    the bad key or value and the choices."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{what} must map collection names to a URL, a zip or a folder, e.g. "
            f"{{'coco/train2017': '/data/train2017.zip'}}; got {value!r}"
        )
    checked = {}
    for key, location in value.items():
        get_collection(key)
        if not isinstance(location, (str, os.PathLike)) or not os.fspath(location):
            raise ValueError(f"{what}[{key!r}] must be a URL or a path (a zip or a folder), got {location!r}")
        checked[key] = absolute_location(location)
    return dict(sorted(checked.items()))


def sources_from_env() -> dict[str, str]:
    """The mapping in the file `LLAVA_HF_IMAGE_SOURCES` names (YAML or JSON); {} when it is unset.

    Relative paths in the file are taken relative to the file's folder. Raises ValueError naming the file
    when it cannot be read or is not such a mapping.
    """
    path = os.environ.get(SOURCES_ENV)
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{SOURCES_ENV}={path}: cannot read the file: {e.strerror or e}") from None
    is_json = path.lower().endswith(".json")
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{SOURCES_ENV}={path}: not valid {'JSON' if is_json else 'YAML'}: {e}") from None
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(data, Mapping):
        data = {
            key: os.path.join(folder, os.path.expanduser(v))
            if isinstance(v, str) and not is_url(v) and not os.path.isabs(os.path.expanduser(v))
            else v
            for key, v in data.items()
        }
    return check_sources(data, what=f"{SOURCES_ENV}={path}") or {}


def resolve_sources(image_sources: Mapping[str, str] | None) -> dict[str, str | None]:
    """Where each collection is read from: the `image_sources` option, else `LLAVA_HF_IMAGE_SOURCES`, else
    the official archive (None for OCR-VQA, which has none)."""
    given = {**sources_from_env(), **(check_sources(image_sources) or {})}
    return {name: given.get(name, collection.archive_url) for name, collection in COLLECTIONS.items()}
