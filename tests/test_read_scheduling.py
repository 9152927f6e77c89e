"""ImageRoot.read_many's scheduling: fast reads inline, blocking reads to threads in chunks, input order kept.

Read times come from a fake clock (`images._clock`), so which way each read goes is decided exactly.
"""

from __future__ import annotations

import threading
import time

import pytest

from llava_hf import images
from llava_hf.errors import BadImage
from llava_hf.images import PROBE_EVERY, READ_CHUNK, READ_THREADS, FolderRoot

JPEG = b"\xff\xd8\xff\xe0"


class FakeClock:
    """Every call advances by `step` seconds: a timed read (a call before, one after) measures `step`."""

    def __init__(self, step: float):
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class RecordingRoot(FolderRoot):
    """A folder root whose files are made up from their names; it records the thread of each read."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threads: dict[str, str] = {}  # name -> the thread that read it
        self.pause = 0.0

    def _read(self, name: str) -> bytes | None:
        self.threads[name] = threading.current_thread().name
        if self.pause:
            time.sleep(self.pause)
        return None if name.startswith("missing") else JPEG + name.encode()


def names(n: int, prefix: str = "") -> list[str]:
    return [f"{prefix}{i:06d}.jpg" for i in range(n)]


def test_fast_reads_run_inline(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "_clock", FakeClock(10e-6))
    root = RecordingRoot(str(tmp_path))
    results = list(root.read_many(names(200)))
    assert results == [(name, JPEG + name.encode()) for name in names(200)]
    assert list(root.threads.values()) == [threading.current_thread().name] * 200


def test_blocking_reads_go_to_threads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "_clock", FakeClock(5e-3))
    root = RecordingRoot(str(tmp_path))
    root.pause = 0.01  # real waits, so that all threads are busy at once
    n = 1 + (PROBE_EVERY - 1) * READ_CHUNK + 1 + 2 * READ_CHUNK  # first read, 15 chunks, a probe, 2 chunks
    results = list(root.read_many(names(n)))
    assert results == [(name, JPEG + name.encode()) for name in names(n)]
    main = threading.current_thread().name
    # The first read (inline, before anything was measured) and the probe ran here; the rest in threads.
    order = [root.threads[name] for name in names(n)]
    assert [i for i, thread in enumerate(order) if thread == main] == [0, 1 + (PROBE_EVERY - 1) * READ_CHUNK]
    readers = set(order) - {main}
    assert len(readers) == READ_THREADS
    assert all(thread.startswith("llava_hf-read") for thread in readers)


def test_reads_that_become_fast_go_inline_again(tmp_path, monkeypatch):
    clock = FakeClock(5e-3)
    monkeypatch.setattr(images, "_clock", clock)
    root = RecordingRoot(str(tmp_path))
    assert len(list(root.read_many(names(10)))) == 10
    assert root._reads_block()
    clock.step = 1e-6  # the files are cached now: the probes see it
    cached = names(2000, prefix="c")
    results = list(root.read_many(cached))
    assert results == [(name, JPEG + name.encode()) for name in cached]
    assert not root._reads_block()
    main = threading.current_thread().name
    order = [root.threads[name] for name in cached]
    first_inline = next(i for i in range(len(order)) if all(t == main for t in order[i:]))
    # The recent reads are one slow one and then the probes: with the second fast probe the median is
    # fast, and from that probe on every read runs inline.
    assert first_inline == 2 * (1 + (PROBE_EVERY - 1) * READ_CHUNK) - 1


def test_a_preempted_read_does_not_send_fast_reads_to_the_threads(tmp_path, monkeypatch):
    clock = FakeClock(10e-6)
    monkeypatch.setattr(images, "_clock", clock)
    root = RecordingRoot(str(tmp_path))
    original = root._read

    def sometimes_preempted(name: str):
        clock.now += 5e-3 if name.endswith("7.jpg") else 0  # one read in ten waits 5 ms for the CPU
        return original(name)

    root._read = sometimes_preempted
    assert len(list(root.read_many(names(300)))) == 300
    assert set(root.threads.values()) == {threading.current_thread().name}


@pytest.mark.parametrize("step", [10e-6, 5e-3], ids=["inline", "threads"])
def test_bad_images_keep_their_place(tmp_path, monkeypatch, step):
    monkeypatch.setattr(images, "_clock", FakeClock(step))
    root = RecordingRoot(str(tmp_path))
    wanted = [f"missing{i}.jpg" if i % 7 == 3 else f"{i}.jpg" for i in range(100)] + ["../escape.jpg"]
    results = list(root.read_many(wanted))
    assert len(results) == 101
    for name, result in zip(wanted[:100], results):
        if name.startswith("missing"):
            assert isinstance(result, BadImage) and result.reason == "missing"
            assert str(result) == f"image {name!r} not found under {tmp_path}"
        else:
            assert result == (name, JPEG + name.encode())
    assert isinstance(results[-1], BadImage) and results[-1].reason == "unsafe_path"
    assert sum(isinstance(r, BadImage) for r in results) == 15
