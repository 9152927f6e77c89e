"""Open a prepared dataset in a fresh process and report what it read (for tests/test_reader.py).

    python tests/reader_process.py open DATA_DIR IMAGE_DIR CACHE_DIR [--pickle FILE] [--rows N]
    python tests/reader_process.py unpickle FILE [--rows N]

Prints one JSON line: the fraction of the Arrow files resident in the page cache after opening, and after
reading N random rows the resident bytes over those rows' payload, and a digest of the rows. `unpickle`
does not import llava_hf itself: the pickle has to bring it in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import random
import sys


def residency(files: list[str]) -> int:
    from llava_hf.pagecache import resident_bytes

    return sum(resident_bytes(f) for f in files)


def read_rows(ds, files: list[str], n: int) -> dict:
    import os

    raw = ds.with_format("arrow")  # rows as Arrow: the image bytes as stored, nothing decoded
    total = sum(os.path.getsize(f) for f in files)
    after_open = residency(files)
    picks = random.Random(0).sample(range(len(raw)), n)
    digest, payload = hashlib.sha256(), 0
    for i in picks:
        row = raw[i].to_pylist()[0]
        digest.update(row["id"].encode() + row["image"]["bytes"])
        payload += len(row["image"]["bytes"])
    return {
        "open_fraction": after_open / total,
        "read_over_payload": (residency(files) - after_open) / payload,
        "digest": digest.hexdigest(),
        "llava_hf_imported": "llava_hf" in sys.modules,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("open", "unpickle"))
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--pickle")
    parser.add_argument("--rows", type=int, default=50)
    args = parser.parse_args()
    if args.mode == "open":
        import llava_hf

        data_dir, image_dir, cache_dir = args.paths
        ds = llava_hf.load_dataset("detail_23k", data_dir=data_dir, image_dir=image_dir, cache_dir=cache_dir)
        if args.pickle:
            with open(args.pickle, "wb") as f:
                pickle.dump(ds, f)
    else:
        with open(args.paths[0], "rb") as f:
            ds = pickle.load(f)
    files = [c["filename"] for c in ds.cache_files]
    print(json.dumps(read_rows(ds, files, args.rows)))


if __name__ == "__main__":
    main()
