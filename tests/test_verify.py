"""verify: one fake source seeded with one of each problem, the exact report; fuzzing of the checks."""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
from conftest import jpeg, write_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from llava_hf import images as images_module
from llava_hf.cli import main
from llava_hf.errors import BadImage, SourceError
from llava_hf.images import open_root, safe_name
from llava_hf.records import parse_record
from llava_hf.sources import index_json_array
from llava_hf.verify import PROBLEM_REASONS, check_image_bytes, verify


def turns(first="<image>\nWhat is this?", *more):
    values = [first, "A picture.", *more]
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def seeded(tmp_path, monkeypatch):
    """detail_23k with one record per problem (record 0 is clean)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # so that a 200x100 PNG is a "bomb"
    monkeypatch.setattr(images_module, "MAX_IMAGE_BYTES", 60_000)
    images = tmp_path / "images"
    images.mkdir()
    good = jpeg(1)
    files = {
        "ok.jpg": good,
        "empty.jpg": b"",
        "page.jpg": b"<html>404</html>",
        "gif.jpg": _gif(),
        "cut.jpg": good[: len(good) // 2],
        "bomb.png": png((200, 100)),
        "huge.jpg": good + b"\0" * 70_000,
        "hostile.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    records = [
        {"id": "r00", "image": "ok.jpg", "conversations": turns()},
        {"id": "r01", "image": "gone.jpg", "conversations": turns()},
        {"id": "r02", "image": "empty.jpg", "conversations": turns()},
        {"id": "r03", "image": "page.jpg", "conversations": turns()},
        {"id": "r04", "image": "gif.jpg", "conversations": turns()},
        {"id": "r05", "image": "cut.jpg", "conversations": turns()},
        {"id": "r06", "image": "bomb.png", "conversations": turns()},
        {"id": "r07", "image": "../ok.jpg", "conversations": turns()},
        {"id": "r08", "image": "huge.jpg", "conversations": turns()},
        {"id": "r09", "image": "hostile.jpg", "conversations": turns()},
        {"id": "r10", "image": "ok.jpg", "conversations": []},
        {"id": "r11", "image": "ok.jpg", "conversations": turns("<image>\nWhy?", "  ", "ok")},
        {"id": "r12", "image": "ok.jpg", "conversations": [{"from": "gpt", "value": "<image>\nhi"}]},
        {"id": "r13", "image": "ok.jpg", "conversations": turns()[:1] + [{"from": "human", "value": "Again?"}]},
        {"id": "r14", "image": "ok.jpg", "conversations": turns("No token here?")},
        {"id": "r15", "conversations": turns()},
        {"id": "r16", "image": "ok.jpg", "conversations": [{"from": "human"}]},
        {"id": 17, "image": "ok.jpg", "conversations": turns("<image>\n<image>\nTwo?")},
    ]
    write_json(tmp_path / "data" / "detail_23k.json", records)
    return tmp_path / "data", images


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


EXPECTED = [
    ("bad_record", 16, "r16", "turn 0: expected a string 'value', it is missing", None),
    ("unsafe_path", 7, "r07", "image path '../ok.jpg' leaves the image root ('..')", "../ok.jpg"),
    ("missing", 1, "r01", "image 'gone.jpg' not found under {images}", "gone.jpg"),
    ("empty", 2, "r02", "image file {images}/empty.jpg is empty (0 bytes)", "empty.jpg"),
    (
        "not_an_image",
        3,
        "r03",
        "image file {images}/page.jpg (16 bytes) is not an image: it starts with no known image signature",
        "page.jpg",
    ),
    (
        "too_large",
        8,
        "r08",
        "image file {images}/huge.jpg has {huge:,} bytes, more than the 60,000 allowed",
        "huge.jpg",
    ),
    ("undecodable", 5, "r05", "OSError: Truncated File Read", "cut.jpg"),
    ("undecodable", 9, "r09", "Pillow recognises no image format in these bytes", "hostile.jpg"),
    ("decompression_bomb", 6, "r06", "200x100 pixels, more than Pillow's limit of 10,000", "bomb.png"),
    ("extension_mismatch", 4, "r04", "GIF data under the name 'gif.jpg'", "gif.jpg"),
    ("no_turns", 10, "r10", "the conversation has no turns", "ok.jpg"),
    ("empty_value", 11, "r11", "turn 2 has an empty value", "ok.jpg"),
    ("first_turn_not_human", 12, "r12", "the first turn is from 'gpt', expected 'human'", "ok.jpg"),
    ("roles_not_alternating", 13, "r13", "turn 1 is from 'human', expected 'gpt'", "ok.jpg"),
    ("image_token_count", 14, "r14", "0 <image> tokens for 1 image", "ok.jpg"),
    ("image_token_count", 15, "r15", "1 <image> tokens for 0 images", None),
    ("image_token_count", 17, "17", "2 <image> tokens for 1 image", "ok.jpg"),
]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_every_problem_is_reported_with_file_index_id_and_detail(seeded, num_proc):
    data_dir, images = seeded
    report = verify("detail_23k", data_dir=data_dir, image_dir=images, num_proc=num_proc, progress=False)
    huge = len(jpeg(1)) + 70_000
    got = [(p.reason, p.index, p.id, p.detail, p.image) for p in report.problems]
    assert got == [(r, i, rid, d.format(images=images, huge=huge), img) for r, i, rid, d, img in EXPECTED]
    assert all(p.file == "detail_23k.json" for p in report.problems)
    assert report.counts == {
        "bad_record": 1,
        "unsafe_path": 1,
        "missing": 1,
        "empty": 1,
        "not_an_image": 1,
        "too_large": 1,
        "undecodable": 2,
        "decompression_bomb": 1,
        "extension_mismatch": 1,
        "no_turns": 1,
        "empty_value": 1,
        "first_turn_not_human": 1,
        "roles_not_alternating": 1,
        "image_token_count": 3,
    }
    assert (report.records, report.images, report.clean) == (18, 16, False)
    assert report.bad_records() == [(i, f"r{i:02d}") for i in range(1, 17)] + [(17, "17")]


def test_verify_cli_writes_the_report_and_fix_list(seeded, tmp_path, capsys):
    data_dir, images = seeded
    out, fix = tmp_path / "report.json", tmp_path / "fix.txt"
    code = main(
        [
            "verify",
            "detail_23k",
            "--data-dir",
            str(data_dir),
            "--image-dir",
            str(images),
            "--num-proc",
            "1",
            "--report",
            str(out),
            "--fix-list",
            str(fix),
            "-q",
        ]
    )
    assert code == 1
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "detail_23k: 18 records, 16 images checked"
    assert (
        "  image_token_count              3  e.g. detail_23k.json: record 14 (id='r14'): image_token_count: 0 <image> tokens for 1 image"
        in text
    )
    report = json.loads(out.read_text())
    assert report["counts"]["undecodable"] == 2 and report["clean"] is False
    assert len(report["problems"]) == len(EXPECTED)
    assert fix.read_text().splitlines() == [f"{i}\tr{i:02d}" for i in range(1, 17)] + ["17\t17"]


def test_ignored_reasons_do_not_fail_the_check(capsys):
    code = main(
        ["verify", "llava_v1_5_mix665k", "--sample", "--ignore", "extension_mismatch", "-q", "--report", "/dev/null"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert (
        "  extension_mismatch          2 (ignored)  e.g. llava_v1_5_mix665k.json: record 2 (id='140031996'): extension_mismatch: GIF data under the name 'ocr_vqa/images/140031996.jpg'"
        in out
    )


@pytest.mark.parametrize("name", ["detail_23k", "cc3m_595k", "blip_558k"])
def test_the_sample_is_clean(name):
    report = verify(name, sample=True, num_proc=1, progress=False)
    assert report.clean and report.counts == {} and report.images == report.records


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError) as info:
        verify("detail_23k", sample=True, ignore=["typo"])
    assert str(info.value).startswith("unknown problem reason(s) ['typo']; choose from bad_record, ")


def test_metadata_not_parallel_is_one_problem(release):
    meta = release.data_dir("cc3m_595k") / "metadata.json"
    records = json.loads(meta.read_text())
    meta.write_text(json.dumps(records[:3]))
    report = verify("cc3m_595k", data_dir=release.data_dir("cc3m_595k"), progress=False)
    assert [(p.reason, p.index) for p in report.problems] == [("bad_record", 3)]
    assert (report.records, report.clean) == (4, False)


def test_zip_sources_are_verified_in_place(release, tmp_path):
    archive = release.data_dir("blip_558k") / "images.zip"
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("00999/bad.jpg", b"\xff\xd8\xff" + b"garbage")
    report = verify("blip_558k", data_dir=release.data_dir("blip_558k"), progress=False)
    assert report.clean  # the added member is named by no record


# --- fuzzing: every failure is our own clear error ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(max_size=6),
        "image": json_values | st.text(max_size=12),
        "conversations": st.lists(
            st.fixed_dictionaries({}, optional={"from": json_values, "value": json_values, "x": json_values})
            | json_values,
            max_size=4,
        )
        | json_values,
        "model": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(raw=record_like | json_values, meta=st.none() | record_like)
def test_parse_record_fails_only_with_source_error(raw, meta):
    try:
        row = parse_record(raw, file="f.json", index=3, config="detail_23k", metadata=meta, metadata_file="m.json")
    except SourceError as e:
        assert str(e).startswith(("f.json: record 3", "m.json: record 3"))
    else:
        assert isinstance(row.id, str) and all(isinstance(t[1], str) for t in row.conversations)


MAGICS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBP", b"BM", b"II*\0"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=600), name=st.sampled_from(["a.jpg", "a.png", "a"]))
def test_image_checks_never_raise(magic, body, name):
    found = list(check_image_bytes(name, magic + body))
    assert {reason for reason, _ in found} <= set(PROBLEM_REASONS)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=20))
def test_safe_name_is_clean_or_refused(name):
    try:
        clean = safe_name(name)
    except BadImage as bad:
        assert bad.reason == "unsafe_path"
    else:
        assert not clean.startswith("/") and ".." not in clean.split("/")
        assert not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", clean)  # no URL scheme or drive letter


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | st.text(alphabet='[]{}",:01 \nabc\\', max_size=300).map(str.encode))
def test_json_scan_fails_only_with_source_error(tmp_path, data):
    path = tmp_path / "f.json"
    path.write_bytes(data)
    try:
        index_json_array(str(path))
    except SourceError as e:
        assert str(e).startswith("f.json")


def test_deep_nesting_is_a_clear_error(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(SourceError) as info:
        index_json_array(str(path))
    assert str(info.value) == "f.json: record 0: record at byte 1 is nested too deeply to parse"


def test_image_reads_refuse_huge_files_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_IMAGE_BYTES", 1000)
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 5000)
    with pytest.raises(BadImage) as info:
        open_root(str(tmp_path)).read("big.jpg")
    assert (info.value.reason, str(info.value)) == (
        "too_large",
        f"image file {tmp_path}/big.jpg has 5,003 bytes, more than the 1,000 allowed",
    )


def test_unpaired_surrogates_are_reported(release):
    path = release.data_dir("detail_23k") / "detail_23k.json"
    records = json.loads(path.read_text())
    records[1]["conversations"][0]["value"] = "\udc00<image>\nhalf a pair"
    path.write_text(json.dumps(records))
    report = verify("detail_23k", **release.options("detail_23k"), num_proc=1, progress=False)
    assert [(p.reason, p.index, p.id, p.detail) for p in report.problems] == [
        (
            "bad_text",
            1,
            "000000398214",
            "turn 0 'value' holds an unpaired UTF-16 surrogate (\\udc00 at character 0), not valid text",
        )
    ]
