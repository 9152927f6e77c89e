"""Run one prepare in a process of its own, for the race, kill and lock tests (not a test module).

    python tests/prepare_process.py CONFIG DATA_DIR IMAGE_DIR CACHE_DIR [--go FILE] [--num-proc N]
                                    [--no-flock]

Prints one JSON line: whether this process generated the dataset (the builder logs "found ..." only when
it scans the sources), the number of rows, and a digest of every row (id and image bytes).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import sys
import time


def break_flock() -> None:
    # What an NFS mount without a lock daemon answers to every flock().
    import fcntl

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    fcntl.flock = flock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("data_dir")
    parser.add_argument("image_dir")
    parser.add_argument("cache_dir")
    parser.add_argument("--go", help="wait until this file exists, so that several processes start together")
    parser.add_argument("--num-proc", type=int)
    parser.add_argument("--no-flock", action="store_true", help="make flock fail with ENOLCK")
    args = parser.parse_args()
    if args.no_flock:
        break_flock()

    import datasets

    import llava_hf

    found = []

    class Found(logging.Handler):
        def emit(self, record):
            if " found " in record.getMessage():
                found.append(record.getMessage())

    logger = logging.getLogger("llava_hf")
    logger.addHandler(Found())
    logger.setLevel(logging.INFO)
    datasets.disable_progress_bars()

    if args.go:
        while not os.path.exists(args.go):
            time.sleep(0.005)
    try:
        ds = llava_hf.load_dataset(
            args.config,
            data_dir=args.data_dir,
            image_dir=args.image_dir,
            cache_dir=args.cache_dir,
            num_proc=args.num_proc,
        )
    except OSError as e:
        print(json.dumps({"error": str(e)}))
        sys.exit(3)
    digest = hashlib.sha256()
    for row in ds.cast_column("image", datasets.Image(decode=False)):
        digest.update(row["id"].encode())
        digest.update(row["image"]["bytes"])
    print(json.dumps({"generated": bool(found), "rows": len(ds), "digest": digest.hexdigest(), "pid": os.getpid()}))


if __name__ == "__main__":
    main()
