"""sources.py: scanning big JSON arrays into byte-offset shards."""

from __future__ import annotations

import json

import pytest

from llava_hf import sources
from llava_hf.errors import SourceError
from llava_hf.sources import first_mismatch, index_json_array, plan_shards, read_batches


def records(n: int) -> list[dict]:
    return [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"héllo {i} ✓ [{{,}}]"}]} for i in range(n)]


def rows_of(path, index) -> list:
    out = []
    for shard in plan_shards(index):
        for batch in read_batches(str(path), shard.chat, shard.start, shard.stop, "x.json"):
            out.extend(batch)
    return out


@pytest.mark.parametrize("indent", [None, 2])
def test_index_and_read_back_every_record(tmp_path, indent):
    data = records(1234)
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")
    index = index_json_array(str(path))
    assert index.num_records == 1234
    assert index.size == path.stat().st_size
    assert rows_of(path, index) == data


def test_small_chunks_and_records_across_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_CHUNK", 7)  # every record straddles several reads
    data = records(50)
    path = tmp_path / "x.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")
    index = index_json_array(str(path))
    assert index.num_records == 50
    assert rows_of(path, index) == data


def test_empty_array(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(" [ ] \n")
    index = index_json_array(str(path))
    assert index.num_records == 0
    assert plan_shards(index) == []


def test_shards_are_contiguous_and_many_even_for_a_small_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(records(5)))
    shards = plan_shards(index_json_array(str(path)))
    assert [(s.start, s.stop) for s in shards] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]


def test_shard_sizes_for_a_large_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(records(250_001 // 100)))  # 2,500 records
    shards = plan_shards(index_json_array(str(path)))
    assert len(shards) == 16
    assert shards[0].start == 0 and shards[-1].stop == 2500
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    assert [len(s.chat) - 1 for s in shards] == [2] * 16  # 156 rows = batches of 100 + 56


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "x.json: expected a JSON array of records, found an empty file"),
        (
            '{"id": 1}\n{"id": 2}',
            "x.json: expected a JSON array of records, found '{' at byte 0 (JSON Lines files are not LLaVA arrays)",
        ),
        (
            '[{"id": "a"}, {"id": "b",, }]',
            "x.json: record 1: malformed JSON at byte 25 (the record after id='a'): Expecting property name enclosed in double quotes",
        ),
        (
            '[{"id": "a"} {"id": "b"}]',
            "x.json: record 1: expected ',' or ']' after the record with id='a' (byte 13), found '{'; the file is truncated or malformed",
        ),
        (
            '[{"id": "a"}, {"id": "b"',
            "x.json: record 1: malformed JSON at byte 24 (the record after id='a'): Expecting ',' delimiter",
        ),
        (
            '[{"id": "a"}',
            "x.json: record 1: expected ',' or ']' after the record with id='a' (byte 12), found the end of the file; the file is truncated or malformed",
        ),
        ('[{"id": "a"}] x', "x.json: unexpected 'x' after the closing ']' at byte 14"),
        ('[{"id": "a"},]', "x.json: record 1: malformed JSON at byte 13 (the record after id='a'): Expecting value"),
    ],
)
def test_malformed_json_names_the_record(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(SourceError) as info:
        index_json_array(str(path))
    assert str(info.value) == message


def test_invalid_utf8_names_the_record_and_byte(tmp_path):
    path = tmp_path / "x.json"
    records = [json.dumps({"id": f"r{i}", "v": "caf\u00e9"}, ensure_ascii=False).encode() for i in range(250)]
    records[160] = b'{"id": "r160", "v": "caf\xe9"}'  # latin-1 e-acute: not UTF-8
    path.write_bytes(b"[" + b",\n".join(records) + b"]")
    index = index_json_array(str(path))
    with pytest.raises(SourceError) as info:
        rows_of(path, index)
    offset = path.read_bytes().index(b"caf\xe9") + 3
    assert str(info.value) == f"x.json: record 160 (id='r160'): byte {offset} is not UTF-8 (b'\\xe9')"


def test_first_mismatch_names_the_first_differing_row(tmp_path):
    chat = tmp_path / "chat.json"
    meta = tmp_path / "metadata.json"
    chat.write_text(json.dumps([{"id": f"r{i}"} for i in range(300)]))
    meta.write_text(json.dumps([{"id": f"r{i}"} for i in range(300) if i != 217]))
    error = first_mismatch(index_json_array(str(chat)), index_json_array(str(meta)), "chat.json", "metadata.json")
    assert str(error) == (
        "chat.json: record 217 (id='r217'): metadata.json record 217 has id 'r218'; the chat and metadata files "
        "must be parallel (same order, same ids), and they have 300 and 299 records"
    )


def test_first_mismatch_when_only_the_tail_differs(tmp_path):
    chat = tmp_path / "chat.json"
    meta = tmp_path / "metadata.json"
    chat.write_text(json.dumps([{"id": f"r{i}"} for i in range(3)]))
    meta.write_text(json.dumps([{"id": f"r{i}"} for i in range(2)]))
    error = first_mismatch(index_json_array(str(chat)), index_json_array(str(meta)), "chat.json", "metadata.json")
    assert str(error) == (
        "chat.json: record 2: has 3 records but metadata.json has 2; the first 2 rows match, record 2 is the "
        "first without a partner"
    )


def test_first_mismatch_when_the_metadata_is_longer_names_no_chat_record(tmp_path):
    chat = tmp_path / "chat.json"
    meta = tmp_path / "metadata.json"
    chat.write_text(json.dumps([{"id": f"r{i}"} for i in range(2)]))
    meta.write_text(json.dumps([{"id": f"r{i}"} for i in range(3)]))
    error = first_mismatch(index_json_array(str(chat)), index_json_array(str(meta)), "chat.json", "metadata.json")
    assert (str(error), error.index) == (
        "chat.json: has 2 records but metadata.json has 3; the first 2 rows match, record 2 is the first without "
        "a partner",
        None,
    )
