"""Mixing recipes: parsing and refusals, the resolved order of every stopping strategy and knob, LLaVA-NeXT
mixtures, map-style vs streaming equality, the report, and the `llava-hf mix` command.

The three instruct parts of a fake release get distinct ids, so an order reads as c0 d0 r0 …:
conversation_58k has c0..c2, detail_23k d0..d4, complex_reasoning_77k r0..r1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import datasets
import numpy as np
import pytest
import yaml
from conftest import write_json
from hypothesis import given, settings
from hypothesis import strategies as st

import llava_hf
from llava_hf import recipes
from llava_hf.cli import main
from llava_hf.recipes import RecipeError, load_recipe, mix, resolve, write_mix

PARTS = {"conversation_58k": ("c", 3), "detail_23k": ("d", 5), "complex_reasoning_77k": ("r", 2)}
LETTER = {config: letter for config, (letter, _) in PARTS.items()}
SIZES = [n for _, n in PARTS.values()]
IMAGES = ["000000033471.jpg", "000000052846.jpg", "000000319154.jpg", "000000334872.jpg", "000000398214.jpg"]


def records(letter: str, n: int) -> list[dict]:
    return [
        {
            "id": f"{letter}{i}",
            "image": IMAGES[i % len(IMAGES)],
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": f"Row {letter}{i}."},
            ],
        }
        for i in range(n)
    ]


class Parts:
    """A release whose instruct parts have the ids above, and one cache shared by the tests here."""

    def __init__(self, root, cache_dir):
        self.data_dir = str(root / "LLaVA-Instruct-150K")
        self.image_dir = str(root / "images/coco/train2017")
        self.cache_dir = str(cache_dir)

    def options(self) -> dict:
        return {"data_dir": self.data_dir, "image_dir": self.image_dir, "cache_dir": self.cache_dir}

    def mix(self, recipe, **options):
        return mix(recipe, **{**self.options(), **options})


@pytest.fixture(scope="module")
def parts(release_template, tmp_path_factory) -> Parts:
    root = tmp_path_factory.mktemp("mix-release")
    shutil.copytree(release_template, root, dirs_exist_ok=True)
    for config, (letter, n) in PARTS.items():
        write_json(root / "LLaVA-Instruct-150K" / f"{config}.json", records(letter, n))
    return Parts(root, tmp_path_factory.mktemp("mix-cache"))


def recipe(strategy: str, *knobs: dict, seed: int = 0, configs=tuple(PARTS)) -> dict:
    """A recipe over the parts, each source with the knob given in the same position (or none)."""
    sources = [{"config": c, **(knobs[i] if i < len(knobs) else {})} for i, c in enumerate(configs)]
    return {"seed": seed, "stopping_strategy": strategy, "sources": sources}


def ids(text: str) -> list[str]:
    return text.split()


def planned_ids(plan) -> list[str]:
    return [f"{LETTER[plan.recipe.sources[s].config]}{row}" for s, row in plan.order()]


def raw(ds) -> list[dict]:
    """Every row, with the image as its stored bytes and path."""
    if isinstance(ds, datasets.IterableDataset):
        return list(ds.decode(False))
    return list(ds.cast_column("image", datasets.Image(decode=False)))


# --- the order of each stopping strategy and knob (pure: row counts in, schedule out) ---------------------

ROUND_ROBIN = {
    "concatenate": "c0 c1 c2 d0 d1 d2 d3 d4 r0 r1",
    "first_exhausted": "c0 d0 r0 c1 d1 r1",
    "all_exhausted": "c0 d0 r0 c1 d1 r1 c2 d2 r0 c0 d3 r1 c1 d4 r0",
    "all_exhausted_without_replacement": "c0 d0 r0 c1 d1 r1 c2 d2 d3 d4",
}


@pytest.mark.parametrize("strategy", ROUND_ROBIN)
def test_order_without_proportions(strategy):
    assert planned_ids(resolve(recipe(strategy), SIZES)) == ROUND_ROBIN[strategy].split()


@pytest.mark.parametrize("strategy", ["first_exhausted", "all_exhausted", "all_exhausted_without_replacement"])
def test_order_without_proportions_is_that_of_datasets_interleave(strategy):
    parts = [datasets.Dataset.from_dict({"id": [f"{LETTER[c]}{i}" for i in range(n)]}) for c, (_, n) in PARTS.items()]
    try:
        expected = list(datasets.interleave_datasets(parts, stopping_strategy=strategy)["id"])
    except ValueError as e:
        # all_exhausted_without_replacement arrived after datasets 4.0; recipes have it on every release
        # (test_order_without_proportions checks its order there), but there is nothing to compare with.
        assert f"{strategy} is not supported" in str(e)
        pytest.skip(f"datasets {datasets.__version__} has no stopping_strategy {strategy!r}")
    if strategy == "all_exhausted_without_replacement" and expected == ROUND_ROBIN["first_exhausted"].split():
        # datasets 4.x (4.4.2 here) stops it at the first exhausted source, as first_exhausted; 5.0 fixed that.
        # Recipes keep the fixed order on every release (test_order_without_proportions).
        pytest.skip(f"datasets {datasets.__version__} stops {strategy} at the first exhausted source")
    assert planned_ids(resolve(recipe(strategy), SIZES)) == expected


WEIGHTED = {
    # proportions 5:3:2, seed 0: the same draws, cut by each rule
    "first_exhausted": ("r0 c0 d0 c1 c2", [3, 1, 1]),
    "all_exhausted": ("r0 c0 d0 c1 c2 d1 c0 r1 c1 d2 r0 c2 r1 r0 c0 d3 d4", [7, 5, 5]),
    "all_exhausted_without_replacement": ("r0 c0 d0 c1 c2 d1 r1 d2 d3 d4", [3, 5, 2]),
}


@pytest.mark.parametrize("strategy", WEIGHTED)
def test_order_with_proportions(strategy):
    plan = resolve(recipe(strategy, {"proportion": 5}, {"proportion": 3}, {"proportion": 2}), SIZES)
    ids, mixed = WEIGHTED[strategy]
    assert planned_ids(plan) == ids.split()
    assert [c.mixed for c in plan.counts] == mixed
    assert [c.probability for c in plan.counts] == [0.5, 0.3, 0.2]


KNOBS = {
    "all": ({}, "d0 d1 d2 d3 d4"),
    "first:2": ({"sampling_strategy": "first:2"}, "d0 d1"),
    "end:2": ({"sampling_strategy": "end:2"}, "d3 d4"),
    "random:2": ({"sampling_strategy": "random:2"}, "d1 d4"),
    "first:40%": ({"sampling_strategy": "first:40%"}, "d0 d1"),
    "end:40%": ({"sampling_strategy": "end:40%"}, "d3 d4"),
    "random:40%": ({"sampling_strategy": "random:40%"}, "d1 d4"),
    "40%": ({"sampling_strategy": "40%"}, "d1 d4"),
    "first:1%": ({"sampling_strategy": "first:1%"}, "d0"),  # rounded up, as LLaVA-NeXT does
    "repeat 2": ({"repeat": 2}, "d0 d1 d2 d3 d4 d0 d1 d2 d3 d4"),
    "repeat 1.5": ({"repeat": 1.5}, "d0 d1 d2 d3 d4 d1 d3 d4"),
    "repeat 0.5": ({"repeat": 0.5}, "d1 d3 d4"),
    "choose 3": ({"choose": 3}, "d1 d3 d4"),
    "choose 7": ({"choose": 7}, "d0 d1 d2 d3 d4 d1 d4"),
}


@pytest.mark.parametrize("knob", KNOBS)
def test_order_of_each_knob(knob):
    entry, ids = KNOBS[knob]
    plan = resolve(recipe("concatenate", entry, configs=["detail_23k"]), [5])
    assert planned_ids(plan) == ids.split()
    (count,) = plan.counts
    assert (count.rows, count.selected, count.mixed, count.unique) == (
        5,
        len(ids.split()),
        len(ids.split()),
        len(set(ids.split())),
    )


def test_knobs_interleave_on_what_they_select():
    plan = resolve(
        recipe("all_exhausted", {"repeat": 2}, {"sampling_strategy": "random:3"}, seed=7),
        SIZES,
    )
    assert planned_ids(plan) == ids("c0 d0 r0 c1 d3 r1 c2 d4 r0 c0 d0 r1 c1 d3 r0 c2 d4 r1")
    assert [(c.take, c.selected, c.mixed, c.unique) for c in plan.counts] == [
        ("repeat 2", 6, 6, 3),
        ("random:3", 3, 6, 3),
        ("all", 2, 6, 2),
    ]


def test_seed_moves_random_choices_only():
    random2 = [{"sampling_strategy": "random:2"}]
    assert planned_ids(resolve(recipe("concatenate", *random2, configs=["detail_23k"], seed=1), [5])) == ["d0", "d4"]
    first2 = [{"sampling_strategy": "first:2"}]
    for seed in (0, 1):
        assert planned_ids(resolve(recipe("concatenate", *first2, configs=["detail_23k"], seed=seed), [5])) == [
            "d0",
            "d1",
        ]


def test_published_counts_read_nothing():
    report = recipes.published_counts("instruct_parts")
    assert (report.counted_from, report.total, report.streaming) == ("catalog", 156_564, False)
    assert [(c.config, c.records, c.skipped, c.mixed) for c in report.sources] == [
        ("conversation_58k", 56_681, 0, 56_681),
        ("detail_23k", 23_240, 0, 23_240),
        ("complex_reasoning_77k", 76_643, 0, 76_643),
    ]


def test_percentages_round_up_like_llava_next():
    plan = resolve(recipe("concatenate", {"sampling_strategy": "first:10%"}, configs=["llava_v1_5_mix665k"]))
    assert plan.counts[0].selected == 66_530  # ceil(665,298 / 10)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    strategy=st.sampled_from(recipes.STOPPING_STRATEGIES),
    weights=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_source_is_read_in_its_own_order(sizes, strategy, weights, seed):
    configs = list(llava_hf.CONFIG_NAMES)[: len(sizes)]
    knobs = [{"proportion": i + 1} for i in range(len(sizes))] if weights and strategy != "concatenate" else []
    plan = resolve(recipe(strategy, *knobs, seed=seed, configs=configs), sizes)
    for s, n in enumerate(sizes):
        rows = plan.rows[plan.source_ids == s].tolist()
        # Each source gives its rows in order, starting over only once it has given all of them.
        assert rows == [i % n for i in range(len(rows))]
        if strategy in ("concatenate", "all_exhausted_without_replacement"):
            assert rows == list(range(n))
        if strategy == "all_exhausted":
            assert len(rows) >= n
    assert plan.total == sum(c.mixed for c in plan.counts)


def test_builtin_recipes_on_the_published_files():
    totals = {name: resolve(name).total for name in recipes.BUILTIN_RECIPES}
    assert totals == {
        "instruct_parts": 56_681 + 23_240 + 76_643,
        "pretrain_then_instruct_mix": 558_128 + 665_298,
        "llava_v1_stages": 595_375 + 3 * 157_712,
    }
    plan = resolve("llava_v1_stages")
    assert [(c.config, c.selected, c.unique) for c in plan.counts] == [
        ("cc3m_595k", 595_375, 595_375),
        ("llava_instruct_150k", 473_136, 157_712),
    ]


# --- refusals -------------------------------------------------------------------------------------------

REFUSALS = [
    (
        recipe("concatenate", {"repeat": 2, "choose": 3}),
        "recipe: sources[0] (conversation_58k): set at most one of proportion, repeat, choose, sampling_strategy; "
        "got repeat and choose",
    ),
    (
        recipe("concatenate", {}, {"repeats": 2}),
        "recipe: sources[1] (detail_23k): unknown field 'repeats' (did you mean 'repeat'?); a source takes: config, "
        "name, proportion, repeat, choose, sampling_strategy, data_dir, image_dir, cache_dir, embed_images, "
        "on_bad_image, sample, revision, data_files",
    ),
    (
        recipe("concatenate", {}, {"sampling_strategy": "frist:10"}),
        "recipe: sources[1] (detail_23k): sampling_strategy must be 'all', 'first:N', 'end:N', 'random:N' (N rows, or "
        "N% of the source) or 'N%', got 'frist:10'",
    ),
    (
        recipe("concatenate", {}, {"sampling_strategy": "first:150%"}),
        "recipe: sources[1] (detail_23k): sampling_strategy 'first:150%' asks for more than 100% of the source",
    ),
    (
        recipe("concatenate", {}, {"sampling_strategy": "end:0"}),
        "recipe: sources[1] (detail_23k): sampling_strategy 'end:0' selects no rows; leave the source out instead",
    ),
    (
        recipe("concatenate", {}, {}, {"repeat": -1}),
        "recipe: sources[2] (complex_reasoning_77k): repeat must be a number of epochs greater than 0, got -1",
    ),
    (
        recipe("concatenate", {"choose": 2.5}),
        "recipe: sources[0] (conversation_58k): choose must be a whole number of rows, at least 1, got 2.5",
    ),
    (
        recipe("first_exhausted", {"proportion": 0}),
        "recipe: sources[0] (conversation_58k): proportion must be a number greater than 0 (a sampling weight), got 0",
    ),
    (
        recipe("all_exhausted", {"proportion": 1}, {}, {"proportion": 2}),
        "recipe: proportion is set on sources[0] (conversation_58k), sources[2] (complex_reasoning_77k) but not on "
        "sources[1] (detail_23k); give every source a proportion or none",
    ),
    (
        recipe("concatenate", {"proportion": 1}, {"proportion": 1}, {"proportion": 1}),
        "recipe: sources[0] (conversation_58k): proportion is a sampling weight, and stopping_strategy 'concatenate' "
        "does not sample; interleave (first_exhausted, all_exhausted, all_exhausted_without_replacement) or size the "
        "source with repeat, choose or sampling_strategy",
    ),
    (
        recipe("concatenate", {}, {"sample": "yes"}),
        "recipe: sources[1] (detail_23k): sample must be true or false, got 'yes'",
    ),
    (
        recipe("concatenate", {"on_bad_image": "ignore"}),
        "recipe: sources[0] (conversation_58k): on_bad_image must be one of ('raise', 'skip'), got 'ignore'",
    ),
    (
        recipe("concatenate", {"sample": True, "data_dir": "/data"}),
        "recipe: sources[0] (conversation_58k): sample: true reads the embedded sample; drop data_dir and image_dir",
    ),
    (
        {"seed": 0, "stopping_strategy": "concatenate", "sources": [{"config": "detial_23k"}]},
        "recipe: sources[0] (detial_23k): unknown llava_hf config 'detial_23k'. Did you mean 'detail_23k'? Choose one "
        "of: conversation_58k, detail_23k, complex_reasoning_77k, llava_instruct_150k, llava_instruct_80k, "
        "llava_v1_5_mix665k, cc3m_595k, blip_558k",
    ),
    (
        {"seed": 0, "stopping_strategy": "concatenate", "sources": [{"repeat": 2}]},
        "recipe: sources[0]: config is required (one of: conversation_58k, detail_23k, complex_reasoning_77k, "
        "llava_instruct_150k, llava_instruct_80k, llava_v1_5_mix665k, cc3m_595k, blip_558k), or data_files for your own "
        "files",
    ),
    (
        {"name": "mine", "seed": 0, "stopping_strategy": "interleave", "sources": [{"config": "detail_23k"}]},
        "mine: stopping_strategy must be one of ('first_exhausted', 'all_exhausted', "
        "'all_exhausted_without_replacement', 'concatenate'), got 'interleave'",
    ),
    (
        {"stopping_strategy": "concatenate", "sources": [{"config": "detail_23k"}]},
        "recipe: seed is required: a whole number that fixes every random choice of the mix",
    ),
    (
        {"seed": -1, "stopping_strategy": "concatenate", "sources": [{"config": "detail_23k"}]},
        "recipe: seed must be a whole number >= 0, got -1",
    ),
    (
        {"seed": 0, "stopping_strategy": "concatenate", "sources": []},
        "recipe: sources must be a non-empty list of sources, got []",
    ),
    (
        {"seed": 0, "stoping_strategy": "concatenate", "sources": [{"config": "detail_23k"}]},
        "recipe: unknown recipe key 'stoping_strategy' (did you mean 'stopping_strategy'?); a recipe takes: name, "
        "description, seed, stopping_strategy, streaming, sources",
    ),
    (
        {**recipe("concatenate", {}, {"on_bad_image": "skip"}), "streaming": True},
        "recipe: sources[1] (detail_23k): on_bad_image 'skip' cannot be streamed in a mix: rows dropped while "
        "streaming would shift the planned order; use streaming: false (the rows are counted when preparing) or "
        "on_bad_image 'raise'",
    ),
    (
        ["detail_23k"],
        "recipe: a recipe is a mapping with seed, stopping_strategy and sources (or a LLaVA-NeXT mixture with "
        "datasets), got list",
    ),
]


@pytest.mark.parametrize(("bad", "message"), REFUSALS, ids=range(len(REFUSALS)))
def test_refusals_name_the_source_and_the_field(bad, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(bad)
    assert str(caught.value) == message


def test_refusals_that_need_the_row_counts():
    with pytest.raises(RecipeError) as caught:
        resolve(recipe("concatenate", {}, {"sampling_strategy": "first:10"}), SIZES)
    assert (
        str(caught.value)
        == "recipe: sources[1] (detail_23k): sampling_strategy 'first:10' asks for 10 rows but the source has 5"
    )
    with pytest.raises(RecipeError) as caught:
        resolve(recipe("concatenate"), [3, 0, 2])
    assert str(caught.value) == "recipe: sources[1] (detail_23k): the source has no rows to mix"


def test_unknown_recipe_name_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe("instruct_part")
    assert str(caught.value) == (
        "recipe 'instruct_part' is neither a built-in recipe (instruct_parts, pretrain_then_instruct_mix, "
        "llava_v1_stages) nor an existing file"
    )
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [0\n")
    with pytest.raises(RecipeError, match=f"^{path}: not valid YAML: "):
        load_recipe(path)


def test_recipe_yaml_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe("all_exhausted", {"repeat": 1.5}, {"sampling_strategy": "end:40%"}, seed=3)))
    loaded = load_recipe(path)
    assert loaded.name == str(path)
    assert load_recipe(loaded.to_dict()) == loaded
    assert load_recipe(path, seed=9).seed == 9


# --- LLaVA-NeXT mixtures --------------------------------------------------------------------------------


def test_llava_next_mixture_maps_file_names_to_configs(parts, tmp_path):
    path = tmp_path / "next.yaml"
    path.write_text(
        "datasets:\n"
        f"  - json_path: {parts.data_dir}/detail_23k.json\n"
        '    sampling_strategy: "first:40%"\n'
        f"  - json_path: {parts.data_dir}/conversation_58k.json\n"
        "    sampling_strategy: all\n"
        f"  - json_path: {parts.data_dir}/complex_reasoning_77k.json\n"  # no sampling_strategy: all
    )
    loaded = load_recipe(path)
    assert [(s.config, s.sampling_strategy, s.where) for s in loaded.sources] == [
        ("detail_23k", "first:40%", "datasets[0] (detail_23k.json)"),
        ("conversation_58k", "all", "datasets[1] (conversation_58k.json)"),
        ("complex_reasoning_77k", "all", "datasets[2] (complex_reasoning_77k.json)"),
    ]
    assert (loaded.stopping_strategy, loaded.seed) == ("concatenate", 0)
    # The data_dir of each entry is the folder of its json_path; the images come from the defaults.
    ds, report = mix(path, image_dir=parts.image_dir, cache_dir=parts.cache_dir)
    assert list(ds["id"]) == ids("d0 d1 c0 c1 c2 r0 r1")
    assert [s["data_dir"] for s in report.recipe["sources"]] == [parts.data_dir] * 3
    files = ["detail_23k", "conversation_58k", "complex_reasoning_77k"]
    assert [c.json_path for c in report.sources] == [f"{parts.data_dir}/{name}.json" for name in files]


def test_llava_next_files_that_are_neither_catalog_nor_existing_are_named():
    mixture = {
        "datasets": [
            {"json_path": "/data/llava_v1_5_mix665k.json", "sampling_strategy": "all"},
            {"json_path": "/data/sharegpt4v-coco-50k.json", "sampling_strategy": "all"},
            {"json_path": "/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k_meta.json"},
        ]
    }
    with pytest.raises(RecipeError) as caught:
        load_recipe(mixture)
    assert str(caught.value) == (
        "recipe: json_path files that are neither a llava_hf catalog file nor an existing file: "
        "datasets[1] '/data/sharegpt4v-coco-50k.json', "
        "datasets[2] '/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k_meta.json'; llava_hf knows: conversation_58k.json "
        "(conversation_58k), detail_23k.json (detail_23k), complex_reasoning_77k.json (complex_reasoning_77k), "
        "llava_instruct_150k.json (llava_instruct_150k), llava_instruct_80k.json (llava_instruct_80k), "
        "llava_v1_5_mix665k.json (llava_v1_5_mix665k), chat.json (cc3m_595k), blip_laion_cc_sbu_558k.json (blip_558k)"
    )


def test_llava_next_refusals_and_bare_percent(caplog):
    with pytest.raises(RecipeError) as caught:
        load_recipe({"datasets": [{"json_path": "/d/detail_23k.json", "data_root": "/img"}]})
    assert str(caught.value) == (
        "recipe: datasets[0]: unknown key 'data_root'; a LLaVA-NeXT entry has json_path and sampling_strategy"
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe({"datasets": [{"json_path": "/d/detail_23k.json", "sampling_strategy": "first:ten"}]})
    assert str(caught.value).startswith("recipe: datasets[0] (detail_23k.json): sampling_strategy must be 'all', ")
    with caplog.at_level(logging.WARNING, logger="llava_hf"):
        loaded = load_recipe({"datasets": [{"json_path": "/d/detail_23k.json", "sampling_strategy": "10%"}]})
    assert loaded.sources[0].sampling_strategy == "10%"
    assert caplog.messages == [
        "recipe: datasets[0] (detail_23k.json): LLaVA-NeXT's train.py reads a bare '10%' as 'all'; llava_hf takes a "
        "random 10% of the rows; write 'all' or 'random:10%' to say which"
    ]


# --- applying: map-style, streaming, schema -------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        recipe("concatenate", {"repeat": 1.5}, {"sampling_strategy": "end:2"}, {"choose": 3}),
        recipe("all_exhausted"),
        recipe("first_exhausted", {"proportion": 5}, {"proportion": 3}, {"proportion": 2}),
        recipe("all_exhausted_without_replacement", {"sampling_strategy": "random:2"}, {"repeat": 2}, seed=5),
    ],
    ids=["concatenate-knobs", "round-robin", "proportions", "random-subsets"],
)
def test_streaming_yields_the_map_style_rows_in_order(parts, case, monkeypatch):
    # From inside the image folder, where every relative image path names a file: re-encoding a streamed
    # row would then drop its bytes.
    monkeypatch.chdir(parts.image_dir)
    ds, report = parts.mix(case)
    stream, stream_report = parts.mix(case, streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and stream.features == llava_hf.FEATURES
    assert list(ds["id"]) == planned_ids(resolve(case, SIZES))
    assert raw(stream) == raw(ds)
    assert stream_report.sources == report.sources
    assert (report.counted_from, stream_report.counted_from) == ("prepared", "records")


def test_map_style_mix_has_no_index_mapping(parts):
    ds, report = parts.mix(recipe("all_exhausted", {"proportion": 5}, {"proportion": 3}, {"proportion": 2}))
    assert list(ds["id"]) == WEIGHTED["all_exhausted"][0].split()
    assert ds._indices is None
    (cache_file,) = ds.cache_files
    assert cache_file["filename"].startswith(f"{parts.cache_dir}/llava_hf_mixes/mix-")
    with pytest.raises(ValueError, match="is not a file prepared by llava_hf"):
        llava_hf.prepare_report(ds)  # a mix is not a prepared config
    again, _ = parts.mix(recipe("all_exhausted", {"proportion": 5}, {"proportion": 3}, {"proportion": 2}))
    assert again.cache_files == ds.cache_files


def test_long_runs_are_zero_copy_slices(parts, monkeypatch):
    monkeypatch.setattr(recipes, "_MIN_RUN", 1)
    ds, _ = parts.mix(recipe("concatenate", {"sampling_strategy": "end:2"}, {"repeat": 2}))
    assert list(ds["id"]) == ids("c1 c2 d0 d1 d2 d3 d4 d0 d1 d2 d3 d4 r0 r1")
    assert ds._indices is None
    assert all("llava_hf_mixes" not in f["filename"] for f in ds.cache_files)


def test_pretrain_and_instruct_mix_without_casts(cache_dir):
    ds, report = mix("pretrain_then_instruct_mix", sample=True, cache_dir=cache_dir)
    assert ds.features == llava_hf.FEATURES
    assert [c.mixed for c in report.sources] == [4, 8]
    assert list(ds["source"]) == ["blip_558k"] * 4 + [
        "coco",
        "gqa",
        "ocr_vqa",
        "ocr_vqa",
        "textvqa",
        "vg",
        "vg",
        "text_only",
    ]
    assert ds[0]["blip_caption"] is not None and ds[4]["blip_caption"] is None


def test_instruct_parts_on_the_sample(cache_dir):
    ds, report = mix("instruct_parts", sample=True, cache_dir=cache_dir)
    assert list(ds["id"]) == [
        "000000033471",
        "000000052846",
        "000000334872",
        "000000319154",
        "000000398214",
        "000000033471",
        "000000520873",
        "000000334872",
    ]
    assert list(ds["source"]) == ["conversation_58k"] * 3 + ["detail_23k"] * 3 + ["complex_reasoning_77k"] * 2
    assert report.total == 8


def test_defaults_fill_only_what_sources_leave_unset(parts, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(parts.data_dir, elsewhere)
    write_json(elsewhere / "detail_23k.json", records("x", 2))
    case = recipe("concatenate", {}, {"data_dir": str(elsewhere)}, configs=["conversation_58k", "detail_23k"])
    ds, report = mix(
        case, data_dir=parts.data_dir, image_dir={"*": parts.image_dir}, cache_dir=parts.cache_dir, sample=None
    )
    assert list(ds["id"]) == ids("c0 c1 c2 x0 x1")
    assert [s["data_dir"] for s in report.recipe["sources"]] == [parts.data_dir, str(elsewhere)]
    with pytest.raises(ValueError) as caught:
        mix(case, image_dir={"detail": parts.image_dir})
    assert str(caught.value).startswith("image_dir: 'detail' is not a config; map config names (or '*' for the")


def test_a_source_too_small_is_refused_when_mixing(parts):
    with pytest.raises(RecipeError) as caught:
        parts.mix(recipe("concatenate", {"sampling_strategy": "first:4"}))
    assert str(caught.value) == (
        "recipe: sources[0] (conversation_58k): sampling_strategy 'first:4' asks for 4 rows but the source has 3"
    )


def test_streaming_refuses_skipped_rows(parts):
    with pytest.raises(RecipeError) as caught:
        parts.mix(recipe("concatenate"), streaming=True, on_bad_image="skip")
    assert str(caught.value).startswith("recipe: sources[0] (conversation_58k): on_bad_image 'skip' cannot be streamed")
    with pytest.raises(ValueError) as caught:
        parts.mix(recipe("concatenate"), streaming=True, num_proc=2)
    assert (
        str(caught.value) == "num_proc prepares the sources; a streaming mix reads them as it goes and prepares nothing"
    )


# --- the report -----------------------------------------------------------------------------------------


def test_report_has_the_resolved_recipe_counts_seed_and_total(parts):
    case = {"name": "demo", **recipe("all_exhausted", {"repeat": 2}, {"sampling_strategy": "random:3"}, seed=7)}
    _, report = parts.mix(case)
    options = {"data_dir": parts.data_dir, "image_dir": parts.image_dir, "cache_dir": parts.cache_dir}
    assert report.to_dict() == {
        "recipe": {
            "name": "demo",
            "seed": 7,
            "stopping_strategy": "all_exhausted",
            "streaming": False,
            "sources": [
                {"config": "conversation_58k", "repeat": 2, **options},
                {"config": "detail_23k", "sampling_strategy": "random:3", **options},
                {"config": "complex_reasoning_77k", **options},
            ],
        },
        "seed": 7,
        "stopping_strategy": "all_exhausted",
        "total": 18,
        "sources": [
            {"index": 0, "config": "conversation_58k", "take": "repeat 2", "records": 3, "skipped": 0, "rows": 3}
            | {"selected": 6, "mixed": 6, "unique": 3},
            {"index": 1, "config": "detail_23k", "take": "random:3", "records": 5, "skipped": 0, "rows": 5}
            | {"selected": 3, "mixed": 6, "unique": 3},
            {"index": 2, "config": "complex_reasoning_77k", "take": "all", "records": 2, "skipped": 0, "rows": 2}
            | {"selected": 2, "mixed": 6, "unique": 2},
        ],
        "streaming": False,
        "counted_from": "prepared",
        "llava_hf_version": llava_hf.__version__,
    }


def test_report_counts_rows_skipped_when_preparing(parts, tmp_path):
    broken = tmp_path / "images"
    shutil.copytree(parts.image_dir, broken)
    (broken / IMAGES[1]).write_bytes(b"")  # c1 and the detail rows d1 point at it
    ds, report = mix(
        recipe("concatenate", configs=["conversation_58k"]),
        data_dir=parts.data_dir,
        image_dir=str(broken),
        cache_dir=parts.cache_dir,
        on_bad_image="skip",
    )
    assert list(ds["id"]) == ["c0", "c2"]
    assert [(c.records, c.skipped, c.rows, c.mixed) for c in report.sources] == [(3, 1, 2, 2)]


def test_write_mix_saves_the_dataset_and_its_report(parts, tmp_path):
    out = tmp_path / "out"
    case = recipe("first_exhausted", {"proportion": 5}, {"proportion": 3}, {"proportion": 2})
    report = write_mix(case, out, **parts.options())
    saved = datasets.load_from_disk(str(out))
    assert list(saved["id"]) == WEIGHTED["first_exhausted"][0].split()
    assert json.loads((out / "mix_report.json").read_text()) == report.to_dict()
    with pytest.raises(FileExistsError, match="exists and is not empty; choose a new folder for the mix$"):
        write_mix(case, out, **parts.options())


def test_write_mix_is_renamed_into_place_only_when_whole(parts, tmp_path, monkeypatch):
    case = recipe("first_exhausted", {"proportion": 5}, {"proportion": 3}, {"proportion": 2})
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in ((afile, "is a file, not a folder"), (afile / "sub", "is a file, so .* cannot be made")):
        with pytest.raises(FileExistsError, match=message):
            write_mix(case, out, **{**parts.options(), "cache_dir": str(tmp_path / "never")})
    assert not (tmp_path / "never").exists()  # refused before anything was prepared

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes.MixReport, "save", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_mix(case, out, **parts.options())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no mix, no hidden partial folder
    monkeypatch.undo()
    out.mkdir()  # an empty folder is taken
    report = write_mix(case, out, **parts.options())
    assert "mix_report.json" in os.listdir(out)
    assert list(datasets.load_from_disk(str(out))["id"]) == WEIGHTED["first_exhausted"][0].split()
    assert report.total == len(WEIGHTED["first_exhausted"][0].split())


def test_recipe_files_are_named_by_their_file_and_read_strictly(tmp_path):
    named = tmp_path / "my_mix.yaml"
    named.write_text("name: captions\nseed: -3\nstopping_strategy: concatenate\nsources:\n  - config: detail_23k\n")
    with pytest.raises(RecipeError, match=rf"^{named}: seed must be a whole number >= 0, got -3$"):
        load_recipe(str(named))
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        "seed: 1\nstopping_strategy: concatenate\nsources:\n  - config: detail_23k\n    choose: 2\n    choose: 2000\n"
    )
    with pytest.raises(RecipeError, match=rf"(?s)^{twice}: not valid YAML: .*the key 'choose' is given twice"):
        load_recipe(str(twice))
    anchored = tmp_path / "anchored.yaml"  # a merge key's values are defaults, not duplicates
    anchored.write_text(
        "base: &b {config: detail_23k, choose: 2}\nseed: 1\nstopping_strategy: concatenate\n"
        "sources:\n  - <<: *b\n    choose: 3\n"
    )
    with pytest.raises(RecipeError, match="unknown recipe key 'base'"):
        load_recipe(str(anchored))  # read (no duplicate), then refused for its extra top-level key


def test_repeat_is_rounded_up_in_decimal_and_huge_values_are_refused():
    source = recipes.MixSource(config="detail_23k", repeat=0.07)
    assert len(recipes._view(source, 100, 0, "recipe")) == 7  # 0.07 x 100 is 7.000000000000001 in binary
    assert len(recipes._view(recipes.MixSource(config="detail_23k", repeat=1.1), 23_240, 0, "recipe")) == 25_564
    with pytest.raises(RecipeError, match=r"repeat must be at most 1,000 epochs, got 1e\+308$"):
        load_recipe(
            {"seed": 0, "stopping_strategy": "concatenate", "sources": [{"config": "detail_23k", "repeat": 1e308}]}
        )
    weights = load_recipe(
        {
            "seed": 0,
            "stopping_strategy": "first_exhausted",
            "sources": [{"config": "detail_23k", "proportion": 1e308}, {"config": "blip_558k", "proportion": 1e308}],
        }
    )
    assert weights.probabilities == (0.5, 0.5)


# --- the command ----------------------------------------------------------------------------------------


def test_cli_lists_builtin_recipes_with_published_counts(capsys):
    assert main(["mix", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "concatenate, seed 0: 156,564 rows on the published files"
    assert out[4].split() == ["0", "conversation_58k", "all", "56,681", "56,681", "56,681", "56,681"]
    assert "concatenate, seed 0: 1,068,511 rows on the published files" in out
    assert ["1", "llava_instruct_150k", "repeat", "3", "157,712", "473,136", "473,136", "157,712"] in [
        line.split() for line in out
    ]


def test_cli_shows_a_recipes_counts_without_out(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe("concatenate", {"sampling_strategy": "first:10%"}, configs=["blip_558k"])))
    assert main(["mix", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: concatenate, seed 0, 1 sources: blip_558k (first:10%)"
    assert out[1] == "on the published files: 55,813 rows"
    assert main(["mix", str(path), "--sample", "--no-embed-images"]) == 2
    assert capsys.readouterr().err == "llava-hf mix: --no-embed-images, --sample only apply with --out\n"


def test_cli_writes_the_mix(parts, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe("all_exhausted_without_replacement")))
    out = tmp_path / "out"
    argv = ["mix", str(path), "--out", str(out), "--data-dir", parts.data_dir, "--cache-dir", parts.cache_dir]
    assert main([*argv, "--image-dir", f"detail_23k={parts.image_dir}", "--image-dir", parts.image_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == f"wrote 10 rows and mix_report.json to {out}"
    assert list(datasets.load_from_disk(str(out))["id"]) == ROUND_ROBIN["all_exhausted_without_replacement"].split()
    assert json.loads((out / "mix_report.json").read_text())["total"] == 10
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith("exists and is not empty; choose a new folder for the mix\n")


def test_cli_refusal_is_one_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe("concatenate", {"repeat": 0})))
    assert main(["mix", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"llava-hf mix: {path}: sources[0] (conversation_58k): repeat must be a number of epochs greater than 0, got 0\n"
    )


def test_uniform_draws_do_not_depend_on_numpy_generator_methods():
    # The raw PCG64 stream is what numpy keeps stable; pin its first values for seed 0.
    assert (
        recipes._generator(0, 0).random_raw(2).tolist()
        == np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0,))).random_raw(2).tolist()
    )


def test_cli_image_dir_by_the_name_of_a_file_source(tmp_path, capsys):
    from conftest import jpeg

    images = tmp_path / "pictures"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg(7))
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    data = tmp_path / "small.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"s{i}", "image": "a.jpg", "conversations": turns}) + "\n" for i in range(3))
    )
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {"seed": 0, "stopping_strategy": "concatenate", "sources": [{"data_files": str(data), "name": "mine"}]}
        )
    )
    out = tmp_path / "out"
    argv = [
        "mix",
        str(path),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--image-dir",
        f"mine={images}",
    ]
    assert main(argv) == 0
    assert list(datasets.load_from_disk(str(out))["id"]) == ["s0", "s1", "s2"]
