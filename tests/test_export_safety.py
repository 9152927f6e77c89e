"""Exports never replace or write through what they did not write (issue 13 point 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
from conftest import jpeg

from llava_hf.features import FEATURES
from llava_hf.formats import EXPORT_MANIFEST, to_llamafactory, to_llava


def rows_ds(images: dict[str, bytes]) -> datasets.Dataset:
    """One row per image, named as given, with a one-token conversation."""
    rows = [
        {
            "id": f"r{i}",
            "image": {"bytes": data, "path": name},
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "That."}],
            "source": "t",
            "caption": None,
            "blip_caption": None,
            "url": None,
            "extra": None,
        }
        for i, (name, data) in enumerate(images.items())
    ]
    return datasets.Dataset.from_list(rows, features=FEATURES)


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (links as their target text) by relative path."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            out[rel] = ("-> " + os.readlink(path)).encode() if os.path.islink(path) else Path(path).read_bytes()
    return out


FIRST = {"a/1.jpg": jpeg(1), "a/2.jpg": jpeg(2), "3.jpg": jpeg(3)}


def test_llava_refuses_a_json_file_it_did_not_write(tmp_path):
    (tmp_path / "mine.json").write_text('["my own work"]')
    with pytest.raises(ValueError) as caught:
        to_llava(rows_ds(FIRST), tmp_path, json_name="mine.json", progress=False)
    assert str(caught.value) == (
        f"{tmp_path}/mine.json already exists and was not written by a llava_hf export; pass overwrite=True "
        "(--overwrite) to replace it, or choose another folder"
    )
    assert snapshot(tmp_path) == {"mine.json": b'["my own work"]'}  # nothing written, not even images
    result = to_llava(rows_ds(FIRST), tmp_path, json_name="mine.json", overwrite=True, progress=False)
    assert [r["id"] for r in json.loads((tmp_path / "mine.json").read_text())] == ["r0", "r1", "r2"]
    assert result["images"] == 3


def test_an_export_may_replace_its_own_files_and_keeps_identical_images(tmp_path):
    to_llava(rows_ds(FIRST), tmp_path, json_name="x.json", progress=False)
    before = snapshot(tmp_path)
    assert json.loads(before[EXPORT_MANIFEST]) == {"files": ["x.json"]}
    result = to_llava(rows_ds(FIRST), tmp_path, json_name="x.json", progress=False)  # the same export again
    assert snapshot(tmp_path) == before
    assert result["images"] == 3


@pytest.mark.parametrize("writer", ["llava", "llamafactory"])
def test_same_image_names_with_other_bytes_are_an_error_and_change_nothing(tmp_path, writer):
    def export(ds, name):
        if writer == "llava":
            return to_llava(ds, tmp_path, json_name=f"{name}.json", progress=False)
        return to_llamafactory(ds, tmp_path, name=name, progress=False)

    export(rows_ds(FIRST), "first")
    before = snapshot(tmp_path)
    second = {"b/new.jpg": jpeg(9), "a/2.jpg": jpeg(7)}  # a new name, then a name of the first with other bytes
    with pytest.raises(ValueError) as caught:
        export(rows_ds(second), "second")
    assert str(caught.value) == (
        f"row 1 (id='r1'): {tmp_path}/images/a/2.jpg already exists with other bytes (from an earlier export?); "
        "replacing it would change the picture of that export's rows: export into an empty folder, or remove it "
        "first"
    )
    # the first export is intact, and the failed one left no file (its new image was removed again)
    assert snapshot(tmp_path) == before


def test_no_write_follows_a_symlink_out_of_the_export_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "3.jpg").write_bytes(b"precious")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    os.symlink(outside / "3.jpg", out / "images" / "3.jpg")
    with pytest.raises(ValueError) as caught:
        to_llava(rows_ds({"3.jpg": jpeg(3)}), out, json_name="x.json", progress=False)
    assert str(caught.value) == (
        f"row 0 (id='r0'): {out}/images/3.jpg is a symbolic link; an export never writes through one (export into "
        "an empty folder, or remove it first)"
    )
    # a linked sub-folder leading outside
    os.symlink(outside, out / "images" / "a")
    with pytest.raises(ValueError) as caught:
        to_llava(rows_ds({"a/1.jpg": jpeg(1)}), out, json_name="x.json", progress=False)
    assert str(caught.value) == (
        f"row 0 (id='r0'): {out}/images/a resolves to {outside}, outside the export folder {out} (a symbolic "
        "link?); an export never writes outside its folder"
    )
    # the JSON file itself as a link
    os.symlink(outside / "3.jpg", out / "x.json")
    with pytest.raises(ValueError, match="x.json is a symbolic link; an export never writes through one"):
        to_llava(rows_ds({"1.jpg": jpeg(1)}), out, json_name="x.json", progress=False)
    assert snapshot(outside) == {"3.jpg": b"precious"}
    assert not (out / "images" / "1.jpg").exists()


def test_llamafactory_refuses_a_jsonl_it_did_not_write(tmp_path):
    (tmp_path / "mine.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match=r"mine.jsonl already exists and was not written by a llava_hf export"):
        to_llamafactory(rows_ds(FIRST), tmp_path, name="mine", progress=False)
    assert snapshot(tmp_path) == {"mine.jsonl": b"{}\n"}
    to_llamafactory(rows_ds(FIRST), tmp_path, name="mine", overwrite=True, progress=False)
    assert len((tmp_path / "mine.jsonl").read_text().splitlines()) == 3


def test_cli_export_refuses_then_overwrites(tmp_path, cache_dir, capsys):
    from llava_hf.cli import main

    (tmp_path / "detail_23k.json").write_text("[]")
    argv = ["export", "detail_23k", "--format", "llava", "-o", str(tmp_path), "--sample", "--cache-dir", cache_dir]
    assert main([*argv, "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"llava-hf export: {tmp_path}/detail_23k.json already exists and was not written by a llava_hf export; "
        "pass overwrite=True (--overwrite) to replace it, or choose another folder"
    )
    assert (tmp_path / "detail_23k.json").read_text() == "[]"
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert len(json.loads((tmp_path / "detail_23k.json").read_text())) == 3
