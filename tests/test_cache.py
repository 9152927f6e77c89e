"""The cache on shared storage: concurrent prepares, killed prepares, lease locks, portability.

Every test here runs real processes (tests/prepare_process.py) against one cache folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from conftest import ROOT, jpeg, write_json

import llava_hf

WORKER = str(ROOT / "tests" / "prepare_process.py")


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> tuple[Path, Path]:
    """A detail_23k.json of 12,000 records over 40 distinct 4-20 KB JPEGs: a prepare that lasts a while."""
    root = tmp_path_factory.mktemp("big")
    images = root / "images"
    images.mkdir()
    names = []
    for i in range(40):
        name = f"{i:012d}.jpg"
        (images / name).write_bytes(jpeg(i) * (1 + i % 5))  # JPEG bytes, repeated to vary the size
        names.append(name)
    records = [
        {
            "id": f"{i:012d}",
            "image": names[i % 40],
            "conversations": [
                {"from": "human", "value": f"<image>\nDescribe picture {i}."},
                {"from": "gpt", "value": "A picture of colored shapes. " * (1 + i % 7)},
            ],
        }
        for i in range(12_000)
    ]
    write_json(root / "data" / "detail_23k.json", records)
    return root / "data", images


def start(data_dir, image_dir, cache_dir, *extra, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, "detail_23k", str(data_dir), str(image_dir), str(cache_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert out.strip(), err
    return json.loads(out.strip().splitlines()[-1])


def race(big_source, cache_dir, tmp_path, *extra, env=None) -> list[dict]:
    go = tmp_path / "go"
    processes = [start(*big_source, cache_dir, "--go", str(go), *extra, env=env) for _ in range(4)]
    time.sleep(1.0)  # let every process import and wait at the line
    go.touch()
    return [finish(p) for p in processes]


def test_four_processes_racing_prepare_once_and_see_the_same_rows(big_source, cache_dir, tmp_path):
    results = race(big_source, cache_dir, tmp_path)
    assert sum(r["generated"] for r in results) == 1
    assert {r["rows"] for r in results} == {12_000}
    assert len({r["digest"] for r in results}) == 1


def test_without_flock_the_default_names_the_switch(big_source, cache_dir):
    result = finish(start(*big_source, cache_dir, "--no-flock"))
    assert result["error"] == (
        "[Errno 37] No locks available: this filesystem does not support flock. Set LLAVA_HF_LOCK=lease (or "
        "pass lock='lease') in every process that shares this cache"
    )


def test_lease_locks_work_where_flock_is_refused(big_source, cache_dir, tmp_path):
    results = race(big_source, cache_dir, tmp_path, "--no-flock", env={"LLAVA_HF_LOCK": "lease"})
    assert sum(r["generated"] for r in results) == 1
    assert {r["rows"] for r in results} == {12_000}
    assert len({r["digest"] for r in results}) == 1
    leftovers = [p.name for p in Path(cache_dir).iterdir() if p.name.endswith(".lease")]
    assert leftovers == []


def test_bad_lock_mode_is_refused(release, monkeypatch):
    monkeypatch.setenv("LLAVA_HF_LOCK", "nfs")
    with pytest.raises(ValueError) as info:
        llava_hf.load_builder("detail_23k", sample=True)
    assert str(info.value) == "LLAVA_HF_LOCK must be one of ('flock', 'lease'), got 'nfs'"


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment carries `mark` (a killed run's workers inherit it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark.encode() in f.read():
                        with open(f"/proc/{entry}/stat") as s:
                            if s.read().split()[2] != "Z":
                                pids.append(int(entry))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize(
    ("num_proc", "moment"),
    [(None, "scanning"), (None, "mid-shard"), (2, "mid-shard"), (2, "renaming")],
)
def test_a_killed_prepare_is_followed_by_a_clean_complete_one(big_source, tmp_path, num_proc, moment):
    cache_dir = tmp_path / "cache"
    mark = f"LLAVA_HF_KILL_TEST={os.getpid()}-{moment}-{num_proc}"
    extra = ["--num-proc", str(num_proc)] if num_proc else []
    process = start(*big_source, cache_dir, *extra, env=dict([mark.split("=")]))
    builder = llava_hf.load_builder("detail_23k", data_dir=big_source[0], image_dir=big_source[1], cache_dir=cache_dir)
    incomplete = Path(builder.cache_dir + ".incomplete")

    def ready() -> bool:
        if not incomplete.is_dir():
            return False
        if moment == "scanning":
            return True
        shards = [p for p in incomplete.glob("*.arrow") if p.stat().st_size > 0]
        if moment == "mid-shard":
            return bool(shards)
        return any("-of-" in p.name and "-00000-00000-" not in p.name for p in incomplete.glob("*.arrow"))

    deadline = time.time() + 120
    while not ready():
        assert process.poll() is None, "the prepare ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Its workers notice that their parent is gone and stop within a batch.
    deadline = time.time() + 30
    while processes_marked(mark):
        assert time.time() < deadline, "workers of the killed prepare are still running"
        time.sleep(0.05)
    assert not os.path.exists(os.path.join(builder.cache_dir, "dataset_info.json"))  # nothing looks complete

    again = finish(start(*big_source, cache_dir))
    assert again["generated"] and again["rows"] == 12_000
    files = sorted(os.listdir(builder.cache_dir))
    assert files == ["LICENSE", "dataset_info.json", "llava_hf-train.arrow", "llava_hf_report.json"]
    assert not incomplete.exists()
    ds = llava_hf.load_dataset("detail_23k", data_dir=big_source[0], image_dir=big_source[1], cache_dir=cache_dir)
    assert ds["id"][:3] == ["000000000000", "000000000001", "000000000002"] and len(ds) == 12_000


def test_a_cache_moved_and_read_through_another_mount_is_reused(release, tmp_path):
    first = tmp_path / "node-a" / "cache"
    ds = llava_hf.load_dataset("llava_v1_5_mix665k", cache_dir=first, **release.options("llava_v1_5_mix665k"))
    expected = ds.cast_column("image", datasets.Image(decode=False)).to_list()
    # Node B mounts the same storage elsewhere: other paths to the same source files and a moved cache.
    mount_b = tmp_path / "node-b"
    mount_b.mkdir()
    shutil.move(release.root, mount_b / "release")
    shutil.move(first, mount_b / "cache")
    shutil.rmtree(mount_b / "release" / "images" / "gqa")  # images are not read again
    data_dir = mount_b / "release" / "LLaVA-Instruct-150K"
    again = llava_hf.load_dataset(
        "llava_v1_5_mix665k", data_dir=data_dir, image_dir=mount_b / "release" / "images", cache_dir=mount_b / "cache"
    )
    assert again.cache_files[0]["filename"].startswith(str(mount_b / "cache"))
    assert again.cast_column("image", datasets.Image(decode=False)).to_list() == expected


def test_preparing_twice_gives_identical_arrow_files(release, tmp_path):
    one = llava_hf.load_dataset("cc3m_595k", cache_dir=tmp_path / "one", **release.options("cc3m_595k"))
    two = llava_hf.load_dataset("cc3m_595k", cache_dir=tmp_path / "two", **release.options("cc3m_595k"))
    (a,), (b,) = one.cache_files, two.cache_files
    assert a["filename"] != b["filename"]
    assert Path(a["filename"]).read_bytes() == Path(b["filename"]).read_bytes()


HOLD_LEASE = """
import sys, time
from llava_hf.locking import LeaseLock
lock = LeaseLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_holder_that_lost_its_lease_stops(tmp_path):
    lock_path = str(tmp_path / "entry_builder.lock")
    env = {**os.environ, "LLAVA_HF_LEASE_SECONDS": "2"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEASE, lock_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGSTOP)  # a paused holder: alive, but its heartbeat stops
    take_over = (
        "import sys; from llava_hf.locking import LeaseLock; LeaseLock(sys.argv[1]).acquire(timeout=30); print('taken')"
    )
    taker = subprocess.run(
        [sys.executable, "-c", take_over, lock_path], capture_output=True, text=True, env=env, timeout=60
    )
    assert taker.stdout.strip() == "taken", taker.stderr
    holder.send_signal(signal.SIGCONT)
    assert holder.wait(timeout=30) == 70
    assert "lost the cache lease" in holder.stderr.read()


