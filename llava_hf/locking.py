"""Locks and liveness for caches on shared storage.

Locks: `flock` (the default) or lease files for mounts without it.

Preparing takes datasets' file locks around the cache folder: exactly one process generates, the others
wait and reuse. Those locks are `flock`, which NFS mounts without a lock daemon refuse with "No locks
available" (ENOLCK). `lock="lease"` (or LLAVA_HF_LOCK=lease) replaces them, for llava_hf builders only,
with filelock's `SoftFileLease`: a lock file created atomically, naming its holder (host, pid) and
refreshed by a heartbeat; a holder that died on the same host is detected at once, one on another host
once its lease has not been refreshed for `LEASE_SECONDS`. Every process sharing a cache must use the
same mode: a flock and a lease do not exclude each other.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import datasets.builder
from datasets.utils._filelock import FileLock
from filelock import SoftFileLease

LockMode = Literal["flock", "lease"]
LOCK_ENV = "LLAVA_HF_LOCK"
# Long enough that a busy or briefly stalled holder keeps its lease (the heartbeat refreshes it every
# third of this); short enough that a crashed node's lock frees itself within a minute. Every process
# sharing a cache must use the same value (LLAVA_HF_LEASE_SECONDS).
LEASE_SECONDS = float(os.environ.get("LLAVA_HF_LEASE_SECONDS", "60"))


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
        super().__init__(path, lease_duration=LEASE_SECONDS, on_compromise=_lease_lost, **kwargs)

    def _try_break_pinned_lock(self, pinned) -> None:
        if not self._take_over_empty_marker():
            super()._try_break_pinned_lock(pinned)

    def _take_over_empty_marker(self) -> bool:
        """Take over a lease file that is empty and has not changed for a whole lease: its creator died
        between creating it and writing its record (a SIGKILL there, a node that crashed before its write
        reached the server). filelock waits on an empty marker forever (holders older than its records
        leave theirs empty); every llava_hf process writes its record, so an empty one this old is dead."""
        unchanged, take_over = getattr(self, "_marker_unchanged_for", None), getattr(self, "_take_over", None)
        if unchanged is None or take_over is None:  # another filelock: its own rules, unchanged
            return False
        try:
            marker = os.lstat(self._lock_path)
        except OSError:
            return False
        if marker.st_size or unchanged(marker) < self.lease_duration:
            return False
        logging.getLogger("llava_hf").warning(
            "%s: empty for %.0f s, its creator gone: taken over", self.lock_file, self.lease_duration
        )
        take_over(marker, None)
        return True


def _lease_lost(compromise) -> None:
    # A holder stalled past its lease (a paused process, a hung mount) has been replaced by another
    # process, which is now cleaning and writing the same folder: this one must not write another byte.
    # The heartbeat thread cannot raise into the writer, so the process ends; its workers follow it.
    message = f"llava_hf: lost the cache lease ({compromise}); stopping this process"
    logging.getLogger("llava_hf").critical(message)
    print(message, file=sys.stderr, flush=True)  # the process ends now: say why even where logging is silent
    os._exit(70)


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


_LOCK_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def is_lock_error(error: OSError) -> bool:
    """Whether `error` is the filesystem refusing flock."""
    return error.errno in _LOCK_ERRNOS


def explain_lock_error(error: OSError) -> OSError:
    """A new OSError for `error` (the same errno, hence the same subclass): with the way out when the
    filesystem refuses flock, else with the same message."""
    if is_lock_error(error):
        return OSError(
            error.errno,
            f"{error.strerror or error}: this filesystem does not support flock. Set {LOCK_ENV}=lease (or pass "
            f"lock='lease') in every process that shares this cache",
            error.filename,
        )
    # A copy, never `error` itself: `raise explain_lock_error(e) from e` would make `e` its own cause.
    args = (error.errno, error.strerror, error.filename) if error.filename is not None else error.args
    try:
        copy = type(error)(*args)
    except TypeError:  # a subclass with a constructor of its own
        copy = OSError(*args)
    return copy.with_traceback(error.__traceback__)


# --- processes forked by a prepare die with it ----------------------------------------------------------

_preparing_pid: int | None = None
_fork_hook_installed = False
WATCH_SECONDS = 0.1


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(WATCH_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def _after_fork_in_child() -> None:
    if _preparing_pid is not None and os.getppid() == _preparing_pid:
        # Ctrl-C reaches every process of the terminal's group: the preparing process alone handles it
        # (and terminates its pool); workers dying on their own made multiprocess hang or raise TimeoutError.
        with contextlib.suppress(ValueError):  # only outside the main thread, which a forked child is not
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(
            target=_watch_parent, args=(_preparing_pid,), name="llava_hf-watch-parent", daemon=True
        ).start()


@contextmanager
def children_die_with_this_process() -> Iterator[None]:
    """Every process forked inside this block exits (within WATCH_SECONDS) once this process is gone.

    A SIGKILLed prepare with num_proc > 1 otherwise leaves its pool workers and datasets' queue manager
    running forever: they wait on pipes they hold both ends of, and they hold the cache's flock (inherited
    descriptor) and may still write into the folder the next run cleans and reuses.
    """
    global _preparing_pid, _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_installed = True
    previous, _preparing_pid = _preparing_pid, os.getpid()
    try:
        yield
    finally:
        _preparing_pid = previous
