"""Time `to_messages` of a map-style dataset at mix665k's size, and its `images` layout against the old one.

    python scripts/bench_trl_view.py [--rows 665298] [--text-only 40688] [--repeats 3] [--work DIR]

The dataset is mix665k-shaped: `--rows` rows, of which `--text-only` (mix665k's count by default) are the
embedded sample's text-only row at seeded random places and the rest cycle through its 7 rows with an
image, written as one Arrow file in 1,000-row batches, as a prepared config is. Side by side in one run,
it times:

- `to_messages`: the first call (messages file written) and a later call (file reused);
- building the `images` column over the memory-mapped image column (what every call and every unpickle in
  a spawned DataLoader worker does): the compacted layout (one list chunk per source chunk) against the
  old one (one list chunk per run of rows with an image), with their chunk counts;
- `pickle.loads` of the view, with each layout.

Prints the median and spread (min-max) of the repeats, and the ratios old / new.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

BATCH_ROWS = 1000


def timed(repeats: int, work: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return times


def line(label: str, times: list[float]) -> str:
    return f"  {label:44s} {statistics.median(times):7.3f}  ({min(times):.3f}-{max(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=665_298)
    parser.add_argument("--text-only", type=int, default=40_688)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "llava_hf_bench_trl_view"))
    args = parser.parse_args()
    if not 0 <= args.text_only <= args.rows:
        parser.error(f"--text-only must be between 0 and --rows ({args.rows}), got {args.text_only}")

    import datasets
    import numpy as np
    import pyarrow as pa

    import llava_hf
    from llava_hf import trl_view
    from llava_hf.formats import to_messages

    sample = llava_hf.load_dataset("llava_v1_5_mix665k", sample=True, cache_dir=os.path.join(args.work, "cache"))
    source = sample.data.table
    has_image = source.column("image").is_valid().to_numpy(zero_copy_only=False)
    with_image, text_only = np.flatnonzero(has_image), np.flatnonzero(~has_image)
    rng = np.random.default_rng(0)
    rows = with_image[np.arange(args.rows) % len(with_image)]
    rows[rng.choice(args.rows, args.text_only, replace=False)] = text_only[0]

    folder = os.path.join(args.work, "data")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    path = os.path.join(folder, "data.arrow")
    with pa.OSFile(path, "wb") as f, pa.ipc.new_stream(f, source.schema) as writer:
        for start in range(0, args.rows, BATCH_ROWS):
            writer.write_table(source.take(rows[start : start + BATCH_ROWS]).combine_chunks())
    ds = datasets.Dataset.from_file(path)
    views = os.path.join(folder, trl_view.VIEWS_FOLDER)

    def first_call() -> None:
        shutil.rmtree(views, ignore_errors=True)
        to_messages(ds)

    first = timed(args.repeats, first_call)
    view = to_messages(ds)
    again = timed(args.repeats, lambda: to_messages(ds))
    assert len(view) == args.rows and view[len(view) - 1]["messages"]

    image = ds.data.table.column("image")

    def old_layout(column: pa.ChunkedArray) -> pa.ChunkedArray:
        item = column.type
        chunks = []
        for chunk in column.chunks:
            chunks.extend(trl_view._run_lists(chunk, chunk.is_valid().to_numpy(zero_copy_only=False)))
        return pa.chunked_array(chunks, pa.list_(item))

    new_lists, old_lists = trl_view.image_lists(image), old_layout(image)
    assert new_lists.to_pylist()[:50] == old_lists.to_pylist()[:50] and len(new_lists) == len(old_lists)
    build_new = timed(args.repeats, lambda: trl_view.image_lists(image))
    build_old = timed(args.repeats, lambda: old_layout(image))

    state = pickle.dumps(view)
    load_new = timed(args.repeats, lambda: pickle.loads(state))
    compacted = trl_view.image_lists
    trl_view.image_lists = old_layout  # what an unpickle did before
    try:
        load_old = timed(args.repeats, lambda: pickle.loads(state))
    finally:
        trl_view.image_lists = compacted

    size = os.path.getsize(path) / 2**20
    print(
        f"to_messages of {args.rows:,} rows ({args.text_only:,} text-only, {image.num_chunks} chunks, {size:.0f} MiB),"
        f" {args.repeats} repeats, seconds, median (min-max):"
    )
    print(line("first call (messages written)", first))
    print(line("later call (file reused)", again))
    print(line(f"images column, compacted ({new_lists.num_chunks:,} chunks)", build_new))
    print(line(f"images column, runs ({old_lists.num_chunks:,} chunks)", build_old))
    print(line("pickle.loads of the view, compacted", load_new))
    print(line("pickle.loads of the view, runs", load_old))
    med = statistics.median
    print(f"  ratio runs / compacted: images column {med(build_old) / med(build_new):.1f}x,", end=" ")
    print(f"pickle.loads {med(load_old) / med(load_new):.1f}x")


if __name__ == "__main__":
    main()
