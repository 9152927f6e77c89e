"""scripts/bench.py keeps running: its smallest setting, in a subprocess, writes every section and ratio.

Nothing here is timed: the figures of so small a corpus say nothing, only that each measurement ran.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT

SECTIONS = (
    "machine",
    "corpus",
    "floor",
    "prepare",
    "memory",
    "files_memory",
    "serving",
    "worker_memory",
    "lazy",
    "fetch",
    "targets",
)


def test_smallest_setting_writes_every_section_and_ratio(tmp_path):
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "bench.py"),
        "--smallest",
        "--work",
        str(tmp_path),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "targets (ratios from this run)" in result.stdout
    results = json.loads(out.read_text())
    assert all(section in results for section in SECTIONS)
    assert results["floor"]["seconds"]["median"] > 0
    variants = results["prepare"]["variants"]
    assert len(variants) == 6
    assert all(v["seconds"]["median"] > 0 and v["output_bytes"] > 0 for v in variants.values())
    # the alternatives really embedded the image bytes, so they are compared with like
    assert all(v["embedded"] for v in variants.values() if "embedded" in v)
    assert [size["records"] for size in results["memory"]["sizes"]] == [1_000, 3_000]
    assert math.isfinite(results["memory"]["growth_per_100k_records"])
    assert [size["records"] for size in results["files_memory"]["sizes"]] == [1_000, 3_000]
    assert [size["prepare"]["rows"] for size in results["files_memory"]["sizes"]] == [1_000, 3_000]
    assert math.isfinite(results["files_memory"]["growth_per_100k_records"])
    for key in ("decoded warm", "decoded cold", "bytes warm", "bytes cold"):
        assert all(results["serving"][key][who]["median"] > 0 for who in results["serving"]["contenders"])
    assert all(len(results["worker_memory"][kind]["workers"]) == 4 for kind in ("arrow", "json_load"))
    lazy = results["lazy"]
    assert lazy["same_bytes"]  # a full pass reads the same image bytes with lazy open on and off
    assert set(lazy["open"]) == set(lazy["sequential"]) == {"lazy", "stock"}
    assert all(run["spawned"]["llava_hf_imported_by_pickle"] for run in lazy["open"]["lazy"])
    fetch = results["fetch"]
    assert fetch["same_bytes"]  # every way fetched the same image bytes
    assert fetch["names"] == 20
    serial, ours = fetch["runs"]["one request at a time"][0], fetch["runs"]["llava_hf"][0]
    assert serial["images"] == ours["images"] == 20
    assert serial["requests"] == 20  # the baseline: one request per image
    assert ours["requests"] <= 20  # neighbours merged
    assert ours["bytes_sent"] <= 1.1 * fetch["referenced_bytes"]
    assert len(results["targets"]) == 10
    assert all(math.isfinite(t["measured"]) and isinstance(t["pass"], bool) for t in results["targets"])
