"""Export to the Hub layout (Parquet + generated card) and push, with the Hub replaced by a fake HfApi."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, jpeg, sha256, write_json
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

import llava_hf
from llava_hf import hub
from llava_hf.cli import main
from llava_hf.features import FEATURES, SCHEMA
from llava_hf.stats import STATS_CONVENTIONS, compute_stats, stats_markdown

SAMPLE_CONFIGS = ["detail_23k", "llava_v1_5_mix665k", "cc3m_595k", "blip_558k"]
SECRET = "hf_thisIsAFakeTokenThatMustNeverBeWritten"


def rows_of(ds: datasets.Dataset) -> list[dict]:
    """Every row, with the image as (sha256 of its bytes, path) so rows compare exactly and print short."""
    rows = []
    for row in ds.cast_column("image", datasets.Image(decode=False)):
        image = row["image"]
        row["image"] = None if image is None else (sha256(image["bytes"]), image["path"])
        rows.append(row)
    return rows


def hub_rows(out_dir: Path, name: str, tmp_path: Path) -> list[dict]:
    ds = datasets.load_dataset(str(out_dir), name, split="train", cache_dir=str(tmp_path / "hub-cache"))
    assert ds.features == FEATURES
    return rows_of(ds)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def card_yaml(out_dir: Path) -> dict:
    text = (out_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory) -> tuple[Path, str, dict]:
    """Four configs of the embedded sample exported into one folder (shared: tests only read it)."""
    root = tmp_path_factory.mktemp("sample-export")
    cache = str(root / "cache")
    figures = llava_hf.export(SAMPLE_CONFIGS, root / "out", sample=True, cache_dir=cache)
    return root / "out", cache, figures


# --- a config whose images outweigh the shard bound -------------------------------------------------------

BIG_ROWS = 40
SHARD_BOUND = 300_000
ROW_GROUP_BOUND = 60_000
HUGE = 7  # this record's image alone is larger than the shard bound


def padded_jpeg(seed: int, size: int) -> bytes:
    # A real JPEG followed by random bytes: it passes the signature check and decodes, and it does not
    # compress, so the Parquet bytes are the image bytes.
    head = jpeg(seed)
    return head + random.Random(seed).randbytes(size - len(head))


@pytest.fixture
def big_release(tmp_path) -> dict:
    """detail_23k.json with 40 records and ~1.6 MB of images, one of them 350 KB."""
    data_dir, image_dir = tmp_path / "big" / "data", tmp_path / "big" / "images"
    image_dir.mkdir(parents=True)
    records = []
    for i in range(BIG_ROWS):
        name = f"{i:012d}.jpg"
        size = 350_000 if i == HUGE else random.Random(i).randrange(20_000, 50_000)
        (image_dir / name).write_bytes(padded_jpeg(i, size))
        text = " ".join(random.Random(-i).choice(["red", "bus", "a", "street", "two", "people"]) for _ in range(60))
        records.append(
            {
                "id": f"{i:012d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image in detail."},
                    {"from": "gpt", "value": text},
                ],
            }
        )
    write_json(data_dir / "detail_23k.json", records)
    return {"data_dir": str(data_dir), "image_dir": str(image_dir)}


# --- export ------------------------------------------------------------------------------------------------


def test_round_trip_gives_the_rows_of_load_dataset(sample_export, tmp_path):
    out, cache, figures = sample_export
    for name in SAMPLE_CONFIGS:
        expected = rows_of(llava_hf.load_dataset(name, sample=True, cache_dir=cache))
        assert hub_rows(out, name, tmp_path) == expected
        assert figures[name]["rows"] == len(expected)
        assert figures[name]["images"] == sum(row["image"] is not None for row in expected)
        assert figures[name]["turns"] == sum(len(row["conversations"]) for row in expected)
    # mix665k's text-only rows come back with a null image, pretrain metadata comes back as it was
    mix = hub_rows(out, "llava_v1_5_mix665k", tmp_path)
    text_only = [row for row in mix if row["source"] == "text_only"]
    assert text_only and all(row["image"] is None for row in text_only)
    assert figures["llava_v1_5_mix665k"]["text_only"] == len(text_only)
    assert any(row["blip_caption"] for row in hub_rows(out, "cc3m_595k", tmp_path))


def test_layout_and_parquet_files_load_without_llava_hf(sample_export):
    out, _, figures = sample_export
    assert sorted(os.listdir(out)) == sorted([*SAMPLE_CONFIGS, "README.md"])
    for name in SAMPLE_CONFIGS:
        assert sorted(os.listdir(out / name)) == ["llava_hf_export.json", "train-00000-of-00001.parquet"]
        parquet = pq.ParquetFile(out / name / "train-00000-of-00001.parquet")
        # the datasets features ride in the Arrow schema: `image` is Image() for any Parquet reader of datasets
        assert datasets.Features.from_arrow_schema(parquet.schema_arrow) == FEATURES
        column = parquet.metadata.row_group(0).column(1)
        assert column.path_in_schema == "image.bytes" and column.compression == "UNCOMPRESSED"
        shard = figures[name]["shards"][0]
        assert shard["sha256"] == sha256((out / name / shard["file"]).read_bytes())


def test_card_yaml_configs_and_dataset_info(sample_export):
    out, _, figures = sample_export
    meta = card_yaml(out)
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == set(SAMPLE_CONFIGS)
    assert [name for name, c in configs.items() if c.get("default")] == ["detail_23k"]
    assert configs["cc3m_595k"]["data_files"] == [{"split": "train", "path": "cc3m_595k/train-*.parquet"}]
    assert meta["license"] == ["cc-by-4.0", "other"]
    # two configs under two "other" terms: one name for both, and the card's License section as the link
    assert (meta["license_name"], meta["license_link"]) == ("llava-cc3m-pretrain-595k-and-llava-pretrain", "README.md")
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(out / "README.md").data)
    for name in SAMPLE_CONFIGS:
        assert infos[name].features == FEATURES
        assert infos[name].splits["train"].num_examples == figures[name]["rows"]
        assert infos[name].download_size == figures[name]["download_size"]
    assert datasets.get_dataset_config_names(str(out)) == sorted(SAMPLE_CONFIGS)
    assert datasets.get_dataset_default_config_name(str(out)) == "detail_23k"


def test_card_body_names_sources_counts_license_and_citation(sample_export):
    out, _, figures = sample_export
    text = (out / "README.md").read_text(encoding="utf-8")
    mix = figures["llava_v1_5_mix665k"]
    row = next(line for line in text.splitlines() if line.startswith("| `llava_v1_5_mix665k` |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:6] == [str(mix["rows"]), str(mix["images"]), str(mix["text_only"]), str(mix["turns"])]
    assert cells[6] == "0"  # no skipped rows
    for name in SAMPLE_CONFIGS:
        source = figures[name]["source"]
        assert source["chat"]["sha256"] in text
        if name in ("cc3m_595k", "blip_558k"):
            assert source["metadata"]["sha256"] in text
    assert "the llava_hf embedded sample" in text
    assert "@inproceedings{liu2023llava" in text and "@inproceedings{liu2024improved" in text
    licenses = [line for line in text.splitlines() if line.startswith("- `")]
    assert licenses == [
        "- `detail_23k`, `llava_v1_5_mix665k`: `cc-by-4.0`, as declared by "
        "[liuhaotian/LLaVA-Instruct-150K](https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K).",
        "- `cc3m_595k`: `other` ([llava-cc3m-pretrain-595k](https://huggingface.co/datasets/liuhaotian/"
        "LLaVA-CC3M-Pretrain-595K/blob/main/README.md)), as declared by [liuhaotian/LLaVA-CC3M-Pretrain-595K]"
        "(https://huggingface.co/datasets/liuhaotian/LLaVA-CC3M-Pretrain-595K).",
        "- `blip_558k`: `other` ([llava-pretrain](https://huggingface.co/datasets/liuhaotian/LLaVA-Pretrain/blob/"
        "main/README.md)), as declared by [liuhaotian/LLaVA-Pretrain](https://huggingface.co/datasets/liuhaotian/"
        "LLaVA-Pretrain).",
    ]
    assert 'load_dataset("<org>/<name>", "detail_23k"' in text


def test_card_license_fields_come_from_the_catalog(sample_export):
    _, _, figures = sample_export
    expected = {
        "detail_23k": ("cc-by-4.0", None, None),
        "cc3m_595k": (
            "other",
            "llava-cc3m-pretrain-595k",
            "https://huggingface.co/datasets/liuhaotian/LLaVA-CC3M-Pretrain-595K/blob/main/README.md",
        ),
        "blip_558k": (
            "other",
            "llava-pretrain",
            "https://huggingface.co/datasets/liuhaotian/LLaVA-Pretrain/blob/main/README.md",
        ),
    }
    for name, (license_, license_name, license_link) in expected.items():
        data = DatasetCard(hub.render_card({name: figures[name]}, default=name)).data
        assert (data.license, data.get("license_name"), data.get("license_link")) == (
            license_,
            license_name,
            license_link,
        )
    # one "other" beside cc-by-4.0: its own name and link
    data = DatasetCard(hub.render_card({n: figures[n] for n in ("detail_23k", "blip_558k")}, "detail_23k")).data
    assert (data.license, data.license_name) == (["cc-by-4.0", "other"], "llava-pretrain")


def test_catalog_refuses_license_fields_that_do_not_fit():
    entry = llava_hf.CATALOG["blip_558k"]
    with pytest.raises(ValueError) as caught:
        dataclasses.replace(entry, license_link=None)
    assert str(caught.value) == (
        "blip_558k: license_name and license_link go with license 'other', and only with it; got license='other', "
        "license_name='llava-pretrain', license_link=None"
    )
    with pytest.raises(ValueError, match="^blip_558k: license_name must be lowercase letters, digits, '-' and '.', "):
        dataclasses.replace(entry, license_name="LLaVA Pretrain")
    with pytest.raises(ValueError, match="^detail_23k: license_name and license_link go with license 'other'"):
        dataclasses.replace(llava_hf.CATALOG["detail_23k"], license_name="x", license_link="https://x")


def test_card_statistics_are_those_of_the_exported_rows(sample_export):
    out, cache, figures = sample_export
    text = (out / "README.md").read_text(encoding="utf-8")
    statistics = text[text.index("## Statistics\n") : text.index("## Sources\n")]
    for name in SAMPLE_CONFIGS:
        stats = compute_stats(llava_hf.load_dataset(name, sample=True, cache_dir=cache))
        assert figures[name]["stats"] == stats
        assert json.loads((out / name / "llava_hf_export.json").read_text())["stats"] == stats
        assert stats_markdown(stats, heading=f"### `{name}`", conventions=False) in statistics
    mix = statistics[statistics.index("### `llava_v1_5_mix665k`") : statistics.index("### `cc3m_595k`")]
    assert "| rows with an image | 7 (87.5%) |" in mix
    assert "| words per turn (human) | 4 | 4 | 7 | 13 | 14 | 14 | 8.7 |" in mix
    assert "- Image formats (unique images, read from the file headers): JPEG 5, GIF 1, PNG 1." in mix
    assert statistics.count(STATS_CONVENTIONS) == 1
    # a config exported before the statistics existed (kept on the repo by a push) says so
    older = {key: value for key, value in figures["cc3m_595k"].items() if key != "stats"}
    card = hub.render_card({"detail_23k": figures["detail_23k"], "cc3m_595k": older}, default="detail_23k")
    assert "### `cc3m_595k`\n\nNot computed for this config.\n" in card


def test_card_shows_skipped_rows_per_reason(release, cache_dir, tmp_path):
    options = release.options("detail_23k")
    first = release.records("detail_23k")[0]
    (release.image_dir("detail_23k") / first["image"]).unlink()
    figures = llava_hf.export("detail_23k", tmp_path / "out", on_bad_image="skip", cache_dir=cache_dir, **options)
    assert figures["detail_23k"]["skipped"] == {"missing": 1}
    assert figures["detail_23k"]["rows"] == len(release.records("detail_23k")) - 1
    text = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "| skipped: missing |" in text
    assert "| `detail_23k` | missing | 1 |" in text
    assert "a local copy of the files of [liuhaotian/LLaVA-Instruct-150K]" in text
    ids = [row["id"] for row in hub_rows(tmp_path / "out", "detail_23k", tmp_path)]
    assert ids == [record["id"] for record in release.records("detail_23k")[1:]]


def test_second_export_keeps_the_first_and_updates_the_card(release, cache_dir, tmp_path):
    out = tmp_path / "out"
    llava_hf.export("detail_23k", out, cache_dir=cache_dir, **release.options("detail_23k"))
    first = file_hashes(out / "detail_23k")
    llava_hf.export("cc3m_595k", out, cache_dir=cache_dir, **release.options("cc3m_595k"))
    assert file_hashes(out / "detail_23k") == first
    configs = {c["config_name"]: c for c in card_yaml(out)["configs"]}
    assert set(configs) == {"detail_23k", "cc3m_595k"}
    assert configs["detail_23k"].get("default") is True and not configs["cc3m_595k"].get("default")
    assert datasets.get_dataset_config_names(str(out)) == ["cc3m_595k", "detail_23k"]
    # an explicit default moves the flag; exactly one config carries it (datasets' own push_to_hub trips here)
    llava_hf.export("conversation_58k", out, default="cc3m_595k", cache_dir=cache_dir, **release.options("detail_23k"))
    defaults = [c["config_name"] for c in card_yaml(out)["configs"] if c.get("default")]
    assert defaults == ["cc3m_595k"]
    assert datasets.get_dataset_default_config_name(str(out)) == "cc3m_595k"


def test_reexport_replaces_a_config_whole(big_release, cache_dir, tmp_path):
    out = tmp_path / "out"
    llava_hf.export("detail_23k", out, cache_dir=cache_dir, max_shard_size=SHARD_BOUND, **big_release)
    assert len(list((out / "detail_23k").glob("*.parquet"))) > 1
    llava_hf.export("detail_23k", out, cache_dir=cache_dir, **big_release)
    assert sorted(os.listdir(out / "detail_23k")) == ["llava_hf_export.json", "train-00000-of-00001.parquet"]
    assert not [entry for entry in os.listdir(out) if entry.startswith(".")]


def test_shards_stay_within_the_bound(big_release, cache_dir, tmp_path):
    out = tmp_path / "out"
    figures = llava_hf.export(
        "detail_23k",
        out,
        cache_dir=cache_dir,
        max_shard_size=SHARD_BOUND,
        row_group_size=ROW_GROUP_BOUND,
        **big_release,
    )["detail_23k"]
    images = sum(p.stat().st_size for p in Path(big_release["image_dir"]).iterdir())
    assert images > 4 * SHARD_BOUND
    shards = sorted((out / "detail_23k").glob("*.parquet"))
    assert [p.name for p in shards] == [f"train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    assert [s["file"] for s in figures["shards"]] == [p.name for p in shards]
    oversized = []
    for path in shards:
        meta = pq.ParquetFile(path).metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        # The documented rule: a shard is within the bound unless it is a single row group, and a row group
        # is within its bound unless it is a single row.
        if path.stat().st_size > SHARD_BOUND:
            assert meta.num_row_groups == 1
            oversized.append(path.name)
        for group in groups:
            assert group.total_byte_size <= ROW_GROUP_BOUND or group.num_rows == 1
    assert len(oversized) == 1  # the 350 KB image, alone in its shard
    assert sum(s["rows"] for s in figures["shards"]) == BIG_ROWS
    expected = rows_of(llava_hf.load_dataset("detail_23k", cache_dir=cache_dir, **big_release))
    assert hub_rows(out, "detail_23k", tmp_path) == expected


def test_reexport_of_unchanged_inputs_is_byte_identical(big_release, tmp_path):
    # Two caches, so the second export prepares again instead of reading the first one's Arrow files.
    options = dict(max_shard_size=SHARD_BOUND, row_group_size=ROW_GROUP_BOUND, **big_release)
    llava_hf.export("detail_23k", tmp_path / "a", cache_dir=str(tmp_path / "cache-a"), **options)
    llava_hf.export("detail_23k", tmp_path / "b", cache_dir=str(tmp_path / "cache-b"), **options)
    first, second = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert len([f for f in first if f.endswith(".parquet")]) > 1
    assert first == second


def test_row_groups_do_not_depend_on_how_rows_are_batched():
    table = pa.Table.from_pylist(
        [
            {
                "id": str(i),
                "image": {"bytes": b"\xff\xd8\xff" + bytes(1000 * (i % 7)), "path": f"{i}.jpg"} if i % 5 else None,
                "conversations": [{"from": "human", "value": "x" * i}],
                "source": "coco",
            }
            for i in range(60)
        ],
        schema=SCHEMA,
    )

    def cuts(batch_size: int) -> list[int]:
        groups = hub._row_groups(table.to_batches(max_chunksize=batch_size), 5_000)
        return [group.num_rows for group, _ in groups]

    assert cuts(7) == cuts(60) == cuts(1)
    assert len(cuts(60)) > 3


def test_export_refuses_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown llava_hf config 'detail_24k'. Did you mean 'detail_23k'"):
        llava_hf.export("detail_24k", tmp_path / "out", sample=True)
    with pytest.raises(ValueError, match="export embeds the image bytes"):
        llava_hf.export("detail_23k", tmp_path / "out", sample=True, embed_images=False)
    with pytest.raises(ValueError, match="row_group_size .* must not exceed max_shard_size"):
        llava_hf.export("detail_23k", tmp_path / "out", sample=True, max_shard_size="1MB", row_group_size="2MB")
    with pytest.raises(ValueError, match="max_shard_size must be a positive number"):
        llava_hf.export("detail_23k", tmp_path / "out", sample=True, max_shard_size="big")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "README.md").write_text("# someone's dataset\n")
    with pytest.raises(ValueError, match="holds a README.md that llava_hf did not write"):
        llava_hf.export("detail_23k", tmp_path / "theirs", sample=True)


def test_card_template_ships_with_the_package():
    # In the source tree llava_hf/dataset_card.md links to the root template; package-data copies it into
    # wheels (checked by hand: a non-editable install renders the card).
    template = resources.files("llava_hf").joinpath("dataset_card.md")
    assert template.read_text(encoding="utf-8") == (ROOT / "dataset_card.md").read_text(encoding="utf-8")
    assert '"dataset_card.md"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


# --- push, with the Hub replaced by a fake HfApi ----------------------------------------------------------


class FakeHub:
    """Stands in for the Hub: records every HfApi call and what each commit would contain."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.tokens: list = []
        self.remote_files: list[str] = []
        self.downloads: dict[str, str] = {}
        self.committed: list[dict] = []

    def api(self, token=None, **kwargs):
        self.tokens.append(token)
        hub_ = self

        class Api:
            def create_repo(self, repo_id, **kw):
                hub_.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

            def create_branch(self, repo_id, **kw):
                hub_.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

            def list_repo_files(self, repo_id, **kw):
                hub_.calls.append(("list_repo_files", {"repo_id": repo_id, **kw}))
                return list(hub_.remote_files)

            def hf_hub_download(self, repo_id, filename, **kw):
                hub_.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename, **kw}))
                return hub_.downloads[filename]

            def upload_folder(self, **kw):
                hub_.calls.append(("upload_folder", kw))
                folder = Path(kw["folder_path"])
                local = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
                ignore = [*kw.get("ignore_patterns", []), *DEFAULT_IGNORE_PATTERNS]
                added = sorted(
                    filter_repo_objects(local, allow_patterns=kw.get("allow_patterns"), ignore_patterns=ignore)
                )
                deleted = sorted(
                    set(filter_repo_objects(hub_.remote_files, allow_patterns=kw.get("delete_patterns") or []))
                    - set(added)
                )
                hub_.committed.append(
                    {"added": {p: sha256((folder / p).read_bytes()) for p in added}, "deleted": deleted}
                )

            def upload_file(self, **kw):
                hub_.calls.append(("upload_file", kw))
                hub_.committed.append({"added": {kw["path_in_repo"]: Path(kw["path_or_fileobj"]).read_text()}})
                return SimpleNamespace(commit_url=f"https://huggingface.co/datasets/{kw['repo_id']}/commit/abc123")

        return Api()

    def call(self, name: str) -> dict:
        (kwargs,) = [kw for n, kw in self.calls if n == name]
        return kwargs


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(hub, "HfApi", fake.api)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return fake


