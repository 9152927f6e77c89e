"""records.py: raw JSON record -> validated row, on literal dicts."""

from __future__ import annotations

import json

import pytest

from llava_hf.errors import SourceError
from llava_hf.records import Row, parse_record, restore_record

BUS = {
    "id": "000000033471",
    "image": "000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
    ],
}


def parse(raw, **kw):
    kw.setdefault("file", "detail_23k.json")
    kw.setdefault("index", 7)
    kw.setdefault("config", "detail_23k")
    return parse_record(raw, **kw)


def test_plain_record():
    row = parse(BUS)
    assert row == Row(
        id="000000033471",
        image="000000033471.jpg",
        conversations=(
            ("human", "<image>\nWhat are the colors of the bus in the image?"),
            ("gpt", "The bus in the image is white and red."),
        ),
        source="detail_23k",
        caption=None,
        blip_caption=None,
        url=None,
        extra=None,
    )


def test_image_token_at_end_is_kept_as_written():
    raw = dict(BUS, conversations=[{"from": "human", "value": "What?\n<image>"}, {"from": "gpt", "value": "A bus."}])
    assert parse(raw).conversations[0] == ("human", "What?\n<image>")


def test_int_id_becomes_string_and_is_remembered():
    row = parse({**BUS, "id": 140031996})
    assert row.id == "140031996"
    assert json.loads(row.extra) == {"@id": 140031996}


def test_extra_record_and_turn_keys_are_kept():
    raw = {
        "id": "i6IyJda_0",
        "model": "",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello", "weight": 0.5}],
    }
    row = parse(raw, config="llava_v1_5_mix665k", source_from="image_collection")
    assert row.image is None
    assert row.source == "text_only"
    # `model` stands before `conversations`: the order is kept, since restoring would put it last
    assert json.loads(row.extra) == {
        "model": "",
        "@order": ["id", "model", "conversations"],
        "@turns": [{}, {"weight": 0.5}],
    }
    restored = restore_record({**row.__dict__, "conversations": _turns(row)})[0]
    assert list(restored) == ["id", "model", "conversations"] and restored == raw


def test_key_order_is_stored_only_when_restoring_would_lose_it():
    assert parse({**BUS, "model": "x"}).extra == '{"model":"x"}'  # extra keys last: the order restore gives
    raw = {"conversations": BUS["conversations"], "image": BUS["image"], "id": BUS["id"]}
    row = parse(raw)
    assert json.loads(row.extra) == {"@order": ["conversations", "image", "id"]}
    assert list(restore_record({**row.__dict__, "conversations": _turns(row)})[0]) == ["conversations", "image", "id"]


def test_source_key_starting_with_at_is_escaped():
    row = parse({**BUS, "@id": "x"})
    assert json.loads(row.extra) == {"@@id": "x"}
    assert restore_record({**row.__dict__, "conversations": _turns(row)})[0] == {**BUS, "@id": "x"}


def test_mix665k_source_is_the_image_collection():
    raw = {**BUS, "image": "gqa/images/n161313.jpg"}
    assert parse(raw, config="llava_v1_5_mix665k", source_from="image_collection").source == "gqa"
    assert parse(raw).source == "detail_23k"


