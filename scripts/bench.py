"""Benchmark llava_hf against the floor and the usual alternatives (issue 6, and issue 8 item 4).

    python scripts/bench.py --quick        # ~500 images, 2 repeats: under 2 minutes on 2 cores
    python scripts/bench.py                # the full run: 4,000 images, 150K-record memory check, 5 repeats
    python scripts/bench.py --smallest     # a few dozen images, 1 repeat (what tests/test_bench.py runs)
    python scripts/bench.py --scale        # issue 12: 558K and 665K records, 3 repeats (scripts/bench_scale.py)

It builds a synthetic COCO-like corpus in `--work` (640x480 JPEGs of ~130 KB with gradients, shapes,
texture and noise; a LLaVA-format detail_23k.json with realistic turn lengths; a zip of the same images),
reused across runs, and measures, side by side in one run:

1. the floor: read every image file once (evicted from the page cache first) and write the bytes once;
2. preparing: llava_hf from a folder and from a zip with num_proc 1 and 2, against `from_list` +
   `cast_column("image", Image())` + `save_to_disk` and `load_dataset("json")` + `map` + `save_to_disk`;
3. peak memory while preparing a big JSON with tiny images, at several sizes, against `json.load`;
4. serving: random decoded images/s and bytes-only rows/s against LLaVA's loader (`json.load` +
   `PIL.Image.open`), warm and cold, and the unique memory of 4 forked workers each touching half the rows;
5. lazy against stock open (LLAVA_HF_LAZY=1/0), each in a fresh process on evicted files: cold open,
   cold random rows, a full sequential pass, and a dataset unpickled in a spawned process;
6. fetching part of the zip over HTTP from tests/httpserver.py (20 ms a request): images/s, MB/s and bytes
   sent / bytes referenced, against the same images fetched one request at a time.

Every timing is the median of the repeats, with the spread (min-max); the table of ratios is printed and
every figure goes to a JSON file (`--out`). Each prepare and every memory or cold-open measurement runs in
a child process (this script with `--child`), so that imports, caches and memory of one measurement never
leak into the next. This module imports only the standard library at the top: a spawned process that
unpickles a dataset must not have llava_hf imported by anyone but the pickle.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

CONFIG = "detail_23k"  # a flat COCO-named instruct config: image names are file names in one folder
CORPUS_VERSION = 2  # bump when the generated corpus changes, so that cached corpora are rebuilt
IMAGE_SIZE = (640, 480)
TINY_IMAGES = 300  # distinct tiny images referenced over and over by the memory check's records

# name: (images, memory-check record counts, repeats, random rows served). The memory check's growth is
# taken between its two largest sizes: below ~60K records (~130 MB of JSON) fixed buffers are still filling.
MODES = {
    "full": (4000, (30_000, 60_000, 150_000), 5, 1000),
    "quick": (500, (30_000, 60_000), 2, 320),
    "smallest": (40, (1_000, 3_000), 1, 40),
}
# Record counts of the generated JSONL whose prepare peak RSS is compared (a file config, issue 15): the
# peak must not grow with the record count (the scan keeps a few integers per batch of 100 records).
JSONL_SIZES = {"full": (100_000, 1_000_000), "quick": (20_000, 100_000), "smallest": (1_000, 3_000)}
# MADV_WILLNEED only starts reads: wait this long after an open before counting what it made resident.
READ_SETTLE = 0.5
BATCH = 32  # DataLoader batch: torch fetches a batch from a datasets.Dataset with one __getitems__ call
# The fetch section: the corpus zip served by tests/httpserver.py (another process) with this latency per
# request and this bandwidth shared by all connections (a far server: 400 Mbit/s), and how many of its
# images a run references (a seeded random subset, like a config naming part of COCO).
FETCH_LATENCY = 0.02
FETCH_BANDWIDTH = 50e6
FETCH_IMAGES = 400

_VOCABULARY = (
    "the a an of in on at with and to is are there this that image picture photo shows man woman person "
    "people child dog cat bus car train truck street road building table plate food pizza sandwich kitchen "
    "room window door tree grass sky cloud water boat beach field sign light traffic red blue green white "
    "black yellow brown large small standing sitting walking holding looking wearing near next behind front "
    "top side left right background scene several two three many some group bowl cup chair bench laptop "
    "phone umbrella bag horse elephant giraffe zebra bird skateboard surfboard ball frisbee kite snow wall "
    "floor shirt hat jacket appears seems likely suggests because while also which where their its color "
    "clearly visible overall atmosphere activity together enjoying outdoor indoor city park area day"
)
WORDS = _VOCABULARY.split()


# --- small helpers -----------------------------------------------------------------------------------------


def summary(samples: list[float]) -> dict:
    """Median and spread of repeated measurements (the raw samples are kept for the JSON file)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Rss, Pss and unique (Private_Clean + Private_Dirty) memory of a process, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[key] = int(value.split()[0]) * 1024
    return {
        "rss": fields.get("Rss", 0),
        "pss": fields.get("Pss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def io_read_bytes() -> int | None:
    """Bytes this process caused to be read from storage (/proc/self/io), or None where unavailable."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def disk_read_bytes(path: str) -> int | None:
    """Bytes read so far by the whole block device holding `path` (/sys/dev/block/M:m/stat), or None."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            return int(f.read().split()[2]) * 512  # third field: sectors read, always 512-byte units
    except (OSError, IndexError, ValueError):
        return None


def delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def evict_files(paths: list[str]) -> bool:
    """Drop `paths` from the page cache; True when nothing of them is left resident (a cold start)."""
    from llava_hf.pagecache import evict, resident_bytes

    for path in paths:
        evict(path)
    # Checking a sample is enough to tell whether this system honours DONTNEED at all.
    sample = paths if len(paths) <= 50 else random.Random(0).sample(paths, 50)
    return sum(resident_bytes(p) for p in sample) == 0


def resident(paths: list[str]) -> int:
    from llava_hf.pagecache import resident_bytes

    return sum(resident_bytes(p) for p in paths)


def arrow_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.arrow")))


def quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def mb(n: float | None) -> float | None:
    return None if n is None else n / 1e6


# --- the corpus -------------------------------------------------------------------------------------------


def _picture(seed: int) -> bytes:
    """One 640x480 JPEG that compresses like a photo: smooth gradients, shapes, texture and sensor noise."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = IMAGE_SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pixels = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, offset = rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(40, 200)
        pixels[..., c] = offset + a * (x - w / 2) + b * (y - h / 2)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 24))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(20, 260)), y0 + int(rng.integers(20, 200))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    # Coarse texture (objects, foliage) upscaled, then per-pixel noise: the noise level spreads the sizes.
    texture = Image.fromarray(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    mixed = np.asarray(image, np.float32) * 0.8 + np.asarray(texture, np.float32) * 0.2
    mixed += rng.normal(0, rng.uniform(7, 19), (h, w, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _tiny_picture(seed: int) -> bytes:
    import io

    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def _write_pictures(job: tuple[str, list[int], bool]) -> int:
    folder, seeds, tiny = job
    total = 0
    for seed in seeds:
        data = _tiny_picture(seed) if tiny else _picture(seed)
        with open(os.path.join(folder, image_name(seed)), "wb") as f:
            f.write(data)
        total += len(data)
    return total


def image_name(i: int) -> str:
    return f"{i:012d}.jpg"  # COCO train2017 names


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    return " ".join(words).capitalize() + "."


def _record(rng: random.Random, image: str) -> dict:
    """A LLaVA record: `<image>` at the start or end of a 10-30 word question, 50-300 word answers,
    and for a third of the records (as in conversation_58k) 2-4 further exchanges."""
    question = _sentence(rng, 10, 30)
    first = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
    turns = [{"from": "human", "value": first}, {"from": "gpt", "value": _sentence(rng, 50, 300)}]
    if rng.random() < 1 / 3:
        for _ in range(rng.randint(2, 4)):
            turns.append({"from": "human", "value": _sentence(rng, 8, 25)})
            turns.append({"from": "gpt", "value": _sentence(rng, 30, 150)})
    return {"id": image[:-4], "image": image, "conversations": turns}


def _manifest_matches(folder: Path, expected: dict) -> bool:
    try:
        return json.loads((folder / "corpus.json").read_text())["key"] == expected
    except (OSError, ValueError, KeyError):
        return False


def make_corpus(work: Path, n: int) -> dict:
    """N photo-like JPEGs, detail_23k.json (one record per image) and images.zip; reused when present."""
    folder = work / f"corpus-{n}"
    key = {"version": CORPUS_VERSION, "n": n}
    if not _manifest_matches(folder, key):
        shutil.rmtree(folder, ignore_errors=True)
        images = folder / "images"
        images.mkdir(parents=True)
        started = time.perf_counter()
        workers = os.cpu_count() or 1
        jobs = [(str(images), list(range(k, n, workers * 4)), False) for k in range(workers * 4)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_write_pictures, jobs)
        rng = random.Random(n)
        records = [_record(rng, image_name(i)) for i in range(n)]
        (folder / "data").mkdir()
        with open(folder / "data" / f"{CONFIG}.json", "w") as f:
            json.dump(records, f, indent=2)
        # Stored, like LLaVA's archives, no root folder: deflate gains ~1% on JPEG and would add inflate time.
        with zipfile.ZipFile(folder / "images.zip", "w", zipfile.ZIP_STORED) as zf:
            for i in range(n):
                zf.write(images / image_name(i), image_name(i))
        (folder / "corpus.json").write_text(
            json.dumps({"key": key, "seconds": round(time.perf_counter() - started, 1)})
        )
    paths = [str(folder / "images" / image_name(i)) for i in range(n)]
    payload = sum(os.path.getsize(p) for p in paths)
    return {
        "n": n,
        "folder": str(folder),
        "data_dir": str(folder / "data"),
        "json": str(folder / "data" / f"{CONFIG}.json"),
        "image_dir": str(folder / "images"),
        "zip": str(folder / "images.zip"),
        "image_paths": paths,
        "payload_bytes": payload,
        "json_bytes": os.path.getsize(folder / "data" / f"{CONFIG}.json"),
        "mean_image_kb": payload / n / 1e3,
    }


def tiny_images(work: Path) -> Path:
    """The folder of TINY_IMAGES tiny JPEGs the memory checks' records point to (made once)."""
    images = work / "tiny-images"
    if not _manifest_matches(images, {"version": CORPUS_VERSION, "n": TINY_IMAGES}):
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        _write_pictures((str(images), list(range(TINY_IMAGES)), True))
        (images / "corpus.json").write_text(json.dumps({"key": {"version": CORPUS_VERSION, "n": TINY_IMAGES}}))
    return images


def make_memory_corpus(work: Path, records: int) -> dict:
    """A `records`-record detail_23k.json over TINY_IMAGES tiny JPEGs: text-heavy, like the real 150K file."""
    images = tiny_images(work)
    folder = work / f"memory-{records}"
    key = {"version": CORPUS_VERSION, "records": records}
    if not _manifest_matches(folder, key):
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "data").mkdir(parents=True)
        # A pool of generated records, given fresh ids: generating 150K records word by word is slow,
        # and json.load builds a new object for every value anyway, repeated text or not.
        rng = random.Random(records)
        pool = [_record(rng, image_name(i % TINY_IMAGES)) for i in range(2000)]
        with open(folder / "data" / f"{CONFIG}.json", "w") as f:
            f.write("[\n")
            for i in range(records):
                record = dict(pool[i % len(pool)], id=f"{i:012d}", image=image_name(i % TINY_IMAGES))
                f.write(json.dumps(record, indent=2))
                f.write(",\n" if i < records - 1 else "\n")
            f.write("]\n")
        (folder / "corpus.json").write_text(json.dumps({"key": key}))
    path = folder / "data" / f"{CONFIG}.json"
    return {
        "records": records,
        "data_dir": str(folder / "data"),
        "json": str(path),
        "image_dir": str(images),
        "json_bytes": os.path.getsize(path),
    }


def make_jsonl_corpus(work: Path, records: int) -> dict:
    """A `records`-record JSON Lines file of short LLaVA records over the TINY_IMAGES tiny JPEGs (every
    tenth with two images, LLaVA-NeXT's list form), for the memory check of file configs."""
    images = tiny_images(work)
    folder = work / f"jsonl-{records}"
    key = {"version": CORPUS_VERSION, "records": records}
    path = folder / "my_data.jsonl"
    if not _manifest_matches(folder, key):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with open(path, "w") as f:
            for i in range(records):
                if i % 10 == 9:  # every tenth record has two images, LLaVA-NeXT's list form
                    image = [image_name(i % TINY_IMAGES), image_name((i + 1) % TINY_IMAGES)]
                    question = "<image>\n<image>\nWhat differs between the two pictures?"
                else:
                    image = image_name(i % TINY_IMAGES)
                    question = "<image>\nWhat is in the picture?"
                turns = [{"from": "human", "value": question}, {"from": "gpt", "value": f"Picture number {i}."}]
                f.write(json.dumps({"id": f"{i:09d}", "image": image, "conversations": turns}) + "\n")
        (folder / "corpus.json").write_text(json.dumps({"key": key}))
    return {
        "records": records,
        "json": str(path),
        "image_dir": str(images),
        "json_bytes": os.path.getsize(path),
    }


# --- children: each measurement that must start fresh runs in its own process -------------------------------


def run_child(task: str, args: dict, run_dir: Path, env: dict | None = None) -> dict:
    """Run `task` in a fresh interpreter (this script with --child) and return the figures it wrote."""
    out = run_dir / f"child-{task}-{time.monotonic_ns()}.json"
    child_env = {
        **os.environ,
        "HF_HOME": str(run_dir / "hf_home"),  # nothing of the benchmark lands in the user's caches
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        **(env or {}),
    }
    command = [sys.executable, os.path.abspath(__file__), "--child", task, json.dumps(args), str(out)]
    result = subprocess.run(command, env=child_env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"child {task} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    figures = json.loads(out.read_text())
    out.unlink()
    return figures


def child_prepare_llava_hf(a: dict) -> dict:
    import llava_hf

    quiet_datasets()
    started = time.perf_counter()
    io0 = io_read_bytes()
    builder = llava_hf.load_builder(CONFIG, data_dir=a["data_dir"], image_dir=a["image_dir"], cache_dir=a["cache_dir"])
    builder.download_and_prepare(num_proc=a["num_proc"])
    seconds = time.perf_counter() - started
    files = arrow_files(builder.cache_dir)
    return {
        "seconds": seconds,
        "output_bytes": sum(os.path.getsize(f) for f in files),
        "read_bytes": delta(io_read_bytes(), io0),
        "cache": builder.cache_dir,
    }


def _embedded(folder: str) -> bool:
    """Whether a saved dataset holds image bytes (not only paths)."""
    import pyarrow as pa

    with open(arrow_files(folder)[0], "rb") as f:
        table = pa.ipc.open_stream(f).read_all()
    return table.column("image").combine_chunks().field("bytes").null_count == 0


def child_prepare_from_list(a: dict) -> dict:
    """What users write: json.load, a path per row, cast to Image(), save_to_disk (which, in datasets 5.x,
    embeds the bytes of local image files: ArrowWriter(embed_local_files=True))."""
    import datasets

    quiet_datasets()
    started = time.perf_counter()
    with open(a["json"]) as f:
        records = json.load(f)
    rows = [
        {"id": r["id"], "image": os.path.join(a["image_dir"], r["image"]), "conversations": r["conversations"]}
        for r in records
    ]
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    ds.save_to_disk(a["out"])
    seconds = time.perf_counter() - started
    files = arrow_files(a["out"])
    return {"seconds": seconds, "output_bytes": sum(os.path.getsize(f) for f in files), "embedded": _embedded(a["out"])}


def child_prepare_json_map(a: dict) -> dict:
    """load_dataset("json") on the LLaVA file, a batched map that reads each image's bytes, save_to_disk."""
    import datasets

    quiet_datasets()
    started = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=a["json"], split="train", cache_dir=a["cache_dir"])
    features = ds.features.copy()
    features["image"] = datasets.Image()
    folder = a["image_dir"]

    def add_bytes(batch):
        images = []
        for name in batch["image"]:
            with open(os.path.join(folder, name), "rb") as f:
                images.append({"bytes": f.read(), "path": name})
        return {"image": images}

    ds = ds.map(add_bytes, batched=True, features=features)
    ds.save_to_disk(a["out"])
    seconds = time.perf_counter() - started
    files = arrow_files(a["out"])
    return {"seconds": seconds, "output_bytes": sum(os.path.getsize(f) for f in files), "embedded": _embedded(a["out"])}


def child_prepare_memory(a: dict) -> dict:
    """Peak RSS of one in-process prepare (num_proc=1, so everything it holds is in this process)."""
    import gc

    import llava_hf

    quiet_datasets()
    gc.collect()
    base = proc_status()["VmRSS"]
    started = time.perf_counter()
    builder = llava_hf.load_builder(CONFIG, data_dir=a["data_dir"], image_dir=a["image_dir"], cache_dir=a["cache_dir"])
    builder.download_and_prepare()
    seconds = time.perf_counter() - started
    peak = proc_status()["VmHWM"]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"seconds": seconds, "base": base, "peak": max(peak, maxrss), "cache": builder.cache_dir}


