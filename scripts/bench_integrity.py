"""What the checksums of prepared entries cost (issue 13 point 3, against issue 12's 1.3x of the floor).

    python scripts/bench_integrity.py --base /tmp/base     # /tmp/base: a checkout of the code to compare with
    python scripts/bench_integrity.py --n 2000 --repeats 5 --base /tmp/base

Prepares bench.py's synthetic corpus (`--n` photo-like JPEGs of ~130 KB, detail_23k.json) warm, num_proc=1,
each prepare in a fresh interpreter into a fresh cache folder, the variants interleaved in every repeat:

- `base`: the code at `--base` (e.g. `git archive` of the commit before the change: sha256 and crc32);
- `this`: this checkout (xxh3_128 of files, xxh3_64 of record batches and rows);
- `this, no checksums`: this checkout with `record_files` recording sizes only: the prepare without them.

After each prepare the child also times, on the entry it just wrote (warm), the recording's parts: the
file digests alone, the record batches' scan alone (per-batch and per-row digests), and `record_files`.
Every figure is the median of the repeats with its spread (min-max); the JSON goes to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the corpus, summary and helpers of the main benchmark)

ROOT = Path(__file__).resolve().parent.parent


def child(a: dict) -> dict:
    import llava_hf
    from llava_hf import builder, integrity

    bench.quiet_datasets()
    if not a["checksums"]:
        # Sizes only: what a prepare costs without the digests (check_sizes still works on such a report).
        def sizes(folder: str, names) -> dict:
            return {n: {"size": os.path.getsize(os.path.join(folder, n))} for n in names}

        builder.record_files = sizes
    started = time.perf_counter()
    b = llava_hf.load_builder(bench.CONFIG, data_dir=a["data_dir"], image_dir=a["image_dir"], cache_dir=a["cache_dir"])
    b.download_and_prepare()
    seconds = time.perf_counter() - started
    arrows = bench.arrow_files(b.cache_dir)
    parts = {}
    if a["checksums"]:
        t = time.perf_counter()
        for path in arrows:
            integrity._sha(path)
        parts["file digests"] = time.perf_counter() - t
        t = time.perf_counter()
        for path in arrows:
            try:  # this checkout: the mapped file; the code before: the path and size
                integrity._describe_batches(integrity._map(path), {})
            except TypeError:
                integrity._describe_batches(path, os.path.getsize(path), {})
        parts["batch scan"] = time.perf_counter() - t
        t = time.perf_counter()
        integrity.record_files(b.cache_dir, [os.path.basename(p) for p in arrows])
        parts["record_files"] = time.perf_counter() - t
    return {"seconds": seconds, "parts": parts, "bytes": sum(os.path.getsize(p) for p in arrows)}


def run(code: Path, args: dict, run_dir: Path) -> dict:
    out = run_dir / f"child-{time.monotonic_ns()}.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "HF_HOME": str(run_dir / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}):\n{result.stderr[-4000:]}")
    figures = json.loads(out.read_text())
    out.unlink()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llava_hf_bench"), help="corpus folder (reused)")
    parser.add_argument("--base", type=Path, help="a checkout of the code to compare with (its PYTHONPATH)")
    parser.add_argument("--n", type=int, default=2000, help="number of images (default 2000, ~256 MB)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="JSON file of all figures (default: WORK/bench_integrity.json)")
    parser.add_argument("--child", nargs=2, metavar=("ARGS", "OUT"), help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        Path(a.child[1]).write_text(json.dumps(child(json.loads(a.child[0]))))
        return 0
    if a.n < 1 or a.repeats < 1:
        parser.error(f"--n {a.n} and --repeats {a.repeats} must be at least 1")
    corpus = bench.make_corpus(a.work, a.n)
    variants = {"this": (ROOT, True), "this, no checksums": (ROOT, False)}
    if a.base is not None:
        variants = {"base": (a.base.resolve(), True), **variants}
    run_dir = bench.fresh(a.work / "integrity-run")
    run_dir.mkdir(parents=True)
    for path in corpus["image_paths"]:  # warm: the images are in the page cache for every variant
        with open(path, "rb") as f:
            f.read()
    results = {name: [] for name in variants}
    for _ in range(a.repeats):
        for name, (code, checksums) in variants.items():
            cache = bench.fresh(run_dir / "cache")
            args = {"data_dir": corpus["data_dir"], "image_dir": corpus["image_dir"], "cache_dir": str(cache)}
            results[name].append(run(code, {**args, "checksums": checksums}, run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    floor = bench.statistics.median(r["seconds"] for r in results["this, no checksums"])
    out = {"n": a.n, "bytes": results["this"][0]["bytes"], "repeats": a.repeats, "variants": {}}
    print(f"{a.n} images, {results['this'][0]['bytes'] / 1e6:.0f} MB of Arrow, warm, num_proc=1, {a.repeats} repeats")
    print(f"{'variant':<22}{'prepare s':>28}{'/ no checksums':>16}   parts (median s)")
    for name, runs in results.items():
        seconds = bench.summary([r["seconds"] for r in runs])
        parts = {k: bench.summary([r["parts"][k] for r in runs]) for k in runs[0]["parts"]}
        out["variants"][name] = {"seconds": seconds, "parts": parts}
        shown = ", ".join(f"{k} {v['median']:.3f}" for k, v in parts.items())
        cell = f"{seconds['median']:.3f} ({seconds['min']:.3f}-{seconds['max']:.3f})"
        print(f"{name:<22}{cell:>28}{seconds['median'] / floor:>15.3f}x   {shown}")
    path = a.out or a.work / "bench_integrity.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
