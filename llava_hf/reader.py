"""Open prepared Arrow files lazily: a cold open reads headers only, and read advice follows the access.

`datasets` memory-maps an Arrow file with `pyarrow.memory_map`, and pyarrow's memory-mapped reader
advises the kernel to read every record batch it walks over (MADV_WILLNEED): opening a 27 GB prepared
file reads 27 GB, on every node. Here the file is mapped with Python's `mmap`, advised MADV_RANDOM (so a
page fault reads that page and no more), and handed to pyarrow as a plain buffer, so that opening only
touches the few pages holding the record batch headers. Reads are then prefetched precisely:

- random access (`ds[i]`, `ds[[i, j, ...]]`, DataLoader batches): the byte ranges of the requested rows'
  values are advised MADV_WILLNEED before they are decoded, so each row costs about its own bytes, read
  in one request instead of one page fault per 4 KiB;
- sequential passes (`for row in ds`, `ds.iter`, `to_iterable_dataset`): the next `LOOKAHEAD_BYTES` of
  the file are advised MADV_WILLNEED ahead of the reader, as the kernel's own readahead would.

It applies to the files of llava_hf caches (a folder holding llava_hf's prepare report, or a mix written
under "llava_hf_mixes"), in every process: a pickled table carries a small marker that imports llava_hf
when it is unpickled (spawned DataLoader workers), and forked workers inherit the patched functions.
`LLAVA_HF_LAZY=0` (or `load_dataset(..., lazy=False)`) keeps datasets' own behaviour. The hooks replace
`datasets` internals, so they are installed only on the tested datasets range (see hook.TESTED_DATASETS).
"""

from __future__ import annotations

import array
import bisect
import ctypes
import ctypes.util
import functools
import gc
import itertools
import mmap
import os
import resource
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .pagecache import mincore_tells, pages_in_memory

LAZY_ENV = "LLAVA_HF_LAZY"
REPORT_FILENAME = "llava_hf_report.json"  # the builder's prepare report marks a llava_hf cache folder
MIX_FOLDER = "llava_hf_mixes"
# How far ahead of a sequential reader values are requested: enough to keep a disk or NFS busy while the
# current batches are decoded, small next to memory.
LOOKAHEAD_BYTES = 64 << 20
_PAGE = mmap.PAGESIZE
_ADVICE_PIECE = 128 << 10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_madvise = getattr(_libc, "madvise", None)
if _madvise is not None:
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _madvise.restype = ctypes.c_int
_mincore = getattr(_libc, "mincore", None)  # probes need it (pagecache.pages_in_memory)


GC_FREEZE_ENV = "LLAVA_HF_GC_FREEZE"
_fork_hook_registered = False