def child_prepare_files_memory(a: dict) -> dict:
    """Peak RSS of one in-process prepare of a file config (a JSONL given as data_files, num_proc=1)."""
    import gc

    import llava_hf

    quiet_datasets()
    gc.collect()
    base = proc_status()["VmRSS"]
    started = time.perf_counter()
    builder = llava_hf.load_builder(a["json"], image_dir=a["image_dir"], cache_dir=a["cache_dir"])
    builder.download_and_prepare()
    seconds = time.perf_counter() - started
    peak = proc_status()["VmHWM"]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    rows = builder.info.splits["train"].num_examples
    return {"seconds": seconds, "base": base, "peak": max(peak, maxrss), "rows": rows}


def child_json_load_memory(a: dict) -> dict:
    base = proc_status()["VmRSS"]
    started = time.perf_counter()
    with open(a["json"]) as f:
        records = json.load(f)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "base": base, "peak": proc_status()["VmHWM"], "records": len(records)}


def _touch_rows(k: int, data, kind: str, image_dir: str, fraction: float, conn) -> None:
    """A forked DataLoader-style worker: read a random `fraction` of the rows (text and image bytes),
    report this process's memory, then wait until every sibling has reported."""
    n = len(data)
    picks = random.Random(k).sample(range(n), int(n * fraction))
    started = time.perf_counter()
    total = 0
    if kind == "arrow":
        # DataLoader fetches a batch of indices at once through Dataset.__getitems__.
        for start in range(0, len(picks), BATCH):
            batch = data[picks[start : start + BATCH]]
            total += sum(len(image["bytes"]) for image in batch["image"])
            total += sum(len(turn["value"]) for turns in batch["conversations"] for turn in turns)
    else:
        for i in picks:
            record = data[i]
            total += sum(len(turn["value"]) for turn in record["conversations"])
            with open(os.path.join(image_dir, record["image"]), "rb") as f:
                total += len(f.read())
    conn.send({"seconds": time.perf_counter() - started, "rows": len(picks), **smaps_rollup()})
    conn.recv()  # stay alive (and sharing) until the parent has everyone's figures
    os._exit(0)


