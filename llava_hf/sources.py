"""Where a config's files come from (embedded sample, a local folder, the Hub) and how a big JSON array
is cut into row-range shards that workers read by byte offset.

A LLaVA file is one JSON array of up to 665K records (1 GB). It is scanned once, in bounded memory, to
find where every record starts; a shard is then a row range plus the byte offsets of its batches, so a
worker reads and parses only its own bytes, and nothing bigger than a few integers is pickled to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import Source
from .compat import hub_offline
from .errors import SourceError

logger = logging.getLogger("llava_hf")

SAMPLE_DIR = Path(__file__).parent / "sample"

# Rows per parsed batch (and per Arrow record batch): ~13 MB of embedded images at LLaVA sizes.
BATCH_ROWS = 100
# Enough shards for num_proc and DataLoader workers even on a small file, ~10K rows each on big ones.
MIN_SHARDS = 16
SHARD_ROWS = 10_000

_CHUNK = 4 << 20  # bytes read per step of the scan
_MAX_RECORD = 64 << 20  # a single record larger than this is refused, named as too large
_WS = re.compile(r"[ \t\r\n]*")
_SEPARATORS = re.compile(r"[ \t\r\n,]*")


@dataclass(frozen=True)
class Inputs:
    """The resolved files of one config: local paths, and where they came from."""

    json_path: str
    metadata_path: str | None
    image_location: str | None
    origin: str  # "sample", "local" or "hub"
    revision: str | None = None  # the Hub commit the files were taken from


def resolve_inputs(
    source: Source,
    *,
    data_dir: str | None,
    image_dir: str | None,
    sample: bool,
    revision: str | None = None,
    token: bool | str | None = None,
) -> Inputs:
    """Local paths of the JSON (and metadata) file and the image root of `source`.

    With `sample`, the embedded sample; with `data_dir`, files in that folder; otherwise the files of the
    catalog's Hub repo through the Hugging Face cache (honouring HF_HUB_CACHE and HF_HUB_OFFLINE). With no
    `image_dir`, configs whose repo ships an images.zip read it from beside the JSON.
    """
    if sample:
        folder = SAMPLE_DIR / source.sample_data_dir
        images = SAMPLE_DIR / source.sample_image_dir if source.sample_image_dir else None
        return _local(source, str(folder), str(images) if images else image_dir, origin="sample")
    if data_dir is not None:
        return _local(source, data_dir, image_dir, origin="local")
    return _hub(source, image_dir, revision=revision, token=token)


def _local(source: Source, folder: str, image_dir: str | None, origin: str) -> Inputs:
    def need(name: str) -> str:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{source.name}: expected {name} in data_dir {folder} (the folder holding the files of "
                f"{source.repo_id}), but it is not there"
            )
        return path

    json_path = need(source.filename)
    metadata_path = need(source.metadata_filename) if source.metadata_filename else None
    if image_dir is None and source.image_archive:
        image_dir = need(source.image_archive)
    return Inputs(json_path, metadata_path, image_dir, origin)


def _hub_file(source: Source, name: str, *, revision: str | None, token: bool | str | None) -> str:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # No cache_dir: hf_hub_download(cache_dir=...) would ignore the user's HF_HUB_CACHE.
        return hf_hub_download(source.repo_id, name, repo_type="dataset", revision=revision, token=token)
    except LocalEntryNotFoundError as e:
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise FileNotFoundError(
            f"{source.name}: {name} of {source.repo_id} (revision {revision or 'main'}) is not in the Hugging "
            f"Face cache {constants.HF_HUB_CACHE} and the Hub cannot be reached{offline}; download it "
            f"first, or pass data_dir=<the folder holding {name}>"
        ) from e


def _hub(source: Source, image_dir: str | None, *, revision: str | None, token: bool | str | None) -> Inputs:
    def fetch(name: str) -> str:
        logger.info("%s: fetching %s from the Hub repo %s", source.name, name, source.repo_id)
        return _hub_file(source, name, revision=revision, token=token)

    json_path = fetch(source.filename)
    metadata_path = fetch(source.metadata_filename) if source.metadata_filename else None
    if image_dir is None and source.image_archive:
        image_dir = fetch(source.image_archive)
    # Files in the Hub cache live in snapshots/<commit>/: record the commit they were built from.
    commit = Path(json_path).parent.name
    return Inputs(json_path, metadata_path, image_dir, "hub", revision=commit)


_FINGERPRINT_BYTES = 1 << 20
_MEMO_NAME = "llava_hf_hashes.json"


def fingerprint_file(path: str) -> str:
    """A cheap content identity of a big file: its size and the sha256 of its first and last MiB.

    For the image zips (6.5 and 27 GB), where any change rewrites the central directory at the end.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()[:16]}"