def test_an_empty_lease_left_by_a_killed_creator_is_taken_over_after_a_lease(tmp_path):
    # The lease file is created first and its record written after: a kill in between leaves it empty.
    lock_path = str(tmp_path / "entry_builder.lock")
    Path(lock_path + ".lease").write_bytes(b"")
    env = {**os.environ, "LLAVA_HF_LEASE_SECONDS": "1"}
    take_over = (
        "import sys, time; from llava_hf.locking import LeaseLock; t = time.monotonic(); "
        "LeaseLock(sys.argv[1]).acquire(timeout=20); print('taken', time.monotonic() - t)"
    )
    taker = subprocess.run(
        [sys.executable, "-c", take_over, lock_path], capture_output=True, text=True, env=env, timeout=60
    )
    word, waited = taker.stdout.split()
    assert word == "taken", taker.stderr
    assert 1.0 <= float(waited) < 10  # a whole lease unchanged, not at once and not never


FORKSERVER_PREPARE = """
import sys, multiprocess, llava_hf
if __name__ == "__main__":
    multiprocess.set_start_method("forkserver", force=True)
    ds = llava_hf.load_dataset("detail_23k", data_dir=sys.argv[1], image_dir=sys.argv[2], cache_dir=sys.argv[3], num_proc=2)
    print(len(ds), len(ds.cache_files))
"""


def test_num_proc_under_the_forkserver_start_method(big_source, tmp_path):
    script = tmp_path / "prepare_forkserver.py"
    script.write_text(FORKSERVER_PREPARE)
    result = subprocess.run(
        [sys.executable, str(script), *map(str, big_source), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["12000", "2"]