def child_worker_memory(a: dict) -> dict:
    """Load the dataset (Arrow) or the records (json.load), then fork 4 workers that each touch half the rows."""
    if a["kind"] == "arrow":
        import datasets

        import llava_hf

        quiet_datasets()
        ds = llava_hf.load_dataset(CONFIG, data_dir=a["data_dir"], image_dir=a["image_dir"], cache_dir=a["cache_dir"])
        data = ds.cast_column("image", datasets.Image(decode=False))  # bytes as stored: the sampler's view
    else:
        with open(a["json"]) as f:
            data = json.load(f)
    parent = smaps_rollup()
    context = multiprocessing.get_context("fork")
    links, workers = [], []
    for k in range(a["workers"]):
        mine, theirs = context.Pipe()
        worker = context.Process(target=_touch_rows, args=(k, data, a["kind"], a["image_dir"], a["fraction"], theirs))
        worker.start()
        links.append(mine)
        workers.append(worker)
    reports = [link.recv() for link in links]
    for link in links:
        link.send("exit")
    for worker in workers:
        worker.join()
    return {"parent": parent, "workers": reports}


def _open_dataset(a: dict):
    import llava_hf

    return llava_hf.load_dataset(CONFIG, data_dir=a["data_dir"], image_dir=a["image_dir"], cache_dir=a["cache_dir"])


def _read_random_rows(ds, picks: list[int]) -> tuple[float, int]:
    """Seconds to read `picks` one by one as Arrow rows (the stored bytes, nothing decoded), and their payload."""
    raw = ds.with_format("arrow")
    payload = 0
    started = time.perf_counter()
    for i in picks:
        row = raw[i]
        payload += row.column("image")[0]["bytes"].as_buffer().size
        payload += sum(len(t["value"]) for t in row.column("conversations")[0].as_py())
    return time.perf_counter() - started, payload


