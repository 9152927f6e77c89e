"""`llava_hf.load_dataset`: the same builder and cache as `datasets.load_dataset("llava_hf", ...)`."""

from __future__ import annotations

import json
import os
from typing import Any

import datasets

from . import reader
from .builder import REPORT_FILENAME, LlavaBuilder, OnBadImage
from .catalog import CONFIG_NAMES, get_source
from .files import SUFFIXES
from .hook import NAME, module_hash
from .integrity import PreparedCheck, check_files, load_files
from .locking import LockMode


def is_data_files(name: Any) -> bool:
    """Whether `name` names the user's own files (a path, glob or list of `.json`/`.jsonl`[.gz] files)
    rather than a catalog config."""
    if isinstance(name, (list, tuple)):  # a list of files, not of catalog configs
        return bool(name) and all(is_data_files(item) for item in name)
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str) or name in CONFIG_NAMES:
        return False
    # Config names hold no path separator or glob character; a name ending like a data file is a file.
    return name.lower().endswith(SUFFIXES) or any(c in name for c in "/\\*?[")


def load_builder(
    name: str | os.PathLike | list,
    *,
    data_files: str | os.PathLike | list | None = None,
    data_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    embed_images: bool = True,
    image_sources: dict[str, str] | None = None,
    on_bad_image: OnBadImage = "raise",
    sample: bool = False,
    revision: str | None = None,
    token: bool | str | None = None,
    lock: LockMode | None = None,
) -> LlavaBuilder:
    """The builder of config `name`, with the cache path `datasets.load_dataset("llava_hf", name)` uses.

    `name` may also be the user's own files (a path, a glob or a list; see `load_dataset`), or, with
    `data_files`, the name of the config those files make.

    Raises ValueError for an unknown config (listing the valid ones) or a bad option value.
    """
    if data_files is None and is_data_files(name):
        name, data_files = None, name
    if data_files is None:
        get_source(name)
    extra = {"data_files": data_files} if data_files is not None else {}
    return LlavaBuilder(
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
        dataset_name=NAME,
        config_name=name,
        **extra,
        hash=module_hash(),
        data_dir=data_dir,
        token=token,
        image_dir=image_dir,
        image_sources=image_sources,
        embed_images=embed_images,
        on_bad_image=on_bad_image,
        sample=sample,
        revision=revision,
        lock=lock,
    )


