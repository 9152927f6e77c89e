"""Exports for trainers: TRL messages (and a chat template applied to them), LLaMA-Factory, LLaVA round trip."""

from __future__ import annotations

import json
import os

import datasets
import pytest
from conftest import DATA_DIRS, write_json
from PIL import Image

import llava_hf
from llava_hf import formats
from llava_hf.cli import main
from llava_hf.features import FEATURES
from llava_hf.formats import (
    ImageFolder,
    content_blocks,
    conversation_to_messages,
    export_for_trainer,
    to_llamafactory,
    to_llava,
    to_messages,
)

IMAGE = {"type": "image", "text": None}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def load(release, name, cache_dir, **kw):
    return llava_hf.load_dataset(name, cache_dir=cache_dir, **{**release.options(name), **kw})


# --- one turn, one conversation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, blocks",
    [
        ("<image>\nWhat is this?", [IMAGE, text("What is this?")]),
        ("What is this?\n<image>", [text("What is this?"), IMAGE]),
        ("What is this?", [text("What is this?")]),
        ("<image>", [IMAGE]),
        ("Left\n<image>\nright", [text("Left"), IMAGE, text("right")]),
        # only the one separating newline goes with the token; other whitespace is the text's own
        ("<image>\n\nTwo newlines", [IMAGE, text("\nTwo newlines")]),
        ("<image> same line", [IMAGE, text(" same line")]),
        ("", [text("")]),
    ],
)
def test_content_blocks_put_the_image_where_the_token_was(value, blocks):
    assert content_blocks(value) == blocks


def test_every_block_has_the_same_keys():
    # One Arrow struct type for text and image blocks: nothing gains a key (e.g. `image: None`) on a round trip.
    assert {tuple(sorted(b)) for b in content_blocks("a\n<image>\nb")} == {("text", "type")}


def test_roles_human_gpt_system():
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nHi"},
        {"from": "gpt", "value": "Hello"},
    ]
    assert conversation_to_messages(turns, has_image=True) == [
        {"role": "system", "content": [text("Be brief.")]},
        {"role": "user", "content": [IMAGE, text("Hi")]},
        {"role": "assistant", "content": [text("Hello")]},
    ]


def test_unknown_speaker_is_refused_unless_mapped():
    turns = [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]
    with pytest.raises(ValueError, match=r"row 3: speaker 'bot' has no chat role \(known: human, gpt, system\)"):
        conversation_to_messages(turns, has_image=False, where="row 3")
    mapped = conversation_to_messages(turns, has_image=False, roles={**formats.DEFAULT_ROLES, "bot": "assistant"})
    assert mapped[1] == {"role": "assistant", "content": [text("Hello")]}


def test_image_without_token_goes_first_in_the_first_user_turn():
    turns = [{"from": "system", "value": "S"}, {"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A"}]
    assert conversation_to_messages(turns, has_image=True)[1]["content"] == [IMAGE, text("Describe.")]


@pytest.mark.parametrize(
    "values, has_image, message",
    [
        (["<image>\nA <image>", "B"], True, "row: 2 '<image>' tokens but at most one image"),
        (["<image>\nA", "B"], False, "row: '<image>' in a text-only row"),
    ],
)
def test_token_and_image_must_agree(values, has_image, message):
    turns = [{"from": s, "value": v} for s, v in zip(("human", "gpt"), values)]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        conversation_to_messages(turns, has_image=has_image)


# --- to_messages on prepared datasets --------------------------------------------------------------------