def test_explicit_null_image_is_text_only_and_restorable():
    row = parse({**BUS, "image": None})
    assert (row.image, row.source, json.loads(row.extra)) == (None, "text_only", {"@image": None})
    assert restore_record({**row.__dict__, "conversations": _turns(row)})[0] == {**BUS, "image": None}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            ["not", "an", "object"],
            'detail_23k.json: record 7: expected a JSON object, got list ["not", "an", "object"]',
        ),
        (
            {"image": "a.jpg", "conversations": []},
            "detail_23k.json: record 7: expected an 'id' key, found keys 'image', 'conversations'",
        ),
        (
            {"id": 1.5, "conversations": []},
            "detail_23k.json: record 7 (id=1.5): expected a string or an integer 'id', got float 1.5",
        ),
        (
            {"id": "a"},
            "detail_23k.json: record 7 (id='a'): expected 'conversations' to be a list of turns, got no 'conversations' key",
        ),
        (
            {"id": "a", "conversations": "hi"},
            "detail_23k.json: record 7 (id='a'): expected 'conversations' to be a list of turns, got str \"hi\"",
        ),
        (
            {"id": "a", "conversations": [{"from": "human"}]},
            "detail_23k.json: record 7 (id='a'): turn 0: expected a string 'value', it is missing",
        ),
        (
            {"id": "a", "conversations": [{"value": "x"}]},
            "detail_23k.json: record 7 (id='a'): turn 0: expected a string 'from', it is missing",
        ),
        (
            {"id": "a", "conversations": [{"from": "gpt", "value": None}]},
            "detail_23k.json: record 7 (id='a'): turn 0: expected a string 'value', got null",
        ),
        (
            {"id": "a", "conversations": ["hi"]},
            "detail_23k.json: record 7 (id='a'): turn 0: expected an object with 'from' and 'value', got str \"hi\"",
        ),
        (
            {"id": "a", "image": 3, "conversations": []},
            "detail_23k.json: record 7 (id='a'): expected 'image' to be a file name, got int 3",
        ),
        (
            {"id": "a", "image": "", "conversations": []},
            "detail_23k.json: record 7 (id='a'): expected 'image' to be a file name, got str \"\"",
        ),
    ],
)
def test_bad_records_name_file_index_and_id(raw, message):
    with pytest.raises(SourceError) as info:
        parse(raw)
    assert str(info.value) == message
    assert info.value.index == 7


def test_metadata_is_joined():
    chat = {**BUS, "id": "GCC_train_002582585", "image": "GCC_train_002582585.jpg"}
    meta = {
        "id": "GCC_train_002582585",
        "image": "GCC_train_002582585.jpg",
        "caption": "olive oil is a healthy ingredient used liberally .",
        "blip_caption": "a bottle of olive oil",
        "url": "https://example.com/a.jpg",
    }
    row = parse(chat, config="cc3m_595k", metadata=meta, metadata_file="metadata.json")
    assert (row.caption, row.blip_caption, row.url, row.extra) == (
        "olive oil is a healthy ingredient used liberally .",
        "a bottle of olive oil",
        "https://example.com/a.jpg",
        None,
    )
    restored = restore_record({**row.__dict__, "conversations": _turns(row)}, with_metadata=True)
    assert restored == (chat, meta)


def test_metadata_without_blip_caption_and_with_unknown_keys():
    chat = {**BUS, "id": "x1", "image": "x1.jpg"}
    meta = {"id": "x1", "image": "other.jpg", "url": "u", "score": 0.3}
    row = parse(chat, config="cc3m_595k", metadata=meta, metadata_file="metadata.json")
    assert (row.caption, row.blip_caption, row.url) == (None, None, "u")
    assert json.loads(row.extra) == {"@metadata": {"image": "other.jpg", "score": 0.3}}
    assert restore_record({**row.__dict__, "conversations": _turns(row)}, with_metadata=True) == (chat, meta)


def test_metadata_of_another_record_is_refused_naming_both_files():
    chat = {**BUS, "id": "x1"}
    with pytest.raises(SourceError) as info:
        parse(chat, file="chat.json", config="cc3m_595k", metadata={"id": "x2"}, metadata_file="metadata.json")
    assert str(info.value) == (
        "chat.json: record 7 (id='x1'): metadata.json has id 'x2' at the same record; the chat and metadata "
        "files must be parallel (same order, same ids)"
    )


def test_restore_round_trip_of_a_plain_record():
    row = parse(BUS)
    assert restore_record({**row.__dict__, "conversations": _turns(row)}) == (BUS, None)


def _turns(row: Row) -> list[dict]:
    return [{"from": f, "value": v} for f, v in row.conversations]
