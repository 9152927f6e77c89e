"""The local image store: images fetched from their collection's archive, kept in LLaVA's folder layout.

`<store>/coco/train2017/000000033471.jpg`, `<store>/gqa/images/n161313.jpg`, ...: the layout of LLaVA's
`playground/data`, so the store doubles as `--image_folder` for LLaVA's own training scripts. The store
lives under the Hugging Face cache (`$HF_HOME/llava_hf/images`) unless `LLAVA_HF_IMAGE_STORE` names
another folder.

A `StoreRoot` reads an image from the store when it is there, else from the collection's upstream root
(the official archive, a mirror, a local zip or folder: anything `images.open_root` opens), passing whole
batches of missing names to the upstream `read_many` so that a remote reader can merge neighbouring
members into one request. Each image is written to the store (temp file + rename) as soon as it arrives,
so a killed prepare loses at most the reads in flight and the next run fetches only what it lacks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import Source, get_source
from .errors import BadImage, SourceError
from .image_collections import (
    SOURCES_ENV,
    Collection,
    collections_of,
    get_collection,
    is_url,
    resolve_sources,
    split_name,
)
from .images import FolderRoot, ImageRoot, open_root, safe_name

logger = logging.getLogger("llava_hf")

STORE_ENV = "LLAVA_HF_IMAGE_STORE"

# Names handed to the upstream reader at once: enough for a remote reader to merge neighbours and keep
# many requests in flight, few enough that a killed run loses little.
FETCH_BATCH = 256
# Reasons a copy in the store is not trusted and fetched again (a file cut short by a crash is empty or
# has no image signature); anything else (an unsafe name) is final.
_REFETCH = frozenset({"missing", "empty", "not_an_image", "unreadable"})
# How many failed images per reason a fetch report quotes.
_EXAMPLES = 5


def default_store() -> str:
    """The store folder: `LLAVA_HF_IMAGE_STORE`, else `llava_hf/images` under the Hugging Face home
    (`HF_HOME`, by default ~/.cache/huggingface)."""
    configured = os.environ.get(STORE_ENV)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    from huggingface_hub import constants

    # Read HF_HOME now, not at huggingface_hub's import, so that a process that sets it later is followed.
    home = os.environ.get("HF_HOME") or constants.HF_HOME
    return os.path.join(os.path.abspath(os.path.expanduser(home)), "llava_hf", "images")


def offline() -> bool:
    """Offline as `datasets` defines it (HF_DATASETS_OFFLINE, or HF_HUB_OFFLINE when that is unset)."""
    import datasets.config

    return bool(datasets.config.HF_DATASETS_OFFLINE)


@dataclass
class FetchCounts:
    """What a root has done: images found in the store, fetched (and their bytes), failed per reason."""

    present: int = 0
    fetched: int = 0
    bytes: int = 0
    failed: Counter = field(default_factory=Counter)

    def add(self, other: FetchCounts) -> None:
        self.present += other.present
        self.fetched += other.fetched
        self.bytes += other.bytes
        self.failed.update(other.failed)


class _Unavailable(Exception):
    """The upstream of a collection cannot be read here (none exists, or offline); the text says why."""


class _StoreFolder(ImageRoot):
    """A root laid out as a folder of the store: names are paths under `location`, and single reads go
    through `read_many` (where the fetching happens)."""

    def describe(self, name: str) -> str:
        return os.path.join(self.location, name)

    def url(self, name: str) -> str:
        return os.path.join(self.location, name)

    def read(self, name: str) -> tuple[str, bytes]:
        return self._one(name, embed=True)

    def locate(self, name: str) -> str:
        return self._one(name, embed=False)

    def _one(self, name: str, embed: bool):
        result = next(self.read_many([name], embed))
        if isinstance(result, BadImage):
            raise result
        return result


@dataclass
class StoreRoot(_StoreFolder):
    """The images of one collection: `location` is its folder in the store, `upstream` where missing images
    are fetched from (URL, zip or folder; None when there is nothing to fetch from)."""

    collection: str = ""
    upstream: str | None = None
    # The load's Hub token, for hf:// upstreams only (open_root never sends it to another host).
    token: bool | str | None = field(default=None, repr=False)
    # Show a bar (images, MB, rate) while fetching: a prepare's root does; fetch_images has its own bar.
    progress: bool = False
    counts: FetchCounts = field(default_factory=FetchCounts, init=False, repr=False)

    parallel_reads = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._local: FolderRoot | None = None
        self._remote: ImageRoot | None = None
        self._unavailable: str | None = None
        self._made: set[str] = set()
        self._origin_checked = False
        self._bar = None
        self._started = 0.0

    def __getstate__(self):
        state = super().__getstate__()
        for transient in ("_local", "_remote", "_unavailable", "_made", "_origin_checked", "_bar"):
            state.pop(transient, None)
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._local = self._remote = self._unavailable = None
        self._made = set()
        self._origin_checked = False
        self._bar = None

    def read_many(self, names: Iterable[str], embed: bool = True) -> Iterator[tuple[str, bytes] | str | BadImage]:
        """For each name, in order: (name, bytes) (with `embed=False`, the path in the store) or a BadImage.

        Names missing from the store go to the upstream root `FETCH_BATCH` at a time; each image that
        arrives is written to the store at once."""
        names = iter(names)
        while batch := list(itertools.islice(names, FETCH_BATCH)):
            yield from self._batch(batch, embed)

    def _batch(self, names: list[str], embed: bool) -> list:
        if self._local is None:
            self._local = FolderRoot(self.location)
        results = list(self._local.read_many(names, embed))
        wanted = [i for i, r in enumerate(results) if isinstance(r, BadImage) and r.reason in _REFETCH]
        self.counts.present += sum(1 for r in results if not isinstance(r, BadImage))
        if wanted:
            for i, result in zip(wanted, self._fetch([names[i] for i in wanted], embed)):
                results[i] = result
        for result in results:
            if isinstance(result, BadImage):
                self.counts.failed[result.reason] += 1
        return results

    def _fetch(self, names: list[str], embed: bool) -> Iterator[tuple[str, bytes] | str | BadImage]:
        try:
            remote = self._upstream()
        except _Unavailable as e:
            for name in names:
                yield BadImage("missing", f"image {name!r} is not in the image store {self.location}, and {e}")
            return
        for name, result in zip(names, remote.read_many(names, True)):
            if isinstance(result, BadImage):
                yield BadImage(result.reason, f"{result}; it is not in the image store {self.location} either")
                continue
            if not self._origin_checked:
                # After the first member: a remote archive knows its ETag and size by then (no extra request).
                self._origin_checked = True
                self._record_origin(remote)
            clean, data = safe_name(name), result[1]
            # Stored under the JSON's name even when an alias found it (a train2014 copy), so the store
            # keeps LLaVA's layout.
            path = self._write(clean, data)
            self.counts.fetched += 1
            self.counts.bytes += len(data)
            if self.progress:
                self._tick()
            yield (clean, data) if embed else path

    def _upstream(self) -> ImageRoot:
        if self._unavailable is not None:
            raise _Unavailable(self._unavailable)
        if self._remote is None:
            collection = get_collection(self.collection)
            location = self.upstream
            if location is None:
                self._unavailable = collection.how_to_get.format(folder=self.location)
            elif is_url(location) and offline():
                self._unavailable = offline_message(collection, location)
            else:
                # The token only when there is one, so that wrappers of open_root(location, aliases) still fit.
                token = {} if self.token is None else {"token": self.token}
                self._remote = open_root(location, collection.aliases, **token)
            if self._unavailable is not None:
                raise _Unavailable(self._unavailable)
        return self._remote

    def _tick(self) -> None:
        if self._bar is None:
            # datasets' tqdm: off under datasets.disable_progress_bars(), like the bar of the split it generates.
            from datasets.utils.tqdm import tqdm

            self._bar = tqdm(desc=f"fetching {self.collection}", unit="img", dynamic_ncols=True)
            self._started = time.monotonic()
        self._bar.update(1)
        rate = self.counts.bytes / 1e6 / max(time.monotonic() - self._started, 1e-6)
        self._bar.set_postfix_str(f"{self.counts.bytes / 1e6:,.1f} MB, {rate:,.1f} MB/s", refresh=False)

    def finish(self) -> None:
        """Close the fetch progress bar, if one is shown (the prepare calls this when its shards are done)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _record_origin(self, remote: ImageRoot) -> None:
        """Note in the store which archive (URL + ETag/Last-Modified + size, or a local copy's fingerprint)
        fills this folder, and warn when it differs from the one that filled it before: the images already
        there are reused as they are, though the new archive may hold other bytes under their names."""
        transport = getattr(remote, "_transport", None)
        try:
            if self.upstream is not None and is_url(self.upstream) and hasattr(transport, "identity"):
                identity = transport.identity()
            else:
                identity = upstream_identity(self.upstream, self.token)
        except OSError:
            return  # a note only; reading the archive reports its own errors
        path = os.path.join(_store_of(self.location, self.collection), ORIGINS_FILE)
        origins = _read_json(path)
        archives = origins.get(self.collection)
        if not isinstance(archives, list) or not all(isinstance(a, dict) and "identity" in a for a in archives):
            archives = origins[self.collection] = []  # absent, or edited into another shape: start the notes again
        if archives and archives[-1]["identity"] == identity:
            return
        if archives:
            logger.warning(
                "%s was filled from %s; now %s is read, and the images already there are kept as they are "
                "(delete the folder to fetch them all from the new archive)",
                self.location,
                archives[-1]["identity"],
                identity,
            )
        archives.append({"upstream": self.upstream, "identity": identity, "time": int(time.time())})
        # Whole file replaced at once; two writers at the same moment may lose one note, never corrupt it.
        _write_json(path, origins)

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.location, name)
        folder = os.path.dirname(path)
        # A name no other writer uses, on any host sharing the store: hidden, so LLaVA's loader never sees it.
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
        try:
            if folder not in self._made:
                os.makedirs(folder, exist_ok=True)
                self._made.add(folder)
                _sweep_parts(folder)
            with open(tmp, "wb") as f:
                f.write(data)
            # Atomic: a reader (or the next run, after a kill) sees the whole image or none of it.
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise OSError(
                e.errno,
                f"cannot write {path} into the image store: {e.strerror or e} (set {STORE_ENV} to a "
                "writable folder with room for the images)",
            ) from None
        return path

    def close(self) -> None:
        if self._remote is not None and hasattr(self._remote, "close"):
            self._remote.close()
        self._remote = None


