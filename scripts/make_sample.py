"""Write the embedded sample (llava_hf/sample/): a few records of every LLaVA source file, in the real
record shapes and with the real quirks, plus small generated images laid out like the release.

    python scripts/make_sample.py            # rewrite llava_hf/sample/
    python scripts/make_sample.py --out DIR  # write elsewhere (tests use this for fake layouts)

Quirks reproduced: `<image>` at the start or the end of the first turn; ids repeating across records
(llava_instruct_150k); int ids, text-only rows, an extra record key (`model`) and an extra turn key in
mix665k; a GIF and a PNG under `.jpg` names (OCR-VQA); CC3M rows without a BLIP caption; zips without a
root folder and the `00453/004539375.jpg` layout of LCS-558K.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "llava_hf" / "sample"
ZIP_DATE = (2023, 4, 17, 0, 0, 0)  # fixed, so that the zips are byte-identical on every run

# Each picture: (background, shapes) drawn at 96x72; enough to tell them apart in a preview.
PALETTE = ["#d7263d", "#f46036", "#2e294e", "#1b998b", "#c5d86d", "#3a86ff", "#8338ec", "#ffbe0b"]


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, rng.choice(PALETTE))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0] - 20), rng.randrange(size[1] - 20)
        box = (x0, y0, x0 + rng.randrange(10, 40), y0 + rng.randrange(10, 30))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=rng.choice(PALETTE))
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 70} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def turns(*pairs: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(pairs)]


COCO = ["000000033471", "000000052846", "000000334872", "000000319154", "000000398214", "000000520873"]

BUS_Q = "What are the colors of the bus in the image?"
BUS_A = "The bus in the image is white and red."


def instruct_files() -> dict[str, list[dict]]:
    c = {i: f"{i}.jpg" for i in COCO}
    conversation = [
        # conversation_58k has `<image>` at the end of the bus question; llava_instruct_150k at the start.
        {
            "id": COCO[0],
            "image": c[COCO[0]],
            "conversations": turns(
                f"{BUS_Q}\n<image>",
                BUS_A,
                "What feature can be seen on the back of the bus?",
                "The back of the bus features an advertisement.",
                "Is the bus driving down the street or pulled off to the side?",
                "The bus is driving down the street, which is crowded with people and other vehicles.",
            ),
        },
        {
            "id": COCO[1],
            "image": c[COCO[1]],
            "conversations": turns(
                "<image>\nWhat is the man doing in the image?",
                "The man in the image is riding a horse along a sandy beach.",
                "Is the horse moving fast?",
                "The horse appears to be trotting at a relaxed pace.",
            ),
        },
        {
            "id": COCO[2],
            "image": c[COCO[2]],
            "conversations": turns(
                "How many people are sitting at the table?\n<image>",
                "There are four people sitting at the table, sharing a meal.",
            ),
        },
    ]
    detail = [
        {
            "id": COCO[3],
            "image": c[COCO[3]],
            "conversations": turns(
                "<image>\nWhat do you see happening in this image?",
                "The image shows a busy kitchen where two cooks prepare dishes side by side. Pots steam on "
                "the stove, and a rack of utensils hangs on the wall behind them.",
            ),
        },
        {
            "id": COCO[4],
            "image": c[COCO[4]],
            "conversations": turns(
                "Describe the following image.\n<image>",
                "A red fire hydrant stands on a sidewalk next to a row of parked bicycles. The street "
                "behind it is lined with trees and small shops.",
            ),
        },
        {
            "id": COCO[0],
            "image": c[COCO[0]],
            "conversations": turns(
                "<image>\nExplain the visual content of the image in great detail.",
                "A white and red city bus drives down a crowded street. An advertisement covers its back, "
                "and pedestrians walk along both sides of the road.",
            ),
        },
    ]
    complex_reasoning = [
        {
            "id": COCO[5],
            "image": c[COCO[5]],
            "conversations": turns(
                "<image>\nWhat might be the reason for the people to gather in this location?",
                "The people are likely gathered to watch a street performance: they stand in a loose "
                "circle facing the same point, and several of them are holding up phones.",
            ),
        },
        {
            "id": COCO[2],
            "image": c[COCO[2]],
            "conversations": turns(
                "What could be a potential challenge for the people at the table?\n<image>",
                "The table is small for four people and is covered with dishes, so passing food around "
                "without knocking something over could be tricky.",
            ),
        },
    ]
    instruct_150k = [
        {"id": COCO[0], "image": c[COCO[0]], "conversations": turns(f"<image>\n{BUS_Q}", BUS_A)},
        detail[0],
        complex_reasoning[0],
        # ids repeat in llava_instruct_150k: the same image has a conversation and a description.
        {
            "id": COCO[0],
            "image": c[COCO[0]],
            "conversations": turns(
                "<image>\nWhat is written on the bus?", "The bus displays its route number above the windshield."
            ),
        },
    ]
    instruct_80k = [conversation[1], complex_reasoning[1], conversation[2]]
    mix = [
        {"id": COCO[0], "image": f"coco/train2017/{c[COCO[0]]}", "conversations": turns(f"<image>\n{BUS_Q}", BUS_A)},
        {
            "id": "n161313",
            "image": "gqa/images/n161313.jpg",
            "conversations": turns(
                "<image>\nIs it overcast?\nAnswer the question using a single word or phrase.",
                "No",
                "Who is wearing a shirt?",
                "Man",
            ),
        },
        # Some mix665k ids are ints; OCR-VQA has GIF and PNG files named .jpg.
        {
            "id": 140031996,
            "image": "ocr_vqa/images/140031996.jpg",
            "conversations": turns(
                "Who wrote this book?\n<image>",
                "Anne Holt",
                "What is the title of this book?",
                "Punishment",
            ),
        },
        {
            "id": "1446306166",
            "image": "ocr_vqa/images/1446306166.jpg",
            "conversations": turns("<image>\nIs this a comedy book?", "No"),
        },
        {
            "id": "0a3c1d5f2f0d1a9e",
            "image": "textvqa/train_images/0a3c1d5f2f0d1a9e.jpg",
            "conversations": turns(
                "<image>\nwhat is the brand name on the bottle?\nReference OCR token: KIRIN, Ichiban",
                "Kirin",
            ),
        },
        {
            "id": "VG_100K_2/2386",
            "image": "vg/VG_100K_2/2386.jpg",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nPlease provide a short description for this region: [0.1, 0.2, 0.5, 0.6]",
                },
                # some turns carry extra keys
                {"from": "gpt", "value": "A wooden bench.", "weight": 1.0},
            ],
        },
        {
            "id": "VG_100K/1592",
            "image": "vg/VG_100K/1592.jpg",
            "conversations": turns("<image>\nWhat color is the sky?", "Blue"),
        },
        # ShareGPT rows are text-only (no `image` key) and carry an extra `model` key.
        {
            "id": "i6IyJda_0",
            "model": "",
            "conversations": turns(
                "How to tell if a customer segment is well segmented? In 3 bullet points.",
                "1. Homogeneity: customers within a segment share characteristics.\n2. Distinctiveness: "
                "segments differ from each other.\n3. Stability: the segment stays valid over time.",
            ),
        },
    ]
    return {
        "conversation_58k.json": conversation,
        "detail_23k.json": detail,
        "complex_reasoning_77k.json": complex_reasoning,
        "llava_instruct_150k.json": instruct_150k,
        "llava_instruct_80k.json": instruct_80k,
        "llava_v1_5_mix665k.json": mix,
    }


def mix_images() -> dict[str, bytes]:
    files = {f"coco/train2017/{i}.jpg": encode(picture(n), "JPEG") for n, i in enumerate(COCO)}
    files["gqa/images/n161313.jpg"] = encode(picture(101), "JPEG")
    files["ocr_vqa/images/140031996.jpg"] = encode(picture(102).convert("P"), "GIF")
    files["ocr_vqa/images/1446306166.jpg"] = encode(picture(103), "PNG")
    files["textvqa/train_images/0a3c1d5f2f0d1a9e.jpg"] = encode(picture(104), "JPEG")
    files["vg/VG_100K_2/2386.jpg"] = encode(picture(105), "JPEG")
    files["vg/VG_100K/1592.jpg"] = encode(picture(106), "JPEG")
    return files


PRETRAIN_PROMPTS = [
    "Provide a brief description of the given image.\n<image>",
    "<image>\nWrite a terse but informative summary of the picture.",
    "Give a short and clear explanation of the subsequent image.\n<image>",
    "<image>\nShare a concise interpretation of the image provided.",
]


def cc3m() -> tuple[list[dict], list[dict], dict[str, bytes]]:
    rows = [
        ("GCC_train_002582585", "olive oil is a healthy ingredient used liberally .", "a bottle of olive oil"),
        ("GCC_train_002061354", "a view of the city from the top of the mountain", None),
        ("GCC_train_000656037", "actor attends the premiere of the film", "a man in a suit on a red carpet"),
        ("GCC_train_001773143", "the pond in the garden", "a small pond with lilies"),
    ]
    chat, meta, images = [], [], {}
    for n, (rid, caption, blip) in enumerate(rows):
        name = f"{rid}.jpg"
        chat.append({"id": rid, "image": name, "conversations": turns(PRETRAIN_PROMPTS[n], caption)})
        record = {"id": rid, "image": name, "caption": caption}
        if blip is not None:  # about 10% of CC3M rows have no BLIP caption
            record["blip_caption"] = blip
        record["url"] = f"https://example.com/cc3m/{rid}.jpg"
        meta.append(record)
        images[name] = encode(picture(200 + n), "JPEG")
    return chat, meta, images


def lcs() -> tuple[list[dict], list[dict], dict[str, bytes]]:
    rows = [
        ("004539375", "select luxury furniture 3 - inch gel memory foam mattress topper"),
        ("002239345", "a grey watch with an army style strap"),
        ("001265142", "a dragon kite flying in the blue sky stock images"),
        ("007050371", "a woman in a red dress standing on a bridge"),
    ]
    chat, meta, images = [], [], {}
    for n, (rid, caption) in enumerate(rows):
        name = f"{rid[:5]}/{rid}.jpg"  # the first five digits of the id name the folder
        chat.append({"id": rid, "image": name, "conversations": turns(PRETRAIN_PROMPTS[n], caption)})
        meta.append({"id": rid, "image": name, "blip_caption": caption, "url": f"https://example.com/laion/{rid}.jpg"})
        images[name] = encode(picture(300 + n), "JPEG")
    return chat, meta, images


def write_json(path: Path, records: list[dict]) -> None:
    # indent=2 like the release files, so byte offsets and whitespace look like the real thing
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():  # no root folder, like the LLaVA archives
            zf.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data)


def write_sample(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    instruct = out / "LLaVA-Instruct-150K"
    instruct.mkdir(parents=True)
    for name, records in instruct_files().items():
        write_json(instruct / name, records)
    for rel, data in mix_images().items():
        target = out / "images" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for folder, chat_name, meta_name, (chat, meta, images) in (
        ("LLaVA-CC3M-Pretrain-595K", "chat.json", "metadata.json", cc3m()),
        ("LLaVA-Pretrain", "blip_laion_cc_sbu_558k.json", "blip_laion_cc_sbu_558k_meta.json", lcs()),
    ):
        (out / folder).mkdir()
        write_json(out / folder / chat_name, chat)
        write_json(out / folder / meta_name, meta)
        write_zip(out / folder / "images.zip", images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (replaced)")
    args = parser.parse_args()
    write_sample(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
