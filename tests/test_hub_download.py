"""With no data_dir the JSON (and images.zip) come from the Hub through the Hugging Face cache.

No network: a fixture lays out a Hugging Face cache as huggingface_hub writes it, and the loads run in a
fresh interpreter with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it.
"""

from __future__ import annotations

import json
import shutil

from test_hook import run_python

MAIN = "a" * 40
V1 = "b" * 40


def lay_out_repo(hub, repo_id: str, files: dict[str, bytes], commit: str, ref: str) -> None:
    repo = hub / ("datasets--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_hub_files_from_the_cache_offline(release, tmp_path):
    hub = tmp_path / "hub"
    instruct = release.data_dir("detail_23k")
    lay_out_repo(
        hub,
        "liuhaotian/LLaVA-Instruct-150K",
        {"detail_23k.json": (instruct / "detail_23k.json").read_bytes()},
        MAIN,
        "main",
    )
    records = json.loads((instruct / "detail_23k.json").read_text())
    lay_out_repo(hub, "liuhaotian/LLaVA-Instruct-150K", {"detail_23k.json": json.dumps(records[:1]).encode()}, V1, "v1")
    pretrain = release.data_dir("blip_558k")
    lay_out_repo(
        hub,
        "liuhaotian/LLaVA-Pretrain",
        {p.name: p.read_bytes() for p in pretrain.iterdir()},
        MAIN,
        "main",
    )
    shutil.rmtree(pretrain)  # the Hub cache is the only copy left
    code = f"""
        import json, llava_hf
        cache = {str(tmp_path / "cache")!r}
        images = {str(release.image_dir("detail_23k"))!r}
        main = llava_hf.load_dataset("detail_23k", image_dir=images, cache_dir=cache)
        v1 = llava_hf.load_dataset("detail_23k", image_dir=images, cache_dir=cache, revision="v1")
        blip = llava_hf.load_dataset("blip_558k", cache_dir=cache)
        print(json.dumps({{
            "main": list(main["id"]), "v1": list(v1["id"]), "blip": list(blip["id"]),
            "blip_image": blip[0]["image"].size,
            "revisions": [llava_hf.prepare_report(d)["source"]["revision"] for d in (main, v1, blip)],
            "origin": llava_hf.prepare_report(blip)["source"]["origin"],
        }}))
    """
    result = run_python(code, cwd=tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out == {
        "main": ["000000319154", "000000398214", "000000033471"],
        "v1": ["000000319154"],
        "blip": ["004539375", "002239345", "001265142", "007050371"],
        "blip_image": [96, 72],
        "revisions": [MAIN, V1, MAIN],
        "origin": "hub",
    }


def test_offline_without_the_file_in_the_cache_says_so(tmp_path):
    code = f"""
        import llava_hf
        llava_hf.load_dataset("detail_23k", image_dir={str(tmp_path)!r}, cache_dir={str(tmp_path / "c")!r})
    """
    result = run_python(
        code, cwd=tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path)
    )
    assert result.returncode != 0
    assert result.stderr.splitlines()[-1] == (
        "FileNotFoundError: detail_23k: detail_23k.json of liuhaotian/LLaVA-Instruct-150K (revision main) is not in "
        f"the Hugging Face cache {tmp_path / 'hub'} and the Hub cannot be reached (HF_HUB_OFFLINE is set); download "
        "it first, or pass data_dir=<the folder holding detail_23k.json>"
    )


def test_a_moved_main_branch_is_a_new_cache_entry(release, tmp_path):
    hub = tmp_path / "hub"
    instruct = release.data_dir("detail_23k")
    records = json.loads((instruct / "detail_23k.json").read_text())
    lay_out_repo(hub, "liuhaotian/LLaVA-Instruct-150K", {"detail_23k.json": json.dumps(records).encode()}, MAIN, "main")
    code = f"""
        import llava_hf
        ds = llava_hf.load_dataset("detail_23k", image_dir={str(release.image_dir("detail_23k"))!r}, cache_dir={str(tmp_path / "c")!r})
        print(len(ds), llava_hf.prepare_report(ds)["source"]["revision"])
    """
    env = dict(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "home"))
    first = run_python(code, cwd=tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[-2:] == ["3", MAIN]
    # `hf download` brought a new commit of main into the cache
    lay_out_repo(
        hub, "liuhaotian/LLaVA-Instruct-150K", {"detail_23k.json": json.dumps(records[:2]).encode()}, V1, "main"
    )
    second = run_python(code, cwd=tmp_path, **env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[-2:] == ["2", V1]
