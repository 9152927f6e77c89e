"""The table of LLaVA sources: one entry per source file, one builder config per entry.

Every difference between sources is a field here, so the builder never branches on a config name.
Counts are the published sizes of the release files (see the "sources" table in README).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

INSTRUCT_REPO = "liuhaotian/LLaVA-Instruct-150K"
CC3M_REPO = "liuhaotian/LLaVA-CC3M-Pretrain-595K"
LCS_REPO = "liuhaotian/LLaVA-Pretrain"

LLAVA_CITATION = """@inproceedings{liu2023llava,
  title     = {Visual Instruction Tuning},
  author    = {Liu, Haotian and Li, Chunyuan and Wu, Qingyang and Lee, Yong Jae},
  booktitle = {NeurIPS},
  year      = {2023}
}"""
LLAVA15_CITATION = """@inproceedings{liu2024improved,
  title     = {Improved Baselines with Visual Instruction Tuning},
  author    = {Liu, Haotian and Li, Chunyuan and Li, Yuheng and Lee, Yong Jae},
  booktitle = {CVPR},
  year      = {2024}
}"""

# The instruct files name COCO train2017 images (`000000442786.jpg`); many people hold train2014 or val2014
# instead, where the same picture is `COCO_train2014_000000442786.jpg`. These rewrites are tried, in order,
# only when the name as written is missing, so either folder layout works without renaming 80K files.
COCO_FLAT_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^(\d{12}\.jpg)$", r"COCO_train2014_\1"),
    (r"^(\d{12}\.jpg)$", r"COCO_val2014_\1"),
)
COCO_PREFIXED_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^coco/train2017/(\d{12}\.jpg)$", r"coco/train2014/COCO_train2014_\1"),
    (r"^coco/train2017/(\d{12}\.jpg)$", r"coco/val2014/COCO_val2014_\1"),
)


@dataclass(frozen=True)
class Source:
    """One LLaVA source file and everything needed to turn it into a dataset."""

    name: str
    repo_id: str
    filename: str
    num_records: int
    image_layout: str
    # A Hub license id (https://hf.co/docs/hub/repositories-licenses), or "other" with the two fields below.
    license: str
    citation: str
    description: str
    # Pretrain configs: a metadata file parallel to the chat file (same order, same ids).
    metadata_filename: str | None = None
    # Images shipped inside the repo as one zip (read in place); None means the user supplies a folder.
    image_archive: str | None = None
    # How the `source` column is filled: the config name, or (mix665k) the image collection in the path.
    source_from: Literal["config", "image_collection"] = "config"
    image_aliases: tuple[tuple[str, str], ...] = ()
    # Where the embedded sample keeps this source's files, relative to llava_hf/sample/.
    sample_data_dir: str = "LLaVA-Instruct-150K"
    sample_image_dir: str | None = "images/coco/train2017"
    # With license "other", what the Hub card needs instead of a license id: a name for the terms
    # (lowercase, digits, `-` and `.`) and the URL of the text that states them.
    license_name: str | None = None
    license_link: str | None = None
    # The image collections (image_collections.py) the images come from when no image_dir is given: with
    # one, the JSON names are its own (flat); with several, each name starts with its collection's folder.
    image_collections: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        other = self.license == "other"
        if other != (self.license_name is not None) or other != (self.license_link is not None):
            raise ValueError(
                f"{self.name}: license_name and license_link go with license 'other', and only with it; got "
                f"license={self.license!r}, license_name={self.license_name!r}, license_link={self.license_link!r}"
            )
        if other and not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.license_name):
            raise ValueError(
                f"{self.name}: license_name must be lowercase letters, digits, '-' and '.', got {self.license_name!r}"
            )

    @property
    def homepage(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}"

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the repo this config reads."""
        extra = (self.metadata_filename, self.image_archive)
        return (self.filename, *(f for f in extra if f))


_INSTRUCT = dict(
    repo_id=INSTRUCT_REPO,
    image_layout="COCO train2017 folder, flat names (000000033471.jpg); train2014 names also work",
    license="cc-by-4.0",
    citation=LLAVA_CITATION,
    image_aliases=COCO_FLAT_ALIASES,
    image_collections=("coco/train2017",),
)