def test_to_messages_token_at_end_start_and_absent(release, cache_dir):
    conv = to_messages(load(release, "conversation_58k", cache_dir))
    # TRL's Trainer keeps only the columns its collator names: nothing else must be visible.
    assert sorted(conv.column_names) == ["images", "messages"]
    row = conv[0]  # `<image>` at the end of the bus question
    assert row["messages"][:2] == [
        {"role": "user", "content": [text("What are the colors of the bus in the image?"), IMAGE]},
        {"role": "assistant", "content": [text("The bus in the image is white and red.")]},
    ]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3
    assert [im.size for im in row["images"]] == [(96, 72)]
    assert conv[1]["messages"][0]["content"] == [IMAGE, text("What is the man doing in the image?")]

    mix = to_messages(load(release, "llava_v1_5_mix665k", cache_dir))
    text_only = mix[7]
    assert text_only["images"] == []
    assert text_only["messages"][0] == {
        "role": "user",
        "content": [text("How to tell if a customer segment is well segmented? In 3 bullet points.")],
    }
    # GIF and PNG under .jpg names decode by content
    assert [mix[i]["images"][0].format for i in (2, 3)] == ["GIF", "PNG"]
    batch = mix[:8]
    assert [len(images) for images in batch["images"]] == [1] * 7 + [0]
    for messages in batch["messages"]:
        for message in messages:
            assert all("<image>" not in (block["text"] or "") for block in message["content"])


def test_to_messages_is_lazy_and_copies_no_image_bytes(release, cache_dir):
    ds = load(release, "detail_23k", cache_dir)
    conv = to_messages(ds)
    # the source's Arrow files, plus the messages column written once beside them
    (messages_file,) = [f for f in conv.cache_files if f not in ds.cache_files]
    assert [f for f in conv.cache_files if f in ds.cache_files] == ds.cache_files
    assert os.path.basename(messages_file["filename"]).startswith("llava_hf-trl-messages-")
    assert conv.features == formats.TRL_FEATURES
    assert (
        conv.data.column("images").chunks[0].buffers()[-1].address
        == ds.data.column("image").chunks[0].buffers()[-1].address
    )


def test_to_messages_of_a_stream_gives_the_same_rows(release, cache_dir):
    ds = load(release, "llava_v1_5_mix665k", cache_dir)
    stream = to_messages(load(release, "llava_v1_5_mix665k", cache_dir, streaming=True))
    assert isinstance(stream, datasets.IterableDataset)
    rows = list(stream)
    lazy = to_messages(ds)
    assert [r["messages"] for r in rows] == lazy[:8]["messages"]
    assert [[im.size for im in r["images"]] for r in rows] == [[(96, 72)]] * 7 + [[]]


def test_rows_that_cannot_be_messages_are_listed_and_can_be_filtered_out(release, cache_dir):
    name = "llava_v1_5_mix665k"
    records = release.records(name)
    records[7]["conversations"][0]["value"] += "\n<image>"  # a text-only ShareGPT row quoting the token
    records[5]["conversations"][1]["from"] = "bot"
    write_json(release.data_dir(name) / "llava_v1_5_mix665k.json", records)
    ds = load(release, name, cache_dir)
    with pytest.raises(ValueError) as info:
        to_messages(ds)
    assert str(info.value) == (
        "2 rows cannot be exported: row 5 (id='VG_100K_2/2386'): speaker 'bot' has no chat role (known: human, gpt, "
        "system); pass roles={...} to map it; row 7 (id='i6IyJda_0'): '<image>' in a text-only row (no image to "
        "put there). Filter them out first (ds.filter) or map unknown speakers with roles={...}."
    )
    kept = ds.filter(lambda row: row["id"] != "i6IyJda_0")
    messages = to_messages(kept, roles={"bot": "assistant"})
    assert len(messages) == 7
    assert messages[5]["messages"][1] == {"role": "assistant", "content": [text("A wooden bench.")]}
    # the check follows the index mapping: the bad row is out of this selection
    assert to_messages(ds.select([0, 1]))[1]["messages"][0]["content"][0] == IMAGE


# --- a chat template applied to the result ---------------------------------------------------------------

# Tokenizer-free templates in the style of the two common VLM families, rendered the way transformers
# renders chat templates (sandboxed Jinja, trim_blocks, lstrip_blocks).
LLAVA_15_STYLE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}\n"
    "{% else %}{{ message['role'].upper() }}: "
    "{% for block in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{{ message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