# A `.part` older than this was left by a writer that was killed (an image is written in one call).
STALE_PART_SECONDS = 24 * 3600


def _sweep_parts(folder: str) -> None:
    """Remove the `.part` files a killed writer left in `folder` (hidden, so never read, but never freed
    either); once per folder and process, on its first write. Recent ones may be another host's, writing."""
    cutoff = time.time() - STALE_PART_SECONDS
    try:
        with os.scandir(folder) as entries:
            stale = [
                e.path
                for e in entries
                if e.name.startswith(".")
                and e.name.endswith(".part")
                and e.stat(follow_symlinks=False).st_mtime < cutoff
            ]
    except OSError:
        return
    for path in stale:
        with contextlib.suppress(OSError):
            os.remove(path)


# In the store's top folder: per collection, the archives that filled its folder, oldest first.
ORIGINS_FILE = ".llava_hf_origins.json"


def _store_of(location: str, collection: str) -> str:
    """The store folder above a collection's folder (`<store>/coco/train2017` -> `<store>`)."""
    return os.path.normpath(os.path.join(location, *[os.pardir] * len(collection.split("/"))))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def offline_message(collection: Collection, location: str) -> str:
    return (
        f"HF_DATASETS_OFFLINE is set, so collection {collection.name} is not fetched from {location}; give it "
        f"locally: image_sources={{{collection.name!r}: '<a zip or folder of its images>'}} (or the file "
        f"{SOURCES_ENV} names), or image_dir=<a folder holding all of the config's images>"
    )


