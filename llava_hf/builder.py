"""The `datasets` builder: one config per catalog entry, one schema, Arrow files with embedded images.

Wiring only: inputs come from `sources`, rows from `convert`, the schema from `features`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import datasets
from datasets.builder import Key
from datasets.fingerprint import Hasher

from .catalog import SOURCES, Source, get_source
from .convert import TABLE_ROWS, Plan, ShardSpec, SkipLog, check_options, convert_shard, plan_source
from .errors import BadImage, SourceError
from .features import FEATURES
from .images import open_root
from .locking import LockMode, children_die_with_this_process, datasets_locks, explain_lock_error, lock_mode
from .reader import REPORT_FILENAME
from .sources import BATCH_ROWS, input_identity

logger = logging.getLogger("llava_hf")

# The schema version: bump it when the rows a config produces change shape.
VERSION = datasets.Version("1.0.0")
_SKIP_DIR = ".llava_hf_skips"

OnBadImage = Literal["raise", "skip"]


def _path_option(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path, got {value!r}")
    # Absolute, so that the same folder reached from two working directories is one cache entry.
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


@dataclass
class LlavaConfig(datasets.BuilderConfig):
    """Options of one LLaVA config. Every value is checked when it is set.

    image_dir: folder or .zip of images; None = the repo's images.zip for pretrain configs.
    embed_images: store the image bytes (True) or absolute paths (False).
    on_bad_image: "raise" on a missing/empty/non-image file, or "skip" the row and count it.
    sample: read the embedded sample instead of real data.
    revision: Hub revision of the source repo when data_dir is None (default: "main").
    """

    image_dir: str | None = None
    embed_images: bool = True
    on_bad_image: OnBadImage = "raise"
    sample: bool = False
    revision: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # datasets applies user options with setattr on a copy of a predefined config, bypassing
        # __init__; validating here refuses a bad value however it arrives.
        if name in ("data_dir", "image_dir"):
            value = _path_option(name, value)
        elif name == "on_bad_image" and value not in get_args(OnBadImage):
            raise ValueError(f"on_bad_image must be one of {get_args(OnBadImage)}, got {value!r}")
        elif name in ("embed_images", "sample") and not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        elif name == "revision" and value is not None and not isinstance(value, str):
            raise ValueError(f"revision must be a branch, tag or commit string, got {value!r}")
        super().__setattr__(name, value)

    def create_config_id(self, config_kwargs: dict, custom_features: datasets.Features | None = None) -> str:
        # The cache key names the inputs by content, not by path (see sources.input_identity): the same
        # files reached through another mount point, or a cache copied elsewhere, find the prepared data.
        # Options equal to their defaults must not change it either: llava_hf.load_dataset and
        # datasets.load_dataset("llava_hf") pass different sets of keywords for the same dataset.
        defaults = {f.name: f.default for f in fields(LlavaConfig)}
        kept = {}
        for key, value in config_kwargs.items():
            if key in ("data_dir", "image_dir", "sample", "lock"):
                continue
            if key == "revision" and value == "main":
                value = None
            if key in defaults and value == defaults[key]:
                continue
            kept[key] = value
        identity = input_identity(
            get_source(self.name),
            data_dir=self.data_dir,
            image_dir=self.image_dir,
            sample=self.sample,
            embed_images=self.embed_images,
            revision=self.revision,
        )
        if self.sample:
            kept["sample"] = True
        if identity:
            kept["inputs"] = Hasher.hash(identity)
        return super().create_config_id(kept, custom_features=custom_features)


class LlavaBuilder(datasets.ArrowBasedBuilder):
    """Builds one LLaVA source file (plus its images) into Arrow tables with the shared schema."""

    BUILDER_CONFIG_CLASS = LlavaConfig
    BUILDER_CONFIGS = [LlavaConfig(name=s.name, version=VERSION, description=s.description) for s in SOURCES]
    # Record batches as convert_shard cuts them (up to 1,000 rows): datasets would cut image datasets to 100.
    DEFAULT_WRITER_BATCH_SIZE = TABLE_ROWS

    config: LlavaConfig

    def __init__(self, *args, lock: LockMode | None = None, **kwargs):
        if kwargs.get("data_files") is not None:
            raise ValueError("llava_hf configs take data_dir (the folder of the source files), not data_files")
        # How the cache is locked does not change its content, so it is no config option (no cache key).
        self._lock_mode = lock_mode(lock)
        try:
            with datasets_locks(self._lock_mode):
                super().__init__(*args, **kwargs)
        except OSError as e:
            raise explain_lock_error(e) from e
        # Wrapped configs are built by datasets from our module; keep the public name in infos and paths.
        self.name = self.info.builder_name = "llava_hf"
        self._source: Source = get_source(self.config.name)
        self._check_inputs()
        self._plan: Plan | None = None
        self._skip_dir: str | None = None
        self._main_pid: int | None = None

    def _check_inputs(self) -> None:
        config = self.config
        check_options(self._source, data_dir=config.data_dir, image_dir=config.image_dir, sample=config.sample)

    def _info(self) -> datasets.DatasetInfo:
        source = get_source(self.config.name)
        return datasets.DatasetInfo(
            description=source.description,
            features=FEATURES,
            homepage=source.homepage,
            citation=source.citation,
            license=source.license,
        )

    def _split_generators(self, dl_manager):
        source, config = self._source, self.config
        plan = plan_source(
            source,
            data_dir=config.data_dir,
            image_dir=config.image_dir,
            sample=config.sample,
            revision=config.revision,
            token=self.token,
            embed_images=config.embed_images,
            on_bad_image=config.on_bad_image,
        )
        chat, metadata = plan.chat, plan.metadata
        logger.info(
            "%s: found %s (%s records, %.1f MB)%s; images from %s; %d shards",
            source.name,
            chat.path,
            f"{chat.num_records:,}",
            chat.size / 1e6,
            f" and {metadata.path}" if metadata else "",
            plan.inputs.image_location or "none",
            len(plan.shards),
        )
        if plan.inputs.origin != "sample" and chat.num_records != source.num_records:
            logger.warning(
                "%s: %s has %s records; the published file has %s",
                source.name,
                source.filename,
                f"{chat.num_records:,}",
                f"{source.num_records:,}",
            )
        self._plan = plan
        gen_kwargs = {"shards": plan.shards, "spec": plan.spec}
        generator = datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs=gen_kwargs)
        generator.split_info.num_examples = chat.num_records  # the progress bar's total
        return [generator]

    def download_and_prepare(self, *args, **kwargs):
        try:
            with datasets_locks(self._lock_mode):
                super().download_and_prepare(*args, **kwargs)
        except OSError as e:
            raise explain_lock_error(e) from e
        if self._plan is None:  # reused, not prepared here
            self._check_reused_images()

    def _check_reused_images(self) -> None:
        # The cache key names an image folder by its last two path components, so that a cache is found
        # again through another mount point. Two different folders with the same tail (a resized copy
        # of coco/train2017) share the entry: when the folder given now is not the one the entry was
        # prepared from, compare a few embedded images with it (two reads) and say so if they differ.
        config = self.config
        path = os.path.join(self.cache_dir, REPORT_FILENAME)
        if not config.embed_images or config.image_dir is None or not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)["source"].get("images")
        if recorded in (None, config.image_dir) or not os.path.exists(config.image_dir):
            return
        samples = self.as_dataset("train").select_columns(["image"]).with_format("arrow")
        root = open_root(config.image_dir, self._source.image_aliases)
        checked = tried = 0
        for number, batch in enumerate(samples.iter(batch_size=BATCH_ROWS)):
            if number == 10:  # text-only rows first: give up rather than read on
                return
            for image in batch.column("image").to_pylist():
                if image is None:
                    continue
                tried += 1
                if tried > 8:  # a few reads at most, whatever the folder holds
                    return
                try:
                    same = bytes(root.read(image["path"])[1]) == image["bytes"]
                except BadImage:
                    continue  # not there (a partial mount): nothing to compare, and the cache has it
                if not same:
                    message = (
                        f"{config.name}: reusing data prepared from the images in {recorded}, but "
                        f"{image['path']!r} differs in {config.image_dir}; to prepare from these images, pass "
                        "download_mode='force_redownload' or another cache_dir"
                    )
                    logger.warning(message)
                    warnings.warn(message, stacklevel=3)
                    return
                checked += 1
                if checked == 2:
                    return

    def _generate_tables(self, shards, spec: ShardSpec):
        images = spec.open_images()
        skips = SkipLog()
        for local_index, shard in enumerate(shards):
            for table_index, table in enumerate(convert_shard(shard, spec, images, skips)):
                self._exit_if_orphaned()
                yield Key(local_index, table_index), table
        if self._skip_dir is not None and shards:
            skips.save(os.path.join(self._skip_dir, f"shards-{shards[0].index:05d}.json"))
        elif self._skip_dir is None and skips.total():
            logger.warning(
                "%s: skipped %s rows with bad images (%s)", spec.config, f"{skips.total():,}", skips.summary()
            )

    def _exit_if_orphaned(self) -> None:
        # A worker whose preparing process was killed would go on writing shards into the folder the next
        # run cleans and reuses. Its lock (inherited flock, or a lease nobody refreshes) outlives its parent
        # only until here: leave at once, writing nothing more.
        # Liveness, not parentage: under forkserver or spawn a worker's parent is not the preparing process.
        pid = self._main_pid
        if pid is None or os.getpid() == pid:
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            logger.error("%s: the preparing process %d is gone; worker %d stops", self.config.name, pid, os.getpid())
            os._exit(1)
        except PermissionError:
            pass  # the pid exists (owned by someone else): we cannot tell, go on

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self._main_pid = os.getpid()
        # Runs under datasets' lock, writing into "<cache>.incomplete". A killed run leaves that folder
        # behind and datasets would reuse it, moving its stale shards into the final folder: empty it.
        if self._output_dir.endswith(".incomplete"):
            for entry in os.listdir(self._output_dir):
                path = os.path.join(self._output_dir, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        self._skip_dir = os.path.join(self._output_dir, _SKIP_DIR)
        os.makedirs(self._skip_dir)
        try:
            with children_die_with_this_process():
                super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
            self._write_report()
        finally:
            shutil.rmtree(self._skip_dir, ignore_errors=True)
            self._skip_dir = None
            self._main_pid = None

    def _write_report(self) -> None:
        from . import __version__

        parts = []
        for path in sorted(glob.glob(os.path.join(self._skip_dir, "*.json"))):
            with open(path, encoding="utf-8") as f:
                parts.append(json.load(f))
        skips = SkipLog.merge(parts)
        rows = self.info.splits["train"].num_examples
        records = self._plan.chat.num_records
        if rows + skips.total() != records:
            raise RuntimeError(f"{self.config.name}: {records} records but {rows} rows + {skips.total()} skipped")
        if rows == 0:
            # Raised before the folder is renamed into place: an unmounted or mistyped image folder must
            # not leave an empty dataset in the cache for every later run to reuse.
            raise SourceError(
                self._source.filename,
                f"all {records:,} records were skipped for bad images ({skips.summary()}); is image_dir "
                f"{self._plan.inputs.image_location} the right folder?",
            )
        if skips.total():
            message = (
                f"{self.config.name}: skipped {skips.total():,} of {records:,} records with bad images "
                f"({skips.summary()}); listed in {REPORT_FILENAME}"
            )
            logger.warning(message)
            warnings.warn(message, stacklevel=2)
        inputs = self._plan.inputs
        report = {
            "config": self.config.name,
            "records": records,
            "rows": rows,
            "skipped": skips.to_dict(),
            "source": {
                "repo_id": self._source.repo_id,
                "origin": inputs.origin,
                "revision": inputs.revision,
                **self._plan.files(),
                "images": inputs.image_location,
            },
            "options": {"embed_images": self.config.embed_images, "on_bad_image": self.config.on_bad_image},
            "prepared_by": {"host": socket.gethostname(), "pid": os.getpid(), "llava_hf": __version__},
        }
        with open(os.path.join(self._output_dir, REPORT_FILENAME), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
