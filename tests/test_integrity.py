"""The digests of prepared entries (llava_hf.integrity): xxh3 values, and reports written with sha256/crc32."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import test_hostile
import xxhash
from conftest import jpeg
from test_hostile import N, flip_image_byte, prepared

fake = test_hostile.fake  # the fake detail_23k release fixture (30 records, 16 record batches)

REPORT = "llava_hf_report.json"


def batch_images(arrow: Path, batches: list[dict]) -> list[list[bytes | None]]:
    """Each record batch's image bytes, row by row, as the Arrow file holds them."""
    import pyarrow as pa

    with pa.memory_map(str(arrow)) as source:
        table = pa.ipc.open_stream(source).read_all()
    images = table.column("image").combine_chunks().field("bytes").to_pylist()
    out, start = [], 0
    for batch in batches:
        out.append(images[start : start + batch["rows"]])
        start += batch["rows"]
    return out


def test_report_holds_the_xxh3_64_of_every_rows_image_bytes(fake):
    import llava_hf

    ds, folder = prepared(fake)
    arrow = Path(folder) / "llava_hf-train.arrow"
    entry = llava_hf.prepare_report(ds)["files"][arrow.name]
    assert entry["xxh3_128"] == xxhash.xxh3_128_hexdigest(arrow.read_bytes())
    batches = entry["batches"]
    assert sum(b["rows"] for b in batches) == N
    assert sorted(batches[0]) == ["images_xxh3_64", "length", "offset", "rows", "xxh3_64"]
    for batch, images in zip(batches, batch_images(arrow, batches)):
        packed = np.frombuffer(base64.b64decode(batch["images_xxh3_64"]), dtype="<u8").tolist()
        assert packed == [xxhash.xxh3_64_intdigest(b) for b in images]
    # The bytes of the batch outside its images: the batch's own digest covers them.
    data = arrow.read_bytes()
    first = batches[0]
    blob = data[first["offset"] : first["offset"] + first["length"]]
    joined = b"".join(batch_images(arrow, batches)[0])
    at = blob.index(joined)
    outside = xxhash.xxh3_64()
    outside.update(blob[:at])
    outside.update(blob[at + len(joined) :])
    assert first["xxh3_64"] == outside.intdigest()


def _as_written_before_xxh3(folder: str) -> None:
    """Rewrite the prepare report as llava_hf wrote it before xxh3: sha256 of files, crc32 of batches and rows."""
    path = Path(folder) / REPORT
    report = json.loads(path.read_text())
    for name, entry in report["files"].items():
        data = (Path(folder) / name).read_bytes()
        del entry["xxh3_128"]
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        if "batches" not in entry:
            continue
        for batch, images in zip(entry["batches"], batch_images(Path(folder) / name, entry["batches"])):
            blob = data[batch["offset"] : batch["offset"] + batch["length"]]
            joined = b"".join(images)
            at = blob.index(joined)
            del batch["xxh3_64"], batch["images_xxh3_64"]
            batch["crc32"] = zlib.crc32(blob[at + len(joined) :], zlib.crc32(blob[:at]))
            crcs = np.asarray([zlib.crc32(b) for b in images], dtype="<u4")
            batch["images_crc32"] = base64.b64encode(crcs.tobytes()).decode("ascii")
    path.write_text(json.dumps(report))


def test_a_report_written_with_sha256_and_crc32_is_still_checked(fake):
    import llava_hf

    ds, folder = prepared(fake)
    _as_written_before_xxh3(folder)
    check = llava_hf.verify_prepared(ds)
    assert (check.intact, check.problems, check.files, check.hash) == (True, [], 3, "sha256")
    assert check.summary().endswith("intact (every sha256 matches the prepare report)")
    arrow = Path(folder) / "llava_hf-train.arrow"
    flip_image_byte(arrow, jpeg(7))
    check = llava_hf.verify_prepared(ds)
    problem = f"{arrow}: row 7 (id='r07'): its image bytes differ from the prepared ones (record batch 4)"
    assert (check.intact, check.problems, check.damaged_rows) == (False, [problem], [7])


def test_a_flipped_byte_outside_the_images_names_its_record_batch(fake):
    import llava_hf

    ds, folder = prepared(fake)
    arrow = Path(folder) / "llava_hf-train.arrow"
    batches = llava_hf.prepare_report(ds)["files"][arrow.name]["batches"]
    data = bytearray(arrow.read_bytes())
    # The id of row 7 ("r07") lies in record batch 4, outside its image bytes.
    at = data.index(b"r07", batches[4]["offset"])
    assert at < batches[4]["offset"] + batches[4]["length"]
    data[at + 2] ^= 0x01
    arrow.write_bytes(bytes(data))
    check = llava_hf.verify_prepared(ds)
    first = sum(b["rows"] for b in batches[:4])
    last = first + batches[4]["rows"] - 1
    assert check.problems == [f"{arrow}: rows {first}..{last} (record batch 4) differ from the prepared bytes"]
    assert check.damaged_rows == list(range(first, last + 1))


def test_workers_describe_their_own_shards_and_the_report_keeps_it(fake, monkeypatch):
    """With num_proc=2 each worker checksums the shards it wrote; the report's entries, found again under
    the renamed files' identity, equal a fresh description of each file, and the preparing process reads no
    Arrow file again to write them."""
    import os

    import llava_hf
    from llava_hf import integrity

    described_here = []
    original = integrity.describe_file

    def counted(path):
        described_here.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(integrity, "describe_file", counted)  # what record_files calls in this process
    for num_proc in (2, None):
        described_here.clear()
        ds, folder = prepared({**fake, "cache_dir": f"{fake['cache_dir']}-np{num_proc}"}, num_proc=num_proc)
        files = llava_hf.prepare_report(ds)["files"]
        arrows = sorted(name for name in files if name.endswith(".arrow"))
        expected = (
            ["llava_hf-train-00000-of-00002.arrow", "llava_hf-train-00001-of-00002.arrow"]
            if num_proc
            else ["llava_hf-train.arrow"]
        )
        assert arrows == expected
        assert sorted(described_here) == ["LICENSE", "dataset_info.json"]
        for name in arrows:
            assert files[name] == original(os.path.join(folder, name))
        assert sum(b["rows"] for name in arrows for b in files[name]["batches"]) == N