SOURCES: tuple[Source, ...] = (
    Source(
        name="conversation_58k",
        filename="conversation_58k.json",
        num_records=56_681,
        description="GPT-4 generated multi-turn conversations about COCO images (LLaVA-Instruct-150K).",
        **_INSTRUCT,
    ),
    Source(
        name="detail_23k",
        filename="detail_23k.json",
        num_records=23_240,
        description="GPT-4 generated detailed descriptions of COCO images (LLaVA-Instruct-150K).",
        **_INSTRUCT,
    ),
    Source(
        name="complex_reasoning_77k",
        filename="complex_reasoning_77k.json",
        num_records=76_643,
        description="GPT-4 generated complex reasoning questions about COCO images (LLaVA-Instruct-150K).",
        **_INSTRUCT,
    ),
    Source(
        name="llava_instruct_150k",
        filename="llava_instruct_150k.json",
        num_records=157_712,
        description="The three LLaVA-Instruct parts merged into one file (81,479 unique images).",
        **_INSTRUCT,
    ),
    Source(
        name="llava_instruct_80k",
        filename="llava_instruct_80k.json",
        num_records=80_000,
        description="40K conversations + 40K complex reasoning on non-overlapping images (LLaVA-Lightning).",
        **_INSTRUCT,
    ),
    Source(
        name="llava_v1_5_mix665k",
        repo_id=INSTRUCT_REPO,
        filename="llava_v1_5_mix665k.json",
        num_records=665_298,
        image_layout=(
            "one folder holding coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, "
            "vg/VG_100K and vg/VG_100K_2; 40,688 rows are text-only"
        ),
        license="cc-by-4.0",
        citation=LLAVA15_CITATION,
        description="The LLaVA-1.5 instruction-tuning mixture (LLaVA, ShareGPT, VQAv2, GQA, OCR-VQA, ...).",
        source_from="image_collection",
        image_aliases=COCO_PREFIXED_ALIASES,
        sample_image_dir="images",
        image_collections=(
            "coco/train2017",
            "gqa/images",
            "ocr_vqa/images",
            "textvqa/train_images",
            "vg/VG_100K",
            "vg/VG_100K_2",
        ),
    ),
    Source(
        name="cc3m_595k",
        repo_id=CC3M_REPO,
        filename="chat.json",
        metadata_filename="metadata.json",
        image_archive="images.zip",
        num_records=595_375,
        image_layout="images.zip of the repo (6.5 GB, no root folder), flat names GCC_train_002582585.jpg",
        license="other",
        citation=LLAVA_CITATION,
        description=(
            "Concept-balanced 595K subset of CC3M with BLIP captions, LLaVA-1 pretraining. The images must "
            "be used in compliance with the CC-3M license."
        ),
        sample_data_dir="LLaVA-CC3M-Pretrain-595K",
        sample_image_dir=None,
        # No Hub license id covers these terms; the repo's card states them.
        license_name="llava-cc3m-pretrain-595k",
        license_link=f"https://huggingface.co/datasets/{CC3M_REPO}/blob/main/README.md",
    ),
    Source(
        name="blip_558k",
        repo_id=LCS_REPO,
        filename="blip_laion_cc_sbu_558k.json",
        metadata_filename="blip_laion_cc_sbu_558k_meta.json",
        image_archive="images.zip",
        num_records=558_128,
        image_layout="images.zip of the repo (27 GB, no root folder), names 00453/004539375.jpg",
        license="other",
        citation=LLAVA15_CITATION,
        description="Concept-balanced 558K subset of LAION/CC/SBU with BLIP captions, LLaVA-1.5 pretraining.",
        sample_data_dir="LLaVA-Pretrain",
        sample_image_dir=None,
        # No Hub license id covers these terms; the repo's card states them.
        license_name="llava-pretrain",
        license_link=f"https://huggingface.co/datasets/{LCS_REPO}/blob/main/README.md",
    ),
)

CATALOG: dict[str, Source] = {source.name: source for source in SOURCES}
CONFIG_NAMES: tuple[str, ...] = tuple(CATALOG)


def get_source(name: str) -> Source:
    """The catalog entry of a config; an unknown name raises ValueError listing the valid ones."""
    try:
        return CATALOG[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), CONFIG_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown llava_hf config {name!r}.{hint} Choose one of: {', '.join(CONFIG_NAMES)}") from None