def _memo_path() -> str:
    from datasets import config

    return os.path.join(str(config.HF_DATASETS_CACHE), _MEMO_NAME)


def content_hash(path: str) -> str:
    """The sha256 of a whole file, remembered per machine by (path, size, mtime, ctime, inode) so that a
    file read before is not read again; a touched file is hashed again and, unchanged, gives the same hash."""
    stat = os.stat(path)
    # ctime and inode too: an edit in place with the mtime set back (cp -p, rsync -t, a restore from a
    # backup) keeps path, size and mtime, but no user can set ctime back, and a replaced file has a new inode.
    key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"
    memo_path = _memo_path()
    try:
        with open(memo_path, encoding="utf-8") as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as f:
        memo[key] = sha_fileobj(f, _CHUNK).hex()
    try:
        os.makedirs(os.path.dirname(memo_path), exist_ok=True)
        tmp = f"{memo_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(memo, f)
        os.replace(tmp, memo_path)  # concurrent writers may drop each other's entries: they are hashed again
    except OSError:
        pass
    return memo[key]


def input_identity(
    source: Source,
    *,
    data_dir: str | None,
    image_dir: str | None,
    sample: bool,
    embed_images: bool = True,
    revision: str | None = None,
    token: bool | str | None = None,
    image_sources: dict[str, str] | None = None,
) -> dict[str, str]:
    """What the cache key holds about the inputs, independent of where they are mounted.

    The source JSON files by the sha256 of their content (`content_hash`); a zip of images by size and
    the hash of its ends (`fingerprint_file`); an image folder, which cannot be hashed cheaply, by its last
    two path components ("coco/train2017"), which survive a different mount point — unless the rows store
    paths (`embed_images=False`), which then depend on the absolute location. Files of the Hub repo by the
    commit the revision resolves to (fetched through the Hugging Face cache, as preparing would). Images
    fetched into the store by the archive (or copy) of each collection they come from, and an image_dir
    URL likewise (`store.upstream_identity`). Raises FileNotFoundError when a source file is missing.
    """
    from .store import plan_store

    if sample:
        folder = str(SAMPLE_DIR / source.sample_data_dir)
        image_dir = str(SAMPLE_DIR / source.sample_image_dir) if source.sample_image_dir else image_dir
    else:
        folder = data_dir
    identity: dict[str, str] = {}
    if folder is not None:
        inputs = _local(source, folder, image_dir, origin="")
        identity["json"] = content_hash(inputs.json_path)
        if inputs.metadata_path:
            identity["metadata"] = content_hash(inputs.metadata_path)
        image_dir = inputs.image_location
    else:
        json_path = _hub_file(source, source.filename, revision=revision, token=token)
        identity["commit"] = Path(json_path).parent.name  # files of the Hub cache: snapshots/<commit>/
    if image_dir is None and not sample and source.image_collections:
        # "skip": the cache key needs no OCR-VQA copy; preparing checks for one.
        spec = plan_store(source, image_sources, on_bad_image="skip", token=token)
        identity["images"] = spec.identity(embed_images)
    elif image_dir is not None:
        identity["images"] = image_root_identity(image_dir, embed_images=embed_images, token=token)
    return identity


def image_root_identity(image_dir: str, *, embed_images: bool, token: bool | str | None = None) -> str:
    """What the cache key holds about an image root, independent of where it is mounted: a remote archive
    by its URL, ETag and size; a local zip by size and the hash of its ends; a folder by its last two path
    components ("coco/train2017") — unless the rows store paths (`embed_images=False`), which then depend
    on the absolute location."""
    from .image_collections import is_url
    from .store import upstream_identity

    if is_url(image_dir):
        return upstream_identity(image_dir, token)
    if not embed_images:
        return os.path.abspath(image_dir)
    if image_dir.lower().endswith(".zip"):
        return fingerprint_file(image_dir)
    return "/".join(Path(image_dir).parts[-2:])


@dataclass(frozen=True)
class JsonIndex:
    """Where each record of a JSON array file starts; `starts[n]` is where the last record ends."""

    path: str
    starts: array
    size: int
    sha256: str

    @property
    def num_records(self) -> int:
        return len(self.starts) - 1


def _latin1_fix(value: Any) -> Any:
    # The scan decodes bytes as latin-1 (one char per byte, so offsets are byte offsets); undo that
    # for the ids it quotes in error messages.
    if isinstance(value, str):
        return value.encode("latin-1").decode("utf-8", "replace")
    return value


