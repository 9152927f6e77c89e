"""Ray Data over llava_hf datasets: rows/s of the map-style and streaming routes against the Hub Parquet export.

    RAY_USAGE_STATS_ENABLED=0 python scripts/bench_ray.py [--rows 20000] [--repeats 3] [--work DIR]

Needs `ray[data]` (and aiohttp, which `from_huggingface` imports). Builds a sample-shaped dataset (the
embedded mix665k sample's rows repeated; images are the sample's small JPEGs, so the figures are per-row
costs, not disk bandwidth), writes it as one Arrow file (what a prepared config is) and as Parquet with
~100 MB row groups (what `llava_hf.export` writes for the Hub), then reads every row through Ray in
pyarrow batches of 256, images as bytes (no decode), one local Ray worker per core. After one warm-up
read of each route, prints the median and spread of `--repeats` interleaved runs of each, side by side.

The streaming route (`from_huggingface` of an `IterableDataset`) makes Ray ask huggingface.co for the
dataset's Parquet files first, whatever the dataset is; that request is replaced by "none" here so that
the benchmark stays on this machine (and measures the read itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "llava_hf_bench_ray"))
    args = parser.parse_args()

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.data._internal.datasource.huggingface_datasource import HuggingFaceDatasource

    import llava_hf

    os.makedirs(args.work, exist_ok=True)
    sample = llava_hf.load_dataset("llava_v1_5_mix665k", sample=True, cache_dir=os.path.join(args.work, "cache"))
    table = pa.concat_tables([sample.data.table] * (args.rows // len(sample) + 1)).slice(0, args.rows)
    table = table.combine_chunks()
    arrow_path = os.path.join(args.work, "data.arrow")
    with pa.OSFile(arrow_path, "wb") as f, pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    parquet_path = os.path.join(args.work, "train-00000-of-00001.parquet")
    row_bytes = max(1, table.nbytes // table.num_rows)
    pq.write_table(table, parquet_path, row_group_size=max(1, (100 << 20) // row_bytes))
    ds = datasets.Dataset.from_file(arrow_path)

    # Ray asks the Hub for any IterableDataset's Parquet files; keep the benchmark offline (see docstring).
    HuggingFaceDatasource.list_parquet_urls_from_dataset = classmethod(lambda cls, dataset: [])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)

    def read(make) -> float:
        start = time.perf_counter()
        rows = sum(batch.num_rows for batch in make().iter_batches(batch_size=256, batch_format="pyarrow"))
        assert rows == args.rows, rows
        return args.rows / (time.perf_counter() - start)

    routes = {
        "map-style: from_huggingface(ds)": lambda: ray.data.from_huggingface(ds),
        "streaming: from_huggingface(ds.to_iterable_dataset(num_shards=8))": lambda: ray.data.from_huggingface(
            ds.to_iterable_dataset(num_shards=8)
        ),
        "Hub Parquet export: read_parquet(...)": lambda: ray.data.read_parquet(parquet_path),
    }
    for make in routes.values():
        read(make)  # warm-up: Ray starts its workers and imports on the first read of each kind
    # Interleaved repeats, so that a busy moment of the machine does not fall on one route only.
    results: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(args.repeats):
        for name, make in routes.items():
            results[name].append(read(make))
    ray.shutdown()
    print(f"{args.rows:,} rows, {os.path.getsize(arrow_path) / 2**20:.1f} MiB Arrow; rows/s, median (min-max):")
    for name, rates in results.items():
        print(f"  {name:70s} {statistics.median(rates):>10,.0f}  ({min(rates):,.0f}-{max(rates):,.0f})")


if __name__ == "__main__":
    main()
