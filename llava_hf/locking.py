"""Locks for caches on shared storage: `flock` (the default) or lease files for mounts without it.

Preparing takes datasets' file locks around the cache folder: exactly one process generates, the others
wait and reuse. Those locks are `flock`, which NFS mounts without a lock daemon refuse with "No locks
available" (ENOLCK). `lock="lease"` (or LLAVA_HF_LOCK=lease) replaces them, for llava_hf builders only,
with filelock's `SoftFileLease`: a lock file created atomically, naming its holder (host, pid) and
refreshed by a heartbeat; a holder that died on the same host is detected at once, one on another host
once its lease has not been refreshed for `LEASE_SECONDS`. Every process sharing a cache must use the
same mode: a flock and a lease do not exclude each other.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import datasets.builder
from datasets.utils._filelock import FileLock
from filelock import SoftFileLease

LockMode = Literal["flock", "lease"]
LOCK_ENV = "LLAVA_HF_LOCK"
# Long enough that a busy or briefly stalled holder keeps its lease (the heartbeat refreshes it every
# third of this); short enough that a crashed node's lock frees itself within a minute.
LEASE_SECONDS = 60.0


def lock_mode(option: str | None = None) -> LockMode:
    """The lock mode: `option`, else the LLAVA_HF_LOCK environment variable, else "flock"."""
    mode = option or os.environ.get(LOCK_ENV) or "flock"
    if mode not in get_args(LockMode):
        source = "lock" if option else LOCK_ENV
        raise ValueError(f"{source} must be one of {get_args(LockMode)}, got {mode!r}")
    return mode


class LeaseLock(SoftFileLease):
    """A lease file with the constructor datasets' `FileLock` has (long names hashed the same way).

    Its file is "<lock>.lease", never datasets' own "<lock>": flock leaves its (empty) lock files in place,
    and a lease would take such a file for a peer's claim and wait on it.
    """

    def __init__(self, lock_file, *args, **kwargs):
        kwargs.pop("mode", None)
        path = FileLock.hash_filename_if_too_long(os.fspath(lock_file) + ".lease")
        super().__init__(path, lease_duration=LEASE_SECONDS, **kwargs)


_swap_guard = threading.Lock()
_swaps = 0


@contextmanager
def datasets_locks(mode: LockMode) -> Iterator[None]:
    """Inside this block, the locks datasets' builder takes are of `mode`."""
    global _swaps
    if mode == "flock":
        yield
        return
    with _swap_guard:
        _swaps += 1
        datasets.builder.FileLock = LeaseLock
    try:
        yield
    finally:
        with _swap_guard:
            _swaps -= 1
            if _swaps == 0:
                datasets.builder.FileLock = FileLock


def explain_lock_error(error: OSError) -> OSError:
    """`error` with the way out when the filesystem refuses flock, else `error` unchanged."""
    if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        return OSError(
            error.errno,
            f"{error.strerror or error}: this filesystem does not support flock. Set {LOCK_ENV}=lease (or pass "
            f"lock='lease') in every process that shares this cache",
            error.filename,
        )
    return error
