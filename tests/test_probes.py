"""`ray.data.from_huggingface(ds)`'s fingerprint check reloads "llava_hf" by name: it must prepare nothing."""

from __future__ import annotations

import types

import datasets
import datasets.config
import pytest

import llava_hf
from llava_hf import probes
from llava_hf.builder import LlavaBuilder

# What Ray 2.60 does in HuggingFaceDatasource.list_parquet_urls_from_dataset before asking the Hub for
# Parquet files, written out here so that the test needs no Ray: the module and function names are Ray's.
RAY_CHECK = """
def list_parquet_urls_from_dataset(dataset):
    from datasets import load_dataset
    try:
        reloaded = load_dataset(dataset.info.dataset_name, dataset.info.config_name, split=str(dataset.split))
        if reloaded._fingerprint != dataset._fingerprint:
            return []
    except Exception as e:
        REFUSED.append(e)
        return []
    return ["the Hub would be asked for Parquet files here"]
"""


def ray_check():
    module = types.ModuleType("ray.data._internal.datasource.huggingface_datasource")
    module.REFUSED = []
    exec(compile(RAY_CHECK, "<ray check>", "exec"), module.__dict__)
    return module


@pytest.fixture
def prepares(monkeypatch, tmp_path):
    """Every prepare llava_hf starts, and a datasets cache of its own for the check's default options."""
    calls = []
    stock = LlavaBuilder._download_and_prepare

    def counting(self, *args, **kwargs):
        calls.append(self.config.name)
        return stock(self, *args, **kwargs)

    monkeypatch.setattr(LlavaBuilder, "_download_and_prepare", counting)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "default_cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


@pytest.mark.parametrize("name", ["detail_23k", "blip_558k"])
def test_rays_fingerprint_check_prepares_nothing(release, cache_dir, prepares, tmp_path, name):
    ds = llava_hf.load_dataset(name, cache_dir=cache_dir, **release.options(name))
    assert prepares == [name]  # the user's own prepare
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    check = ray_check()
    assert check.list_parquet_urls_from_dataset(ds) == []
    (refused,) = check.REFUSED
    assert isinstance(refused, probes.FingerprintProbeRefused)
    assert str(refused) == (
        'datasets.load_dataset("llava_hf", ...) called by ray.data._internal.datasource.huggingface_datasource.'
        "list_parquet_urls_from_dataset only to compare fingerprints is refused: it has none of the dataset's "
        "options and would prepare the config again. The dataset passed to Ray is read as it is."
    )
    assert prepares == [name]  # nothing more
    # not a file more anywhere: no cache folder for the default options, no lock, no download
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_same_call_from_a_user_is_not_refused(cache_dir, prepares):
    ds = datasets.load_dataset("llava_hf", "detail_23k", split="train", sample=True, cache_dir=cache_dir)
    assert len(ds) == 3 and prepares == ["detail_23k"]
    assert probes.fingerprint_probe() is None


def test_only_rays_module_counts():
    module = types.ModuleType("my_ray_helpers")  # a function of the same name elsewhere is not Ray's check
    exec("def list_parquet_urls_from_dataset():\n    return fingerprint_probe()", module.__dict__)
    module.fingerprint_probe = probes.fingerprint_probe
    assert module.list_parquet_urls_from_dataset() is None