def load_dataset(
    name: str | os.PathLike | list | None = None,
    data_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    split: str | None = "train",
    num_proc: int | None = None,
    streaming: bool = False,
    embed_images: bool = True,
    on_bad_image: OnBadImage = "raise",
    sample: bool = False,
    revision: str | None = None,
    token: bool | str | None = None,
    download_mode: datasets.DownloadMode | str | None = None,
    lock: LockMode | None = None,
    lazy: bool | None = None,
    data_files: str | os.PathLike | list | None = None,
    image_sources: dict[str, str] | None = None,
) -> datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict:
    """Prepare (once) and load one LLaVA config as a `datasets.Dataset`.

    name: a catalog config, or the user's own LLaVA-format files: a path, a glob or a list of `.json`
        (one array) / `.jsonl` (one record a line) files, optionally `.gz`. Such a config is named after
        its first file's stem; to name it, pass the files as `data_files` and the name as `name`
        (as `datasets.load_dataset("llava_hf", name, data_files=...)` does; both share the cache).
        Files holding any list-valued `image` give the column `images` (a list of images) instead of `image`.

    data_dir: folder with the raw JSON files; None downloads them from the catalog's Hub repo
        (through the Hugging Face cache; `revision` picks the repo revision, default "main").
    image_dir: folder or .zip of images, or its URL; None uses the repo's images.zip for the pretrain configs,
        and for the others the image store (`LLAVA_HF_IMAGE_STORE`, default under HF_HOME), which fetches
        the images a config names from each collection's archive and keeps them (see store.py).
    image_sources: {collection: URL, zip or folder} replacing a collection's official archive, e.g.
        {"coco/train2017": "/data/train2017.zip"}; default: the file LLAVA_HF_IMAGE_SOURCES names.
        image_dir wins over both.
    split: "train" (the only split) gives a Dataset; None gives a DatasetDict.
    num_proc: worker processes for preparing; each takes a contiguous range of rows.
    streaming: return an IterableDataset read straight from the sources, caching nothing.
    embed_images: embed the image bytes (default) or store absolute paths.
    on_bad_image: "raise" (default) or "skip": drop rows whose image is missing, empty, not an image or
        outside the image root, counted per reason in `prepare_report(ds)`.
    sample: use the small sample shipped inside the package.
    lock: "flock" (default) or "lease" for shared storage without flock (default: LLAVA_HF_LOCK);
        every process sharing a cache must use the same.
    lazy: open the prepared files lazily (headers only; reads follow the access pattern, see reader.py);
        default True unless LLAVA_HF_LAZY=0. False opens them as datasets does.

    Raises `llava_hf.SourceError` naming the file, record index and id for bad source data, ValueError
    for bad options, FileNotFoundError when a source file is not in `data_dir`.
    """
    if name is None and data_files is None:
        raise ValueError("load_dataset needs a config name or data_files")
    builder = load_builder(
        name,
        data_files=data_files,
        data_dir=data_dir,
        image_dir=image_dir,
        cache_dir=cache_dir,
        embed_images=embed_images,
        image_sources=image_sources,
        on_bad_image=on_bad_image,
        sample=sample,
        revision=revision,
        token=token,
        lock=lock,
    )
    if streaming:
        if num_proc is not None:
            raise ValueError("streaming reads in the consuming process; use DataLoader workers, not num_proc")
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare(num_proc=num_proc, download_mode=download_mode)
    reader.set_policy(builder.cache_dir, lazy)  # None: back to the default, whatever an earlier call said
    return builder.as_dataset(split=split)


def prepare_report(dataset: datasets.Dataset | LlavaBuilder) -> dict[str, Any]:
    """What preparing a dataset found: records, rows, skipped rows per reason (with examples), source files.

    Takes a prepared `Dataset` (from either load_dataset) or a builder after `download_and_prepare`.
    """
    path = os.path.join(_prepared_folder(dataset), REPORT_FILENAME)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def verify_prepared(dataset: datasets.Dataset | LlavaBuilder) -> PreparedCheck:
    """Re-read every file of a prepared entry and compare it with the checksums its prepare recorded.

    Returns a `PreparedCheck`: `intact` is True only when every file has its recorded size and sha256;
    otherwise `problems` names each damaged file, and the row (index and id) whose image bytes changed, or
    the rows of the record batch that did, and `damaged_rows` lists those row indices. Raises ValueError
    for an entry prepared before checksums were recorded (prepare it again to have them).
    """
    folder = _prepared_folder(dataset)
    files = load_files(os.path.join(folder, REPORT_FILENAME))
    if not files:
        raise ValueError(f"{folder} was prepared without checksums (an older llava_hf): prepare it again to have them")
    return check_files(folder, files)


def _prepared_folder(dataset: datasets.Dataset | LlavaBuilder) -> str:
    if isinstance(dataset, LlavaBuilder):
        folder = dataset.cache_dir
    else:
        if not dataset.cache_files:
            raise ValueError("this dataset is not backed by prepared files, so it has no prepare report")
        first = dataset.cache_files[0]["filename"]
        # Derived datasets (map, flatten_indices...) may write their own files into the same folder.
        if not os.path.basename(first).startswith(f"{NAME}-"):
            raise ValueError(f"{first} is not a file prepared by llava_hf, so this dataset has no prepare report")
        folder = os.path.dirname(first)
    if not os.path.exists(os.path.join(folder, REPORT_FILENAME)):
        raise FileNotFoundError(f"no {REPORT_FILENAME} in {folder}: not a dataset prepared by llava_hf")
    return folder