QWEN2_VL_STYLE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def render(template: str, messages: list, **kw) -> str:
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, **kw)


def test_chat_templates_render_the_image_where_it_was(release, cache_dir):
    conv = to_messages(load(release, "conversation_58k", cache_dir))
    end, start = conv[2]["messages"], conv[1]["messages"][:2]
    assert render(QWEN2_VL_STYLE, end) == (
        "<|im_start|>user\nHow many people are sitting at the table?<|vision_start|><|image_pad|><|vision_end|>"
        "<|im_end|>\n<|im_start|>assistant\nThere are four people sitting at the table, sharing a meal.<|im_end|>\n"
    )
    assert render(QWEN2_VL_STYLE, start[:1], add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is the man doing in the image?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(LLAVA_15_STYLE, end) == (
        "USER: <image>\nHow many people are sitting at the table?\n"
        "ASSISTANT: There are four people sitting at the table, sharing a meal.</s>\n"
    )
    text_only = to_messages(load(release, "llava_v1_5_mix665k", cache_dir))[7]["messages"]
    rendered = render(QWEN2_VL_STYLE, text_only)
    assert "<|image_pad|>" not in rendered and "<image>" not in rendered
    assert rendered.startswith("<|im_start|>user\nHow to tell if a customer segment is well segmented?")


def test_template_sees_one_image_per_image_after_an_arrow_round_trip(release, cache_dir, tmp_path):
    ds = load(release, "llava_v1_5_mix665k", cache_dir)
    formats.to_trl(ds, tmp_path / "trl", progress=False)
    back = datasets.load_dataset("parquet", data_dir=str(tmp_path / "trl"), split="train", cache_dir=cache_dir)
    lazy = to_messages(ds)
    assert back.features == formats.TRL_FEATURES
    for i in range(len(ds)):
        rendered = render(QWEN2_VL_STYLE, back[i]["messages"])
        assert rendered == render(QWEN2_VL_STYLE, lazy[i]["messages"])
        assert rendered.count("<|image_pad|>") == len(back[i]["images"])
    assert [im.size for im in back[2]["images"]] == [(96, 72)]


def test_to_trl_refuses_a_folder_with_parquet_files(release, cache_dir, tmp_path):
    ds = load(release, "detail_23k", cache_dir)
    assert formats.to_trl(ds, tmp_path, progress=False) == {
        "files": [str(tmp_path / "train-00000.parquet")],
        "rows": 3,
        "images": 3,
    }
    with pytest.raises(ValueError, match="already holds train-00000.parquet"):
        formats.to_trl(ds, tmp_path, progress=False)


# --- back to LLaVA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATA_DIRS))
def test_llava_round_trip_gives_the_source_records_key_for_key(release, cache_dir, tmp_path, name):
    ds = load(release, name, cache_dir)
    result = to_llava(ds, tmp_path, progress=False)
    source = llava_hf.CATALOG[name]
    with open(tmp_path / source.filename, encoding="utf-8") as f:
        records = json.load(f)
    assert records == release.records(name)  # int ids, `model`, the turn's `weight` included
    # key for key, in the source's order (mix665k's ShareGPT rows: id, model, conversations)
    assert [list(r) for r in records] == [list(r) for r in release.records(name)]
    if source.metadata_filename:
        with open(tmp_path / source.metadata_filename, encoding="utf-8") as f:
            metadata = json.load(f)
        assert metadata == release.metadata(name)
        assert [list(r) for r in metadata] == [list(r) for r in release.metadata(name)]
        assert result["metadata"] == str(tmp_path / source.metadata_filename)
    else:
        assert result["metadata"] is None
    names = {r["image"] for r in records if "image" in r}
    for image in names:
        assert (tmp_path / "images" / image).read_bytes() == release.image_bytes(name, image)
    written = {p.relative_to(tmp_path / "images").as_posix() for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert written == names
    assert (result["rows"], result["images"]) == (len(records), len(names))


def test_llava_round_trip_of_mix665k_quirks(release, cache_dir, tmp_path):
    to_llava(load(release, "llava_v1_5_mix665k", cache_dir), tmp_path, progress=False)
    records = json.loads((tmp_path / "llava_v1_5_mix665k.json").read_text(encoding="utf-8"))
    assert records[2]["id"] == 140031996  # an int id stays an int
    assert records[5]["conversations"][1] == {"from": "gpt", "value": "A wooden bench.", "weight": 1.0}
    assert records[7] == {**release.records("llava_v1_5_mix665k")[7]} and "image" not in records[7]
    assert records[7]["model"] == ""


def test_llava_export_streams_and_of_a_selection(release, cache_dir, tmp_path):
    name = "llava_instruct_150k"
    stream = load(release, name, cache_dir, streaming=True)
    result = to_llava(stream, tmp_path / "s", progress=False)
    assert json.loads((tmp_path / "s" / "llava_instruct_150k.json").read_text()) == release.records(name)
    assert (result["rows"], result["images"]) == (4, 3)  # ids repeat: each image written once
    picked = load(release, name, cache_dir).select([3, 0])
    to_llava(picked, tmp_path / "p", json_name="picked.json", progress=False)
    assert json.loads((tmp_path / "p" / "picked.json").read_text()) == [release.records(name)[i] for i in (3, 0)]


def test_llava_export_needs_embedded_images(release, cache_dir, tmp_path):
    ds = load(release, "detail_23k", cache_dir, embed_images=False)
    with pytest.raises(ValueError, match=r"row 0 \(id='000000319154'\): image '/.*000000319154.jpg' has no embedded"):
        to_llava(ds, tmp_path, progress=False)
    assert not (tmp_path / "detail_23k.json").exists()  # nothing that looks complete
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".json"] == []


def test_one_image_name_for_two_pictures_is_refused(tmp_path):
    folder = ImageFolder(str(tmp_path))
    assert folder.write({"bytes": b"one", "path": "a/b.jpg"}, "row 0") == "a/b.jpg"
    assert folder.write({"bytes": b"one", "path": "a/b.jpg"}, "row 1") == "a/b.jpg"
    assert folder.written == 1
    with pytest.raises(ValueError, match="row 2: image name 'a/b.jpg' was already written with other bytes"):
        folder.write({"bytes": b"two", "path": "a/b.jpg"}, "row 2")
    with pytest.raises(ValueError, match=r"row 3: image path '../x.jpg' leaves the image root"):
        folder.write({"bytes": b"x", "path": "../x.jpg"}, "row 3")


# --- LLaMA-Factory ---------------------------------------------------------------------------------------


def test_llamafactory_layout_and_stanza(release, cache_dir, tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    result = to_llamafactory(load(release, "llava_v1_5_mix665k", cache_dir), tmp_path, progress=False)
    stanza = {
        "llava_hf_llava_v1_5_mix665k": {
            "file_name": "llava_hf_llava_v1_5_mix665k.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    }
    assert result["stanza"] == stanza
    assert json.loads((tmp_path / "dataset_info.json").read_text()) == {"mine": {"file_name": "mine.json"}, **stanza}
    lines = [json.loads(line) for line in (tmp_path / "llava_hf_llava_v1_5_mix665k.jsonl").read_text().splitlines()]
    records = release.records("llava_v1_5_mix665k")
    assert [line["id"] for line in lines] == [str(r["id"]) for r in records]
    assert lines[0] == {
        "id": "000000033471",
        "conversations": records[0]["conversations"],
        "images": ["images/coco/train2017/000000033471.jpg"],
    }
    assert lines[7]["images"] == []
    for line in lines:
        # LLaMA-Factory requires one `<image>` per image, and reads paths relative to dataset_dir
        assert sum(t["value"].count("<image>") for t in line["conversations"]) == len(line["images"])
        for path in line["images"]:
            assert Image.open(tmp_path / path).size == (96, 72)
    assert (result["rows"], result["images"], result["image_token_added"]) == (8, 7, 0)
    assert result["llamafactory_skips"] == {"count": 0, "examples": []}


def test_llamafactory_counts_rows_it_would_skip_and_adds_missing_tokens(release, cache_dir, tmp_path):
    name = "detail_23k"
    records = release.records(name)
    records[0]["conversations"][0]["value"] = "What do you see happening in this image?"  # no token
    records[1]["conversations"].append({"from": "human", "value": "And?"})  # ends on a human turn
    write_json(release.data_dir(name) / "detail_23k.json", records)
    result = to_llamafactory(load(release, name, cache_dir), tmp_path, name="detail", progress=False)
    first = json.loads((tmp_path / "detail.jsonl").read_text().splitlines()[0])
    assert first["conversations"][0]["value"] == "<image>\nWhat do you see happening in this image?"
    assert result["image_token_added"] == 1
    assert result["llamafactory_skips"] == {
        "count": 1,
        "examples": ["row 1 (id='000000398214'): 3 human/gpt turns, LLaMA-Factory expects an even number"],
    }


def test_llamafactory_refuses_an_image_with_no_turn_to_hold_its_token(tmp_path):
    row = {"id": "x", "image": {"bytes": b"\xff\xd8\xff", "path": "x.jpg"}, "conversations": []}
    ds = datasets.Dataset.from_list(
        [{**row, "source": "t", "caption": None, "blip_caption": None, "url": None, "extra": None}], features=FEATURES
    )
    with pytest.raises(ValueError) as caught:
        to_llamafactory(ds, tmp_path, name="x", progress=False)
    assert str(caught.value) == "row 0 (id='x'): has an image but no turns to put it in"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no JSONL, no dataset_info.json


# --- several configs at once -----------------------------------------------------------------------------


def test_export_for_trainer_writes_one_folder_per_config(cache_dir, tmp_path):
    results = export_for_trainer(
        ["detail_23k", "blip_558k"], tmp_path / "out", "llava", sample=True, cache_dir=cache_dir, progress=False
    )
    assert list(results) == ["detail_23k", "blip_558k"]
    for name, rows in (("detail_23k", 3), ("blip_558k", 4)):
        out = str(tmp_path / "out" / name)
        assert results[name]["out_dir"] == out
        assert (results[name]["json"], results[name]["rows"]) == (f"{out}/{llava_hf.CATALOG[name].filename}", rows)
    (one,) = export_for_trainer("detail_23k", tmp_path / "one", "trl", sample=True, cache_dir=cache_dir).values()
    assert one == {"out_dir": str(tmp_path / "one"), "files": [str(tmp_path / "one" / "train-00000.parquet")]} | {
        "rows": 3,
        "images": 3,
    }
    with pytest.raises(ValueError) as caught:
        export_for_trainer("detail_23k", tmp_path / "x", "sharegpt", sample=True)
    assert str(caught.value) == "format must be one of ('trl', 'llamafactory', 'llava'), got 'sharegpt'"


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_export_for_trainers(release, cache_dir, tmp_path, capsys):
    options = release.options("cc3m_595k")
    out = tmp_path / "llava"
    code = main(
        ["export", "cc3m_595k", "--format", "llava", "-o", str(out), "--data-dir", options["data_dir"]]
        + ["--cache-dir", cache_dir, "-q"]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"wrote 4 records to {out}/chat.json and {out}/metadata.json; 4 images",
        f"train with: --data_path {out}/chat.json --image_folder {out}/images",
    ]
    assert json.loads((out / "chat.json").read_text()) == release.records("cc3m_595k")

    code = main(
        ["export", "detail_23k", "--format", "llamafactory", "-o", str(tmp_path / "lf"), "--sample"]
        + ["--cache-dir", cache_dir, "-q"]
    )
    assert code == 0
    out_text = capsys.readouterr().out
    stanza = json.loads(out_text[out_text.index("{") :])
    assert stanza["llava_hf_detail_23k"]["file_name"] == "llava_hf_detail_23k.jsonl"
    assert os.path.exists(tmp_path / "lf" / "images" / "000000319154.jpg")

    # the Hub layout's options mean nothing to a trainer's format: refused, not silently ignored
    code = main(
        ["export", "detail_23k", "--format", "trl", "-o", str(tmp_path / "t"), "--sample", "--default", "detail_23k"]
    )
    assert code == 2
    assert capsys.readouterr().err == "llava-hf export: --default only apply with --format hub\n"
    assert not (tmp_path / "t").exists()


# --- exports a review found unsafe: refused before writing, or leaving nothing that looks complete ---------


def _rows(*conversations) -> datasets.Dataset:
    image = {"bytes": b"\xff\xd8\xff", "path": "x.jpg"}
    extra = {"source": "t", "caption": None, "blip_caption": None, "url": None, "extra": None}
    return datasets.Dataset.from_list(
        [{"id": f"r{i}", "image": image, "conversations": c, **extra} for i, c in enumerate(conversations)],
        features=FEATURES,
    )


def test_an_image_with_no_turns_is_listed_before_any_trl_file(tmp_path):
    good = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    ds = _rows(good, [], good)
    message = (
        "1 rows cannot be exported: row 1 (id='r1'): has an image but no turns to put it in. Filter them out "
        "first (ds.filter) or map unknown speakers with roles={...}."
    )
    with pytest.raises(ValueError) as caught:
        to_messages(ds)
    assert str(caught.value) == message
    with pytest.raises(ValueError) as caught:
        formats.to_trl(ds, tmp_path / "trl", progress=False)
    assert str(caught.value) == message
    assert os.listdir(tmp_path / "trl") == []


def test_a_failed_trl_export_leaves_no_parquet_and_the_retry_writes(tmp_path, monkeypatch):
    good = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    bad = [{"from": "human", "value": "<image>\nq"}, {"from": "bot", "value": "a"}]
    ds = _rows(*([good] * 150 + [bad] + [good] * 49))
    monkeypatch.setattr(formats, "MAX_PARQUET_BYTES", 1)  # a file a batch: the failure comes after some
    stream = ds.to_iterable_dataset()  # a stream is not checked first: the bad row is found while writing
    with pytest.raises(ValueError, match=r"^row 150 \(id='r150'\): speaker 'bot' has no chat role"):
        formats.to_trl(stream, tmp_path / "trl", progress=False)
    assert os.listdir(tmp_path / "trl") == []
    written = formats.to_trl(ds.select(range(150)), tmp_path / "trl", progress=False)
    assert written["rows"] == 150 and sorted(os.listdir(tmp_path / "trl")) == [
        os.path.basename(f) for f in written["files"]
    ]
    with pytest.raises(ValueError, match=r"^no rows to export to .*: the dataset is empty$"):
        formats.to_trl(ds.select([]), tmp_path / "empty", progress=False)
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.parametrize(("content", "kind"), [("[]", "holds a JSON list"), ("{not json", "is not JSON")])
def test_llamafactory_refuses_a_dataset_info_it_cannot_merge_before_writing(tmp_path, content, kind):
    ds = _rows([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}])
    (tmp_path / "dataset_info.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"dataset_info.json {kind}"):
        to_llamafactory(ds, tmp_path, name="x", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_info.json"]
    (tmp_path / "dataset_info.json").write_text("{}", encoding="utf-8")
    assert to_llamafactory(ds, tmp_path, name="x", progress=False)["rows"] == 1  # fixed: the retry writes
