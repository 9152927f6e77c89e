"""The llava-hf command, called in-process."""

from __future__ import annotations

import json

import pytest

from llava_hf.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["config", "records", "hub", "repo", "file", "images"]
    assert len(lines) == 2 + 8
    assert lines[2].split()[:4] == [
        "conversation_58k",
        "56,681",
        "liuhaotian/LLaVA-Instruct-150K",
        "conversation_58k.json",
    ]
    assert lines[-1].split()[:4] == ["blip_558k", "558,128", "liuhaotian/LLaVA-Pretrain", "blip_laion_cc_sbu_558k.json"]


def prepare_args(release, name: str, cache_dir: str, *more: str) -> list[str]:
    options = release.options(name)
    return [
        "prepare",
        name,
        "--data-dir",
        options["data_dir"],
        "--image-dir",
        options["image_dir"],
        "--cache-dir",
        cache_dir,
        *more,
    ]


def test_prepare_reports_what_it_found_and_wrote(release, cache_dir, capsys):
    options = release.options("llava_v1_5_mix665k")
    (release.image_dir("llava_v1_5_mix665k") / "gqa/images/n161313.jpg").write_bytes(b"")
    assert (
        main(prepare_args(release, "llava_v1_5_mix665k", cache_dir, "--on-bad-image", "skip", "--num-proc", "2")) == 0
    )
    captured = capsys.readouterr()
    found = [line for line in captured.err.splitlines() if "found" in line]
    assert found[0].startswith(f"llava_v1_5_mix665k: found {options['data_dir']}/llava_v1_5_mix665k.json (8 records,")
    out = captured.out.splitlines()
    assert out[0].startswith("llava_v1_5_mix665k: 7 rows of 8 records, ")
    assert out[1] == "skipped: empty 1"
    assert (
        out[2]
        == f"  empty: record 1 (id='n161313'): image file {options['image_dir']}/gqa/images/n161313.jpg is empty (0 bytes)"
    )
    assert out[3].startswith(f"cache: {cache_dir}/llava_hf/llava_v1_5_mix665k-")
    with open(out[3][len("cache: ") :] + "/llava_hf_report.json") as f:
        report = json.load(f)
    assert report["skipped"]["counts"] == {"empty": 1}


def test_prepare_bad_data_exits_with_the_message(release, cache_dir, capsys):
    (release.image_dir("detail_23k") / "000000398214.jpg").unlink()
    assert main(prepare_args(release, "detail_23k", cache_dir, "-q")) == 1
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            "llava-hf prepare: detail_23k.json: record 1 (id='000000398214'): image '000000398214.jpg' not found under"
        )
    )


def test_demo(cache_dir, capsys):
    assert main(["demo", "--cache-dir", cache_dir, "-q"]) == 0
    out = capsys.readouterr().out
    assert "llava_v1_5_mix665k        8       7  coco, gqa, ocr_vqa, text_only, textvqa, vg" in out
    assert "conversation_58k row 0: id='000000033471', image JPEG 96x72" in out
    assert "  human: What are the colors of the bus in the image? \\n <image>" in out


def test_unknown_config_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare", "detail23k", "--sample"])
    assert info.value.code == 2
    assert "invalid choice: 'detail23k'" in capsys.readouterr().err
