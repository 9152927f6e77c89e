"""Mixing recipes: parse, validate, resolve counts, apply.

A recipe names LLaVA configs, how much of each to take, and how to combine them:

    seed: 0
    stopping_strategy: all_exhausted     # or first_exhausted, all_exhausted_without_replacement, concatenate
    sources:
      - config: detail_23k
        repeat: 2                        # or proportion / choose / sampling_strategy (at most one)
        image_dir: /data/coco/train2017  # any llava_hf.load_dataset option
      - config: llava_v1_5_mix665k
        sampling_strategy: random:10%

A LLaVA-NeXT mixture file (`datasets:` entries with `json_path` and `sampling_strategy`) is read as a
concatenation of the configs its file names match.

Resolving a recipe turns it, given each source's row count, into one schedule: for every output row, the
source it comes from and the row of that source. The schedule depends only on the recipe and the counts,
so the map-style result (`select` on the concatenated sources) and the streaming result (a generator
walking the schedule) yield the same rows in the same order.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any, Literal, get_args

import datasets
import numpy as np
import pyarrow as pa
import yaml

from .builder import OnBadImage
from .catalog import CATALOG, CONFIG_NAMES, SOURCES, get_source
from .compat import Key
from .features import FEATURES, MULTI_IMAGE_FEATURES
from .files import as_multi_image, data_file_paths, file_config_name, file_stem
from .sources import BATCH_ROWS

logger = logging.getLogger("llava_hf")

StoppingStrategy = Literal["first_exhausted", "all_exhausted", "all_exhausted_without_replacement", "concatenate"]
STOPPING_STRATEGIES: tuple[str, ...] = get_args(StoppingStrategy)
KNOBS = ("proportion", "repeat", "choose", "sampling_strategy")
# Bounds past any mix (665K rows x 1,000 epochs is 665M rows): a larger value is a typo, not a plan, and
# would only fail later, in an allocation, naming nothing.
MAX_REPEAT = 1_000
MAX_CHOOSE = 10**10
REPORT_FILENAME = "mix_report.json"

BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    "instruct_parts": {
        "description": (
            "LLaVA-Instruct-150K's three GPT-4 generated parts (conversations, detailed descriptions, "
            "complex reasoning), concatenated"
        ),
        "seed": 0,
        "stopping_strategy": "concatenate",
        "sources": [{"config": "conversation_58k"}, {"config": "detail_23k"}, {"config": "complex_reasoning_77k"}],
    },
    # LLaVA-1.5 (Liu et al., CVPR 2024): stage 1 aligns the projector on LCS-558K, stage 2 tunes on the
    # 665K mixture, one epoch each. Concatenated in stage order; the report's counts give the boundary.
    "pretrain_then_instruct_mix": {
        "description": "LLaVA-1.5's two stages in order: LCS-558K (stage 1), then the 665K instruction mixture",
        "seed": 0,
        "stopping_strategy": "concatenate",
        "sources": [{"config": "blip_558k"}, {"config": "llava_v1_5_mix665k"}],
    },
    # LLaVA (Liu et al., NeurIPS 2023): 1 epoch of CC3M-595K, then 3 epochs of LLaVA-Instruct-158K.
    "llava_v1_stages": {
        "description": "LLaVA-1's two stages in order: CC3M-595K (stage 1), then LLaVA-Instruct-158K for 3 epochs",
        "seed": 0,
        "stopping_strategy": "concatenate",
        "sources": [{"config": "cc3m_595k"}, {"config": "llava_instruct_150k", "repeat": 3}],
    },
}

# LLaVA-NeXT's train.py reads `first:N`, `end:N`, `random:N`, with N a row count or an integer percentage
# rounded up (`first:10%` = ceil(10 * rows / 100)); anything without a colon means every row.
_SAMPLING = re.compile(r"(first|end|random):([0-9]+)(%?)|([0-9]+)%|all")
_SAMPLING_HELP = "'all', 'first:N', 'end:N', 'random:N' (N rows, or N% of the source) or 'N%'"
# A map-style mix made of few long runs of consecutive rows (concatenations, first/end, whole passes) is
# built from zero-copy slices of the prepared files; anything else is copied once (`flatten_indices`),
# because every slice is a table block and many small blocks make batched reads slow.
_MAX_SLICES = 64
_MIN_RUN = 1000
_DRAW_BLOCK = 1 << 16


class RecipeError(ValueError):
    """A recipe that breaks the rules; the message names the recipe, the source and the field."""


def _hint(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingStrategy:
    """A parsed LLaVA-NeXT `sampling_strategy` string."""

    text: str
    kind: Literal["all", "first", "end", "random"]
    number: int | None = None
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> SamplingStrategy:
        """Raises ValueError (without location) for a string LLaVA-NeXT would not read as a strategy."""
        match = _SAMPLING.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"sampling_strategy must be {_SAMPLING_HELP}, got {text!r}")
        kind, number, percent, bare = match.groups()
        if bare is not None:
            # A bare "N%" is a random N%: no position in the file is implied, so none is favoured.
            kind, number, percent = "random", bare, "%"
        if kind is None:
            return cls(text, "all")
        strategy = cls(text, kind, int(number), percent == "%")
        if strategy.number == 0:
            raise ValueError(f"sampling_strategy {text!r} selects no rows; leave the source out instead")
        if strategy.percent and strategy.number > 100:
            raise ValueError(f"sampling_strategy {text!r} asks for more than 100% of the source")
        return strategy

    def count(self, rows: int) -> int:
        """How many of `rows` rows the strategy selects (LLaVA-NeXT rounds percentages up)."""
        if self.kind == "all":
            return rows
        if self.percent:
            return -(-self.number * rows // 100)
        return self.number


@dataclass(frozen=True)
class MixSource:
    """One source of a recipe: a config, at most one sizing knob, and `load_dataset` options.

    Values are checked at construction; a bad one raises RecipeError naming the source
    (`sources[1] (detail_23k)`) and the field.
    """

    config: str
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None
    sampling_strategy: str | None = None
    data_dir: str | None = None
    image_dir: str | None = None
    cache_dir: str | None = None
    embed_images: bool | None = None
    on_bad_image: OnBadImage | None = None
    sample: bool | None = None
    revision: str | None = None
    # The user's own files (a path, glob or list; see files.py): `config` is then the name of that file config.
    data_files: str | tuple[str, ...] | None = None
    # Where the source sits in its file: the position in `sources` (or a LLaVA-NeXT file's `datasets`).
    index: int = 0
    # The LLaVA-NeXT `json_path` this source was mapped from; its folder is the fallback data_dir.
    json_path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValueError as e:
            raise RecipeError(f"{self.where}: {e}") from None

    @property
    def where(self) -> str:
        if self.json_path is not None:
            return f"datasets[{self.index}] ({os.path.basename(self.json_path)})"
        return f"sources[{self.index}] ({self.config})"

    def _check(self) -> None:
        if self.data_files is None:
            get_source(self.config)
        else:
            files = self.data_files
            if isinstance(files, (list, tuple)) and files and all(isinstance(f, (str, os.PathLike)) for f in files):
                object.__setattr__(self, "data_files", tuple(os.fspath(f) for f in files))
            elif isinstance(files, os.PathLike):
                object.__setattr__(self, "data_files", os.fspath(files))
            elif not isinstance(files, str):
                raise ValueError(f"data_files must be a path, a glob or a list of them, got {files!r}")
            file_config_name(self.config, ())
            if self.data_dir is not None or self.sample:
                raise ValueError("data_files names the files to read; drop data_dir and sample")
        given = [knob for knob in KNOBS if getattr(self, knob) is not None]
        if len(given) > 1:
            raise ValueError(f"set at most one of {', '.join(KNOBS)}; got {' and '.join(given)}")
        if self.proportion is not None and not (_is_number(self.proportion) and self.proportion > 0):
            raise ValueError(f"proportion must be a number greater than 0 (a sampling weight), got {self.proportion!r}")
        if self.repeat is not None and not (_is_number(self.repeat) and self.repeat > 0):
            raise ValueError(f"repeat must be a number of epochs greater than 0, got {self.repeat!r}")
        if self.repeat is not None and self.repeat > MAX_REPEAT:
            raise ValueError(f"repeat must be at most {MAX_REPEAT:,} epochs, got {self.repeat!r}")
        if self.choose is not None and not (_is_whole(self.choose) and self.choose >= 1):
            raise ValueError(f"choose must be a whole number of rows, at least 1, got {self.choose!r}")
        if self.choose is not None and self.choose > MAX_CHOOSE:
            raise ValueError(f"choose must be at most {MAX_CHOOSE:,} rows, got {self.choose!r}")
        if self.sampling_strategy is not None:
            SamplingStrategy.parse(self.sampling_strategy)
        for name in ("data_dir", "image_dir", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a path, got {value!r}")
        for name in ("embed_images", "sample"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if self.on_bad_image is not None and self.on_bad_image not in get_args(OnBadImage):
            raise ValueError(f"on_bad_image must be one of {get_args(OnBadImage)}, got {self.on_bad_image!r}")
        if self.revision is not None and not isinstance(self.revision, str):
            raise ValueError(f"revision must be a branch, tag or commit string, got {self.revision!r}")
        if self.sample and (self.data_dir or self.image_dir):
            raise ValueError("sample: true reads the embedded sample; drop data_dir and image_dir")

    @property
    def take(self) -> str:
        """The knob as written: 'all', 'repeat 3', 'choose 1000', 'proportion 0.25' or a sampling strategy."""
        if self.sampling_strategy is not None:
            return self.sampling_strategy
        for knob in ("proportion", "repeat", "choose"):
            if getattr(self, knob) is not None:
                return f"{knob} {getattr(self, knob)}"
        return "all"

    def load_options(self) -> dict[str, Any]:
        """The `llava_hf.load_dataset` keywords this source sets (unset ones keep load_dataset's defaults)."""
        options = {name: getattr(self, name) for name in _OPTION_FIELDS if getattr(self, name) is not None}
        if self.data_files is not None:
            options["data_files"] = list(self.data_files) if isinstance(self.data_files, tuple) else self.data_files
        elif self.json_path is not None and "data_dir" not in options and not self.sample:
            options["data_dir"] = os.path.dirname(os.path.abspath(self.json_path))
        return options

    def to_dict(self) -> dict[str, Any]:
        """The source as a recipe entry (unset fields left out)."""
        entry = {name: getattr(self, name) for name in _ENTRY_FIELDS if getattr(self, name) is not None}
        if isinstance(entry.get("data_files"), tuple):
            entry["data_files"] = list(entry["data_files"])
        if self.data_files is not None:
            return {"name": self.config, **entry}
        return {"config": self.config, **entry}


_OPTION_FIELDS = ("data_dir", "image_dir", "cache_dir", "embed_images", "on_bad_image", "sample", "revision")
_ENTRY_FIELDS = (*KNOBS, *_OPTION_FIELDS, "data_files")
_SOURCE_KEYS = ("config", "name", *_ENTRY_FIELDS)
_RECIPE_KEYS = ("name", "description", "seed", "stopping_strategy", "streaming", "sources")


@dataclass(frozen=True)
class Recipe:
    """A validated mixing recipe. Build it with `load_recipe`; a bad value raises RecipeError.

    seed: fixes every random choice (proportion draws, random subsets) of the mix.
    stopping_strategy: how the sources are combined (see README "Mixing").
    streaming: whether `mix` returns an IterableDataset by default.
    """

    sources: tuple[MixSource, ...]
    seed: int
    stopping_strategy: StoppingStrategy
    streaming: bool = False
    name: str | None = None
    description: str | None = None
    # Where the recipe was read from (its file, or a built-in's name): what messages name, before `name`.
    origin: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValueError as e:
            raise RecipeError(f"{self.label}: {e}") from None

    @property
    def label(self) -> str:
        return self.origin or self.name or "recipe"

    def _check(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        for name in ("name", "description"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not (_is_whole(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.stopping_strategy not in STOPPING_STRATEGIES:
            raise ValueError(f"stopping_strategy must be one of {STOPPING_STRATEGIES}, got {self.stopping_strategy!r}")
        if not isinstance(self.streaming, bool):
            raise ValueError(f"streaming must be true or false, got {self.streaming!r}")
        if not self.sources:
            raise ValueError("sources is empty: a recipe mixes at least one source")
        weighted = [s for s in self.sources if s.proportion is not None]
        if weighted and self.stopping_strategy == "concatenate":
            raise ValueError(
                f"{weighted[0].where}: proportion is a sampling weight, and stopping_strategy 'concatenate' "
                "does not sample; interleave (first_exhausted, all_exhausted, all_exhausted_without_replacement) "
                "or size the source with repeat, choose or sampling_strategy"
            )
        if weighted and len(weighted) < len(self.sources):
            unweighted = [s for s in self.sources if s.proportion is None]
            raise ValueError(
                f"proportion is set on {', '.join(s.where for s in weighted)} but not on "
                f"{', '.join(s.where for s in unweighted)}; give every source a proportion or none"
            )
        if self.streaming:
            for source in self.sources:
                if source.on_bad_image == "skip":
                    raise ValueError(
                        f"{source.where}: on_bad_image 'skip' cannot be streamed in a mix: rows dropped while "
                        "streaming would shift the planned order; use streaming: false (the rows are counted "
                        "when preparing) or on_bad_image 'raise'"
                    )

    @property
    def probabilities(self) -> tuple[float, ...] | None:
        """The normalised proportions, or None when the sources are not sampled by weight."""
        if self.sources[0].proportion is None:
            return None
        top = max(s.proportion for s in self.sources)  # scaled first: 1e308 and 1e308 overflow a sum
        total = math.fsum(s.proportion / top for s in self.sources)
        return tuple(s.proportion / top / total for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """The recipe in the native format (a `load_recipe` input that gives the same recipe)."""
        recipe: dict[str, Any] = {"name": self.name, "description": self.description}
        recipe = {key: value for key, value in recipe.items() if value is not None}
        recipe.update(seed=self.seed, stopping_strategy=self.stopping_strategy, streaming=self.streaming)
        recipe["sources"] = [source.to_dict() for source in self.sources]
        return recipe


def _source_from_dict(entry: Any, index: int) -> MixSource:
    where = f"sources[{index}]"
    if not isinstance(entry, Mapping):
        raise RecipeError(f"{where}: a source is a mapping with config and options, got {entry!r}")
    if "config" in entry:
        where = f"{where} ({entry['config']})"
    for key in entry:
        if key not in _SOURCE_KEYS:
            raise RecipeError(
                f"{where}: unknown field {key!r}{_hint(key, _SOURCE_KEYS)}; a source takes: {', '.join(_SOURCE_KEYS)}"
            )
    if "data_files" in entry:
        # A file beside the catalog configs: named by `name`, or after its first file.
        entry = dict(entry)
        if "config" in entry:
            raise RecipeError(f"{where}: a source is a config or data_files (named by name), not both")
        try:
            name = entry.pop("name", None)
            if name is None:
                files = entry["data_files"]
                name = file_stem(data_file_paths(files)[0]) if isinstance(files, (str, list, tuple)) else None
        except (ValueError, FileNotFoundError) as e:
            raise RecipeError(f"{where}: {e}") from None
        return MixSource(config=name, **entry, index=index)
    if "name" in entry:
        raise RecipeError(f"{where}: name names a data_files source; a catalog source takes config")
    if "config" not in entry:
        raise RecipeError(
            f"{where}: config is required (one of: {', '.join(CONFIG_NAMES)}), or data_files for your own files"
        )
    return MixSource(**entry, index=index)


def _recipe_from_native(data: Mapping[str, Any], label: str, seed: int | None) -> Recipe:
    for key in data:
        if key not in _RECIPE_KEYS:
            raise RecipeError(
                f"{label}: unknown recipe key {key!r}{_hint(key, _RECIPE_KEYS)}; "
                f"a recipe takes: {', '.join(_RECIPE_KEYS)}"
            )
    if seed is None and "seed" not in data:
        raise RecipeError(f"{label}: seed is required: a whole number that fixes every random choice of the mix")
    if "stopping_strategy" not in data:
        raise RecipeError(f"{label}: stopping_strategy is required (one of: {', '.join(STOPPING_STRATEGIES)})")
    entries = data.get("sources")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{label}: sources must be a non-empty list of sources, got {entries!r}")
    try:
        sources = tuple(_source_from_dict(entry, index) for index, entry in enumerate(entries))
    except RecipeError as e:
        raise RecipeError(f"{label}: {e}") from None
    return Recipe(
        sources=sources,
        seed=data["seed"] if seed is None else seed,
        stopping_strategy=data["stopping_strategy"],
        streaming=data.get("streaming", False),
        name=data.get("name", label if label != "recipe" else None),
        description=data.get("description"),
        origin=label if label != "recipe" else None,
    )


_BY_FILENAME = {source.filename: source.name for source in SOURCES}


def _recipe_from_llava_next(data: Mapping[str, Any], label: str, seed: int | None) -> Recipe:
    for key in data:
        if key != "datasets":
            raise RecipeError(f"{label}: unknown key {key!r} in a LLaVA-NeXT mixture; it has only datasets")
    entries = data["datasets"]
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{label}: datasets must be a non-empty list of json_path entries, got {entries!r}")
    unknown = []
    sources = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("json_path"), str):
            raise RecipeError(f"{label}: datasets[{index}]: a LLaVA-NeXT entry needs a json_path, got {entry!r}")
        for key in entry:
            if key not in ("json_path", "sampling_strategy"):
                raise RecipeError(
                    f"{label}: datasets[{index}]: unknown key {key!r}; a LLaVA-NeXT entry has json_path and "
                    "sampling_strategy"
                )
        json_path = entry["json_path"]
        config = _BY_FILENAME.get(os.path.basename(json_path))
        files = None
        if config is None and os.path.isfile(json_path):
            # Any other file (ShareGPT4V, the OneVision jsons, ...) becomes a file config named after it.
            config, files = file_stem(json_path), json_path
        elif config is None:
            unknown.append(f"datasets[{index}] {json_path!r}")
            continue
        # LLaVA-NeXT's default when an entry has no sampling_strategy.
        strategy = entry.get("sampling_strategy", "all")
        if isinstance(strategy, str) and re.fullmatch(r"\s*[0-9]+%\s*", strategy):
            logger.warning(
                "%s: datasets[%d] (%s): LLaVA-NeXT's train.py reads a bare %r as 'all'; llava_hf takes a random "
                "%s of the rows; write 'all' or 'random:%s' to say which",
                label,
                index,
                os.path.basename(json_path),
                strategy,
                strategy.strip(),
                strategy.strip(),
            )
        try:
            sources.append(
                MixSource(config=config, sampling_strategy=strategy, index=index, json_path=json_path, data_files=files)
            )
        except RecipeError as e:
            raise RecipeError(f"{label}: {e}") from None
    if unknown:
        known = ", ".join(f"{s.filename} ({s.name})" for s in SOURCES)
        raise RecipeError(
            f"{label}: json_path files that are neither a llava_hf catalog file nor an existing file: "
            f"{', '.join(unknown)}; llava_hf knows: {known}"
        )
    # LLaVA-NeXT appends its files one after another; a recipe file has no seed, so random:N uses seed 0.
    return Recipe(
        sources=tuple(sources),
        seed=0 if seed is None else seed,
        stopping_strategy="concatenate",
        name=label,
        origin=label if label != "recipe" else None,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently: a
    recipe with `choose: 2` and then `choose: 2000` would run as the second)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: its keys are defaults, which the mapping's own keys override
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping refuses it, naming it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"the key {key!r} is given twice", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_recipe(recipe: str | os.PathLike | Mapping[str, Any] | Recipe, *, seed: int | None = None) -> Recipe:
    """A validated Recipe from a built-in name, a YAML file, a dict, or a Recipe.

    YAML files and dicts are either native recipes (`seed`, `stopping_strategy`, `sources`) or LLaVA-NeXT
    mixtures (`datasets` of `json_path` + `sampling_strategy`, read as a concatenation with seed 0).
    `seed` replaces the recipe's seed. Raises RecipeError naming the recipe, the source and the field.
    """
    if isinstance(recipe, Recipe):
        return recipe if seed is None else replace(recipe, seed=seed)
    label = "recipe"
    if isinstance(recipe, (str, os.PathLike)):
        text = os.fspath(recipe)
        if text in BUILTIN_RECIPES:
            label, data = text, BUILTIN_RECIPES[text]
        elif os.path.isfile(text):
            label = text
            with open(text, encoding="utf-8") as f:
                try:
                    data = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
                except yaml.YAMLError as e:
                    raise RecipeError(f"{label}: not valid YAML: {e}") from None
        else:
            raise RecipeError(
                f"recipe {text!r} is neither a built-in recipe ({', '.join(BUILTIN_RECIPES)}) nor an existing file"
            )
    else:
        data = recipe
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"{label}: a recipe is a mapping with seed, stopping_strategy and sources (or a LLaVA-NeXT mixture "
            f"with datasets), got {type(data).__name__}"
        )
    if isinstance(data.get("name"), str) and label == "recipe":
        label = data["name"]
    if "datasets" in data and "sources" not in data:
        return _recipe_from_llava_next(data, label, seed)
    return _recipe_from_native(data, label, seed)


# ---------------------------------------------------------------------------------------------------------
# Resolving: row counts -> one schedule of (source, row) pairs.


def _generator(seed: int, *key: int) -> np.random.PCG64:
    # The PCG64 bit stream seeded through SeedSequence is fixed by numpy's stability policy (NEP 19), unlike
    # Generator methods such as `choice`, which may change between numpy versions. Every random choice is
    # derived from raw bits, so a recipe and seed give the same order on any machine.
    return np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key))


def _uniform(bits: np.random.PCG64, size: int) -> np.ndarray:
    return (bits.random_raw(size) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _subset(seed: int, index: int, rows: int, size: int) -> np.ndarray:
    """`size` distinct rows of `rows`, chosen at random and kept in file order."""
    keys = _generator(seed, 1, index).random_raw(rows)
    return np.sort(np.argsort(keys, kind="stable")[:size])


def _view(source: MixSource, rows: int, seed: int, label: str) -> np.ndarray:
    """The rows a source's knob selects, in the order the source gives them.

    Whole passes are in file order and a partial pass is a random subset, also in file order, so that a
    streamed source is read forward within each pass (LLaVA-NeXT shuffles `random:N`; the trainer's
    sampler shuffles again anyway).
    """
    if rows == 0:
        raise RecipeError(f"{label}: {source.where}: the source has no rows to mix")
    if source.sampling_strategy is not None:
        strategy = SamplingStrategy.parse(source.sampling_strategy)
        size = strategy.count(rows)
        if size > rows:
            raise RecipeError(
                f"{label}: {source.where}: sampling_strategy {source.sampling_strategy!r} asks for {size:,} rows "
                f"but the source has {rows:,}"
            )
        if strategy.kind == "first":
            return np.arange(size, dtype=np.int64)
        if strategy.kind == "end":
            return np.arange(rows - size, rows, dtype=np.int64)
        if strategy.kind == "random":
            return _subset(seed, source.index, rows, size)
        return np.arange(rows, dtype=np.int64)
    if source.repeat is not None:
        # Rounded up like LLaVA-NeXT's percentages, so repeat 0.1 and random:10% select as many rows.
        # In decimal (as written): 0.07 x 100 is 7.000000000000001 in binary, which would round up to 8.
        size = math.ceil(Fraction(str(source.repeat)) * rows)
    elif source.choose is not None:
        size = source.choose
    else:
        return np.arange(rows, dtype=np.int64)
    passes, rest = divmod(size, rows)
    parts = [np.arange(rows, dtype=np.int64)] * passes
    if rest:
        parts.append(_subset(seed, source.index, rows, rest))
    return np.concatenate(parts)


def _round_robin(lengths: np.ndarray, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    # One row of every source per round, as datasets' map-style interleave_datasets without probabilities:
    # first_exhausted stops after the shortest source's last round; all_exhausted runs as many rounds as
    # the longest source has rows, restarting the shorter ones; without replacement skips finished sources.
    k = len(lengths)
    rounds = int(lengths.min() if strategy == "first_exhausted" else lengths.max())
    sources = np.tile(np.arange(k), rounds)
    positions = np.repeat(np.arange(rounds, dtype=np.int64), k)
    if strategy == "all_exhausted":
        return sources, positions % lengths[sources]
    if strategy == "all_exhausted_without_replacement":
        keep = positions < lengths[sources]
        return sources[keep], positions[keep]
    return sources, positions


def _weighted(
    lengths: np.ndarray, probabilities: Sequence[float], strategy: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # Each draw picks a source with the given probabilities; the source gives its next row. Same stopping
    # rules as datasets' interleave_datasets: first_exhausted stops at the draw that takes the last row of
    # any source; all_exhausted at the draw that finishes the last unfinished source, exhausted sources
    # starting over meanwhile; without replacement draws of finished sources give nothing.
    k = len(lengths)
    cdf = np.cumsum(np.asarray(probabilities, dtype=np.float64))
    cdf[-1] = 1.0
    expected = float(max(lengths / np.asarray(probabilities)))
    if expected > 1 << 32:
        raise RecipeError(
            f"the proportions need about {expected:,.0f} draws to exhaust the sources; raise the small ones"
        )
    bits = _generator(seed, 0)
    blocks: list[np.ndarray] = []
    counts = np.zeros(k, dtype=np.int64)
    while True:
        block = np.minimum(np.searchsorted(cdf, _uniform(bits, _DRAW_BLOCK), side="right"), k - 1)
        blocks.append(block)
        counts += np.bincount(block, minlength=k)
        done = counts >= lengths
        if done.any() if strategy == "first_exhausted" else done.all():
            break
    draws = np.concatenate(blocks)
    occurrence = np.empty(len(draws), dtype=np.int64)
    finished_at = np.empty(k, dtype=np.int64)
    for s in range(k):
        where = np.flatnonzero(draws == s)
        occurrence[where] = np.arange(len(where))
        finished_at[s] = where[lengths[s] - 1] if len(where) >= lengths[s] else len(draws)
    stop = int(finished_at.min() if strategy == "first_exhausted" else finished_at.max()) + 1
    draws, occurrence = draws[:stop], occurrence[:stop]
    if strategy == "all_exhausted":
        return draws, occurrence % lengths[draws]
    if strategy == "all_exhausted_without_replacement":
        keep = occurrence < lengths[draws]
        return draws[keep], occurrence[keep]
    return draws, occurrence


@dataclass(frozen=True)
class SourceCount:
    """What one source contributes to a mix.

    records: records in the source file; skipped: rows dropped for bad images when preparing;
    rows: rows available (records - skipped); selected: rows the knob selects (all passes);
    mixed: rows in the mix; unique: distinct source rows in the mix; probability: normalised proportion.
    """

    index: int
    config: str
    take: str
    records: int
    skipped: int
    rows: int
    selected: int
    mixed: int
    unique: int
    probability: float | None = None
    json_path: str | None = None


@dataclass(frozen=True, eq=False)
class Plan:
    """A resolved recipe: for every output row, its source (`sources[i]`) and its row in that source."""

    recipe: Recipe
    source_ids: np.ndarray
    rows: np.ndarray
    counts: tuple[SourceCount, ...]

    @property
    def total(self) -> int:
        return len(self.source_ids)

    def order(self) -> list[tuple[int, int]]:
        """The schedule as (source index, row) pairs."""
        return list(zip(self.source_ids.tolist(), self.rows.tolist()))


def resolve(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    rows: Sequence[int] | None = None,
    *,
    records: Sequence[int] | None = None,
) -> Plan:
    """The schedule and per-source counts of `recipe` given each source's row count.

    rows: rows of each source, in recipe order; None takes the published record counts of the catalog
    (what the recipe gives on the real data). records: records of each source file (default: `rows`).
    No data is read. Raises RecipeError when a source cannot give what its knob asks for.
    """
    recipe = load_recipe(recipe)
    sources = recipe.sources
    if rows is None:
        for source in sources:
            if source.data_files is not None:
                raise RecipeError(
                    f"{recipe.label}: {source.where} is the user's own files, which have no published count; "
                    "mix() counts them"
                )
        rows = [CATALOG[s.config].num_records for s in sources]
    if len(rows) != len(sources):
        raise ValueError(f"{recipe.label}: {len(sources)} sources but {len(rows)} row counts")
    records = list(rows) if records is None else list(records)
    views = [_view(s, int(n), recipe.seed, recipe.label) for s, n in zip(sources, rows)]
    lengths = np.array([len(v) for v in views], dtype=np.int64)
    probabilities = recipe.probabilities
    if recipe.stopping_strategy == "concatenate":
        source_ids = np.repeat(np.arange(len(views)), lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    elif probabilities is None:
        source_ids, positions = _round_robin(lengths, recipe.stopping_strategy)
    else:
        try:
            source_ids, positions = _weighted(lengths, probabilities, recipe.stopping_strategy, recipe.seed)
        except RecipeError as e:
            raise RecipeError(f"{recipe.label}: {e}") from None
    out_rows = np.empty(len(source_ids), dtype=np.int64)
    counts = []
    for s, (source, view) in enumerate(zip(sources, views)):
        mine = source_ids == s
        out_rows[mine] = view[positions[mine]]
        counts.append(
            SourceCount(
                index=source.index,
                config=source.config,
                take=source.take,
                records=int(records[s]),
                skipped=int(records[s]) - int(rows[s]),
                rows=int(rows[s]),
                selected=len(view),
                mixed=int(mine.sum()),
                unique=int(np.count_nonzero(np.bincount(out_rows[mine], minlength=int(rows[s])))),
                probability=None if probabilities is None else probabilities[s],
                json_path=source.json_path,
            )
        )
    return Plan(recipe, source_ids.astype(np.int64), out_rows, tuple(counts))


# ---------------------------------------------------------------------------------------------------------
# The report.


@dataclass(frozen=True)
class MixReport:
    """What a mix resolved to: the recipe as applied, the seed, the per-source counts and the total.

    counted_from: "prepared" (rows of the prepared sources), "records" (records of the source files,
    streaming) or "catalog" (the published counts, nothing read).
    """

    recipe: dict[str, Any]
    seed: int
    stopping_strategy: str
    total: int
    sources: tuple[SourceCount, ...]
    streaming: bool
    counted_from: Literal["prepared", "records", "catalog"]

    @classmethod
    def from_plan(cls, plan: Plan, *, counted_from: str, streaming: bool = False) -> MixReport:
        recipe = plan.recipe
        return cls(
            recipe=recipe.to_dict(),
            seed=recipe.seed,
            stopping_strategy=recipe.stopping_strategy,
            total=plan.total,
            sources=plan.counts,
            streaming=streaming,
            counted_from=counted_from,
        )

    def to_dict(self) -> dict[str, Any]:
        from ._version import __version__

        report = asdict(self)
        report["sources"] = [
            {key: value for key, value in asdict(count).items() if value is not None} for count in self.sources
        ]
        report["llava_hf_version"] = __version__
        return report

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (mix_report.json beside a saved mix)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    def table(self) -> list[tuple[Any, ...]]:
        """Rows for printing: index, config, take, rows, selected, in mix, unique (counts formatted)."""
        return [
            (c.index, c.config, c.take, f"{c.rows:,}", f"{c.selected:,}", f"{c.mixed:,}", f"{c.unique:,}")
            for c in self.sources
        ]


def published_counts(recipe: str | os.PathLike | Mapping[str, Any] | Recipe) -> MixReport:
    """The report a recipe gives on the published source files (the catalog's record counts); nothing is
    read. Raises RecipeError like `resolve`."""
    return MixReport.from_plan(resolve(recipe), counted_from="catalog")


# ---------------------------------------------------------------------------------------------------------
# Applying: defaults, loading, and the map-style and streaming results.


def _default_for(value: Any, config: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(config, value.get("*"))
    return value


def _check_defaults(name: str, value: Any, names: Sequence[str] = ()) -> None:
    if isinstance(value, Mapping):
        for key in value:
            if key != "*" and key not in CATALOG and key not in names:
                raise ValueError(
                    f"{name}: {key!r} is not a config; map config names (or '*' for the others) to folders: "
                    f"{', '.join(CONFIG_NAMES)}"
                )


def apply_defaults(recipe: Recipe, **defaults: Any) -> Recipe:
    """The recipe with `defaults` filled into every source that does not set the option itself.

    data_dir and image_dir may be a path (every source) or a mapping from config name to path, with "*"
    for the configs not named. A source with sample: true takes no data_dir or image_dir default.
    """
    file_names = [s.config for s in recipe.sources if s.data_files is not None]
    for name in ("data_dir", "image_dir"):
        _check_defaults(name, defaults.get(name), file_names)
    sources = []
    for source in recipe.sources:
        changes = {}
        sample = source.sample if source.sample is not None else defaults.get("sample")
        for name in _OPTION_FIELDS:
            value = _default_for(defaults.get(name), source.config)
            if value is None or getattr(source, name) is not None:
                continue
            if sample and name in ("data_dir", "image_dir"):
                continue
            if source.data_files is not None and name in ("data_dir", "sample"):
                continue  # a file source names its files itself
            changes[name] = os.fspath(value) if isinstance(value, os.PathLike) else value
        try:
            sources.append(replace(source, **changes) if changes else source)
        except RecipeError as e:
            raise RecipeError(f"{recipe.label}: {e}") from None
    return replace(recipe, sources=tuple(sources))


def _resolved_recipe(recipe: Recipe) -> Recipe:
    # The report shows the folders each source was read from, absolute, including the data_dir a
    # LLaVA-NeXT entry takes from its json_path.
    sources = []
    for source in recipe.sources:
        options = source.load_options()
        for name in ("data_dir", "image_dir", "cache_dir"):
            if name in options:
                options[name] = os.path.abspath(os.path.expanduser(options[name]))
        sources.append(replace(source, **options))
    return replace(recipe, sources=tuple(sources))


def _count_records(source: MixSource, token: bool | str | None) -> tuple[int, bool]:
    """(records of the source's files, whether they make a multi-image config), from one scan."""
    from .load import load_builder
    from .sources import index_json_array, resolve_inputs

    options = source.load_options()
    load_builder(source.config, token=token, **options)  # refuses bad option combinations first
    if source.data_files is not None:
        from .files import index_file

        work_dir = options.get("cache_dir") or str(datasets.config.HF_DATASETS_CACHE)
        indexes = [index_file(path, work_dir) for path in data_file_paths(source.data_files)]
        return sum(index.num_records for index in indexes), any(index.multi_image for index in indexes)
    catalog = get_source(source.config)
    inputs = resolve_inputs(
        catalog,
        data_dir=options.get("data_dir"),
        image_dir=options.get("image_dir"),
        sample=bool(options.get("sample")),
        revision=options.get("revision"),
        token=token,
    )
    return index_json_array(inputs.json_path, catalog.filename).num_records, False


class _SourceRows:
    """Rows of one source's stream by index, read forward in Arrow batches.

    A row in the current batch is sliced from it; a row behind it restarts the stream (a new pass).
    """

    def __init__(self, options: dict[str, Any], label: str):
        self.options, self.label = options, label
        self.stream: datasets.IterableDataset | None = None
        self.batches: Iterator[pa.Table] | None = None
        self.batch: pa.Table | None = None
        self.start = 0  # the source row of batch[0]

    def take(self, row: int) -> pa.Table:
        from .load import load_dataset

        if self.batches is None or row < self.start:
            if self.stream is None:
                self.stream = load_dataset(streaming=True, **self.options).with_format("arrow")
            self.batches, self.batch, self.start = self.stream.iter(batch_size=BATCH_ROWS), None, 0
        while self.batch is None or row >= self.start + len(self.batch):
            if self.batch is not None:
                self.start += len(self.batch)
            try:
                self.batch = next(self.batches)
            except StopIteration:
                raise RuntimeError(
                    f"{self.label}: the stream ended after {self.start:,} rows but the mix needs row {row:,}; "
                    "the source changed after its records were counted"
                ) from None
        return self.batch.slice(row - self.start, 1)


class _MixStream(datasets.ArrowBasedBuilder):
    """A mix as a stream: the schedule walked over the sources' streams, one Arrow table per batch of rows.

    Rows stay Arrow from the source files to the consumer. Yielding Python rows (`from_generator`) would
    re-encode them, and `Image` encoding drops a row's bytes when its relative path names a file in the
    working directory.
    """

    def __init__(self, *, schedule: dict[str, Any], **kwargs: Any):
        self.schedule = schedule
        super().__init__(**kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(features=MULTI_IMAGE_FEATURES if self.schedule["multi_image"] else FEATURES)

    def _split_generators(self, dl_manager):
        # Tuples and arrays, not lists: datasets would read lists as shards.
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs=self.schedule)]

    def _generate_tables(self, options, labels, source_ids, rows, multi_image):
        from .files import wrap_images

        sources = [_SourceRows(option, label) for option, label in zip(options, labels)]
        pending: list[pa.Table] = []
        for s, row in zip(source_ids.tolist(), rows.tolist()):
            table = sources[s].take(row)
            # A multi-image mix: rows of a single-image source get one-element lists.
            pending.append(wrap_images(table) if multi_image and "image" in table.column_names else table)
            if len(pending) == BATCH_ROWS:
                yield Key(0, len(pending)), pa.concat_tables(pending)
                pending = []
        if pending:
            yield Key(0, len(pending)), pa.concat_tables(pending)


def _mixes_dir(recipe: Recipe) -> str:
    cache_dir = next((s.cache_dir for s in recipe.sources if s.cache_dir), None)
    root = cache_dir if cache_dir is not None else str(datasets.config.HF_DATASETS_CACHE)
    return os.path.join(os.path.expanduser(root), "llava_hf_mixes")


def _identity(parts: Sequence[datasets.Dataset], indices: np.ndarray) -> str:
    # Names the flattened file after what it holds: the sources' prepared files (path, size and mtime,
    # which change when a source is prepared again) and the rows taken from them.
    digest = hashlib.sha256()
    for part in parts:
        for cache_file in part.cache_files:
            stat = os.stat(cache_file["filename"])
            digest.update(f"{cache_file['filename']}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def _map_style(
    recipe: Recipe, parts: Sequence[datasets.Dataset], plan: Plan, *, flatten: bool, num_proc: int | None
) -> datasets.Dataset:
    combined = datasets.concatenate_datasets(list(parts)) if len(parts) > 1 else parts[0]
    offsets = np.cumsum([0] + [len(part) for part in parts[:-1]])
    indices = offsets[plan.source_ids] + plan.rows
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    if len(starts) == 1 and indices[0] == 0 and len(indices) == len(combined):
        return combined
    if len(starts) <= _MAX_SLICES and len(indices) >= _MIN_RUN * len(starts):
        slices = [combined.select(range(int(indices[a]), int(indices[a]) + int(b - a))) for a, b in zip(starts, stops)]
        return datasets.concatenate_datasets(slices) if len(slices) > 1 else slices[0]
    selected = combined.select(indices)
    if not flatten:
        return selected
    folder = _mixes_dir(recipe)
    os.makedirs(folder, exist_ok=True)
    # Written outside the sources' cache folders, where prepare_report would take it for a prepared config.
    path = os.path.join(folder, f"mix-{_identity(parts, indices)}.arrow")
    return selected.flatten_indices(cache_file_name=path, num_proc=num_proc)


def _streaming_mix(recipe: Recipe, token: bool | str | None) -> tuple[datasets.IterableDataset, MixReport]:
    scans = [_count_records(source, token) for source in recipe.sources]
    counts = [records for records, _ in scans]
    for source, count in zip(recipe.sources, counts):
        logger.info("%s: %s records", source.where, f"{count:,}")
    plan = resolve(recipe, counts)
    schedule = {
        "options": tuple({"name": s.config, "token": token, **s.load_options()} for s in recipe.sources),
        "labels": tuple(f"{recipe.label}: {s.where}" for s in recipe.sources),
        "source_ids": plan.source_ids,
        "rows": plan.rows,
        "multi_image": any(multi for _, multi in scans),
    }
    digest = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode())
    digest.update(plan.source_ids.tobytes() + plan.rows.tobytes())
    builder = _MixStream(
        schedule=schedule, cache_dir=_mixes_dir(recipe), dataset_name="llava_hf_mix", hash=digest.hexdigest()[:32]
    )
    return builder.as_streaming_dataset(split="train"), MixReport.from_plan(
        plan, counted_from="records", streaming=True
    )


def _map_style_mix(
    recipe: Recipe, token: bool | str | None, num_proc: int | None, flatten: bool
) -> tuple[datasets.Dataset, MixReport]:
    from .load import load_dataset, prepare_report

    parts, records = [], []
    for source in recipe.sources:
        part = load_dataset(source.config, num_proc=num_proc, token=token, **source.load_options())
        if part.features not in (FEATURES, MULTI_IMAGE_FEATURES):
            raise ValueError(f"{recipe.label}: {source.where}: the prepared rows do not have the llava_hf schema")
        parts.append(part)
        records.append(prepare_report(part)["records"])
        logger.info("%s: %s rows", source.where, f"{len(part):,}")
    if any(part.features == MULTI_IMAGE_FEATURES for part in parts):
        # A multi-image source makes the mix multi-image: single-image rows get one-element lists.
        parts = [as_multi_image(part) for part in parts]
    plan = resolve(recipe, [len(part) for part in parts], records=records)
    dataset = _map_style(recipe, parts, plan, flatten=flatten, num_proc=num_proc)
    return dataset, MixReport.from_plan(plan, counted_from="prepared")


def _applied(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe, seed: int | None, streaming: bool | None, **defaults: Any
) -> Recipe:
    # The recipe as a mix applies it: seed and streaming overridden, defaults filled, folders absolute.
    loaded = load_recipe(recipe, seed=seed)
    if streaming is not None:
        loaded = replace(loaded, streaming=streaming)
    applied = _resolved_recipe(apply_defaults(loaded, **defaults))
    logger.info(
        "mix %s: %d sources, %s, seed %d%s",
        applied.label,
        len(applied.sources),
        applied.stopping_strategy,
        applied.seed,
        ", streaming" if applied.streaming else "",
    )
    return applied


def mix(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    *,
    data_dir: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    image_dir: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    cache_dir: str | os.PathLike | None = None,
    sample: bool | None = None,
    embed_images: bool | None = None,
    on_bad_image: OnBadImage | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    num_proc: int | None = None,
    streaming: bool | None = None,
    seed: int | None = None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, MixReport]:
    """Mix LLaVA configs by a recipe; returns the mixed dataset and a MixReport of the resolved counts.

    recipe: a built-in name (`BUILTIN_RECIPES`), a YAML file, a dict, or a Recipe (see `load_recipe`).
    data_dir, image_dir, cache_dir, sample, embed_images, on_bad_image, revision: defaults for sources that
        do not set the option; data_dir and image_dir may map config names (and "*" for the rest) to paths.
        A LLaVA-NeXT source with no data_dir reads the folder of its json_path.
    token, num_proc: passed to every `llava_hf.load_dataset` call (num_proc: preparing workers, map-style).
    streaming: override the recipe's `streaming`; True returns an IterableDataset that yields exactly the
        rows, in the same order, as the map-style result. It counts each source file's records first (one
        scan) and refuses on_bad_image="skip".
    seed: override the recipe's seed.

    The map-style result has no index mapping left: runs of consecutive rows are zero-copy slices of the
    prepared sources, and anything finer is written once to `<cache_dir>/llava_hf_mixes/`.
    Raises RecipeError (a ValueError) naming the recipe, the source and the field for a bad recipe or a
    source too small for its knob; otherwise what `llava_hf.load_dataset` raises.
    """
    applied = _applied(
        recipe,
        seed,
        streaming,
        data_dir=data_dir,
        image_dir=image_dir,
        cache_dir=cache_dir,
        sample=sample,
        embed_images=embed_images,
        on_bad_image=on_bad_image,
        revision=revision,
    )
    if applied.streaming:
        if num_proc is not None:
            raise ValueError(
                "num_proc prepares the sources; a streaming mix reads them as it goes and prepares nothing"
            )
        dataset, report = _streaming_mix(applied, token)
    else:
        dataset, report = _map_style_mix(applied, token, num_proc, flatten=True)
    logger.info("mix %s: %s rows", applied.label, f"{report.total:,}")
    return dataset, report


def write_mix(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    image_dir: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    cache_dir: str | os.PathLike | None = None,
    sample: bool | None = None,
    embed_images: bool | None = None,
    on_bad_image: OnBadImage | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    num_proc: int | None = None,
    seed: int | None = None,
) -> MixReport:
    """Mix by `recipe` and write the result to `out_dir`: the dataset (`save_to_disk` layout, reload with
    `datasets.load_from_disk`) and `mix_report.json` beside it. Options as in `mix`; the mix is always
    built map-style (a recipe's streaming: true gives the same rows). Raises FileExistsError when
    `out_dir` exists and is not empty (or is a file, or lies under one), before anything is prepared, and
    what `mix` raises.

    The mix is written into a hidden folder beside `out_dir` (`.<name>.incomplete-<random>`) and renamed to
    `out_dir` when the dataset and its report are both written: an interrupted write leaves no folder that
    loads as a mix.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} is a file, not a folder; choose a new folder for the mix")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder for the mix")
    above = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise FileExistsError(f"{above} is a file, so {out_dir} cannot be made; choose a new folder for the mix")
    applied = _applied(
        recipe,
        seed,
        False,
        data_dir=data_dir,
        image_dir=image_dir,
        cache_dir=cache_dir,
        sample=sample,
        embed_images=embed_images,
        on_bad_image=on_bad_image,
        revision=revision,
    )
    dataset, report = _map_style_mix(applied, token, num_proc, flatten=False)
    logger.info("mix %s: %s rows", applied.label, f"{report.total:,}")
    target = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.incomplete-{os.urandom(4).hex()}")
    try:
        # save_to_disk writes the selected rows itself, so the index mapping is never flattened twice.
        dataset.save_to_disk(partial, num_proc=num_proc)
        report.save(os.path.join(partial, REPORT_FILENAME))
        if os.path.isdir(target):
            try:
                os.rmdir(target)  # empty (checked above); another run's rows there make this fail
            except OSError:
                raise FileExistsError(
                    f"{out_dir} was filled by someone else while this mix was written; choose a new folder"
                ) from None
        os.rename(partial, target)
    finally:
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return report


__all__ = [
    "BUILTIN_RECIPES",
    "KNOBS",
    "REPORT_FILENAME",
    "STOPPING_STRATEGIES",
    "MixReport",
    "MixSource",
    "Plan",
    "Recipe",
    "RecipeError",
    "SamplingStrategy",
    "SourceCount",
    "apply_defaults",
    "load_recipe",
    "mix",
    "published_counts",
    "resolve",
    "write_mix",
]
