"""The fast path of parse_record for the common record shape gives exactly the general path's rows."""

from __future__ import annotations

import re

import pytest

from llava_hf import images, records, sources
from llava_hf.errors import SourceError
from llava_hf.records import Row, parse_record

TURNS = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A bus."}]
CHAT = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": TURNS}
META = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "blip_caption": "a bus", "url": "u"}

# (chat record, metadata record or None, whether the fast path takes it)
CASES = [
    (CHAT, None, True),
    (CHAT, META, True),
    (CHAT, {**META, "caption": "c"}, False),  # caption after blip_caption: not the restored order
    ({**CHAT}, {"id": CHAT["id"], "image": CHAT["image"], "caption": "c", "blip_caption": "b", "url": "u"}, True),
    (CHAT, {"id": CHAT["id"], "image": CHAT["image"]}, True),
    (CHAT, {**META, "blip_caption": None}, False),  # a null field keeps its key through @order
    (CHAT, {**META, "image": "other.jpg"}, False),  # an image that differs goes to extra
    (CHAT, {"id": CHAT["id"], "blip_caption": "b", "image": CHAT["image"], "url": "u"}, False),
    ({**CHAT, "id": "33471"}, {**META, "id": 33471}, False),  # an int id in the metadata only
    (CHAT, {**META, "more": 1}, False),
    ({"image": CHAT["image"], "id": CHAT["id"], "conversations": TURNS}, None, False),  # key order kept in @order
    ({**CHAT, "model": "x"}, None, False),
    ({**CHAT, "id": 33471}, None, False),
    ({**CHAT, "image": None}, None, False),
    ({"id": "t", "conversations": TURNS}, None, False),  # text-only
    ({**CHAT, "conversations": [{"value": "v", "from": "human"}]}, None, True),  # turn key order is not kept
    ({**CHAT, "conversations": [{"from": "human", "value": "v", "weight": 0}]}, None, False),
    ({**CHAT, "conversations": []}, None, True),
    ({**CHAT, "image": "plain.jpg"}, None, True),
]


def _general(monkeypatch, raw, meta, **kw):
    with monkeypatch.context() as m:
        m.setattr(records, "_parse_common", lambda *a: None)
        return parse_record(raw, metadata=meta, **kw)


@pytest.mark.parametrize("source_from", ["config", "image_collection"])
@pytest.mark.parametrize(("raw", "meta", "fast"), CASES)
def test_fast_path_matches_general_path(monkeypatch, raw, meta, fast, source_from):
    kw = {"file": "chat.json", "index": 7, "config": "blip_558k", "source_from": source_from}
    assert (records._parse_common(raw, "blip_558k", source_from, meta) is not None) is fast
    assert parse_record(raw, metadata=meta, metadata_file="meta.json", **kw) == _general(
        monkeypatch, raw, meta, metadata_file="meta.json", **kw
    )


def test_fast_path_row_values():
    row = parse_record(CHAT, file="chat.json", index=0, config="llava_v1_5_mix665k", source_from="image_collection")
    assert row == Row(
        id="000000033471",
        image="coco/train2017/000000033471.jpg",
        conversations=(("human", "<image>\nWhat is it?"), ("gpt", "A bus.")),
        source="coco",
    )
    row = parse_record(CHAT, file="chat.json", index=0, config="blip_558k", metadata=META)
    assert (row.source, row.caption, row.blip_caption, row.url, row.extra) == ("blip_558k", None, "a bus", "u", None)


def test_bad_records_still_name_file_index_and_id():
    bad = {**CHAT, "conversations": [{"from": "human", "value": 3}]}
    with pytest.raises(SourceError) as e:
        parse_record(bad, file="chat.json", index=4, config="blip_558k")
    assert (e.value.file, e.value.index, e.value.record_id) == ("chat.json", 4, "000000033471")
    assert "turn 0: expected a string 'value', got int 3" in str(e.value)
    with pytest.raises(SourceError) as e:
        parse_record(
            CHAT, file="chat.json", index=5, config="blip_558k", metadata={**META, "id": "9"}, metadata_file="meta.json"
        )
    assert (e.value.index, e.value.record_id) == (5, "000000033471")
    assert "meta.json has id '9' at the same record" in str(e.value)


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "x.json"
    path.write_bytes(text.encode("utf-8"))
    return str(path)


