"""datasets.load_dataset("llava_hf", ...) after `import llava_hf`."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
from unittest import mock

import datasets
import pytest

import llava_hf
from llava_hf import hook


def test_hook_is_installed_on_the_tested_datasets():
    assert llava_hf.HOOK_INSTALLED is True
    assert getattr(datasets.load.dataset_module_factory, "__llava_hf__", False)


def test_datasets_load_dataset_shares_the_cache_of_llava_hf_load_dataset(release, cache_dir):
    ours = llava_hf.load_dataset("detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    theirs = datasets.load_dataset("llava_hf", "detail_23k", cache_dir=cache_dir, **release.options("detail_23k"))
    assert isinstance(theirs, datasets.DatasetDict)
    assert theirs["train"].cache_files == ours.cache_files
    assert theirs["train"]["id"] == ["000000319154", "000000398214", "000000033471"]
    streamed = datasets.load_dataset(
        "llava_hf", "detail_23k", streaming=True, split="train", **release.options("detail_23k")
    )
    assert [row["id"] for row in streamed] == ours["id"]


def test_registration_lists_no_folder_and_reads_only_the_source_file(release, cache_dir):
    data_dir, image_dir = str(release.data_dir("detail_23k")), str(release.image_dir("detail_23k"))
    touched = []

    def spy(real):
        def wrapper(path=".", *args, **kwargs):
            if str(os.fspath(path)).startswith((data_dir, image_dir)):
                touched.append((real.__name__, os.fspath(path)))
            return real(path, *args, **kwargs)

        return wrapper

    with (
        mock.patch("os.stat", spy(os.stat)),
        mock.patch("os.scandir", spy(os.scandir)),
        mock.patch("os.listdir", spy(os.listdir)),
        mock.patch("glob.glob", spy(glob.glob)),
        mock.patch("builtins.open", spy(open)),
    ):
        builder = datasets.load_dataset_builder(
            "llava_hf", "detail_23k", cache_dir=cache_dir, **release.options("detail_23k")
        )
    # The cache key fingerprints the one source file by content (size, first and last MiB); no folder is
    # listed and nothing under the image folder is touched.
    assert {path for _, path in touched} == {f"{data_dir}/detail_23k.json"}
    assert {name for name, _ in touched} <= {"stat", "open"}
    # adding images or touching the source file does not move the cache entry
    (release.image_dir("detail_23k") / "new.jpg").write_bytes(b"x")
    os.utime(release.data_dir("detail_23k") / "detail_23k.json")
    again = datasets.load_dataset_builder(
        "llava_hf", "detail_23k", cache_dir=cache_dir, **release.options("detail_23k")
    )
    assert again.cache_dir == builder.cache_dir


def test_config_names_and_revision_reach_the_builder():
    assert datasets.get_dataset_config_names("llava_hf") == list(llava_hf.CONFIG_NAMES)
    builder = datasets.load_dataset_builder("llava_hf", "detail_23k", revision="v1.0", sample=True)
    assert builder.config.revision == "v1.0"
    assert builder.hash == hook.MODULE_HASH


def test_other_names_still_reach_datasets(tmp_path):
    (tmp_path / "a.json").write_text('[{"x": 1}, {"x": 2}]')
    ds = datasets.load_dataset(
        "json", data_files=str(tmp_path / "a.json"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert ds["x"] == [1, 2]


def test_module_hash_ignores_comments_and_docstrings():
    source = 'def f():\n    """doc"""\n    return 1  # comment\n'
    assert hook._code_only(source) == hook._code_only("def f():\n    return 1\n")
    assert hook._code_only(source) != hook._code_only("def f():\n    return 2\n")


def run_python(code: str, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sample_loads_through_datasets_from_an_empty_working_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_python(
        """
        import llava_hf, datasets
        print(datasets.load_dataset('llava_hf', 'detail_23k', sample=True))
        """,
        cwd=empty,
        HF_DATASETS_CACHE=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert "num_rows: 3" in result.stdout
    assert os.listdir(empty) == []


def test_untested_datasets_version_warns_and_llava_hf_load_dataset_still_works(tmp_path):
    result = run_python(
        f"""
        import warnings
        import datasets
        datasets.__version__ = "5.9.0"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import llava_hf
        print(llava_hf.HOOK_INSTALLED)
        print([str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])
        print(len(llava_hf.load_dataset("detail_23k", sample=True, cache_dir={str(tmp_path)!r})))
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "False"
    assert lines[1] == str(
        [
            "llava_hf: datasets 5.9.0 is outside the tested range <5.3,>=4.0, so the "
            'datasets.load_dataset("llava_hf", ...) hook and the lazy opening of prepared files were not installed. '
            "llava_hf.load_dataset(...) works as usual, with datasets' own file opening."
        ]
    )
    assert lines[2] == "3"


@pytest.mark.parametrize("value", [None, "main"])
def test_dataset_module_carries_the_revision(value):
    module = hook.dataset_module(value)
    assert module.module_path == "llava_hf.builder"
    assert module.builder_kwargs == (
        {"dataset_name": "llava_hf"} if value is None else {"dataset_name": "llava_hf", "revision": "main"}
    )
