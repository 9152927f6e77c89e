"""Random rows of the 558K-row blip_558k-shaped dataset, warm: llava_hf's row path against datasets' own.

    python scripts/bench_rows.py --work /work/scale_bench        # the corpus of bench.py --scale (built if missing)
    python scripts/bench_rows.py --work DIR --rounds 5 --rows 10000

In one process, alternating in every round: `ds[i]` and batches of 32 (`__getitems__`) on the lazily opened
dataset, `ds[i]` through `datasets.Dataset.__getitem__.__wrapped__` (datasets' own path on the same table),
and `zipfile.read` of the same members; bytes-only images. Before that, four workers forked from a fresh
open, for each of the two `ds[i]` paths, read `--rows` / 2 random rows each and report their private
dirty memory after a `gc.collect()`. Medians of the rounds, with their spread; ratios to `zipfile`
measured in the same rounds.

    python scripts/bench_rows.py --work DIR --faults             # one cold value: a fault against a request

`--faults` reads `--rows` random members of the corpus's zip (2.6 KB JPEGs) from a cold page cache, in
alternating rounds, three ways: touching them through a MADV_RANDOM mapping (page faults, one page at a
time, as the reader's mapping does), asking for their pages with MADV_WILLNEED first and then touching
them, and `os.pread`. It prints microseconds per read, and how many of the values lie on two pages.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import statistics
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import bench_scale  # noqa: E402


def _worker(data, getitem, rows: int, seed: int, conn) -> None:
    for i in random.Random(seed).sample(range(len(data)), rows):
        getitem(data, i)
    gc.collect()
    conn.send(bench_scale.private_dirty())
    os._exit(0)


def worker_memory(data, getitem, rows: int) -> list[float]:
    context = multiprocessing.get_context("fork")
    out = []
    for seed in range(bench_scale.WORKERS):
        mine, theirs = context.Pipe()
        worker = context.Process(target=_worker, args=(data, getitem, rows, seed, theirs))
        worker.start()
        out.append(mine.recv() / 2**20)
        worker.join()
    return out


def faults(corpus: dict, rows: int, rounds: int) -> None:
    import json
    import mmap

    from llava_hf.pagecache import evict

    members = json.loads((Path(corpus["folder"]) / "members.json").read_text())
    picks = random.Random(0).sample(range(len(members["offsets"])), rows)
    spans = [(members["offsets"][k], members["lengths"][k]) for k in picks]
    page = mmap.PAGESIZE
    two = sum((o // page) != ((o + n - 1) // page) for o, n in spans)

    def faulted(mapped, view, fd):
        for o, n in spans:
            bytes(view[o : o + n])

    def asked(mapped, view, fd):
        for o, n in spans:
            start = o - o % page
            mapped.madvise(mmap.MADV_WILLNEED, start, o + n - start)
            bytes(view[o : o + n])

    def read(mapped, view, fd):
        for o, n in spans:
            os.pread(fd, n, o)

    ways = {"faulted": faulted, "asked for, then touched": asked, "os.pread": read}
    times: dict = {who: [] for who in ways}
    for _ in range(rounds):
        for who, way in ways.items():
            evict(corpus["zip"])  # nothing of it is mapped now: pages mapped in a process stay cached
            with open(corpus["zip"], "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                mapped.madvise(mmap.MADV_RANDOM)
                view = memoryview(mapped)
                started = time.perf_counter()
                way(mapped, view, f.fileno())
                times[who].append((time.perf_counter() - started) / rows * 1e6)
                view.release()
                mapped.close()
    print(f"{rows:,} random members of {corpus['zip']}, cold; {two:,} of them on two pages")
    for who, samples in times.items():
        s = bench.summary(samples)
        print(f"  {who:24} {s['median']:6.1f} us/read ({s['min']:.1f}-{s['max']:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "llava_hf_bench"))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--faults", action="store_true", help="one cold value: a page fault against a request")
    a = parser.parse_args()
    import datasets

    from llava_hf import reader

    reader.install()  # the row path wraps Dataset.__getitem__ (load_dataset installs it too)
    bench.quiet_datasets()
    corpus = bench_scale.make_blip(Path(a.work), "2.6 KB")
    if a.faults:
        faults(corpus, a.rows, a.rounds)
        return
    served = {"data_dir": corpus["data_dir"], "zip": corpus["zip"], "cache": str(Path(a.work) / "rows-cache")}
    ours, stock = datasets.Dataset.__getitem__, datasets.Dataset.__getitem__.__wrapped__

    def opened():
        return bench_scale._open_blip(served).cast_column("image", datasets.Image(decode=False))

    # Workers first, each set forked from a fresh open: nothing of a row path is built in the parent.
    memory = {}
    for who, getitem in (("llava_hf row path", ours), ("datasets' path", stock)):
        data = opened()
        gc.collect()
        os.sync()
        memory[who] = worker_memory(data, getitem, a.rows // 2)
        del data
    data = opened()
    picks = random.Random(0).sample(range(len(data)), a.rows)
    names = [image["path"] for image in data.select(picks)["image"]]
    archive = zipfile.ZipFile(corpus["zip"])
    ways = {
        "ds[i]": lambda: [data[i] for i in picks],
        "batches of 32": lambda: [data.__getitems__(picks[s : s + 32]) for s in range(0, len(picks), 32)],
        "ds[i], datasets' path": lambda: [stock(data, i) for i in picks],
        "zipfile": lambda: [archive.read(name) for name in names],
    }
    for way in ways.values():  # warm: every page read once
        way()
    rates: dict = {who: [] for who in ways}
    for _ in range(a.rounds):
        for who, way in ways.items():
            started = time.perf_counter()
            way()
            rates[who].append(len(picks) / (time.perf_counter() - started))
    zip_rate = statistics.median(rates["zipfile"])
    print(f"{a.rows:,} random bytes-only rows of {len(data):,}, warm; median (min-max) of {a.rounds} rounds")
    for who, samples in rates.items():
        s = bench.summary(samples)
        print(
            f"  {who:22} {s['median']:>9,.0f} rows/s ({s['min']:,.0f}-{s['max']:,.0f})"
            f"  {s['median'] / zip_rate:.2f} x zipfile"
        )
    print(f"{bench_scale.WORKERS} forked workers, {a.rows // 2:,} random rows each by ds[i]: dirty MiB after gc")
    for who, megabytes in memory.items():
        print(f"  {who:22} " + ", ".join(f"{m:.2f}" for m in megabytes))


if __name__ == "__main__":
    main()
