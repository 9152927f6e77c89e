"""Page-cache residency (mincore) and eviction (posix_fadvise).

The zip read-through skips what the page cache holds (`residency`), the lazy reader asks `mincore_tells`
whether its probes can be trusted, and scripts/bench.py and the tests measure what reading a file costs
(`resident_bytes`, `evict`). Linux (and other systems with mincore) only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Callable, Iterator

import numpy as np

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_bytes(path: str | os.PathLike) -> int:
    """How many bytes of the file at `path` are in the page cache now (reading nothing)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        with _untouched_mapping(fd, size) as address:
            if address is None:
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            flags = pages_in_memory(address, size)
            if flags is None:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return min(size, int(flags.sum()) * mmap.PAGESIZE)
    finally:
        os.close(fd)


def pages_in_memory(address: int, length: int) -> np.ndarray | None:
    """1 for each page of the mapped memory [address, address + length) (address page-aligned) that is in
    the page cache, 0 for the others; None when mincore fails. mincore sets the low bit of one byte a page
    (the other bits are reserved)."""
    pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    if _libc.mincore(address, length, vector) != 0:
        return None
    return np.frombuffer(vector, np.uint8) & 1


@contextlib.contextmanager
def _untouched_mapping(fd: int, size: int) -> Iterator[int | None]:
    # A mapping of our own, never touched: mincore reports the page cache, not what we read. None when
    # the file cannot be mapped.
    address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) if size else None
    if address in (None, ctypes.c_void_p(-1).value):
        yield None
        return
    try:
        yield address
    finally:
        _libc.munmap(address, size)


def mincore_tells(fd: int) -> bool:
    """Whether mincore reports the page cache of the open file `fd` to this process. Since Linux 5.0 it
    does only for a file the process owns or could open for writing (or as root); for anyone else it
    says every page is in memory (a side channel closed), which would read as "cached" here."""
    try:
        euid = os.geteuid()
        if euid == 0 or os.fstat(fd).st_uid == euid:
            return True
        return os.access(f"/proc/self/fd/{fd}", os.W_OK)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def residency(fd: int, size: int) -> Iterator[Callable[[int, int], bool]]:
    """For the block: a function (offset, length) -> whether every page of those bytes of the open file
    `fd` (`size` bytes) is in the page cache now, reading nothing (False when that cannot be told)."""
    if not mincore_tells(fd):
        yield lambda offset, length: False
        return
    with _untouched_mapping(fd, size) as address:
        if address is None:
            yield lambda offset, length: False
            return

        def cached(offset: int, length: int) -> bool:
            start = offset - offset % mmap.PAGESIZE
            end = min(size, offset + length)
            flags = pages_in_memory(address + start, end - start) if end > start else None
            return flags is not None and bool(flags.all())

        yield cached


def evict(path: str | os.PathLike) -> None:
    """Drop the file's pages from the page cache (written back first, so that they can be dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
