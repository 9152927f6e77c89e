"""The datasets range llava_hf supports (4.0.0 to 5.2.0): the same assertions on every release .ci/run tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import llava_hf
from llava_hf import compat, hook, sources

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_datasets_is_tested_and_the_hooks_are_on():
    assert Version(datasets.__version__) in compat.TESTED_DATASETS
    assert llava_hf.HOOK_INSTALLED is True
    assert getattr(datasets.load.dataset_module_factory, "__llava_hf__", False) is True
    assert hook.TESTED_DATASETS is compat.TESTED_DATASETS


def test_the_tested_range_is_the_pin_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {Requirement(line).name: Requirement(line).specifier for line in project["dependencies"]}
    assert pins["datasets"] == compat.TESTED_DATASETS
    assert str(compat.TESTED_DATASETS) == "<5.3,>=4.0"
    assert str(pins["huggingface_hub"]) == ">=0.34"


def test_key_names_the_shard_and_the_table_on_every_release():
    key = compat.Key(2, 3)
    assert (key.original_shard_id, key.item_or_batch_id) == (2, 3)
    assert str(key) == "(2, 3)"
    assert (compat.Key is getattr(datasets.builder, "Key", None)) == hasattr(datasets.builder, "Key")


def test_empty_shards_get_a_table_exactly_on_the_releases_that_need_one():
    version = Version(datasets.__version__)
    expected = Version("4.4") <= version < Version("5.1")
    assert compat.EMPTY_SHARD_NEEDS_A_TABLE is expected


@pytest.mark.parametrize(("value", "expected"), [("1", "True"), ("0", "False")])
def test_hub_offline_is_what_huggingface_hub_decides(value, expected):
    code = "from llava_hf.compat import hub_offline; print(hub_offline())"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": value}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_content_hash_is_the_sha256_of_the_whole_file_and_remembered(tmp_path, monkeypatch):
    memo = tmp_path / "memo" / "llava_hf_hashes.json"
    monkeypatch.setattr(sources, "_memo_path", lambda: str(memo))
    data = bytes(range(256)) * (9 * 4096 + 7)  # 9.4 MB: more than two read blocks, and a partial one
    path = tmp_path / "chat.json"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sources.content_hash(str(path)) == expected
    assert memo.exists()
    # Untouched: the remembered hash, the file is not read again.
    import huggingface_hub.utils.sha as sha

    reads = []
    monkeypatch.setattr(sha, "sha_fileobj", lambda *a, **k: reads.append(a) or b"")
    assert sources.content_hash(str(path)) == expected and reads == []
    monkeypatch.undo()
    monkeypatch.setattr(sources, "_memo_path", lambda: str(memo))
    # Edited in place with its mtime set back (cp -p, rsync -t): the ctime moved, so it is hashed again.
    mtime = path.stat().st_mtime_ns
    path.write_bytes(b"x" * len(data))
    os.utime(path, ns=(mtime, mtime))
    assert sources.content_hash(str(path)) == hashlib.sha256(b"x" * len(data)).hexdigest()