def _spawned_unpickle(blob: bytes, files: list[str], picks: list[int], conn) -> None:
    """In a spawned process: unpickle the dataset (as a spawned DataLoader worker does), see what it read."""
    import pickle

    before = "llava_hf" in sys.modules
    started = time.perf_counter()
    ds = pickle.loads(blob)
    seconds = time.perf_counter() - started
    imported = "llava_hf" in sys.modules  # brought in by the pickle, not by this function
    time.sleep(READ_SETTLE)
    after_open = resident(files)
    row_seconds, payload = _read_random_rows(ds, picks)
    conn.send(
        {
            "llava_hf_imported_before": before,
            "llava_hf_imported_by_pickle": imported and not before,
            "open_seconds": seconds,
            "resident_after_open": after_open,
            "row_seconds": row_seconds,
            "rows_read": resident(files) - after_open,
            "rows_payload": payload,
        }
    )


def child_open(a: dict) -> dict:
    """Cold open, then cold random rows (files evicted again after the open), then a spawned unpickle.

    Lazy or stock is decided by LLAVA_HF_LAZY in this process's environment; the parent evicted the files.
    """
    import pickle

    quiet_datasets()
    files = a["files"]
    total = sum(os.path.getsize(f) for f in files)
    io0, disk0 = io_read_bytes(), disk_read_bytes(files[0])
    started = time.perf_counter()
    ds = _open_dataset(a)
    open_seconds = time.perf_counter() - started
    time.sleep(READ_SETTLE)
    io1, disk1 = io_read_bytes(), disk_read_bytes(files[0])
    open_resident = resident(files)
    # A spawned process unpickling the dataset, on cold files (before this process maps any row: pages
    # mapped here could not be evicted).
    spawned_cold = evict_files(files)
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    picks = random.Random(1).sample(range(len(ds)), a["rows"])
    worker = context.Process(target=_spawned_unpickle, args=(pickle.dumps(ds), files, picks, theirs))
    worker.start()
    spawned = {**mine.recv(), "cold": spawned_cold}
    worker.join()
    # Random rows from cold: stock's open has read the file, so evict again for both; only the pages this
    # process has mapped stay (the headers), which is what a dataset opened long ago looks like.
    evict_files(files)
    before_rows = resident(files)
    io_rows = io_read_bytes()
    row_seconds, payload = _read_random_rows(ds, picks)
    rows_read = resident(files) - before_rows
    io2 = io_read_bytes()
    return {
        "file_bytes": total,
        "open_seconds": open_seconds,
        "open_resident": open_resident,
        "open_io_read_bytes": delta(io1, io0),
        "open_disk_read_bytes": delta(disk1, disk0),
        "rows": a["rows"],
        "row_seconds": row_seconds,
        "rows_resident_before": before_rows,
        "rows_read": rows_read,
        "rows_io_read_bytes": delta(io2, io_rows),
        "rows_payload": payload,
        "spawned": spawned,
    }


def child_sequential(a: dict) -> dict:
    """Cold open plus one pass over every row that touches every image byte (crc32), as Arrow batches."""
    quiet_datasets()
    files = a["files"]
    io0, disk0 = io_read_bytes(), disk_read_bytes(files[0])
    started = time.perf_counter()
    ds = _open_dataset(a)
    opened = time.perf_counter()
    crc, payload = 0, 0
    for batch in ds.with_format("arrow").iter(batch_size=100):
        for chunk in batch.column("image").chunks:
            for value in chunk.field("bytes"):
                buffer = value.as_buffer()
                crc = zlib.crc32(buffer, crc)
                payload += buffer.size
    done = time.perf_counter()
    return {
        "open_seconds": opened - started,
        "pass_seconds": done - opened,
        "seconds": done - started,
        "payload": payload,
        "crc": crc,
        "io_read_bytes": delta(io_read_bytes(), io0),
        "disk_read_bytes": delta(disk_read_bytes(files[0]), disk0),
    }


