"""`ray.data.from_huggingface` on a llava_hf dataset: the rows, and no prepare. Needs Ray (skipped without)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray reports usage to its servers unless told not to
pytest.importorskip("ray.data")
import ray  # noqa: E402

import llava_hf  # noqa: E402
from llava_hf import probes  # noqa: E402
from llava_hf.builder import LlavaBuilder  # noqa: E402
from llava_hf.formats import to_messages  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_from_huggingface_reads_the_rows_and_prepares_nothing(local_ray, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = llava_hf.load_dataset("llava_v1_5_mix665k", sample=True, cache_dir=cache_dir)
    prepares = []
    monkeypatch.setattr(LlavaBuilder, "_download_and_prepare", lambda self, *a, **k: prepares.append(self))
    refused = []
    stock_refuse = probes.refuse_fingerprint_probe

    def recording_refuse():
        refused.append(probes.fingerprint_probe())
        stock_refuse()

    monkeypatch.setattr(probes, "refuse_fingerprint_probe", recording_refuse)
    rows = ray.data.from_huggingface(ds).take_all()
    assert prepares == []
    assert refused == ["ray.data._internal.datasource.huggingface_datasource.list_parquet_urls_from_dataset"]
    assert [r["id"] for r in rows] == ds["id"]
    assert [r["image"]["bytes"] if r["image"] else None for r in rows] == [
        im["bytes"] if im else None for im in ds.with_format("arrow")["image"].to_pylist()
    ]
    messages = ray.data.from_huggingface(to_messages(ds)).take_all()
    assert [len(r["images"]) for r in messages] == [1] * 7 + [0]
    assert messages[0]["messages"][0]["role"] == "user"