class _Scanner:
    def __init__(self, f, label: str, hashing: bool = True):
        self.f = f
        self.label = label
        self.text = ""
        self.base = 0  # file offset of text[0]
        self.pos = 0
        self.eof = False
        self.sha = hashlib.sha256()
        self.hashing = hashing

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.hashing:
            self.sha.update(chunk)
        self.base += self.pos
        self.text = self.text[self.pos :] + chunk.decode("latin-1")
        self.pos = 0
        return True

    def peek(self) -> str:
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def offset(self) -> int:
        return self.base + self.pos


def index_json_array(path: str, label: str | None = None, visit: Callable[[Any], None] | None = None) -> JsonIndex:
    """Scan the JSON array in `path` once and return where each record starts.

    Memory stays bounded (a 16 MB window plus one record); the whole file is also hashed on the way.
    `visit`, if given, is called with each decoded record, in order (file configs decide their schema so).
    Raises SourceError naming the file and record index for malformed JSON or a file that is not an array.
    """
    label = label or os.path.basename(path)
    starts, end, sha = _scan_array(path, label, visit)
    return JsonIndex(path, starts, end, sha)


def _scan_array(
    path: str,
    label: str,
    visit: Callable[[Any], None] | None = None,
    *,
    begin: int | None = None,
    until: int | None = None,
    hashing: bool = True,
) -> tuple[array, int, str]:
    """(record starts, size, sha256 or "") of the array in `path`; the last start is where the last record
    ends. From `begin` (a record's first byte: no "[" expected) when given. With `until`, the scan stops at
    the first record that starts at or after it, whose start is then the last one returned."""
    decoder = json.JSONDecoder()
    starts = array("q")
    with open(path, "rb") as f:
        scan = _Scanner(f, label, hashing)
        if begin is not None:
            f.seek(begin)
            scan.base = begin
        scan.more()
        if begin is None:
            if scan.text.startswith("\xef\xbb\xbf"):  # UTF-8 byte order mark, read as latin-1
                scan.pos = 3
            first = scan.peek()
            if first != "[":
                found = "an empty file" if not first else f"{first!r} at byte {scan.offset()}"
                hint = " (JSON Lines files are not LLaVA arrays)" if first == "{" else ""
                raise SourceError(label, f"expected a JSON array of records, found {found}{hint}")
            scan.pos += 1
        previous_id = None  # as decoded (latin-1); fixed only for an error message, not for every record
        scan_once = decoder.scan_once
        if begin is None and scan.peek() == "]":
            scan.pos += 1
        else:
            while True:
                scan.peek()
                start = scan.offset()
                if until is not None and start >= until:
                    starts.append(start)
                    return starts, -1, ""
                try:
                    # The common case, inline: a record that ends inside the window. Anything else (a record
                    # that runs past the window, bad JSON) goes to _decode_one, which reads on or names the error.
                    record, end = scan_once(scan.text, scan.pos)
                    if end >= len(scan.text):
                        raise StopIteration
                except (StopIteration, ValueError, RecursionError):
                    record, end = _decode_one(scan, decoder, len(starts), _latin1_fix(previous_id))
                starts.append(start)
                if visit is not None:
                    visit(record)
                previous_id = record.get("id") if isinstance(record, dict) else None
                if scan.text[end : end + 1] == ",":  # json.dump's "},": skip the whitespace scan
                    scan.pos = end + 1
                    continue
                scan.pos = end
                separator = scan.peek()
                if separator == ",":
                    scan.pos += 1
                    continue
                if separator == "]":
                    starts.append(scan.offset())
                    scan.pos += 1
                    break
                found = repr(separator) if separator else "the end of the file"
                raise SourceError(
                    label,
                    f"expected ',' or ']' after the record with id={_latin1_fix(previous_id)!r} "
                    f"(byte {scan.offset()}), "
                    f"found {found}; the file is truncated or malformed",
                    len(starts),
                )
        trailing = scan.peek()
        if trailing:
            raise SourceError(label, f"unexpected {trailing!r} after the closing ']' at byte {scan.offset()}")
    if not starts:
        starts.append(scan.offset())
    return starts, scan.base + len(scan.text), scan.sha.hexdigest() if hashing else ""


# A file at least this big is scanned in two halves at once by `index_json_array_split` (num_proc > 1).
SPLIT_SCAN_BYTES = 64 << 20
# A record boundary as json.dump writes one ("}, {" or "},\n{"), searched for near the middle of the file.
_BOUNDARY = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
_BOUNDARY_WINDOW = 4 << 20


