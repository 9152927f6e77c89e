"""What a failed or interrupted prepare tells its caller: the file, what happened, what to do.

`datasets` wraps every error raised while generating in `DatasetGenerationError("An error occurred while
generating the dataset")`; with `num_proc` the real error is only text inside a `multiprocess`
`RemoteTraceback`. Disk full, a permission refused or a damaged file would reach the user as that one
sentence. Here the builder translates them where they happen (in the worker too), into a
`PrepareError` whose own message names the file and the way out, and which crosses process boundaries.

Ctrl-C: pool workers forked by a prepare ignore SIGINT (see locking), so that the preparing process
alone decides: it unwinds (datasets removes its `.incomplete` folder), its pool terminates the workers,
and the caller gets `PrepareInterrupted` (a KeyboardInterrupt) saying so, not the `TimeoutError` that
multiprocess raises from its cleanup. Should the unwinding stall on a pipe of a worker, the workers are
killed after `INTERRUPT_GRACE_SECONDS`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from datasets.exceptions import DatasetGenerationError

from .errors import SourceError

logger = logging.getLogger("llava_hf")

# How long an interrupted prepare may take to stop its workers before they are killed.
INTERRUPT_GRACE_SECONDS = 5.0


class PrepareError(DatasetGenerationError):
    """A prepare that failed for a reason outside the source data (disk full, permissions, a damaged
    file); the message names the file and what to do. Nothing was kept: the next run starts over.

    `errno` is the operating system's error number when there was one. Not an OSError: datasets turns
    every OSError raised while generating into "Cannot find data file"."""

    def __init__(self, message: str, errno: int | None = None):
        self.errno = errno
        super().__init__(message)

    def __reduce__(self):
        # Crosses from a num_proc worker to the preparing process with its message intact.
        return (type(self), (str(self), self.errno))


class PrepareInterrupted(KeyboardInterrupt):
    """A prepare stopped by Ctrl-C (SIGINT): nothing was kept, the next run prepares again."""


_ADVICE = {
    errno.ENOSPC: "free space there, or pass another cache_dir, and run again",
    errno.EDQUOT: "the disk quota is exhausted: free space there, or pass another cache_dir, and run again",
    errno.EACCES: "this user may not use it: fix its permissions, or pass a cache_dir this user may write to",
    errno.EPERM: "this user may not use it: fix its permissions, or pass a cache_dir this user may write to",
    errno.EROFS: "the file system is read-only: pass a writable cache_dir",
    errno.EIO: "the storage reported an I/O error: check the device or mount, and run again",
}


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The first OSError from the operating system (with an errno) in the cause/context chain of `error`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def with_advice(error: OSError) -> OSError:
    """`error` (an OS error naming its file) as a new exception of the same type whose message also says
    what to do, for disk full, quota, permission and read-only errors; `error` itself for any other."""
    advice = _ADVICE.get(error.errno) if error.filename is not None else None
    if advice is None or error.errno == errno.EIO:
        return error
    try:
        explained = type(error)(error.errno, f"{os.strerror(error.errno)} ({advice})", error.filename)
    except TypeError:  # a subclass with a constructor of its own
        return error
    return explained.with_traceback(error.__traceback__)


def interrupt_in(error: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is in the cause/context chain of `error`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


def explain(error: BaseException, config: str, folder: str) -> BaseException:
    """The exception to give the caller for `error`, raised while preparing `config` into `folder`:
    a SourceError or PrepareError as it is (unwrapped from datasets' DatasetGenerationError), an OS error
    that names no file (pyarrow's writer: "No space left on device") as a PrepareError naming the file or
    the folder being written and the remedy, anything else datasets wrapped as a PrepareError carrying the
    real message. Returns `error` itself when there is nothing to add (an OSError naming its file)."""
    if isinstance(error, (SourceError, PrepareError, KeyboardInterrupt)):
        return error
    if isinstance(error, OSError) and (error.filename is not None or error.errno is None):
        # raised by llava_hf's own code, or by the OS naming the file: its type kept, the remedy added
        return with_advice(error)
    inner = error
    while isinstance(inner, DatasetGenerationError) and not isinstance(inner, (SourceError, PrepareError)):
        cause = inner.__cause__ or inner.__context__
        if cause is None:
            break
        inner = cause
    if isinstance(inner, (SourceError, PrepareError)):
        return inner
    os_error = _os_error_in(inner)
    if os_error is not None:
        where = os_error.filename or folder
        # pyarrow's strerror is a sentence of its own ("Error writing bytes to file. Detail: ...")
        what = os.strerror(os_error.errno)
        advice = _ADVICE.get(os_error.errno, "fix that and run again")
        return PrepareError(
            f"{config}: preparing failed on {where}: {what}; {advice} (nothing was kept in the cache)",
            os_error.errno,
        )
    if inner is error and not isinstance(error, DatasetGenerationError):
        return error
    return PrepareError(
        f"{config}: preparing failed in {folder}: {type(inner).__name__}: {inner} (nothing was kept in the cache)"
    )


def interrupted(config: str, folder: str) -> PrepareInterrupted:
    """What to raise for a Ctrl-C during `download_and_prepare` of `config` into `folder`."""
    if os.path.exists(os.path.join(folder, "dataset_info.json")):  # it came while reusing a prepared entry
        return PrepareInterrupted(f"{config}: interrupted (Ctrl-C); the prepared entry {folder} is as it was")
    return PrepareInterrupted(
        f"{config}: preparing was interrupted (Ctrl-C); nothing was kept in {folder}, the next run prepares again"
    )


@contextmanager
def stop_workers_on_interrupt() -> Iterator[None]:
    """Inside this block (in the main thread), SIGINT raises KeyboardInterrupt as usual and, should the
    process still be unwinding `INTERRUPT_GRACE_SECONDS` later, kills the worker processes it started."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is not signal.default_int_handler:
        yield  # another thread, or the application handles (or ignores) SIGINT itself: leave it alone
        return
    import multiprocess

    done = threading.Event()
    older = {child.pid for child in multiprocess.active_children()}  # not started by this prepare: spared

    def on_sigint(signum, frame):
        threading.Thread(
            target=_kill_children_later, args=(done, older), name="llava_hf-interrupt", daemon=True
        ).start()
        previous(signum, frame)  # Python's own: raises KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread of the main interpreter
        yield
        return
    try:
        yield
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)


def _kill_children_later(done: threading.Event, older: set[int]) -> None:
    import multiprocess

    if done.wait(INTERRUPT_GRACE_SECONDS):
        return  # unwound in time: the pool has stopped its workers itself
    # Only the processes the prepare started (pool workers, datasets' queue manager), by their pids.
    for child in multiprocess.active_children():
        if child.pid in older:
            continue
        with suppress(ProcessLookupError, TypeError):
            os.kill(child.pid, signal.SIGKILL)