def _no_collection(name: str, collections: tuple[Collection, ...]) -> BadImage:
    prefixes = ", ".join(c.prefix for c in collections)
    return BadImage("missing", f"image {name!r} is in no image collection: its path must start with one of {prefixes}")


@dataclass
class CollectionsRoot(_StoreFolder):
    """Names that start with their collection's folder (mix665k: `gqa/images/n161313.jpg`), each routed to
    that collection's `StoreRoot`; `location` is the store."""

    roots: dict[str, StoreRoot] = field(default_factory=dict)

    parallel_reads = True

    @property
    def counts(self) -> FetchCounts:
        total = FetchCounts()
        for root in self.roots.values():
            total.add(root.counts)
        return total

    def read_many(self, names: Iterable[str], embed: bool = True) -> Iterator[tuple[str, bytes] | str | BadImage]:
        """As `StoreRoot.read_many`, each collection's names of a batch handed to its root together."""
        names = iter(names)
        collections = tuple(get_collection(name) for name in self.roots)
        while batch := list(itertools.islice(names, FETCH_BATCH)):
            results: list[Any] = [None] * len(batch)
            routed: dict[str, list[tuple[int, str]]] = {}
            for i, name in enumerate(batch):
                try:
                    clean = safe_name(name)
                except BadImage as bad:
                    results[i] = bad
                    continue
                found = split_name(clean, collections)
                if found is None:
                    prefixes = ", ".join(c.prefix for c in collections)
                    results[i] = BadImage(
                        "missing",
                        f"image {name!r} is in no image collection: its path must start with one of {prefixes}",
                    )
                    continue
                routed.setdefault(found[0].name, []).append((i, found[1]))
            for collection, items in routed.items():
                inner = self.roots[collection].read_many([rel for _, rel in items], embed)
                for (i, _), result in zip(items, inner):
                    # The JSON's full name, as a folder root of the whole playground/data would give it.
                    results[i] = (batch[i], result[1]) if isinstance(result, tuple) else result
            yield from results

    def close(self) -> None:
        for root in self.roots.values():
            root.close()

    def finish(self) -> None:
        for root in self.roots.values():
            root.finish()