def index_json_array_split(path: str, label: str | None = None) -> JsonIndex:
    """`index_json_array(path, label)`, the second half scanned by a forked child while this process scans
    the first and a thread hashes the file: the same index, in about half the time on two cores.

    The halves meet at a guessed record boundary (a "}, {" past the middle). The guess is only trusted when
    the first half's scan, which starts at the file's start, finds a record starting exactly there; when it
    does not (the bytes were inside a string), or when the second half fails (its messages could not name
    the record by its index), the file is scanned whole, serially, which gives the scan's own index or error.
    """
    label = label or os.path.basename(path)
    size = os.path.getsize(path)
    middle = _guess_boundary(path, size // 2) if size >= SPLIT_SCAN_BYTES else None
    if middle is None:
        return index_json_array(path, label)
    from huggingface_hub.utils.sha import sha_fileobj

    digest: list[str] = []

    def hash_file() -> None:
        with open(path, "rb") as f:
            digest.append(sha_fileobj(f, _CHUNK).hex())  # hashlib releases the GIL: it runs beside the scan

    with in_child(_scan_array, path, label, begin=middle, hashing=False) as second:
        if second is None:
            return index_json_array(path, label)
        hasher = threading.Thread(target=hash_file, daemon=True)
        hasher.start()
        head, _, _ = _scan_array(path, label, until=middle, hashing=False)
        if head[-1] != middle:
            return index_json_array(path, label)
        try:
            tail, end, _ = second.result()
        except SourceError:
            return index_json_array(path, label)
    hasher.join()
    starts = head[:-1]
    starts.extend(tail)
    return JsonIndex(path, starts, end, digest[0])


@contextlib.contextmanager
def in_child(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """`fn(*args, **kwargs)` running in a forked child process for the length of the block: yields its
    Future, or None where processes cannot fork (the caller then does the work itself). The block's end
    waits for the child."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor  # imported when a prepare runs, not with llava_hf

    if "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool.submit(fn, *args, **kwargs)


def _guess_boundary(path: str, at: int) -> int | None:
    """The offset of the "{" of the first "}, {" at or after byte `at` (within a few MiB), or None."""
    with open(path, "rb") as f:
        f.seek(at)
        match = _BOUNDARY.search(f.read(_BOUNDARY_WINDOW))
    return None if match is None else at + match.end() - 1


def _decode_one(scan: _Scanner, decoder: json.JSONDecoder, index: int, previous_id: Any) -> tuple[Any, int]:
    while True:
        try:
            record, end = decoder.raw_decode(scan.text, scan.pos)
        except RecursionError:
            raise SourceError(
                scan.label, f"record at byte {scan.offset()} is nested too deeply to parse", index
            ) from None
        except json.JSONDecodeError as e:
            # Most failures only mean the record continues past the window: read on, up to a bound.
            if len(scan.text) - scan.pos < _MAX_RECORD and scan.more():
                continue
            after = f" (the record after id={previous_id!r})" if previous_id is not None else ""
            # The window is full and the parser ran off its end (inside a string, or at the last bytes): the
            # record may well be valid JSON, only bigger than any LLaVA record; say that, not "malformed".
            ran_off = e.msg.startswith("Unterminated string") or e.pos >= len(scan.text) - 16
            if len(scan.text) - scan.pos >= _MAX_RECORD and ran_off:
                raise SourceError(
                    scan.label,
                    f"larger than the {_MAX_RECORD >> 20} MiB limit per record (it starts at byte {scan.offset()}"
                    f"{', the record after id=' + repr(previous_id) if previous_id is not None else ''}); "
                    "no LLaVA record comes near it: remove or split it",
                    index,
                ) from None
            raise SourceError(
                scan.label, f"malformed JSON at byte {scan.base + e.pos}{after}: {e.msg}", index
            ) from None
        except ValueError as e:  # well-formed, but not a Python value: an integer past sys.get_int_max_str_digits()
            after = f" (the record after id={previous_id!r})" if previous_id is not None else ""
            raise SourceError(
                scan.label, f"record at byte {scan.offset()}{after} cannot be decoded: {e}", index
            ) from None
        if end < len(scan.text) or not scan.more():
            return record, end


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of a config; `chat`/`metadata` are the byte offsets of its batches."""

    index: int
    start: int
    stop: int
    chat: tuple[int, ...]
    metadata: tuple[int, ...] | None = None


def plan_shards(chat: JsonIndex, metadata: JsonIndex | None = None) -> list[Shard]:
    """Cut the records into contiguous, ordered shards of whole batches of `BATCH_ROWS` rows."""
    n = chat.num_records
    if metadata is not None and metadata.num_records != n:
        raise ValueError("chat and metadata files differ in length; check with first_mismatch() first")
    num_shards = min(n, max(MIN_SHARDS, -(-n // SHARD_ROWS)))
    shards = []
    for i in range(num_shards):
        start, stop = i * n // num_shards, (i + 1) * n // num_shards
        bounds = [*range(start, stop, BATCH_ROWS), stop]
        shards.append(
            Shard(
                index=i,
                start=start,
                stop=stop,
                chat=tuple(chat.starts[b] for b in bounds),
                metadata=tuple(metadata.starts[b] for b in bounds) if metadata is not None else None,
            )
        )
    return shards


def read_batches(path: str, offsets: tuple[int, ...], start: int, stop: int, label: str) -> Iterator[list[Any]]:
    """The records of rows [start, stop) of `path`, one parsed list per batch between consecutive `offsets`."""
    with open(path, "rb") as f:
        for k, (begin, end) in enumerate(zip(offsets, offsets[1:])):
            first = start + k * BATCH_ROWS
            last = min(first + BATCH_ROWS, stop) - 1
            f.seek(begin)
            data = f.read(end - begin).rstrip(b" \t\r\n,")
            try:
                records = json.loads(b"[" + data + b"]")
            except (ValueError, RecursionError) as e:  # bad JSON, bytes not UTF-8, an integer too long to convert
                raise _undecodable(data, begin, first, label) or SourceError(
                    label, f"records {first} to {last} cannot be decoded: {e}"
                ) from None
            if len(records) != last - first + 1:
                raise SourceError(label, f"records {first} to {last}: the file changed while it was being read")
            yield records


def _undecodable(data: bytes, begin: int, first: int, label: str) -> SourceError | None:
    """The error naming the record of a batch that does not decode (bytes that are not UTF-8), found by
    decoding the batch's records one at a time; None if each decodes alone."""
    text = data.decode("latin-1")  # one char per byte: positions are byte offsets
    decoder = json.JSONDecoder()
    pos = 0
    for k in itertools.count():
        pos = _SEPARATORS.match(text, pos).end()
        if pos >= len(text):
            return None
        try:
            record, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            return None
        except ValueError as e:  # an integer too long to convert: this record
            return SourceError(label, f"cannot be decoded at byte {begin + pos}: {e}", first + k)
        rid = _latin1_fix(record.get("id")) if isinstance(record, dict) else None
        try:
            json.loads(data[pos:end])
        except UnicodeDecodeError as e:
            at = begin + pos + e.start
            return SourceError(label, f"byte {at} is not UTF-8 ({data[pos + e.start : pos + e.end]!r})", first + k, rid)
        except (ValueError, RecursionError) as e:
            return SourceError(label, f"cannot be decoded at byte {begin + pos}: {e}", first + k, rid)
        pos = end


def first_mismatch(chat: JsonIndex, metadata: JsonIndex, chat_label: str, metadata_label: str) -> SourceError:
    """The error for chat and metadata files that are not parallel, naming the first row whose ids differ."""
    n = min(chat.num_records, metadata.num_records)
    bounds = (*range(0, n, BATCH_ROWS), n)
    chat_offsets = tuple(chat.starts[b] for b in bounds)
    meta_offsets = tuple(metadata.starts[b] for b in bounds)
    row = 0
    batches = zip(
        read_batches(chat.path, chat_offsets, 0, n, chat_label),
        read_batches(metadata.path, meta_offsets, 0, n, metadata_label),
    )
    for chat_batch, meta_batch in batches:
        for chat_record, meta_record in zip(chat_batch, meta_batch):
            chat_id = chat_record.get("id") if isinstance(chat_record, dict) else None
            meta_id = meta_record.get("id") if isinstance(meta_record, dict) else None
            if str(chat_id) != str(meta_id):
                return SourceError(
                    chat_label,
                    f"{metadata_label} record {row} has id {meta_id!r}; the chat and metadata files must be "
                    f"parallel (same order, same ids), and they have {chat.num_records:,} and "
                    f"{metadata.num_records:,} records",
                    row,
                    chat_id,
                    reason="not_parallel",
                )
            row += 1
    return SourceError(
        chat_label,
        f"has {chat.num_records:,} records but {metadata_label} has {metadata.num_records:,}; the first "
        f"{n:,} rows match, record {n} is the first without a partner",
        n if chat.num_records > n else None,  # a record of the chat file, when it is the longer one
        reason="not_parallel",
    )