def test_push_uploads_the_folder_then_the_card(sample_export, fake_hub, tmp_path, capsys):
    out = tmp_path / "out"
    llava_hf.export(["detail_23k", "llava_v1_5_mix665k"], out, sample=True, cache_dir=sample_export[1])
    (out / ".detail_23k.incomplete").mkdir()  # what a killed export leaves: never uploaded
    (out / ".detail_23k.incomplete" / "train-00000.partial").write_bytes(b"half a shard")
    fake_hub.remote_files = ["detail_23k/train-00000-of-00002.parquet", "detail_23k/train-00001-of-00002.parquet"]

    assert main(["push", str(out), "--repo-id", "org/llava", "--private", "--revision", "v1"]) == 0

    assert fake_hub.call("create_repo") == {
        "repo_id": "org/llava",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    assert fake_hub.call("create_branch") == {
        "repo_id": "org/llava",
        "repo_type": "dataset",
        "branch": "v1",
        "exist_ok": True,
    }
    upload = fake_hub.call("upload_folder")
    assert (upload["repo_id"], upload["repo_type"], upload["revision"]) == ("org/llava", "dataset", "v1")
    data, card = fake_hub.committed
    assert data["added"] == {
        f"{name}/{file}": sha256((out / name / file).read_bytes())
        for name in ("detail_23k", "llava_v1_5_mix665k")
        for file in ("llava_hf_export.json", "train-00000-of-00001.parquet")
    }
    # the stale shards of a config pushed before with two shards go in the same upload
    assert data["deleted"] == fake_hub.remote_files
    card_kw = fake_hub.call("upload_file")
    assert (card_kw["path_in_repo"], card_kw["repo_type"], card_kw["revision"]) == ("README.md", "dataset", "v1")
    assert 'load_dataset("org/llava", "detail_23k"' in card["added"]["README.md"]
    assert card["added"]["README.md"] == (out / "README.md").read_text()
    # the token comes from HF_TOKEN inside huggingface_hub, and is never printed nor written
    assert fake_hub.tokens == [None]
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert not [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    lines = captured.out.splitlines()
    assert lines[0] == f"found detail_23k, llava_v1_5_mix665k in {out}: 2 Parquet files, 0.0 MB"
    assert lines[1] == "pushing to https://huggingface.co/datasets/org/llava (branch v1), private if new"
    assert lines[-1] == "done: https://huggingface.co/datasets/org/llava/commit/abc123"


def test_push_keeps_configs_already_on_the_repo_in_the_card(sample_export, fake_hub, tmp_path):
    exported, _, _ = sample_export
    out = tmp_path / "out"
    llava_hf.export("detail_23k", out, sample=True, cache_dir=sample_export[1])
    fake_hub.remote_files = ["README.md", "cc3m_595k/llava_hf_export.json", "cc3m_595k/train-00000-of-00001.parquet"]
    fake_hub.downloads = {"cc3m_595k/llava_hf_export.json": str(exported / "cc3m_595k" / "llava_hf_export.json")}

    hub.push(out, "org/llava")

    assert fake_hub.call("hf_hub_download")["filename"] == "cc3m_595k/llava_hf_export.json"
    assert "create_branch" not in [name for name, _ in fake_hub.calls]
    upload = fake_hub.call("upload_folder")
    assert upload["delete_patterns"] == ["detail_23k/*"] and upload["revision"] is None
    assert fake_hub.committed[0]["deleted"] == []
    configs = {c["config_name"]: c for c in card_yaml(out)["configs"]}
    assert set(configs) == {"detail_23k", "cc3m_595k"} and configs["detail_23k"]["default"] is True


def test_push_refuses_a_folder_that_is_not_a_complete_export(sample_export, fake_hub, tmp_path):
    with pytest.raises(ValueError, match="holds no llava_hf export"):
        hub.push(tmp_path, "org/llava")
    out = tmp_path / "out"
    llava_hf.export("detail_23k", out, sample=True, cache_dir=sample_export[1])
    (out / "detail_23k" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(ValueError, match="train-00000-of-00001.parquet is missing .* export detail_23k again"):
        hub.push(out, "org/llava")
    assert fake_hub.calls == []


def test_push_to_hub_exports_then_pushes(sample_export, fake_hub):
    llava_hf.push_to_hub("blip_558k", "org/llava", sample=True, cache_dir=sample_export[1], private=False)
    assert fake_hub.call("create_repo")["private"] is False
    data, card = fake_hub.committed
    assert sorted(data["added"]) == ["blip_558k/llava_hf_export.json", "blip_558k/train-00000-of-00001.parquet"]
    assert data["added"]["blip_558k/train-00000-of-00001.parquet"] == sha256(
        (sample_export[0] / "blip_558k" / "train-00000-of-00001.parquet").read_bytes()
    )
    assert 'load_dataset("org/llava", "blip_558k"' in card["added"]["README.md"]


def test_cli_export_prints_what_it_wrote(sample_export, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", "detail_23k", "cc3m_595k", "-o", str(out), "--sample", "--cache-dir", sample_export[1]])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"exporting detail_23k, cc3m_595k to {out} (Parquet shards of at most 500MB)"
    assert lines[3].split()[:6] == ["detail_23k", "3", "3", "0", "0", "1"]
    assert lines[-1] == f"card: {out}/README.md"
    assert json.loads((out / "cc3m_595k" / "llava_hf_export.json").read_text())["rows"] == 4


def test_cli_push_reports_hub_errors_without_a_traceback(sample_export, monkeypatch, tmp_path, capsys):
    from huggingface_hub.errors import LocalTokenNotFoundError

    class NoLogin:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(hub, "HfApi", NoLogin)
    out = tmp_path / "out"
    llava_hf.export("detail_23k", out, sample=True, cache_dir=sample_export[1])
    capsys.readouterr()
    assert main(["push", str(out), "--repo-id", "org/llava"]) == 1
    assert capsys.readouterr().err == "llava-hf push: Token is required (`token=True`), but no token found.\n"


def test_cli_push_names_an_unreachable_hub_without_a_traceback(sample_export, monkeypatch, tmp_path, capsys):
    import httpx

    class Unreachable:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(hub, "HfApi", Unreachable)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    out = tmp_path / "out"
    llava_hf.export("detail_23k", out, sample=True, cache_dir=sample_export[1])
    capsys.readouterr()
    assert main(["push", str(out), "--repo-id", "org/llava"]) == 1
    printed = capsys.readouterr()
    assert "pushing to http://127.0.0.1:9/datasets/org/llava" in printed.out
    assert (
        printed.err == "llava-hf push: cannot reach http://127.0.0.1:9 (ConnectError: [Errno 111] Connection refused)\n"
    )


def test_the_card_of_a_multi_image_config_describes_its_images_column(sample_export, tmp_path):
    images = tmp_path / "pictures"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg(1))
    (images / "b.jpg").write_bytes(jpeg(2))
    turns = [{"from": "human", "value": "<image>\n<image>\nq"}, {"from": "gpt", "value": "a"}]
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "m0", "image": ["a.jpg", "b.jpg"], "conversations": turns}) + "\n")
    out = tmp_path / "out"
    llava_hf.export("mine", out, data_files=str(path), image_dir=str(images), cache_dir=sample_export[1])
    card = hub.render_card(hub.read_exports(out), "mine")
    assert 'ds[0]["images"]  # a list of PIL images; None or [] for text-only rows' in card
    assert "| `images` | list of `Image()` |" in card and "| `image` | `Image()` |" not in card
    figures = {**hub.read_exports(sample_export[0]), **hub.read_exports(out)}
    mixed = hub.render_card(figures, "detail_23k")
    assert 'ds[0]["image"]  # a PIL image; None for text-only rows' in mixed
    assert "except that `mine` holds `images` (a list of images a row) in place of `image`" in mixed
    assert "| `images` | list of `Image()` |" in mixed and "| `image` | `Image()` |" in mixed