@pytest.mark.parametrize("chunk", [5, 13, 4 << 20])
def test_scan_starts_and_records_whatever_the_window(tmp_path, monkeypatch, chunk):
    # Records separated by "," at once, by whitespace first, and one ending exactly at a window's end.
    text = '[{"id": "a", "n": 1} ,\n {"id": "é"},{"id": 3}\n, 4, {"id": "d"}\n]\n'
    path = _write(tmp_path, text)
    monkeypatch.setattr(sources, "_CHUNK", chunk)
    seen = []
    index = sources.index_json_array(path, visit=seen.append)
    raw = text.encode("utf-8")
    assert list(index.starts) == [1, 24, 37, 49, 52, 64]
    assert [raw[s : s + 1] for s in index.starts[:-1]] == [b"{", b"{", b"{", b"4", b"{"]
    assert raw[index.starts[-1] : index.starts[-1] + 1] == b"]"  # the last record ends where "]" stands
    assert index.num_records == 5
    # The scan reads latin-1 (one char per byte), so a UTF-8 id arrives as two chars.
    assert seen == [{"id": "a", "n": 1}, {"id": "Ã©"}, {"id": 3}, 4, {"id": "d"}]


@pytest.mark.parametrize("chunk", [6, 4 << 20])
def test_scan_errors_quote_the_previous_id_as_text(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(sources, "_CHUNK", chunk)
    path = _write(tmp_path, '[{"id": "é"}, {"id": "b" "x"}]')
    with pytest.raises(SourceError) as e:
        sources.index_json_array(path)
    assert str(e.value) == (
        "x.json: record 1: malformed JSON at byte 26 (the record after id='é'): Expecting ',' delimiter"
    )
    path = _write(tmp_path, '[{"id": "é"} {"id": "b"}]')
    with pytest.raises(SourceError) as e:
        sources.index_json_array(path)
    assert str(e.value) == (
        "x.json: record 1: expected ',' or ']' after the record with id='é' (byte 14), found '{'; "
        "the file is truncated or malformed"
    )


NAMES = [
    "000000033471.jpg",
    "22085/220856405.jpg",
    "coco/train2017/000000033471.jpg",
    "ocr_vqa/images/B00+x-y_z.v2.jpg",
    "a..b/c.",
    "_x/y",
    "./a.jpg",
    "a//b.jpg",
    "a/./b.jpg",
    "a/b/",
    "dir\\file.jpg",
    "/etc/passwd",
    "c:evil.jpg",
    "http://host/x.jpg",
    "a/../../x.jpg",
    "..",
    "",
    "a\x00b",
    "été/x.jpg",
    "bad\ud83d.jpg",
    ".hidden/x.jpg",
]


def _safe_or_reason(name: str):
    try:
        return images.safe_name(name)
    except images.BadImage as bad:
        return bad.reason, str(bad)


def test_safe_name_fast_path_changes_nothing(monkeypatch):
    fast = [_safe_or_reason(name) for name in NAMES]
    assert [bool(images._PLAIN_NAME.fullmatch(name)) for name in NAMES] == [True] * 6 + [False] * 15
    monkeypatch.setattr(images, "_PLAIN_NAME", re.compile(r"(?!)"))  # matches nothing: the general checks only
    assert fast == [_safe_or_reason(name) for name in NAMES]
    assert fast[:11] == [*NAMES[:6], "a.jpg", "a/b.jpg", "a/b.jpg", "a/b", "dir/file.jpg"]
    assert [f if isinstance(f, str) else f[0] for f in fast[11:]] == ["unsafe_path"] * 7 + [
        "été/x.jpg",
        "bad_name",
        ".hidden/x.jpg",
    ]
