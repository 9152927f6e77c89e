"""Time `to_messages` of a map-style dataset: first call (messages written) and later calls (file reused).

    python scripts/bench_trl_view.py [--rows 150000] [--repeats 3] [--work DIR]

The dataset is mix665k-shaped: the embedded sample's 8 rows (7 with an image, 1 text-only) repeated to
`--rows`, written as one Arrow file in 1,000-row batches, as a prepared config is. Prints the median and
spread of the repeats.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "llava_hf_bench_trl_view"))
    args = parser.parse_args()

    import datasets
    import pyarrow as pa

    import llava_hf
    from llava_hf.formats import to_messages

    sample = llava_hf.load_dataset("llava_v1_5_mix665k", sample=True, cache_dir=os.path.join(args.work, "cache"))
    table = pa.concat_tables([sample.data.table] * (args.rows // len(sample) + 1)).slice(0, args.rows)
    folder = os.path.join(args.work, "data")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    path = os.path.join(folder, "data.arrow")
    with pa.OSFile(path, "wb") as f, pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table.combine_chunks(), max_chunksize=1000)
    ds = datasets.Dataset.from_file(path)
    first, again = [], []
    for _ in range(args.repeats):
        for name in os.listdir(folder):
            if name.startswith("llava_hf-trl-messages-"):
                os.remove(os.path.join(folder, name))
        start = time.perf_counter()
        to_messages(ds)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        view = to_messages(ds)
        again.append(time.perf_counter() - start)
    assert len(view) == args.rows
    print(f"to_messages of {args.rows:,} rows ({os.path.getsize(path) / 2**20:.0f} MiB), seconds, median (min-max):")
    for label, times in (("first call (messages written)", first), ("later call (file reused)", again)):
        print(f"  {label:32s} {statistics.median(times):6.2f}  ({min(times):.2f}-{max(times):.2f})")


if __name__ == "__main__":
    main()