def _server_stats(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/_stats") as response:  # the local server only
        return json.loads(response.read())


def child_fetch(a: dict) -> dict:
    """Fetch `names` from the zip at `url`: through ZipRoot.read_many (merged spans, requests in flight), or
    with `serial` one request per image, one after the other (the baseline). The directory is read first
    and timed apart; the server's counters give the requests and bytes of each phase."""
    import hashlib

    from llava_hf.images import ZipRoot
    from llava_hf.remote import HttpFile
    from llava_hf.zipdir import ZipDirectory, read_member

    url, names = a["url"], a["names"]
    transport = HttpFile(url) if not a["serial"] else HttpFile(url, concurrency=1)
    s0 = _server_stats(url)
    started = time.perf_counter()
    if a["serial"]:
        directory = ZipDirectory.from_transport(transport, url)
    else:
        root = ZipRoot(url, transport=transport)
        root._open()  # the directory, timed apart from the members
    s1 = _server_stats(url)
    opened = time.perf_counter()
    digest, images, payload = hashlib.sha256(), 0, 0
    if a["serial"]:
        for name in names:
            entry = directory.entry(directory.find(name))
            span = transport.read_at(entry.header_offset, entry.span_end - entry.header_offset)
            data = read_member(entry, span, entry.header_offset, f"{name} in {url}")
            digest.update(data)
            images, payload = images + 1, payload + len(data)
    else:
        for result in root.read_many(names):
            if not isinstance(result, tuple):
                raise RuntimeError(f"fetch failed: {result}")
            digest.update(result[1])
            images, payload = images + 1, payload + len(result[1])
    done = time.perf_counter()
    s2 = _server_stats(url)
    return {
        "directory_seconds": opened - started,
        "directory_requests": s1["requests"] - s0["requests"],
        "directory_bytes": s1["bytes_sent"] - s0["bytes_sent"],
        "seconds": done - opened,
        "requests": s2["requests"] - s1["requests"],
        "bytes_sent": s2["bytes_sent"] - s1["bytes_sent"],
        "images": images,
        "payload": payload,
        "sha256": digest.hexdigest(),
    }


CHILDREN = {
    "fetch": child_fetch,
    "prepare_llava_hf": child_prepare_llava_hf,
    "prepare_from_list": child_prepare_from_list,
    "prepare_json_map": child_prepare_json_map,
    "prepare_memory": child_prepare_memory,
    "prepare_files_memory": child_prepare_files_memory,
    "json_load_memory": child_json_load_memory,
    "worker_memory": child_worker_memory,
    "open": child_open,
    "sequential": child_sequential,
}


# --- the measurements, run from the parent ----------------------------------------------------------------


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def settle() -> None:
    """Write back what earlier steps left dirty, so that it does not compete with the next measurement."""
    os.sync()


def measure_floor(corpus: dict, run_dir: Path, repeats: int) -> dict:
    """Read every image file once (cold) and write all the bytes once to one file beside the caches."""
    target = run_dir / "floor.bin"
    seconds, cold = [], True
    for _ in range(repeats):
        settle()
        cold &= evict_files(corpus["image_paths"])
        started = time.perf_counter()
        with open(target, "wb") as out:
            for path in corpus["image_paths"]:
                with open(path, "rb") as f:
                    out.write(f.read())
        seconds.append(time.perf_counter() - started)
        target.unlink()
    # Writes go to the page cache and are not synced, as with every prepare measured here.
    return {"seconds": summary(seconds), "cold": cold}


def measure_prepare(corpus: dict, run_dir: Path, repeats: int) -> dict:
    """Each way of preparing, cold (inputs evicted) into a fresh output folder, repeats interleaved."""
    inputs = [*corpus["image_paths"], corpus["zip"], corpus["json"]]
    variants = {
        "llava_hf folder, num_proc=1": ("prepare_llava_hf", {"image_dir": corpus["image_dir"], "num_proc": None}),
        "llava_hf folder, num_proc=2": ("prepare_llava_hf", {"image_dir": corpus["image_dir"], "num_proc": 2}),
        "llava_hf zip, num_proc=1": ("prepare_llava_hf", {"image_dir": corpus["zip"], "num_proc": None}),
        "llava_hf zip, num_proc=2": ("prepare_llava_hf", {"image_dir": corpus["zip"], "num_proc": 2}),
        "from_list + cast_column + save_to_disk": ("prepare_from_list", {"image_dir": corpus["image_dir"]}),
        'load_dataset("json") + map + save_to_disk': ("prepare_json_map", {"image_dir": corpus["image_dir"]}),
    }
    results = {name: [] for name in variants}
    cold = True
    kept = None
    for _ in range(repeats):
        for name, (task, extra) in variants.items():
            folder = fresh(run_dir / f"prepare-{len(results[name])}-{task}")
            args = {
                "data_dir": corpus["data_dir"],
                "json": corpus["json"],
                "cache_dir": str(folder / "cache"),
                "out": str(folder / "saved"),
                **extra,
            }
            settle()
            cold &= evict_files(inputs)
            results[name].append(run_child(task, args, run_dir))
            if kept is None and name == "llava_hf folder, num_proc=1":
                kept = folder  # the dataset served in the serving and lazy-open measurements
            else:
                shutil.rmtree(folder, ignore_errors=True)
    out = {}
    for name, runs in results.items():
        out[name] = {
            "seconds": summary([r["seconds"] for r in runs]),
            "output_bytes": runs[-1]["output_bytes"],
            **({"embedded": all(r["embedded"] for r in runs)} if "embedded" in runs[-1] else {}),
        }
    # The first llava_hf folder prepare is kept: `cache` is its cache_dir, `folder` the builder's folder in it.
    served = {"cache": str(kept / "cache"), "folder": results["llava_hf folder, num_proc=1"][0]["cache"]}
    return {"variants": out, "cold": cold, "served": served}


def measure_memory(work: Path, run_dir: Path, sizes: tuple[int, ...]) -> dict:
    """Peak RSS of preparing `sizes` records (tiny images) in a child, and of json.load of the same file."""
    out = {"sizes": []}
    for records in sizes:
        corpus = make_memory_corpus(work, records)
        cache = fresh(run_dir / f"memory-{records}")
        settle()
        prepared = run_child(
            "prepare_memory",
            {"data_dir": corpus["data_dir"], "image_dir": corpus["image_dir"], "cache_dir": str(cache)},
            run_dir,
        )
        loaded = run_child("json_load_memory", {"json": corpus["json"]}, run_dir)
        out["sizes"].append({**corpus, "prepare": prepared, "json_load": loaded, "cache_root": str(cache)})
        if len(out["sizes"]) > 1:  # only the largest is kept, for the worker memory measurement
            shutil.rmtree(out["sizes"][-2]["cache_root"], ignore_errors=True)
    small, big = out["sizes"][-2], out["sizes"][-1]
    grown = (big["prepare"]["peak"] - small["prepare"]["peak"]) / (big["records"] - small["records"]) * 100_000
    out["growth_per_100k_records"] = grown
    out["growth_between"] = [small["records"], big["records"]]
    return out


def measure_files_memory(work: Path, run_dir: Path, sizes: tuple[int, ...]) -> dict:
    """Peak RSS of preparing a generated JSONL file config at `sizes` records, each in a fresh child."""
    out = {"sizes": []}
    for records in sizes:
        corpus = make_jsonl_corpus(work, records)
        cache = fresh(run_dir / f"files-memory-{records}")
        settle()
        prepared = run_child(
            "prepare_files_memory",
            {"json": corpus["json"], "image_dir": corpus["image_dir"], "cache_dir": str(cache)},
            run_dir,
        )
        if prepared["rows"] != records:
            raise RuntimeError(f"the {records:,}-record JSONL prepared into {prepared['rows']:,} rows")
        out["sizes"].append({**corpus, "prepare": prepared})
        shutil.rmtree(cache, ignore_errors=True)
    small, big = out["sizes"][0], out["sizes"][-1]
    grown = (big["prepare"]["peak"] - small["prepare"]["peak"]) / (big["records"] - small["records"]) * 100_000
    out["growth_per_100k_records"] = grown
    out["growth_between"] = [small["records"], big["records"]]
    return out


def measure_serving(corpus: dict, cache_root: str, repeats: int, rows: int) -> dict:
    """Random decoded images/s and bytes-only rows/s, llava_hf (lazy open) against LLaVA's loader."""
    import gc

    import datasets
    from PIL import Image

    import llava_hf

    quiet_datasets()
    opened = {}

    def reopen() -> None:
        # A cold run needs the dataset closed while its files are evicted: pages mapped into this process
        # cannot be dropped from the page cache. Opening again is cheap (headers only), and not timed.
        opened.clear()
        gc.collect()
        ds = llava_hf.load_dataset(
            CONFIG, data_dir=corpus["data_dir"], image_dir=corpus["image_dir"], cache_dir=cache_root
        )
        opened.update(ds=ds, raw=ds.cast_column("image", datasets.Image(decode=False)))

    reopen()
    files = [c["filename"] for c in opened["ds"].cache_files]
    with open(corpus["json"]) as f:
        records = json.load(f)
    folder = corpus["image_dir"]
    picks = random.Random(0).sample(range(len(records)), min(rows, len(records)))

    def arrow_decoded():
        ds = opened["ds"]
        for i in picks:
            ds[i]["image"].convert("RGB")

    def arrow_decoded_batches():
        ds = opened["ds"]
        for start in range(0, len(picks), BATCH):
            for row in ds.__getitems__(picks[start : start + BATCH]):
                row["image"].convert("RGB")

    def llava_decoded():
        # LLaVA's LazySupervisedDataset.__getitem__ (minus the tokenising); DataLoader calls it per index.
        for i in picks:
            record = records[i]
            Image.open(os.path.join(folder, record["image"])).convert("RGB")

    def arrow_bytes():
        raw = opened["raw"]
        for i in picks:
            raw[i]

    def arrow_bytes_batches():
        raw = opened["raw"]
        for start in range(0, len(picks), BATCH):
            raw.__getitems__(picks[start : start + BATCH])

    def llava_bytes():
        for i in picks:
            record = records[i]
            with open(os.path.join(folder, record["image"]), "rb") as f:
                f.read()

    # who: (function, files it reads, whether this process maps them)
    ways = {
        "decoded": {
            "llava_hf ds[i]": (arrow_decoded, files, True),
            f"llava_hf batches of {BATCH}": (arrow_decoded_batches, files, True),
            "LLaVA": (llava_decoded, corpus["image_paths"], False),
        },
        "bytes": {
            "llava_hf ds[i]": (arrow_bytes, files, True),
            f"llava_hf batches of {BATCH}": (arrow_bytes_batches, files, True),
            "LLaVA": (llava_bytes, corpus["image_paths"], False),
        },
    }
    out = {"rows": len(picks), "contenders": list(ways["decoded"])}
    for temperature in ("warm", "cold"):
        for what, contenders in ways.items():
            rates = {who: [] for who in contenders}
            cold = True
            for repeat in range(repeats):
                for who, (fn, paths, mapped) in contenders.items():
                    if temperature == "cold":
                        settle()
                        if mapped:
                            opened.clear()
                            gc.collect()
                        cold &= evict_files(paths)
                        if mapped:
                            reopen()
                    elif repeat == 0:
                        fn()  # a first pass makes it warm
                    started = time.perf_counter()
                    fn()
                    rates[who].append(len(picks) / (time.perf_counter() - started))
            out[f"{what} {temperature}"] = {
                **{who: summary(r) for who, r in rates.items()},
                "cold": cold if temperature == "cold" else False,
            }
    return out


def measure_worker_memory(memory: dict, run_dir: Path) -> dict:
    """4 forked workers each touching half the rows: unique memory per worker, Arrow against json.load."""
    big = memory["sizes"][-1]
    common = {"image_dir": big["image_dir"], "workers": 4, "fraction": 0.5}
    arrow = run_child(
        "worker_memory",
        {"kind": "arrow", "data_dir": big["data_dir"], "cache_dir": big["cache_root"], **common},
        run_dir,
    )
    listed = run_child("worker_memory", {"kind": "json", "json": big["json"], **common}, run_dir)
    return {"records": big["records"], "arrow": arrow, "json_load": listed}


def measure_lazy(corpus: dict, cache_root: str, cache_folder: str, run_dir: Path, repeats: int, rows: int) -> dict:
    """Lazy (LLAVA_HF_LAZY=1) against stock (=0) open, each in a fresh process on evicted files."""
    files = arrow_files(cache_folder)
    args = {
        "data_dir": corpus["data_dir"],
        "image_dir": corpus["image_dir"],
        "cache_dir": cache_root,
        "files": files,
        "rows": min(rows, corpus["n"]),
    }
    out = {"file_bytes": sum(os.path.getsize(f) for f in files), "open": {}, "sequential": {}}
    cold = True
    for _ in range(repeats):
        for mode, flag in (("lazy", "1"), ("stock", "0")):
            for task in ("open", "sequential"):
                settle()
                cold &= evict_files(files)
                out[task].setdefault(mode, []).append(run_child(task, args, run_dir, env={"LLAVA_HF_LAZY": flag}))
    out["cold"] = cold
    crcs = {r["crc"] for runs in out["sequential"].values() for r in runs}
    out["same_bytes"] = len(crcs) == 1
    return out


def fetch_names(corpus: dict) -> list[str]:
    """The images the fetch section references: a seeded random subset of the zip, in JSON order."""
    k = min(FETCH_IMAGES, max(1, corpus["n"] // 2))
    return [image_name(i) for i in sorted(random.Random(corpus["n"]).sample(range(corpus["n"]), k))]


def measure_fetch(corpus: dict, run_dir: Path, repeats: int) -> dict:
    """The corpus zip over HTTP from tests/httpserver.py in another process (FETCH_LATENCY per request,
    FETCH_BANDWIDTH shared): llava_hf's read_many against one request per image, repeats interleaved; and
    llava_hf from the same server with no latency and no cap, the ceiling of this machine (client and
    server share its cores)."""
    from llava_hf.images import LocalFile
    from llava_hf.remote import DEFAULT_CONCURRENCY
    from llava_hf.zipdir import ZipDirectory

    names = fetch_names(corpus)
    local = ZipDirectory.from_transport(LocalFile(corpus["zip"]), corpus["zip"])
    entries = [local.entry(local.find(name)) for name in names]
    runs = {"llava_hf": [], "one request at a time": [], "llava_hf, no latency, no cap": []}
    with _http_server(corpus, FETCH_LATENCY, FETCH_BANDWIDTH) as url, _http_server(corpus, 0, None) as fast_url:
        for _ in range(repeats):
            for way in runs:
                args = {"url": fast_url if "no cap" in way else url, "names": names, "serial": "one" in way}
                runs[way].append(run_child("fetch", args, run_dir))
    return {
        "names": len(names),
        "referenced_bytes": sum(e.span_end - e.header_offset for e in entries),
        "payload_bytes": sum(e.file_size for e in entries),
        "latency": FETCH_LATENCY,
        "bandwidth": FETCH_BANDWIDTH,
        "concurrency": DEFAULT_CONCURRENCY,
        "runs": runs,
        "same_bytes": len({r["sha256"] for way in runs.values() for r in way}) == 1,
    }


@contextlib.contextmanager
def _http_server(corpus: dict, latency: float, bandwidth: float | None):
    """The URL of the corpus zip on tests/httpserver.py, run in its own process for the block."""
    script = Path(__file__).resolve().parent.parent / "tests" / "httpserver.py"
    command = [sys.executable, str(script), str(Path(corpus["zip"]).parent), "--latency", str(latency)]
    if bandwidth:
        command += ["--bandwidth", str(bandwidth)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield server.stdout.readline().strip() + Path(corpus["zip"]).name
    finally:
        server.terminate()
        server.wait(timeout=10)


def fetch_limit_seconds(run: dict, fetch: dict) -> float:
    """The least time a fetch of these requests and bytes could take: requests at `concurrency` in flight,
    each a round trip of `latency`, or the bytes through the shared bandwidth, whichever binds."""
    return max(run["requests"] * fetch["latency"] / fetch["concurrency"], run["bytes_sent"] / fetch["bandwidth"])


# --- report --------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def spread(s: dict, digits: int = 2) -> str:
    """ "median (min-max)" of a summary()."""
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  " + "  ".join(cells).rstrip())


def _state(cold: bool) -> str:
    return "cold" if cold else "warm (the page cache could not be dropped)"


def median_of(values) -> float | None:
    """The median of the values that were measured (None where a figure is not available here)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def report_header(results: dict) -> None:
    corpus, m = results["corpus"], results["machine"]
    print(
        f"\nllava_hf benchmark, {results['mode']}: {corpus['n']:,} images ({corpus['payload_bytes'] / 1e6:.0f} MB, "
        f"mean {corpus['mean_image_kb']:.0f} KB), {results['repeats']} repeats; median (min-max)\n"
        f"{m['date']}, llava_hf {m.get('llava_hf_commit')}: {m['nproc']} CPUs, {m.get('ram_gb')} GB RAM, "
        f"{m['disk']}, Linux {m['kernel']}, Python {m['python']}, datasets {m['datasets']}, pyarrow {m['pyarrow']}"
    )


def report_prepare(results: dict) -> None:
    corpus, floor, prep = results["corpus"], results["floor"], results["prepare"]
    payload, n = corpus["payload_bytes"], corpus["n"]
    floor_s = floor["seconds"]["median"]
    print_table(
        f"[1] floor: read every image file once and write the bytes once ({_state(floor['cold'])})",
        ["", "seconds", "MB/s"],
        [["read + write", spread(floor["seconds"]), fmt(payload / 1e6 / floor_s)]],
    )
    rows = []
    for name, v in prep["variants"].items():
        s = v["seconds"]["median"]
        embedded = "" if v.get("embedded", True) else "  (paths only!)"
        rows.append([name + embedded, spread(v["seconds"]), fmt(n / s, 0), fmt(payload / 1e6 / s), fmt(s / floor_s)])
    print_table(
        f"[2] prepare {n:,} records ({_state(prep['cold'])}: inputs evicted, fresh output each run)",
        ["", "seconds", "examples/s", "MB/s", "x floor"],
        rows,
    )
    print(
        "  from_list: image paths, cast to Image(); save_to_disk embeds the files' bytes (datasets 5.x).\n"
        "  json + map: a batched map reads each image's bytes into the image column."
    )


def report_memory(results: dict) -> None:
    memory = results["memory"]
    rows = []
    for size in memory["sizes"]:
        for label, figures in (("llava_hf prepare", size["prepare"]), ("json.load", size["json_load"])):
            rows.append(
                [
                    f"{label}, {size['records']:,} records",
                    fmt(mb(size["json_bytes"])),
                    fmt(mb(figures["peak"])),
                    fmt(mb(figures["peak"] - figures["base"])),
                    fmt(figures["peak"] / size["json_bytes"]),
                    fmt(figures["seconds"]),
                ]
            )
    growth = fmt(mb(memory["growth_per_100k_records"]))
    print_table(
        f"[3] peak memory while preparing (tiny images); the peak grows {growth} MB per 100K records "
        "from {:,} to {:,}".format(*memory["growth_between"]),
        ["", "JSON MB", "peak RSS MB", "above start MB", "peak / JSON", "seconds"],
        rows,
    )


def report_files_memory(results: dict) -> None:
    memory = results["files_memory"]
    rows = [
        [
            f"llava_hf prepare, JSONL file config, {size['records']:,} records",
            fmt(mb(size["json_bytes"])),
            fmt(mb(size["prepare"]["peak"])),
            fmt(mb(size["prepare"]["peak"] - size["prepare"]["base"])),
            fmt(size["prepare"]["seconds"]),
        ]
        for size in memory["sizes"]
    ]
    growth = fmt(mb(memory["growth_per_100k_records"]))
    print_table(
        f"[3b] peak memory preparing your own JSONL (tiny images); the peak grows {growth} MB per 100K records "
        "from {:,} to {:,}".format(*memory["growth_between"]),
        ["", "JSONL MB", "peak RSS MB", "above start MB", "seconds"],
        rows,
    )


def report_serving(results: dict) -> None:
    serving = results["serving"]
    row_way, batch_way, llava = serving["contenders"]
    rows = []
    for key in ("decoded warm", "decoded cold", "bytes warm", "bytes cold"):
        v = serving[key]
        unit = "images/s" if key.startswith("decoded") else "rows/s"
        theirs = v[llava]["median"]
        rows.append(
            [
                f"{key} ({unit})",
                *(spread(v[who], digits=0) for who in (row_way, batch_way, llava)),
                fmt(v[row_way]["median"] / theirs),
                fmt(v[batch_way]["median"] / theirs),
            ]
        )
    print_table(
        f"[4] serving {serving['rows']:,} random rows (llava_hf opened "
        f"{'lazily' if os.environ.get('LLAVA_HF_LAZY', '1') != '0' else 'as datasets opens it'}; "
        "cold = files evicted before each run)",
        ["", row_way, batch_way, "LLaVA json.load + PIL", "ratio ds[i]", "ratio batches"],
        rows,
    )
    workers = results["worker_memory"]
    rows = []
    for label, key in (("llava_hf Arrow dataset", "arrow"), ("json.load'ed list", "json_load")):
        each = workers[key]["workers"]
        rows.append(
            [
                label,
                fmt(mb(workers[key]["parent"]["rss"])),
                fmt(mb(median_of(x["uss"] for x in each))),
                fmt(mb(median_of(x["pss"] for x in each))),
                fmt(median_of(x["seconds"] for x in each)),
            ]
        )
    print_table(
        f"    4 forked workers, each reading half of {workers['records']:,} rows (text + image bytes)",
        ["", "parent RSS MB", "unique MB/worker", "PSS MB/worker", "seconds"],
        rows,
    )


def report_lazy(results: dict) -> None:
    lazy = results["lazy"]
    total = lazy["file_bytes"]
    rows = []
    for mode in ("lazy", "stock"):
        opens, passes = lazy["open"][mode], lazy["sequential"][mode]
        rows.append(
            [
                mode,
                fmt(median_of(r["open_seconds"] for r in opens) * 1e3),
                fmt(mb(median_of(r["open_resident"] for r in opens))),
                f"{median_of(r['open_resident'] for r in opens) / total:.1%}",
                fmt(mb(median_of(r["open_disk_read_bytes"] for r in opens))),
                fmt(median_of(r["row_seconds"] / r["rows"] for r in opens) * 1e3),
                fmt(median_of(r["rows_read"] / r["rows_payload"] for r in opens)),
                f"{median_of(r['spawned']['resident_after_open'] for r in opens) / total:.1%}",
                spread(summary([r["seconds"] for r in passes])),
                fmt(mb(median_of(r["disk_read_bytes"] for r in passes))),
            ]
        )
    print_table(
        f"[5] lazy vs stock open of the prepared {mb(total):.0f} MB, each in a fresh process on evicted files "
        f"({_state(lazy['cold'])}; resident and disk figures taken {READ_SETTLE} s after the open)",
        [
            "",
            "open ms",
            "open resident MB",
            "of file",
            "open disk MB",
            "cold ms/row",
            "row read/payload",
            "spawned unpickle",
            "open + full pass s",
            "pass disk MB",
        ],
        rows,
    )


def report_fetch(results: dict) -> None:
    fetch = results["fetch"]
    rows = []
    for way, runs in fetch["runs"].items():
        seconds = summary([r["seconds"] for r in runs])
        last = runs[-1]
        rows.append(
            [
                way,
                spread(seconds),
                fmt(last["images"] / seconds["median"], 0),
                fmt(last["payload"] / 1e6 / seconds["median"]),
                f"{last['requests']:,}",
                fmt(last["bytes_sent"] / fetch["referenced_bytes"], 3),
                f"{last['directory_requests']} / {fmt(median_of(r['directory_seconds'] for r in runs) * 1e3)} ms",
            ]
        )
    print_table(
        f"[6] fetch {fetch['names']:,} images ({fetch['payload_bytes'] / 1e6:.1f} MB) of the corpus zip over HTTP "
        f"from a local server: {fetch['latency'] * 1e3:.0f} ms a request, {fetch['bandwidth'] / 1e6:.0f} MB/s "
        f"shared; llava_hf keeps {fetch['concurrency']} requests in flight",
        ["", "seconds", "images/s", "MB/s", "requests", "sent / referenced", "directory: requests / time"],
        rows,
    )
    print(f"  same image bytes both ways: {fetch['same_bytes']}")


def report(results: dict) -> list[dict]:
    """Print every section's table and the targets; returns the targets (also stored in the JSON)."""
    report_header(results)
    report_prepare(results)
    report_memory(results)
    if "files_memory" in results:
        report_files_memory(results)
    report_serving(results)
    report_lazy(results)
    report_fetch(results)
    targets = evaluate_targets(results)
    print_table(
        "targets (ratios from this run)",
        ["", "measured", "target", "", "conditions"],
        [
            [t["name"], fmt(t["measured"], 3), t["target"], "PASS" if t["pass"] else "MISS", t["conditions"]]
            for t in targets
        ],
    )
    return targets


def evaluate_targets(results: dict) -> list[dict]:
    """Issue 6's and 8's targets as ratios of figures from this run, each saying whether it was cold or warm."""
    prep, floor = results["prepare"], results["floor"]
    variants = prep["variants"]
    ours = variants["llava_hf folder, num_proc=1"]["seconds"]["median"]
    naive = variants["from_list + cast_column + save_to_disk"]["seconds"]["median"]
    temperature = "cold" if prep["cold"] and floor["cold"] else "warm"
    workers = results["worker_memory"]
    uss = {k: median_of(w["uss"] for w in workers[k]["workers"]) for k in ("arrow", "json_load")}
    serving = results["serving"]
    lazy = results["lazy"]
    open_fraction = median_of(r["open_resident"] for r in lazy["open"]["lazy"]) / lazy["file_bytes"]
    seq = {m: median_of(r["seconds"] for r in lazy["sequential"][m]) for m in ("lazy", "stock")}
    row_way, batch_way, llava = serving["contenders"]
    fetch = results["fetch"]
    fetch_rate = median_of(fetch_limit_seconds(r, fetch) / r["seconds"] for r in fetch["runs"]["llava_hf"])

    def decoded(key, who):
        v = serving[key]
        return v[who]["median"] / v[llava]["median"]

    served = "cold" if serving["decoded cold"]["cold"] else "warm"
    lazy_state = "cold" if lazy["cold"] else "warm"
    batches = f"batches of {BATCH}"
    return [
        target("prepare time / floor (folder, num_proc=1)", ours / floor["seconds"]["median"], "<=", 1.5, temperature),
        target("from_list path time / prepare time", naive / ours, ">=", 1.5, temperature),
        target("unique memory per worker: Arrow / json.load", uss["arrow"] / uss["json_load"], "<=", 0.1, "warm"),
        target("decoded images/s, ds[i]: llava_hf / LLaVA", decoded("decoded warm", row_way), ">=", 0.95, "warm"),
        target("decoded images/s, ds[i]: llava_hf / LLaVA", decoded("decoded cold", row_way), ">=", 0.95, served),
        target(f"decoded images/s, {batches}: ours / LLaVA", decoded("decoded warm", batch_way), ">=", 0.95, "warm"),
        target(f"decoded images/s, {batches}: ours / LLaVA", decoded("decoded cold", batch_way), ">=", 0.95, served),
        target("lazy cold open: resident / file", open_fraction, "<", 0.05, lazy_state),
        target("lazy / stock: open + sequential pass time", seq["lazy"] / seq["stock"], "<=", 1.10, lazy_state),
        target("fetch rate / limit (concurrency / latency or bandwidth)", fetch_rate, ">=", 0.8, "local server"),
    ]


def target(name: str, measured: float, op: str, limit: float, conditions: str) -> dict:
    passed = {"<": measured < limit, "<=": measured <= limit, ">=": measured >= limit}[op]
    return {"name": name, "measured": measured, "target": f"{op} {limit}", "pass": passed, "conditions": conditions}


def machine(work: Path) -> dict:
    import datasets
    import pyarrow

    info = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "datasets": datasets.__version__,
        "pyarrow": pyarrow.__version__,
        "date": datetime.date.today().isoformat(),
        "disk": disk_of(work),
    }
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        info["ram_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True)
        info["llava_hf_commit"] = commit.stdout.decode().strip() or None
    return info


def disk_of(path: Path) -> str:
    """The device and filesystem holding `path` and the device's read-ahead, e.g. "/dev/vda ext4, read-ahead 128 KB"."""
    best, device, fstype = "", "?", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            source, mount, kind = line.split()[:3]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, device, fstype = mount, source, kind
    dev = os.stat(path).st_dev
    # The read-ahead sets how much a page fault or WILLNEED reads at once: it shapes the stock/lazy figures.
    ahead = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/queue/read_ahead_kb")
    return f"{device} {fstype}" + (f", read-ahead {ahead.read_text().strip()} KB" if ahead.exists() else "")


# --- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="~500 images, 30K/60K-record memory check, 2 repeats")
    size.add_argument("--smallest", action="store_true", help="a few dozen images, 1 repeat: checks the script runs")
    size.add_argument(
        "--scale", action="store_true", help="issue 12: the real record counts (558K, 665K records), 3 repeats; minutes"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "llava_hf_bench",
        help="folder for the corpus (kept and reused) and the outputs (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="JSON file of all figures (default: WORK/bench_results.json)")
    parser.add_argument("--n", type=int, help="number of images, overriding the mode's")
    parser.add_argument("--repeats", type=int, help="repeats of each timing, overriding the mode's")
    parser.add_argument("--no-mix", action="store_true", help="with --scale: leave out the mix665k prepares")
    parser.add_argument("--child", nargs=3, metavar=("TASK", "ARGS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        task, child_args, out = args.child
        if task.startswith("scale_"):
            import bench_scale

            children = bench_scale.CHILDREN
        else:
            children = CHILDREN
        Path(out).write_text(json.dumps(children[task](json.loads(child_args))))
        return 0
    if args.scale:
        import bench_scale

        return bench_scale.main(args.work.resolve(), args.out, args.repeats, with_mix=not args.no_mix)

    mode = "quick" if args.quick else "smallest" if args.smallest else "full"
    n, sizes, repeats, rows = MODES[mode]
    n, repeats = args.n or n, args.repeats or repeats
    work = args.work.resolve()
    run_dir = fresh(work / "runs")
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    step = lambda what: print(f"[{time.perf_counter() - started:6.1f}s] {what}", flush=True)  # noqa: E731

    step(f"corpus: {n} images in {work}")
    corpus = make_corpus(work, n)
    results = {"mode": mode, "repeats": repeats, "machine": machine(work), "work": str(work)}
    results["corpus"] = {k: v for k, v in corpus.items() if k != "image_paths"}
    step("floor")
    results["floor"] = measure_floor(corpus, run_dir, repeats)
    step("prepare")
    results["prepare"] = measure_prepare(corpus, run_dir, repeats)
    step(f"memory during prepare: {', '.join(f'{s:,}' for s in sizes)} records")
    results["memory"] = measure_memory(work, run_dir, sizes)
    step(f"memory preparing a JSONL file config: {', '.join(f'{s:,}' for s in JSONL_SIZES[mode])} records")
    results["files_memory"] = measure_files_memory(work, run_dir, JSONL_SIZES[mode])
    step("serving")
    served = results["prepare"]["served"]
    results["serving"] = measure_serving(corpus, served["cache"], repeats, rows)
    step("worker memory")
    results["worker_memory"] = measure_worker_memory(results["memory"], run_dir)
    step("lazy vs stock open")
    results["lazy"] = measure_lazy(corpus, served["cache"], served["folder"], run_dir, repeats, rows)
    step("fetch over HTTP")
    results["fetch"] = measure_fetch(corpus, run_dir, repeats)
    results["seconds"] = time.perf_counter() - started
    results["targets"] = report(results)
    out = args.out or work / "bench_results.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\n{results['seconds']:.0f} s in all; every figure in {out}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
