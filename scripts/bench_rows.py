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

    python scripts/bench_rows.py --work DIR --cold-rows          # where a cold ds[i] row's time goes

`--cold-rows` times each of `--rows` random bytes-only `ds[i]` rows on a fresh open of the evicted cache,
split into the first query of each record batch (whose text is read then) and the later rows, with the
time spent in the reader's read advice (`reader.advise_row`, which makes the batch's layout and asks for
its pages) apart; then `zipfile.read` of the same members from the evicted zip. Alternating rounds.
"""

from __future__ import annotations

import argparse
import gc
import itertools
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


def cold_rows(served: dict, corpus: dict, rows: int, rounds: int) -> None:
    import bisect

    import datasets

    from llava_hf import reader
    from llava_hf.pagecache import evict

    def opened():
        return bench_scale._open_blip(served).cast_column("image", datasets.Image(decode=False))

    data = opened()
    files = [c["filename"] for c in data.cache_files]
    starts = list(itertools.accumulate((b.num_rows for b in data.data.table.to_batches()), initial=0))[:-1]
    picks = random.Random(0).sample(range(len(data)), rows)
    names = [image["path"] for image in data.select(picks)["image"]]
    del data
    archive = zipfile.ZipFile(corpus["zip"])  # its directory read before the clock, as bench_scale's
    advising = [0.0]
    advise_row = reader.advise_row

    def timed_advice(*args):
        started = time.perf_counter()
        try:
            return advise_row(*args)
        finally:
            advising[0] += time.perf_counter() - started

    figures: dict = {key: [] for key in ("rate", "first", "later", "first_s", "later_s", "first_advice_s")}
    figures.update(later_advice_s=[], zip_rate=[], zip_row=[], batches=[])
    reader.advise_row = timed_advice
    try:
        for _ in range(rounds):
            gc.collect()
            for path in files:
                evict(path)
            data = opened()
            seen: set[int] = set()
            first, later, first_advice, later_advice = [], [], 0.0, 0.0
            began = time.perf_counter()
            for i in picks:
                batch = bisect.bisect_right(starts, i)
                advising[0] = 0.0
                started = time.perf_counter()
                data[i]
                took = time.perf_counter() - started
                if batch in seen:
                    later.append(took)
                    later_advice += advising[0]
                else:
                    first.append(took)
                    first_advice += advising[0]
                    seen.add(batch)
            figures["rate"].append(rows / (time.perf_counter() - began))
            del data
            gc.collect()
            evict(corpus["zip"])
            one = []
            began = time.perf_counter()
            for name in names:
                started = time.perf_counter()
                archive.read(name)
                one.append(time.perf_counter() - started)
            figures["zip_rate"].append(rows / (time.perf_counter() - began))
            figures["zip_row"].append(statistics.median(one) * 1e6)
            figures["batches"].append(len(first))
            figures["first"].append(statistics.median(first) * 1e6)
            figures["later"].append(statistics.median(later) * 1e6)
            figures["first_s"].append(sum(first))
            figures["later_s"].append(sum(later))
            figures["first_advice_s"].append(first_advice)
            figures["later_advice_s"].append(later_advice)
    finally:
        reader.advise_row = advise_row

    def m(key, digits=0):
        s = bench.summary(figures[key])
        return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"

    print(f"{rows:,} random bytes-only ds[i] rows of a fresh open of the evicted cache; median (min-max) of {rounds}")
    print(f"  ds[i]: {m('rate')} rows/s; zipfile on the same members, evicted: {m('zip_rate')} rows/s")
    print(
        f"  first query of each of {m('batches')} record batches: {m('first')} us a row (median), "
        f"{m('first_s', 3)} s in all, {m('first_advice_s', 3)} s of it in the read advice"
    )
    print(
        f"  the {rows - statistics.median(figures['batches']):,.0f} later rows: {m('later')} us a row (median), "
        f"{m('later_s', 3)} s in all, {m('later_advice_s', 3)} s of it in the read advice"
    )
    print(f"  zipfile: {m('zip_row')} us a row (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "llava_hf_bench"))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--faults", action="store_true", help="one cold value: a page fault against a request")
    parser.add_argument("--cold-rows", action="store_true", help="where a cold ds[i] row's time goes")
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
    if a.cold_rows:
        cold_rows(served, corpus, a.rows, a.rounds)
        return
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