def freeze_gc_across_fork() -> bool:
    """Keep a forked worker's garbage collector off the objects it inherited (LLAVA_HF_GC_FREEZE=0: off).

    A DataLoader worker forked from a training process shares the parent's pages until it writes them, and
    its first `gc.collect()` writes the header of every object it inherits (~40 MiB of modules alone),
    making them private to each worker. `gc.freeze()` just before the fork, undone in the parent right
    after, leaves the inherited objects out of the child's collections, as the gc documentation advises
    for pre-fork servers: a worker's dirty memory after a gc is then its own rows, not a copy of the
    parent's objects (bench.py --scale, worker memory). The parent's collector is unchanged."""
    global _fork_hook_registered
    if _fork_hook_registered or os.environ.get(GC_FREEZE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return _fork_hook_registered
    os.register_at_fork(before=gc.freeze, after_in_parent=gc.unfreeze)
    _fork_hook_registered = True
    return True


def default_lazy() -> bool:
    """Whether llava_hf files open lazily when nothing else was said: LLAVA_HF_LAZY (default on)."""
    return os.environ.get(LAZY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# --- which files open lazily ---------------------------------------------------------------------------

_policy: dict[str, bool] = {}  # folder -> lazy, as set by load_dataset(lazy=...) or carried by a pickle
_policy_lock = threading.Lock()


def set_policy(folder: str, lazy: bool | None) -> None:
    """Files in `folder` open lazily (True), as datasets opens them (False), or by default (None)."""
    with _policy_lock:
        if lazy is None:
            _policy.pop(os.path.abspath(folder), None)
        else:
            _policy[os.path.abspath(folder)] = lazy


def policy(path: str) -> bool | None:
    """True/False for a file of a llava_hf cache (lazy or not), None for any other file."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder in _policy:
        return _policy[folder]
    if os.path.exists(os.path.join(folder, REPORT_FILENAME)) or MIX_FOLDER in folder.split(os.sep):
        return default_lazy()
    return None


class _Policy:
    """Travels inside a pickled table: unpickling it imports llava_hf and restores the folder's policy."""

    def __init__(self, folder: str, lazy: bool):
        self.folder, self.lazy = folder, lazy

    def __reduce__(self):
        return (_restore_policy, (self.folder, self.lazy))


def _restore_policy(folder: str, lazy: bool) -> _Policy:
    import llava_hf  # noqa: F401  (installs the hooks in a freshly spawned process)

    set_policy(folder, lazy)
    return _Policy(folder, lazy)


# --- lazily mapped files ---------------------------------------------------------------------------------

# The lazy mappings: (sorted start addresses, start -> (end, registration)). Replaced whole under the lock,
# never changed in place, so a reader takes one consistent snapshot without it. A registration number, not
# the address, says whose entry it is: CPython unmaps a file before its finalizer runs, so another thread
# can map a new file at the same address in between, and the old finalizer must not remove the new entry.
_mappings: tuple[list[int], dict[int, tuple[int, int]]] = ([], {})
_registrations = itertools.count(1)
_blind: set[int] = set()  # mappings of files whose page cache mincore does not show us (pagecache.mincore_tells)
_mappings_lock = threading.Lock()


def _register(start: int, size: int, blind: bool = False) -> int:
    """Note the mapping [start, start + size); returns its registration, which `_unregister` takes."""
    global _mappings
    with _mappings_lock:
        starts, ends = _mappings
        registration = next(_registrations)
        if start not in ends:
            starts = sorted([*starts, start])
        _mappings = (starts, {**ends, start: (start + size, registration)})
        if blind:
            _blind.add(start)
        else:
            _blind.discard(start)
        # Layouts held under this address were a mapping's that is gone (its finalizer may not have run yet).
        _layouts.pop(start, None)
        _plans.pop(start, None)
    return registration


def _unregister(start: int, registration: int) -> None:
    global _mappings
    with _mappings_lock:
        starts, ends = _mappings
        if ends.get(start, (0, 0))[1] != registration:
            return  # the address is a newer mapping's now
        _mappings = ([s for s in starts if s != start], {k: v for k, v in ends.items() if k != start})
        _blind.discard(start)
        # The batch layouts of a mapping are addresses in it: a later mapping may reuse them.
        _layouts.pop(start, None)
        _plans.pop(start, None)


def _mapping_of(address: int) -> tuple[int, int] | None:
    starts, ends = _mappings
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0:
        start = starts[i]
        end = ends[start][0]
        if address < end:
            return start, end
    return None


def open_lazy(path: str) -> pa.Table:
    """The Arrow stream file at `path` as a table, reading only its record batch headers."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ValueError(f"{path} is empty, not an Arrow stream")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        blind = not mincore_tells(f.fileno())  # another user's cache, read-only: probes cannot tell
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_RANDOM)
    buffer = pa.py_buffer(mapped)  # keeps `mapped` alive as long as any slice of the table lives
    registration = _register(buffer.address, size, blind)
    global _opens
    _opens += 1  # a freshly opened file is likely cold: every thread advises again until it sees it warm
    weakref.finalize(mapped, _unregister, buffer.address, registration)
    try:
        table = pa.ipc.open_stream(buffer).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        # pyarrow names no file ("Expected to be able to read N bytes for message body, got M")
        raise OSError(
            f"{path} is damaged or incomplete ({e}); prepare it again with download_mode='force_redownload'"
        ) from e
    _prime_row_reader(table)
    return table


def _prime_row_reader(table: pa.Table) -> None:
    # The row reader of the file's schema, generated here, where it is opened (no page is read): forked
    # DataLoader workers inherit it instead of each compiling its own, which wrote into pages inherited
    # from the parent (4 workers reading 5,000 random rows of 558K by ds[i]: 10.5-11.7 MiB of private dirty
    # memory each with it, 12.0-12.3 without, in alternating runs).
    if not all(_plain(kind) for kind in table.schema.types):
        return
    first = next((batch for batch in table.to_reader() if batch.num_rows), None)
    layout = _row_layout(first, 0, {}) if first is not None else None
    if layout is not None:
        _row_reader(layout[0], tuple(table.schema.names))


def _merged(spans: list[tuple[int, int]], gap: int = 64 << 10) -> list[tuple[int, int]]:
    # Neighbouring values (a row's columns lie close together in its record batch) become one request.
    merged: list[list[int]] = []
    for address, length in sorted(spans):
        if length <= 0:
            continue
        if merged and address <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], address + length)
        else:
            merged.append([address, address + length])
    return [(start, end - start) for start, end in merged]


def _advise(spans: list[tuple[int, int]]) -> None:
    """MADV_WILLNEED on the pages of `spans` (address, length) that lie in lazy mappings."""
    if _madvise is None or not _mappings[0]:
        return
    for address, length in _merged(spans):
        mapping = _mapping_of(address)
        if mapping is None or length <= 0:
            continue
        start = max(mapping[0], address - (address - mapping[0]) % _PAGE)
        end = min(mapping[1], address + length)
        # The kernel caps one WILLNEED request at the device's readahead size (128 KiB by default) and
        # silently drops the rest: ask in pieces no larger than that.
        for piece in range(start, end, _ADVICE_PIECE):
            _madvise(piece, min(_ADVICE_PIECE, end - piece), mmap.MADV_WILLNEED)


def value_spans(array: pa.Array, out: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """(address, length) of the memory holding the values of `array` (a slice included), children too."""
    out = [] if out is None else out
    n = len(array)
    if n == 0:
        return out
    kind = array.type
    buffers = array.buffers()
    if buffers[0] is not None:  # validity bitmap
        out.append((buffers[0].address + array.offset // 8, n // 8 + 2))
    if (
        pa.types.is_binary(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_large_string(kind)
    ):
        dtype = np.int64 if pa.types.is_large_binary(kind) or pa.types.is_large_string(kind) else np.int32
        offsets = np.frombuffer(buffers[1], dtype=dtype, count=array.offset + n + 1)[array.offset :]
        out.append((buffers[1].address + array.offset * dtype().itemsize, (n + 1) * dtype().itemsize))
        if buffers[2] is not None:
            first, last = int(offsets[0]), int(offsets[-1])
            out.append((buffers[2].address + first, last - first))
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        width = 8 if pa.types.is_large_list(kind) else 4
        out.append((buffers[1].address + array.offset * width, (n + 1) * width))
        value_spans(array.flatten(), out)
    elif pa.types.is_fixed_size_list(kind):
        value_spans(array.flatten(), out)
    elif pa.types.is_struct(kind):
        for child in array.flatten():
            value_spans(child, out)
    elif len(buffers) > 1 and buffers[1] is not None and _fixed_width(kind):
        width = kind.bit_width
        out.append((buffers[1].address + array.offset * width // 8, (n * width + 7) // 8 + 1))
    # Anything else (maps, views, unions...) is not asked for: its pages fault in as they are read.
    return out


def _fixed_width(kind: pa.DataType) -> bool:
    try:
        return bool(kind.bit_width)
    except ValueError:  # "Non-fixed width type"
        return False


# Buffers up to this size (a record batch's ids, captions, conversations...) are requested whole, which
# costs one merged request; bigger ones (the image bytes) only for the rows asked for.
SMALL_BUFFER = 256 << 10


def row_spans(table: pa.Table) -> list[tuple[int, int]]:
    """The memory to request for the rows of `table` (a few rows of a lazily mapped table), cheaply: the
    values of the rows in big buffers, and small buffers whole. Requests for pages already cached cost
    little, and pages evicted since are read again in one request, not one page fault at a time."""
    spans: list[tuple[int, int]] = []
    for column in table.columns:
        for chunk in column.chunks:
            buffers = [b for b in chunk.buffers() if b is not None]
            if not buffers:
                continue
            if any(b.size > SMALL_BUFFER for b in buffers):
                value_spans(chunk, spans)
                continue
            spans.extend((b.address, b.size) for b in buffers)
    return spans


# --- row advice from cached batch layouts -------------------------------------------------------------------
#
# A row query returns one-row (or few-row) slices of the file's record batches. Walking every column's
# buffers in Python for each query cost ~100 us a row, more than datasets' own query and formatting; a
# batch's layout is the same for every row, so it is worked out once per record batch (on its first
# query) and a row then costs a dictionary lookup, one read of its offsets per big value buffer, and a
# few madvise calls.


class _Layout:
    """Where one record batch's values lie, compactly (a worker touches hundreds of batches): `template`
    holds the program nodes of the batch's bigger columns, whose spans are worked out for the queried rows
    only, with each buffer address given as an index into `at` (at[0] is 0: no buffer). Templates are
    shared by the batches of one schema. From `at[pieces]` on, `at` holds (address, length) pairs: the
    page-aligned pieces requested on every query of the batch (columns of at most WHOLE_COLUMN bytes:
    ids, short text, offsets of null columns)."""

    __slots__ = ("template", "at", "pieces")

    def __init__(self, template: tuple, at: array.array, pieces: int):
        self.template, self.at, self.pieces = template, at, pieces

    @property
    def whole(self) -> list[tuple[int, int]]:
        at, k = self.at, self.pieces
        return list(zip(at[k::2], at[k + 1 :: 2]))

    @property
    def programs(self) -> list[tuple]:
        """The template's nodes with their addresses filled in."""

        def filled(node):
            if node[0] == _STRUCT:
                return (_STRUCT, self.at[node[1]], tuple(filled(child) for child in node[2]))
            if node[0] == _LIST:
                return (_LIST, self.at[node[1]], self.at[node[2]], node[3], filled(node[4]))
            if node[0] == _BIN:
                return (_BIN, self.at[node[1]], self.at[node[2]], node[3], self.at[node[4]])
            if node[0] == _FIXED:
                return (_FIXED, self.at[node[1]], self.at[node[2]], node[3])
            if node[0] == _BOOL:
                return (_BOOL, self.at[node[1]], self.at[node[2]])
            if node[0] == _BULK:
                return (_BULK, 0, self.at[node[2]], node[3], self.at[node[4]])
            return node

        return [filled(node) for node in self.template]


# A column of a record batch this small is requested whole: a few pages in one request cost less than
# finding the row's values in it (and its validity, offsets and values sit side by side in the file).
WHOLE_COLUMN = 16 << 10
_FALLBACK = _Layout((), array.array("q", [0]), 1)  # a layout this module does not know: walk the row's buffers
# mapping start -> (batch key, view) -> layout (see _view)
_layouts: dict[int, dict[tuple, _Layout]] = {}
_plans: dict[int, dict[int, dict]] = {}  # mapping start -> view (_view) -> the plans of its batches (_plan)
_MISSING = object()
_templates: dict[tuple, tuple] = {}  # one copy of each template
# Offsets are read in place (the queried row's slice keeps its mapping alive meanwhile).
_PAIR = {4: ctypes.c_int32 * 2, 8: ctypes.c_int64 * 2}
_ONE = {4: ctypes.c_int32, 8: ctypes.c_int64}
_BINARY = (pa.types.is_binary, pa.types.is_string, pa.types.is_large_binary, pa.types.is_large_string)
# Program nodes (tuples, for speed): the validity bitmap's slot in `at` (0 when none) comes second; a
# binary node ends with whether it holds text, a struct node with its field names (for reading rows).
_BIN, _STRUCT, _LIST, _FIXED, _BOOL, _NULL = range(6)
# Image bytes of a batch whose text was asked for whole (TEXT_FIRST): (_BULK, 0, offsets, width, values);
# only the values are asked for, and for one row only when they lie on two pages or more: a value on one
# page faults in as fast, one on two pages in two reads one after the other (a 2.6 KB value at random in
# a cold file: 54.7-63.3 us faulted, 36.7-44.2 asked for first; scripts/bench_rows.py --faults).
_BULK = 6


def _slot(buffer, at: list[int]) -> int:
    """The index in `at` of the buffer's address, appended; 0 for no buffer. Empty buffers (the values of
    an all-null column) may point anywhere, even outside the file: they count as none."""
    if buffer is None or buffer.size == 0:
        return 0
    at.append(buffer.address)
    return len(at) - 1


def _program(kind: pa.DataType, buffers: list, pos: int, at: list[int]) -> tuple[tuple, int]:
    """The program node of an array of type `kind` whose buffers start at `pos` of `Array.buffers()`, its
    addresses appended to `at`, and the position after them. Raises TypeError for a type this module has
    no layout for."""
    if any(is_kind(kind) for is_kind in _BINARY):
        large = pa.types.is_large_binary(kind) or pa.types.is_large_string(kind)
        validity, offsets, data = buffers[pos : pos + 3]
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        node = (_BIN, _slot(validity, at), _slot(offsets, at), 8 if large else 4, _slot(data, at), text)
        return node, pos + 3
    if pa.types.is_struct(kind):
        validity, pos = _slot(buffers[pos], at), pos + 1
        children = []
        for child in kind:
            node, pos = _program(child.type, buffers, pos, at)
            children.append(node)
        return (_STRUCT, validity, tuple(children), tuple(field.name for field in kind)), pos
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        validity, offsets = _slot(buffers[pos], at), _slot(buffers[pos + 1], at)
        child, end = _program(kind.value_type, buffers, pos + 2, at)
        width = 8 if pa.types.is_large_list(kind) else 4
        return (_LIST, validity, offsets, width, child), end
    if pa.types.is_null(kind):
        return (_NULL, 0), pos + 1
    if pa.types.is_boolean(kind):
        return (_BOOL, _slot(buffers[pos], at), _slot(buffers[pos + 1], at)), pos + 2
    try:
        bits = kind.bit_width
    except ValueError:  # no fixed width (fixed-size lists, maps, views, extension types)
        raise TypeError(f"no layout for {kind}") from None
    if bits and bits % 8 == 0 and not pa.types.is_dictionary(kind):
        node = (_FIXED, _slot(buffers[pos], at), _slot(buffers[pos + 1], at), bits // 8)
        return node, pos + 2
    raise TypeError(f"no layout for {kind}")


def _bounds(offsets: int, width: int, r0: int, r1: int) -> tuple[int, int]:
    if r1 == r0 + 1:
        pair = _PAIR[width].from_address(offsets + width * r0)
        return pair[0], pair[1]
    one = _ONE[width]
    return one.from_address(offsets + width * r0).value, one.from_address(offsets + width * r1).value


def _run(node: tuple, at: array.array, r0: int, r1: int, out: list[tuple[int, int]], gathered: bool = False) -> None:
    """Append the spans of rows [r0, r1) of the array `node` describes (its addresses in `at`); the image
    bytes of a _BULK node when they lie on two pages or more, or are `gathered` (see advise_rows)."""
    tag, validity = node[0], at[node[1]]
    if validity:
        out.append((validity + (r0 >> 3), ((r1 - 1) >> 3) - (r0 >> 3) + 1))
    if tag == _BIN:
        offsets, width, data = at[node[2]], node[3], at[node[4]]
        if offsets:
            lo, hi = _bounds(offsets, width, r0, r1)
            out.append((offsets + width * r0, width * (r1 - r0 + 1)))
            if data and hi > lo:
                out.append((data + lo, hi - lo))
    elif tag == _STRUCT:
        for child in node[2]:
            _run(child, at, r0, r1, out, gathered)
    elif tag == _LIST:
        offsets, width = at[node[2]], node[3]
        if offsets:
            c0, c1 = _bounds(offsets, width, r0, r1)
            out.append((offsets + width * r0, width * (r1 - r0 + 1)))
            if c1 > c0:
                _run(node[4], at, c0, c1, out, gathered)
    elif tag == _FIXED:
        values = at[node[2]]
        if values:
            out.append((values + r0 * node[3], (r1 - r0) * node[3]))
    elif tag == _BOOL:
        values = at[node[2]]
        if values:
            out.append((values + (r0 >> 3), ((r1 - 1) >> 3) - (r0 >> 3) + 1))
    elif tag == _BULK:
        offsets, width, data = at[node[2]], node[3], at[node[4]]
        lo, hi = _bounds(offsets, width, r0, r1)
        if hi > lo and (gathered or (data + lo) // _PAGE != (data + hi - 1) // _PAGE):
            out.append((data + lo, hi - lo))


def _binary_data(node: tuple, at: list[int], out: list[int]) -> list[int]:
    """The addresses (in `at`) of the value buffers of the bytes (not text) arrays under `node`."""
    if node[0] == _BIN and not node[5] and node[4]:
        out.append(at[node[4]])
    elif node[0] == _STRUCT:
        for child in node[2]:
            _binary_data(child, at, out)
    elif node[0] == _LIST:
        _binary_data(node[4], at, out)
    return out


def _bulk_nodes(node: tuple) -> list[tuple]:
    """What a query asks for of a column holding image bytes once its batch's text is in memory: the
    bytes values of a binary column or struct field alone (_BULK); any other column (a list of images)
    as it is."""
    if node[0] == _BIN and not node[5]:
        return [(_BULK, 0, node[2], node[3], node[4])] if node[2] and node[4] else []
    if node[0] == _STRUCT and all(child[0] in (_BIN, _NULL) for child in node[2]):
        return [bulk for child in node[2] if child[0] == _BIN and not child[5] for bulk in _bulk_nodes(child)]
    return [node]


def _layout(
    result: pa.Table, k: int, mapping: tuple[int, int], plans: dict | None = None
) -> tuple[_Layout, list[tuple[int, int]]]:
    """The layout of record batch k of `result`, and the spans to request once, now that the batch is first
    queried: its text, when the batch is mostly image bytes (see TEXT_FIRST). `plans` keeps what is the
    same for the batches of one file with these column types (see _plan), keyed by which buffers are
    present and which columns are small."""
    start, end = mapping
    chunks = [column.chunk(k) for column in result.columns]
    first = chunks[0].offset
    per_column = [chunk.buffers() for chunk in chunks]
    sizes = [b.size if b is not None else 0 for buffers in per_column for b in buffers]
    addresses = [b.address if b is not None and b.size else 0 for buffers in per_column for b in buffers]
    # Rows are found by the slice offset: it must be the same in every column, over unsliced children, as
    # in record batches read from an Arrow file.
    if any(chunk.offset != first for chunk in chunks):
        return _FALLBACK, []
    if not all(start <= a and a + n <= end for a, n in zip(addresses, sizes) if n):
        return _FALLBACK, []
    small, i = [], 0
    for buffers in per_column:
        small.append(sum(sizes[i : i + len(buffers)]) <= WHOLE_COLUMN)
        i += len(buffers)
    plans = {} if plans is None else plans
    key = (tuple(n > 0 for n in sizes), tuple(small))
    plan = plans.get(key, _MISSING)
    if plan is _MISSING:
        plan = plans[key] = _plan(chunks, per_column, small, addresses)
    if plan is None:
        return _FALLBACK, []
    programs, imaging, slots, small_buffers, image_buffers, other_buffers = plan
    at = [0, *(addresses[i] for i in slots)]
    whole = [(addresses[i], sizes[i]) for i in small_buffers]
    text = whole + [(addresses[i], sizes[i]) for i in other_buffers]  # every buffer but image bytes
    bulk = 0  # bytes of image (binary) values
    for i in image_buffers:
        if sizes[i] > WHOLE_COLUMN:
            bulk += sizes[i]
        else:
            text.append((addresses[i], sizes[i]))
    # Text buffers a query asks for its rows' part of, one request each.
    scattered = sum(sizes[i] > WHOLE_COLUMN for i in other_buffers)
    once: list[tuple[int, int]] = []
    text = _merged(text)
    size = sum(length for _, length in text)
    if bulk and scattered >= 2 and size <= TEXT_FIRST and size * 4 <= bulk:
        # The batch is mostly image bytes, and a query would ask for its rows' text in several scattered
        # requests: the text is asked for now, whole (one or two requests, a small part of the batch), and
        # each query then asks for its rows' image bytes alone.
        once, whole, programs = text, [], imaging
    pieces = len(at)
    for address, length in _merged(whole):
        lo = max(start, address - (address - start) % _PAGE)
        hi = min(end, address + length)
        for piece in range(lo, hi, _ADVICE_PIECE):
            at += (piece, min(_ADVICE_PIECE, hi - piece))
    return _Layout(programs, array.array("q", at), pieces), once


def _plan(chunks: list, per_column: list[list], small: list[bool], addresses: list[int]) -> tuple | None:
    """What a batch's layout takes from its schema and which of its buffers are present, the same for every
    batch of a file that has the same: (program nodes of its bigger columns, the nodes asked for once its
    text is in memory (TEXT_FIRST), the positions in the batch's buffer list of the addresses that fill
    `at`, of the small columns' buffers, of the bigger columns' image bytes and of their other buffers).
    None for a batch this module has no layout for."""
    programs, imaging, slots, small_buffers, image_buffers, other_buffers = [], [], [], [], [], []
    at = [0]
    i = 0
    try:
        for chunk, buffers, little in zip(chunks, per_column, small):
            present = [p for p in range(i, i + len(buffers)) if addresses[p]]
            if little:
                _, used = _program(chunk.type, buffers, 0, [])
                small_buffers += present
            else:
                node, used = _program(chunk.type, buffers, 0, at)
                slots += present  # _program takes a slot for each present buffer, in order
                programs.append(node)
                images = set(_binary_data(node, at, []))
                for p in present:
                    (image_buffers if addresses[p] in images else other_buffers).append(p)
                if images:
                    imaging.extend(_bulk_nodes(node))
            if used != len(buffers):
                return None
            i += len(buffers)
    except TypeError:
        return None
    if [addresses[p] for p in slots] != at[1:]:
        return None
    return (
        _templates.setdefault(tuple(programs), tuple(programs)),
        _templates.setdefault(tuple(imaging), tuple(imaging)),
        slots,
        small_buffers,
        image_buffers,
        other_buffers,
    )


# A batch whose text (every buffer but image bytes) is at most this, and at most a quarter of its image
# bytes, with two or more text buffers over WHOLE_COLUMN (a query would ask for a part of each), has its
# text requested whole on its first query (per process): blip_558k's ~340 KB a batch of ~1,000 rows,
# where a row's text lies in ~5 places. A request this size costs a few small ones on a local disk and
# about one on NFS or Lustre; every later row of the batch then costs the read of its image bytes only.
TEXT_FIRST = 512 << 10


def advise_rows(result: pa.Table, probe: bool = False) -> bool:
    """MADV_WILLNEED on the memory of the rows of `result` (a row query's slices of lazily mapped record
    batches): each batch's small columns whole, and the queried rows' values in its bigger ones. With
    `probe`, only the requests whose pages are not all in memory (mincore) are made. Returns whether every
    page was in memory (False when not probing or when madvise is missing; True for a probe with nothing
    to ask for, no lazily mapped row included, so that a thread reading other files backs off too)."""
    if _madvise is None or not result.num_columns or not _mappings[0]:
        return False
    column = result.column(0)
    spans: list[tuple[int, int]] = []
    last = None
    row = 0
    view = _view(result)
    # A row's image bytes on one page fault in as fast as they are asked for (and those on two pages are
    # asked for: one request, not two faults one after the other); the rows of a gather (a DataLoader
    # batch) are all asked for, to be read at once, and a probe looks at every row's pages.
    gathered = probe or result.num_rows > 1
    # First every batch's layout, and what its first query asks for once (its text), asked for at once:
    # the rows' offsets read next lie in it, and are then read in parallel rather than faulted one by one.
    once: list[tuple[int, int]] = []
    layouts = []
    for k in range(column.num_chunks):
        chunk = column.chunk(k)
        if len(chunk):
            layouts.append((chunk, _batch_layout(result, k, chunk, once, view)))
    if not any(layout is not None for _, layout in layouts):
        return _request([], probe)
    resident = _request(once, probe) if once else True
    for chunk, layout in layouts:
        n = len(chunk)
        if layout is _FALLBACK:
            spans.extend(row_spans(result.slice(row, n)))
        elif layout is not None:
            if layout is not last:  # gathered rows of one batch: once
                spans.extend(layout.whole)
                last = layout
            first, at = chunk.offset, layout.at
            for program in layout.template:
                _run(program, at, first, first + n, spans, gathered)
        row += n
    return _request(spans, probe) and resident


def _view(table) -> int:
    """A small number for the column names and types of `table` (a pyarrow or datasets table), the same
    for every table that has the same: layouts and plans are kept per view (a select_columns view, or a
    cast of one column, has its own), and hashing the types once a query costs less than in every key."""
    return _VIEWS.setdefault((tuple(table.column_names), tuple(table.schema.types)), next(_view_numbers))


_VIEWS: dict[tuple, int] = {}
_view_numbers = itertools.count()


def _batch_layout(result: pa.Table, k: int, chunk: pa.Array, once: list[tuple[int, int]], view: int) -> _Layout | None:
    """The layout of record batch k of `result` (`chunk` its first column's, `view` its _view), kept per
    mapping, batch and view; on the batch's first query, what is to be asked for once is added to `once`.
    None when the batch is not lazily mapped (or its first column has no buffer to tell)."""
    key = next((b.address for b in chunk.buffers() if b is not None and b.size), None)
    mapping = _mapping_of(key) if key is not None else None
    if mapping is None:
        return None
    known = _layouts.get(mapping[0])
    if known is None:
        known = _layouts[mapping[0]] = {}
    layout = known.get((key, view))
    if layout is None:
        plans = _plans.setdefault(mapping[0], {}).setdefault(view, {})  # program nodes: per column types
        layout, first = _layout(result, k, mapping, plans)
        known[(key, view)] = layout
        once.extend(first)
    return layout


def _request(spans: list[tuple[int, int]], probe: bool) -> bool:
    """MADV_WILLNEED on `spans`; with `probe`, only on the pages mincore finds missing. Whether all were
    in memory (False when not probing)."""
    resident = probe and _mincore is not None
    # Spans a page or less apart are asked for together: one request, at most a page more.
    for address, length in _merged(spans, gap=_PAGE):
        start, end = address - address % _PAGE, address + length  # mappings start on a page boundary
        if probe and _mincore is not None and _in_memory(start, end):
            continue
        resident = False
        # The kernel caps one WILLNEED request at the device's readahead size: ask in pieces.
        for piece in range(start, end, _ADVICE_PIECE):
            _madvise(piece, min(_ADVICE_PIECE, end - piece), mmap.MADV_WILLNEED)
    return resident


def _kept_advice(index: _RowIndex, k: int, j: int, once: list, spans: list) -> tuple:
    """The read advice kept for record batch k of a row index's table: (layout, where the batch's rows
    start), or () for none (not lazily mapped: a concatenation's other part, as datasets gives). On the
    batch's first query it is worked out from a one-row table of row j, and what that query asks for once
    (its text) is added to `once`; a batch whose layout is not kept adds row j's spans to `spans`."""
    advice = index.advice[k]
    if advice is None:
        one = pa.Table.from_batches([index.batches[k].slice(j, 1)])
        chunk = one.column(0).chunk(0)
        layout = _batch_layout(one, 0, chunk, once, index.view)
        if layout is _FALLBACK:  # not kept: such a batch makes its one-row table each time
            spans.extend(row_spans(one))
            return ()
        advice = index.advice[k] = () if layout is None else (layout, chunk.offset - j)
    return advice


def advise_row(index: _RowIndex, k: int, j: int, probe: bool) -> bool:
    """advise_rows for row j of record batch k of a row index's table, from the batch's layout once it is
    known: no one-row table is made, and the layout is not looked up again (warm rows with the advice on
    took ~53 us each so, ~19-29 us this way)."""
    if _madvise is None:
        return False
    once: list[tuple[int, int]] = []
    spans: list[tuple[int, int]] = []
    advice = _kept_advice(index, k, j, once, spans)
    # The batch's text, asked for before the row's offsets in it are read (see advise_rows).
    resident = _request(once, probe) if once else True
    if advice:
        layout, first = advice
        at = layout.at
        spans.extend(layout.whole)
        for program in layout.template:
            _run(program, at, first + j, first + j + 1, spans, probe)  # a probe looks at every page of the row
    return _request(spans, probe) and resident


def advise_gather(index: _RowIndex, places: list[tuple[int, int]], probe: bool) -> bool:
    """advise_rows for the rows (record batch k, row j) of a gather read by the row path: first what each
    batch's first query asks for once (its text), at once, then every row's pages at once (a gather's image
    bytes all: see advise_rows)."""
    if _madvise is None:
        return False
    once: list[tuple[int, int]] = []
    spans: list[tuple[int, int]] = []
    known = [(advice, j) for k, j in places if (advice := _kept_advice(index, k, j, once, spans))]
    resident = _request(once, probe) if once else True
    gathered = probe or len(places) > 1
    wholes = set()
    for (layout, first), j in known:
        if id(layout) not in wholes:
            spans.extend(layout.whole)
            wholes.add(id(layout))
        at = layout.at
        for program in layout.template:
            _run(program, at, first + j, first + j + 1, spans, gathered)
    return _request(spans, probe) and resident


def _in_memory(start: int, end: int) -> bool:
    # For a file mincore does not show us it reports every page cached: such a probe never finds the rows
    # in memory, so the queries go on advising (the cost of the advice, not a page fault per page of a
    # cold row).
    if _blind and (_mapping_of(start) or (None,))[0] in _blind:
        return False
    flags = pages_in_memory(start, end - start)
    return flags is not None and bool(flags.all())


# --- backing off when the pages are cached ------------------------------------------------------------------
#
# Working out and requesting a row's spans costs more than datasets' own row query (~70 us against ~100),
# and buys nothing when the pages are already in memory. So every PROBE_EVERY-th query is a probe: its
# requests are made only for pages that mincore finds missing. After WARM_PROBES probes in a row found
# everything in memory, the thread stops advising; from then on one getrusage call per query watches the
# thread's major page faults (page cache misses), and one turns the advice back on at once. Only the
# rows read between the pages going cold and that check fault page by page.

PROBE_EVERY = 16
WARM_PROBES = 4
ADVISE, PROBE, SKIP = "advise", "probe", "skip"
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)  # Linux counts per thread
_opens = 0  # lazy files opened so far: a new one resets every thread to advising


class _Temperature(threading.local):
    def __init__(self) -> None:
        self.opens, self.warm, self.clean, self.count, self.faults = -1, False, 0, 0, 0


_temperature = _Temperature()


def want_advice() -> str:
    """How this thread's next row query is advised: ADVISE (every request), PROBE (advise_rows(probe=True),
    then report with probed()) or SKIP once its rows are found in memory; ADVISE again after a major page
    fault, or after a lazy file has been opened."""
    t = _temperature
    faults = resource.getrusage(_RUSAGE).ru_majflt
    faulted, t.faults = faults != t.faults, faults
    if t.opens != _opens:
        t.opens, t.warm, t.clean, t.count = _opens, False, 0, 0
        return ADVISE
    if t.warm:
        if not faulted:
            return SKIP
        t.warm, t.clean, t.count = False, 0, 0
        return ADVISE
    t.count += 1
    return PROBE if t.count % PROBE_EVERY == 0 else ADVISE


def probed(resident: bool) -> None:
    """Report a probe's finding: whether all the queried rows' pages were in memory."""
    t = _temperature
    t.clean = t.clean + 1 if resident else 0
    if t.clean >= WARM_PROBES:
        t.warm = True
        t.faults = resource.getrusage(_RUSAGE).ru_majflt


# --- the hooks ---------------------------------------------------------------------------------------------

_installed = False
_query_hook = None  # the row query hook installed (the row path runs only while it is datasets')
# Gathers of at most this many rows are combined (DataLoader batches of this size are read by the row
# path instead: __getitems__). A bigger gather stays zero-copy slices: a copy costs memory as well, and
# formatting to Python copies the values again (256 rows of 1 MB images: 256 MB more while formatted).
COMBINE_ROWS = 256
# The combined copies come from the system allocator, not pyarrow's default pool: mimalloc kept ~2.4 MiB
# more dirty pages in every forked DataLoader worker (5,000 random rows of 558K in batches of 32). glibc
# keeps what is freed in its heap as well, so every TRIM_EVERY-th gather gives the free pages back
# (malloc_trim: ~1 us when there is nothing to give); the same workers then hold 13.1 MiB, against 13.5
# without combining and 15.9 with the default pool.
TRIM_EVERY = 64
_malloc_trim = getattr(_libc, "malloc_trim", None)
_combined = 0
_trim_every = TRIM_EVERY
_clock = time.perf_counter


def _combine(result: pa.Table) -> pa.Table:
    global _combined, _trim_every
    _combined += 1
    if _malloc_trim is not None and _combined % _trim_every == 0:
        started = _clock()
        _malloc_trim(0)
        # A big fragmented heap (a trainer's main process) takes longer to walk: trim less often then, so
        # that trimming stays under ~1 ms in TRIM_EVERY gathers.
        if _clock() - started > 1e-3:
            _trim_every *= 2
    try:
        return result.combine_chunks(memory_pool=pa.system_memory_pool())
    except pa.ArrowInvalid:  # values over 2 GiB do not fit one binary chunk: left as they are
        return result


def install() -> bool:
    """Route datasets' Arrow file opens, row queries and sequential reads through this module."""
    global _installed
    if _installed:
        return True
    import datasets.arrow_dataset
    import datasets.table

    stock_open = datasets.table._memory_mapped_arrow_table_from_file
    stock_getstate = datasets.table.MemoryMappedTable.__getstate__
    stock_query = datasets.arrow_dataset.query_table
    stock_table_iter = datasets.arrow_dataset.table_iter

    def memory_mapped_arrow_table_from_file(filename: str) -> pa.Table:
        return open_lazy(filename) if policy(filename) else stock_open(filename)

    def getstate(self):
        state = stock_getstate(self)
        lazy = policy(self.path)
        if lazy is not None:
            state["llava_hf"] = _Policy(os.path.dirname(self.path), lazy)
        return state

    def query_table(table, key, indices=None):
        result = stock_query(table, key, indices=indices)
        if _mappings[0] and not isinstance(key, str):
            how = want_advice()
            if how is ADVISE:
                advise_rows(result)
            elif how is PROBE:
                probed(advise_rows(result, probe=True))
            # A gather is one one-row slice per index, and formatting pays per chunk of every column (a
            # batch of 32 random rows: ~350 us to Python objects, against ~110 us combined plus ~160 us to
            # combine). Up to COMBINE_ROWS rows are copied into one chunk, after the advice above.
            if 1 < result.num_rows <= COMBINE_ROWS and result.num_columns and result.column(0).num_chunks > 1:
                result = _combine(result)
        return result

    def table_iter(table, batch_size, drop_last_batch=False) -> Iterator[pa.Table]:
        chunks = stock_table_iter(table, batch_size, drop_last_batch=drop_last_batch)
        if not _mappings[0]:
            yield from chunks
            return
        yield from _read_ahead(chunks)

    datasets.table._memory_mapped_arrow_table_from_file = memory_mapped_arrow_table_from_file
    datasets.table.MemoryMappedTable.__getstate__ = getstate
    datasets.arrow_dataset.query_table = query_table
    datasets.arrow_dataset.table_iter = table_iter
    global _query_hook
    _query_hook = query_table
    _install_row_path(datasets.arrow_dataset.Dataset)
    _installed = True
    return True


# --- one row by index -----------------------------------------------------------------------------------
#
# `ds[i]` on a warm llava_hf dataset cost ~134 us under cProfile, nearly all of it datasets' generic path:
# the query builds a one-row table (~26 us), `extract_row` turns it into Python through a per-column
# `to_pydict` (~42 us), and feature decoding walks every column through `zip_dict` even when no column
# needs decoding (~34 us). For the plain case (no format set, a llava_hf file, columns of text, bytes and
# lists and structs of them) the row is read from its record batch's buffers directly, through a layout
# worked out once per batch like the advice's (validity bits, offsets, values read in place), the same
# read advice is given, and only the columns whose features need decoding are decoded, by datasets' own
# `decode_nested_example`: the same dict, in the same order. Anything else takes datasets' path. Neither
# pyarrow scalars nor the batch's boxed columns are made: the first cost a third of a row, the second
# stay cached on the batch (~6 KB each, in every worker).

_PLAIN = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary, pa.types.is_null)


def _plain(kind: pa.DataType) -> bool:
    """Whether rows of this type are read here (`_row_reader`): text, bytes, nulls, and structs and lists of
    them, the llava_hf schemas' types. Anything else (numbers, extension types, which datasets converts its
    own way, dictionaries...) is left to datasets."""
    if isinstance(kind, pa.ExtensionType):
        return False
    if pa.types.is_struct(kind):
        return all(_plain(field.type) for field in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _plain(kind.value_type)
    return any(is_kind(kind) for is_kind in _PLAIN)


def _views(batch: pa.RecordBatch, mapping: tuple[int, int]) -> tuple[memoryview, memoryview, memoryview]:
    """Bytes, int32 and int64 views of a whole lazy mapping, kept alive through `batch` (one of its batches)."""
    start, end = mapping
    whole = memoryview(pa.foreign_buffer(start, end - start, base=batch)).cast("B")
    return whole, whole[: (end - start) // 4 * 4].cast("i"), whole[: (end - start) // 8 * 8].cast("q")


def _row_layout(batch: pa.RecordBatch, j: int, views: dict, plans: dict | None = None) -> tuple | None:
    """(template, addresses, first row, bytes, int32s, int64s) for reading rows of `batch` straight from its
    mapping: the program nodes of every column, their buffers' addresses relative to the mapping's start,
    and views of the mapping (shared by its batches, in `views`). Worked out from a one-row slice (row j):
    boxing the batch's own columns would keep ~6 KB of C++ arrays per batch alive in every worker (pyarrow
    caches them on the batch). `plans` keeps the template and which buffers fill the addresses, the same
    for the batches of a table that have the same buffers present. None for a batch whose rows cannot be
    read so."""
    columns = batch.slice(j, 1).columns
    first = columns[0].offset - j if columns else 0
    if any(column.offset - j != first for column in columns):
        return None
    per_column = [column.buffers() for column in columns]
    addresses = [b.address if b is not None and b.size else 0 for buffers in per_column for b in buffers]
    present = [i for i, a in enumerate(addresses) if a]
    if not present:
        return None
    mapping = _mapping_of(addresses[present[0]])
    if mapping is None:
        return None
    sizes = [b.size if b is not None else 0 for buffers in per_column for b in buffers]
    if not all(mapping[0] < addresses[i] <= addresses[i] + sizes[i] <= mapping[1] for i in present):
        return None
    plans = {} if plans is None else plans
    key = tuple(bool(a) for a in addresses)
    plan = plans.get(key, _MISSING)
    if plan is _MISSING:
        plan = plans[key] = _row_plan(columns, per_column, addresses)
    if plan is None:
        return None
    template, slots = plan
    base = mapping[0]
    # Relative to the mapping (a buffer never starts at its byte 0: the schema message does); offsets
    # buffers are read as aligned integers (Arrow aligns every buffer to 8 bytes).
    at = [0, *(addresses[i] - base for i in slots)]
    if any(a % 8 for a in at):
        return None
    if base not in views:
        views[base] = _views(batch, mapping)
    return (template, array.array("q", at), first, *views[base])


def _row_plan(columns: list, per_column: list[list], addresses: list[int]) -> tuple | None:
    """(template, the positions in the batch's buffer list of the addresses that fill `at`) for reading rows
    of a batch with these columns and buffers; None when this module has no layout for them."""
    at, nodes = [0], []
    try:
        for column, buffers in zip(columns, per_column):
            node, used = _program(column.type, buffers, 0, at)
            if used != len(buffers):
                return None
            nodes.append(node)
    except TypeError:
        return None
    slots = [i for i, a in enumerate(addresses) if a]  # _program takes a slot for each present buffer, in order
    if [addresses[i] for i in slots] != at[1:]:
        return None
    template = tuple(nodes)
    return _templates.setdefault(template, template), slots


def _row_reader(template: tuple, names: tuple) -> Callable | None:
    """A function (addresses, row, bytes, int32s, int64s) -> the row as a dict (column `names`, read by the
    program nodes of `template`), as `Scalar.as_py` gives each value. It is generated as Python source, one
    per template and names: walking the nodes for every value cost ~1.1 us each (16 values a blip_558k row,
    most of a row's time); the generated code does the same reads with the nodes' slots and widths as
    literals. Only integers from the nodes go into the source; names are constants of its namespace."""
    key = (template, names)
    if key in _row_readers:
        return _row_readers[key]
    constants: dict[str, Any] = {}

    def constant(name: str) -> str:
        slot = f"N{len(constants)}"
        constants[slot] = name
        return slot

    lines = ["def read(at, r, data, i32, i64):"]
    serial = itertools.count()

    def emit(node: tuple, row: str, target: str, pad: str) -> None:
        tag, validity = node[0], node[1]
        if validity:  # a bitmap slot: the batch may still have none (its address 0)
            v = f"v{next(serial)}"
            lines.append(f"{pad}{v} = at[{validity}]")
            lines.append(f"{pad}if {v} and not (data[{v} + ({row} >> 3)] >> ({row} & 7)) & 1:")
            lines.append(f"{pad}    {target} = None")
            lines.append(f"{pad}else:")
            pad += "    "
        n = next(serial)
        if tag == _BIN:
            ints, convert = ("i32" if node[3] == 4 else "i64"), ("str" if node[5] else "bytes")
            lines.append(f"{pad}k{n} = at[{node[2]}] // {node[3]} + {row}")
            lines.append(f"{pad}b{n} = at[{node[4]}]")
            encoding = ', "utf-8"' if node[5] else ""
            lines.append(f"{pad}{target} = {convert}(data[b{n} + {ints}[k{n}] : b{n} + {ints}[k{n} + 1]]{encoding})")
        elif tag == _STRUCT:
            parts = []
            for i, (child, name) in enumerate(zip(node[2], node[3])):
                emit(child, row, f"{target}_{i}", pad)
                parts.append(f"{constant(name)}: {target}_{i}")
            lines.append(f"{pad}{target} = {{{', '.join(parts)}}}")
        elif tag == _LIST:
            ints = "i32" if node[3] == 4 else "i64"
            lines.append(f"{pad}k{n} = at[{node[2]}] // {node[3]} + {row}")
            lines.append(f"{pad}{target} = []")
            lines.append(f"{pad}for c{n} in range({ints}[k{n}], {ints}[k{n} + 1]):")
            emit(node[4], f"c{n}", f"{target}_e", pad + "    ")
            lines.append(f"{pad}    {target}.append({target}_e)")
        else:  # _NULL (the only other kind _plain lets through)
            lines.append(f"{pad}{target} = None")

    for i, node in enumerate(template):
        emit(node, "r", f"x{i}", "    ")
    lines.append(f"    return {{{', '.join(f'{constant(name)}: x{i}' for i, name in enumerate(names))}}}")
    namespace = dict(constants)
    try:
        exec("\n".join(lines), namespace)  # noqa: S102 - the source holds only this function's integers
    except (SyntaxError, RecursionError, MemoryError):  # lists nested past Python's 20 blocks: datasets' path
        _row_readers[key] = None
        return None
    read = _row_readers[key] = namespace["read"]
    return read


_row_readers: dict[tuple, Callable | None] = {}


class _RowIndex:
    """A table's record batches, where each starts, and each one's row layout, for rows by index."""

    __slots__ = ("starts", "batches", "layouts", "advice", "views", "plans", "names", "view")

    def __init__(self, table) -> None:
        self.starts = table._offsets.tolist()
        self.batches = table._batches
        # Each batch's row layout, worked out on its first row (~0.4 KB; a template shared by the batches).
        self.layouts: list = [None] * len(self.batches)
        self.advice: list = [None] * len(self.batches)  # each batch's read advice layout, once known
        self.views: dict = {}  # mapping start -> its views, for the layouts
        self.plans: dict = {}  # the row plans of the table's batches (_row_layout)
        self.names = tuple(table.column_names)
        self.view = _view(table)  # its column names and types, for the read advice's layouts


_row_indexes: dict[int, tuple[weakref.ref, _RowIndex | None]] = {}


def _row_index(table) -> _RowIndex | None:
    """The row index of a datasets Table whose rows can be read directly: llava_hf lazily mapped files and
    plain column types only (None otherwise). Kept while the table lives."""
    key = id(table)
    known = _row_indexes.get(key)
    if known is not None and known[0]() is table:
        return known[1]
    entry = None
    batches, offsets = getattr(table, "_batches", None), getattr(table, "_offsets", None)
    if batches is not None and offsets is not None and all(_plain(kind) for kind in table.schema.types):
        first = next((b for b in batches if b.num_rows), None)
        address = _first_address(pa.Table.from_batches([first])) if first is not None else None
        if address is not None and _mapping_of(address) is not None:
            entry = _RowIndex(table)
    # The dict bound to the callback: at interpreter exit it may run after this module's globals are gone.
    _row_indexes[key] = (weakref.ref(table, lambda _, key=key, known=_row_indexes: known.pop(key, None)), entry)
    return entry


def _install_row_path(dataset_class) -> None:
    import datasets.arrow_dataset
    from datasets.features.features import decode_nested_example
    from datasets.formatting.formatting import _check_valid_index_key

    stock_getitem = dataset_class.__getitem__
    stock_getitems = dataset_class.__getitems__
    stock_get = dataset_class._getitem

    def source(self):
        """(row index, features, columns to decode, indices mapping, rows) where this module reads rows
        itself; None where datasets' own path runs."""
        # Only where datasets' own path would run: no subclass's _getitem, no one else's query hook.
        if type(self)._getitem is not stock_get or datasets.arrow_dataset.query_table is not _query_hook:
            return None
        if self._format_type not in (None, "python") or self._format_kwargs:
            return None
        index = _row_index(self._data)
        if index is None:
            return None
        names, shown = index.names, self._format_columns
        # A format's column list that holds every column (concatenate_datasets sets one) changes nothing.
        if shown is not None and (len(shown) < len(names) or any(name not in shown for name in names)):
            return None
        features = self._info.features
        # Read on every call, as datasets does: features can be changed in place.
        requires = features._column_requires_decoding if features is not None else None
        if requires is None or tuple(requires) != names:
            return None
        indices = self._indices
        size = indices.num_rows if indices is not None else self._data.num_rows
        return index, features, requires, indices, size

    def located(index: _RowIndex, indices, key: int) -> tuple[int, int]:
        """(record batch, row in it) of table row `key` (after the indices mapping)."""
        if indices is not None:
            key = indices.column(0)[key].as_py()
        k = bisect.bisect_right(index.starts, key) - 1
        return k, key - index.starts[k]

    def read(index: _RowIndex, features, requires, k: int, j: int):
        layout = index.layouts[k]
        if layout is None:
            found = _row_layout(index.batches[k], j, index.views, index.plans)
            reader = _row_reader(found[0], index.names) if found is not None else None
            layout = index.layouts[k] = (reader, *found[1:]) if reader is not None else ()
        if not layout:
            return _MISSING
        reader, at, first, data, i32, i64 = layout
        values = reader(at, first + j, data, i32, i64)
        for name, decoded in requires.items():
            if decoded:
                values[name] = decode_nested_example(features[name], values[name])
        return values

    def row(self, key: int):
        found = source(self)
        if found is None:
            return _MISSING
        index, features, requires, indices, size = found
        if key >= size or key < -size:
            _check_valid_index_key(key, size)  # raises datasets' own IndexError
        if key < 0:
            key += size
        k, j = located(index, indices, key)
        if _mappings[0]:
            how = want_advice()
            if how is ADVISE:
                advise_row(index, k, j, False)
            elif how is PROBE:
                probed(advise_row(index, k, j, True))
        return read(index, features, requires, k, j)

    def rows(self, keys: list[int]):
        found = source(self)
        if found is None:
            return _MISSING
        index, features, requires, indices, size = found
        if any(key >= size or key < -size for key in keys):
            return _MISSING  # datasets' own path raises its own IndexError
        if indices is not None and any(key < 0 for key in keys):
            return _MISSING  # datasets' gather through an indices mapping refuses negative keys: its error
        places = [located(index, indices, key + size if key < 0 else key) for key in keys]
        if any(index.layouts[k] == () for k, _ in places):
            return _MISSING  # a batch the row path cannot read: datasets' gather, advised once, by it
        if _mappings[0]:
            how = want_advice()
            if how is ADVISE:
                advise_gather(index, places, False)
            elif how is PROBE:
                probed(advise_gather(index, places, True))
        out = []
        for k, j in places:
            values = read(index, features, requires, k, j)
            if values is _MISSING:
                return _MISSING
            out.append(values)
        return out

    def __getitem__(self, key):
        if type(key) is int:
            values = row(self, key)
            if values is not _MISSING:
                return values
        return stock_getitem(self, key)

    def __getitems__(self, keys):
        # A DataLoader batch: its rows read as ds[i] reads one (no gathered table, no formatting to
        # columns and back to rows), its read advice asked for at once, as for datasets' gather. Only
        # where datasets' own __getitems__ would reach this module's __getitem__ (not a subclass's own).
        if (
            type(self).__getitem__ is installed
            and type(keys) is list
            and 0 < len(keys) <= COMBINE_ROWS
            and all(type(key) is int for key in keys)
        ):
            values = rows(self, keys)
            if values is not _MISSING:
                return values
        return stock_getitems(self, keys)

    installed = functools.wraps(stock_getitem)(__getitem__)
    dataset_class.__getitem__ = installed
    dataset_class.__getitems__ = functools.wraps(stock_getitems)(__getitems__)


def _first_address(table: pa.Table) -> int | None:
    addresses = []
    for column in table.columns:
        if column.num_chunks:
            buffers = [b for b in column.chunk(0).buffers() if b is not None and b.size]  # empty: anywhere
            if buffers:
                addresses.append(min(b.address for b in buffers))
    return min(addresses, default=None)


def _read_ahead(chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    # Record batches lie in file order, so a sequential reader is served by requesting the next
    # LOOKAHEAD_BYTES of the file whenever it gets within half of that from the end of the last request:
    # one cheap call per chunk and one madvise per 32 MiB, the kernel reading while batches are decoded.
    advised_until: dict[int, int] = {}  # mapping start -> end of the last request
    for chunk in chunks:
        address = _first_address(chunk)
        mapping = _mapping_of(address) if address is not None else None
        if mapping is not None:
            until = advised_until.get(mapping[0], 0)
            if until - address < LOOKAHEAD_BYTES // 2:
                start = max(address, until)
                end = min(mapping[1], address + LOOKAHEAD_BYTES)
                if end > start:
                    _advise([(start, end - start)])
                    advised_until[mapping[0]] = end
        yield chunk