@dataclass(frozen=True)
class StoreSpec:
    """Where a config's images come from when no image_dir is given: the store and, per collection, the
    upstream location (URL, zip, folder; None when there is none). Small: pickled to every worker."""

    store: str
    upstreams: tuple[tuple[str, str | None], ...]
    # The load's Hub token, for hf:// upstreams; never part of the identity.
    token: bool | str | None = field(default=None, repr=False, compare=False)

    def open(self) -> StoreRoot | CollectionsRoot:
        """The root that reads these images: one collection's store root (flat names), or a router."""
        roots = {
            name: StoreRoot(
                os.path.join(self.store, name), collection=name, upstream=upstream, token=self.token, progress=True
            )
            for name, upstream in self.upstreams
        }
        if len(roots) == 1:
            return next(iter(roots.values()))
        return CollectionsRoot(self.store, roots=roots)

    def describe(self) -> str:
        fetched = ", ".join(f"{name} from {upstream or 'nowhere (no archive)'}" for name, upstream in self.upstreams)
        return f"the image store {self.store} ({fetched})"

    def identity(self, embed_images: bool = True) -> dict[str, str]:
        """What the cache key holds: which archive (or copy) each collection was read from. The store's
        own path only when the rows hold paths into it (`embed_images=False`)."""
        identity = {name: upstream_identity(upstream, self.token) for name, upstream in self.upstreams}
        if not embed_images:
            identity["store"] = self.store
        return identity


def plan_store(
    source: Source,
    image_sources: Mapping[str, str] | None = None,
    *,
    store: str | None = None,
    on_bad_image: str = "raise",
    token: bool | str | None = None,
) -> StoreSpec | None:
    """The StoreSpec of a config that fetches its images, or None for one that does not (pretrain configs).

    Raises FileNotFoundError for a local image source that does not exist, and, for a collection with no
    archive (OCR-VQA) of which neither the store nor `image_sources` has a copy, an error saying what to
    download and where to put it (with `on_bad_image="skip"` its rows are skipped and counted instead).
    """
    collections = collections_of(source)
    if not collections:
        return None
    store = store or default_store()
    locations = resolve_sources(image_sources)
    upstreams = []
    for collection in collections:
        location = locations[collection.name]
        if location is not None and not is_url(location) and not os.path.exists(location):
            raise FileNotFoundError(
                f"{source.name}: the image source of {collection.name}, {location}, does not exist "
                f"(image_sources or {SOURCES_ENV}; not mounted, or mistyped?)"
            )
        folder = os.path.join(store, collection.name)
        if location is None and on_bad_image == "raise" and not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{source.name} needs the images of {collection.name}, and "
                + collection.how_to_get.format(folder=folder)
            )
        upstreams.append((collection.name, location))
    return StoreSpec(store, tuple(upstreams), token=token)


# -- identity of an archive, for the cache key ------------------------------------------------------------

