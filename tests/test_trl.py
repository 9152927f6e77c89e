"""TRL's SFTTrainer trains on to_messages views as users combine them: interleaved, concatenated, streamed.

A tiny LLaVA model (CLIP vision tower + Llama text model) and its processor are built here from configs,
with a byte-level BPE tokenizer trained on the sample's text: nothing is downloaded. Needs `trl` (and so
torch and transformers): `.ci/run` runs this file in its own venv; elsewhere it is skipped.
"""

from __future__ import annotations

import json
import math

import datasets
import pytest
from conftest import jpeg

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import llava_hf  # noqa: E402
from llava_hf.formats import to_messages  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE_SIDE, PATCH = 32, 8
IMAGE_TOKENS = (IMAGE_SIDE // PATCH) ** 2  # CLS dropped by vision_feature_select_strategy="default"
TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}<image>{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}</s>\n{% endfor %}"
)


def tiny_processor_and_model(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<s>", "</s>", "<image>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATE,
    )
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIDE,
            patch_size=PATCH,
        ),
        text_config=transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return processor, transformers.LlavaForConditionalGeneration(config)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    a = llava_hf.load_dataset("detail_23k", sample=True, cache_dir=cache)
    b = llava_hf.load_dataset("conversation_58k", sample=True, cache_dir=cache)
    texts = [turn["value"] for ds in (a, b) for row in ds["conversations"] for turn in row]
    return a, b, *tiny_processor_and_model(texts)


def train_three_steps(train, processor, model, out, images_per_row=(1, 1)) -> list[float]:
    args = trl.SFTConfig(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        max_length=None,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    # the collator gets the images: each row's pictures and IMAGE_TOKENS image tokens per picture
    batch = trainer.data_collator([dict(row) for row in _first(train, 2)])
    assert tuple(batch["pixel_values"].shape) == (sum(images_per_row), 3, IMAGE_SIDE, IMAGE_SIDE)
    image_id = model.config.image_token_index
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [n * IMAGE_TOKENS for n in images_per_row]
    trainer.train()
    assert trainer.state.global_step == 3
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _first(ds, n):
    rows = []
    for row in ds:
        rows.append(row)
        if len(rows) == n:
            return rows
    return rows


def test_sft_on_interleaved_views(parts, tmp_path):
    a, b, processor, model = parts
    train = datasets.interleave_datasets([to_messages(a), to_messages(b)])
    losses = train_three_steps(train, processor, model, tmp_path)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_sft_on_concatenated_views(parts, tmp_path):
    a, b, processor, model = parts
    train = datasets.concatenate_datasets([to_messages(a), to_messages(b)])
    losses = train_three_steps(train, processor, model, tmp_path)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_sft_on_an_iterable_view(parts, tmp_path):
    a, _, processor, model = parts
    train = to_messages(a).to_iterable_dataset()
    assert isinstance(train, datasets.IterableDataset)
    losses = train_three_steps(train, processor, model, tmp_path)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_sft_on_multi_image_rows_concatenated_with_single_image_rows(parts, tmp_path):
    a, _, processor, model = parts
    folder = tmp_path / "pictures"
    folder.mkdir()
    for k in range(3):
        (folder / f"img{k}.jpg").write_bytes(jpeg(100 + k))
    turns = [{"from": "human", "value": "Compare <image> with\n<image>"}, {"from": "gpt", "value": "Same."}]
    first = [{"from": "human", "value": "Which is brighter?"}, {"from": "gpt", "value": "The first."}]  # no token
    records = [
        {"id": "m0", "image": ["img0.jpg", "img1.jpg"], "conversations": turns},
        {"id": "m1", "image": ["img2.jpg", "img0.jpg"], "conversations": first},
        {"id": "m2", "image": ["img1.jpg", "img2.jpg", "img0.jpg"], "conversations": first},
    ]
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    multi = llava_hf.load_dataset(str(path), image_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    train = datasets.concatenate_datasets([to_messages(multi), to_messages(a)])
    losses = train_three_steps(train, processor, model, tmp_path / "out", images_per_row=(2, 2))
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