_IDENTITY_MEMO = "llava_hf_archives.json"


def upstream_identity(location: str | None, token: bool | str | None = None) -> str:
    """The content identity of an upstream: a local zip's size and hash of its ends, a local folder's last
    two path components (as for image_dir), a remote zip's URL + ETag/Last-Modified + size (asked once a
    run; offline, the last one seen on this machine), a remote folder's URL."""
    from .sources import fingerprint_file

    if location is None:
        return "none"
    if not is_url(location):
        if location.lower().endswith(".zip"):
            return fingerprint_file(location)
        return "/".join(Path(location).parts[-2:])
    if not location.lower().endswith(".zip"):
        return location
    memo = _read_memo()
    if offline():
        return memo.get(location, location)
    from .remote import RemoteError, open_transport

    try:
        identity = open_transport(location, token=token).identity()
    except RemoteError as e:
        # Gone, no Range, or down after every retry: the images the store holds may still do, and the
        # prepare names each record that needs the archive. The key: the last identity seen, as offline.
        logger.warning("%s; the cache key takes the last identity seen on this machine, if any", e)
        return memo.get(location, f"{location} unreadable")
    if memo.get(location) != identity:
        memo[location] = identity
        _write_memo(memo)
    return identity


def _memo_path() -> str:
    from datasets import config

    return os.path.join(str(config.HF_DATASETS_CACHE), _IDENTITY_MEMO)


def _read_memo() -> dict[str, str]:
    try:
        with open(_memo_path(), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict[str, str]) -> None:
    path = _memo_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(memo, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a memo only: offline runs then name the archive by its URL


# -- fetching the images of configs ahead of a prepare -----------------------------------------------------


@dataclass
class FetchReport:
    """What `fetch_images` did: images fetched, already in the store, failed per reason (with examples that
    name the file, record and image)."""

    store: str
    images: int
    counts: FetchCounts
    examples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.counts.failed

    def summary(self) -> str:
        c = self.counts
        failed = ", ".join(f"{reason} {n:,}" for reason, n in sorted(c.failed.items())) or "none"
        lines = [
            f"{self.images:,} images: {c.fetched:,} fetched ({c.bytes / 1e6:,.1f} MB in {self.seconds:.1f} s), "
            f"{c.present:,} already there, failed: {failed}",
        ]
        for reason, examples in sorted(self.examples.items()):
            lines += [f"  {reason}: {example}" for example in examples]
        lines.append(f"store: {self.store}")
        return "\n".join(lines)


def referenced_images(
    name: str, *, data_dir: str | None = None, revision: str | None = None, token: bool | str | None = None
) -> Iterator[tuple[int, str, str]]:
    """(record index, record id, image name) of every record of config `name` that has an image, in file
    order. Raises SourceError for a malformed file or record, FileNotFoundError for a missing one."""
    from .records import parse_record
    from .sources import BATCH_ROWS, index_json_array, read_batches, resolve_inputs

    source = get_source(name)
    inputs = resolve_inputs(source, data_dir=data_dir, image_dir=None, sample=False, revision=revision, token=token)
    index = index_json_array(inputs.json_path, source.filename)
    n = index.num_records
    offsets = tuple(index.starts[b] for b in (*range(0, n, BATCH_ROWS), n))
    position = 0
    for batch in read_batches(inputs.json_path, offsets, 0, n, source.filename):
        for raw in batch:
            row = parse_record(raw, file=source.filename, index=position, config=name)
            if row.image is not None:
                yield position, row.id, row.image
            position += 1


def fetch_images(
    names: Sequence[str],
    *,
    to: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    image_sources: Mapping[str, str] | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    progress: bool = True,
) -> FetchReport:
    """Fetch exactly the images the configs `names` reference into `to` (default: the store), in LLaVA's
    layout, with a progress bar (files, MB, rate, ETA). Images already there are not fetched again.

    Returns a FetchReport; failed images (missing from the archive, not images, nothing to fetch from)
    are counted per reason, not raised. Raises ValueError for an unknown config or one whose images are
    not fetched (the pretrain configs read their repo's images.zip in place), SourceError for a malformed
    source file, FileNotFoundError for a missing source file or image source.
    """
    store = os.path.abspath(os.path.expanduser(os.fspath(to))) if to is not None else default_store()
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    wanted: dict[str, dict[str, tuple[str, int, str]]] = {}  # collection -> {name in it: first record}
    refused: list[tuple[str, int, str, BadImage]] = []
    specs: dict[str, str | None] = {}
    for name in names:
        source = get_source(name)
        spec = plan_store(source, image_sources, store=store, on_bad_image="skip")
        if spec is None:
            raise ValueError(
                f"{name}: its images are the repo's {source.image_archive}, read in place; there is nothing to fetch"
            )
        specs.update(spec.upstreams)
        collections = collections_of(source)
        for index, rid, image in referenced_images(name, data_dir=data_dir, revision=revision, token=token):
            try:
                found = split_name(safe_name(image), collections)
                if found is None:
                    prefixes = ", ".join(c.prefix for c in collections)
                    raise BadImage(
                        "missing",
                        f"image {image!r} is in no image collection: its path must start with one of {prefixes}",
                    )
            except BadImage as bad:
                refused.append((source.filename, index, rid, bad))
                continue
            wanted.setdefault(found[0].name, {}).setdefault(found[1], (source.filename, index, rid))
    total = sum(len(v) for v in wanted.values()) + len(refused)
    logger.info("%s: %s images referenced, into %s", ", ".join(names), f"{total:,}", store)
    counts, examples = FetchCounts(), {}

    def failed(file: str, index: int, rid: str, bad: BadImage) -> None:
        listed = examples.setdefault(bad.reason, [])
        if len(listed) < _EXAMPLES:
            listed.append(str(SourceError(file, str(bad), index, rid)))

    for file, index, rid, bad in refused:  # never sent anywhere: the name itself is wrong
        counts.failed[bad.reason] += 1
        failed(file, index, rid, bad)
    started = time.monotonic()
    bar = _progress(total, progress)
    bar.update(len(refused))
    try:
        for collection, images in wanted.items():
            root = StoreRoot(
                os.path.join(store, collection), collection=collection, upstream=specs[collection], token=token
            )
            before = FetchCounts()
            for (file, index, rid), result in zip(images.values(), root.read_many(images, embed=False)):
                if isinstance(result, BadImage):
                    failed(file, index, rid, result)
                bar.update(1)
                if root.counts.bytes != before.bytes:
                    before.bytes = root.counts.bytes
                    elapsed = max(time.monotonic() - started, 1e-6)
                    done = counts.bytes + root.counts.bytes
                    bar.set_postfix_str(f"{done / 1e6:,.1f} MB, {done / 1e6 / elapsed:,.1f} MB/s", refresh=False)
            root.close()
            counts.add(root.counts)
    finally:
        bar.close()
    return FetchReport(store, total, counts, examples, time.monotonic() - started)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="fetching images", disable=not enabled, dynamic_ncols=True)


def prefetch_for_prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    embed_images: bool = True,
    on_bad_image: str = "raise",
    sample: bool = False,
    revision: str | None = None,
    image_sources: Mapping[str, str] | None = None,
    progress: bool = True,
) -> FetchReport | None:
    """For `llava-hf prepare` (its options): fetch the images of config `name` into the store first, with
    progress, when preparing reads them through the store; None when it does not (an image_dir, the sample,
    a pretrain config) or when the config is prepared already (its images are in the cache, and a cleared
    store is not filled again). Failures are left for the prepare to raise or skip, naming the record."""
    from .load import load_builder

    source = get_source(name)
    if image_dir is not None or sample or not source.image_collections:
        return None
    builder = load_builder(
        name,
        data_dir=data_dir,
        cache_dir=cache_dir,
        embed_images=embed_images,
        on_bad_image=on_bad_image,
        revision=revision,
        image_sources=image_sources,
    )
    if os.path.exists(os.path.join(builder.cache_dir, "dataset_info.json")):  # how datasets tells it is done
        return None
    # The same checks as the prepare (a missing source, OCR-VQA nowhere), before any image is read.
    plan_store(source, image_sources, on_bad_image=on_bad_image)
    return fetch_images([name], data_dir=data_dir, image_sources=image_sources, revision=revision, progress=progress)


__all__ = [
    "STORE_ENV",
    "CollectionsRoot",
    "FetchCounts",
    "FetchReport",
    "StoreRoot",
    "StoreSpec",
    "default_store",
    "fetch_images",
    "plan_store",
]
