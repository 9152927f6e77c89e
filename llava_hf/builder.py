"""The `datasets` builder: one config per catalog entry, one schema, Arrow files with embedded images.

Wiring only: inputs come from `sources`, rows from `convert`, the schema from `features`.
"""

from __future__ import annotations

import contextvars
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
from datasets.fingerprint import Hasher

from .catalog import SOURCES, Source, get_source
from .compat import EMPTY_SHARD_NEEDS_A_TABLE, Key
from .convert import TABLE_ROWS, Plan, ShardSpec, SkipLog, check_options, convert_shard, plan_source
from .errors import BadImage, SourceError
from .failures import (
    PrepareInterrupted,
    explain,
    interrupt_in,
    interrupted,
    stop_workers_on_interrupt,
    with_advice,
)
from .features import FEATURES, MULTI_IMAGE_FEATURES
from .files import FileSource, data_file_paths, file_config_name, file_identity, file_source, plan_files
from .image_collections import check_sources, is_url
from .images import forget_directories, open_root
from .integrity import DamagedEntry, check_sizes, describe_file, inode_identity, load_files, record_files, remedy
from .locking import (
    LockMode,
    children_die_with_this_process,
    datasets_locks,
    explain_lock_error,
    is_lock_error,
    lock_mode,
)
from .reader import REPORT_FILENAME
from .sources import BATCH_ROWS, input_identity

logger = logging.getLogger("llava_hf")

# datasets patches a builder's module for streaming before it builds (`open`, `os.path.*`, `pathlib.Path`,
# pandas, scipy.io ... swapped for its fsspec versions, importing scipy on the way: ~0.3 s of every load).
# Nothing here reads through those names: sources, images and the store do their own I/O, streaming
# included. So the module says it is patched already, and keeps the standard library's functions.
_patched_for_streaming = True

# The schema version: bump it when the rows a config produces change shape.
VERSION = datasets.Version("1.0.0")
_SKIP_DIR = ".llava_hf_skips"
_DESCRIBED_DIR = "described"  # inside _SKIP_DIR: the workers' checksums of their shards

OnBadImage = Literal["raise", "skip"]

# The load's token while datasets makes the config: the cache key (LlavaConfig.create_config_id, a method of
# the config, which holds no token) asks the Hub and hf:// image archives for their identity with it.
_LOAD_TOKEN: contextvars.ContextVar[bool | str | None] = contextvars.ContextVar("llava_hf_token", default=None)


def _path_option(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path, got {value!r}")
    if name == "image_dir" and is_url(os.fspath(value)):
        return os.fspath(value)  # an archive or folder URL, opened by images.open_root
    # Absolute, so that the same folder reached from two working directories is one cache entry.
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


@dataclass
class LlavaConfig(datasets.BuilderConfig):
    """Options of one LLaVA config. Every value is checked when it is set.

    image_dir: folder or .zip of images (or their URL); None = the repo's images.zip for pretrain configs,
        the image store (filled from each collection's archive) for the others.
    image_sources: {collection: URL, zip or folder} replacing a collection's archive (image_collections.py).
    embed_images: store the image bytes (True) or absolute paths (False).
    on_bad_image: "raise" on a missing/empty/non-image file, or "skip" the row and count it.
    sample: read the embedded sample instead of real data.
    revision: Hub revision of the source repo when data_dir is None (default: "main").
    """

    image_dir: str | None = None
    image_sources: dict[str, str] | None = None
    embed_images: bool = True
    on_bad_image: OnBadImage = "raise"
    sample: bool = False
    revision: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # datasets applies user options with setattr on a copy of a predefined config, bypassing
        # __init__; validating here refuses a bad value however it arrives.
        if name in ("data_dir", "image_dir"):
            value = _path_option(name, value)
        elif name == "image_sources":
            value = check_sources(value)
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
            if key in ("data_dir", "image_dir", "image_sources", "sample", "lock", "data_files"):
                continue
            if key == "revision" and value == "main":
                value = None
            if key in defaults and value == defaults[key]:
                continue
            kept[key] = value
        if self.data_files:
            # A file config: its files by content, whoever passed them (a list, a glob, datasets' DataFilesDict).
            paths = data_file_paths(self.data_files)
            identity = file_identity(paths, image_dir=self.image_dir, embed_images=self.embed_images)
            # Kept to compare with what the scan reads: a file rewritten in between must not fill this key.
            object.__setattr__(self, "_keyed_files", tuple(identity["files"]))
        else:
            identity = input_identity(
                get_source(self.name),
                data_dir=self.data_dir,
                image_dir=self.image_dir,
                sample=self.sample,
                embed_images=self.embed_images,
                revision=self.revision,
                token=_LOAD_TOKEN.get(),
                image_sources=self.image_sources,
            )
        if self.sample:
            kept["sample"] = True
        if identity:
            kept["inputs"] = Hasher.hash(identity)
        return super().create_config_id(kept, custom_features=custom_features)


def _config_source(config: LlavaConfig) -> Source:
    """The catalog entry of a config, or for a config built from data_files its `files.FileSource`."""
    if config.data_files:
        return file_source(config.name, data_file_paths(config.data_files))
    return get_source(config.name)


class LlavaBuilder(datasets.ArrowBasedBuilder):
    """Builds one LLaVA source file (plus its images) into Arrow tables with the shared schema."""

    BUILDER_CONFIG_CLASS = LlavaConfig
    BUILDER_CONFIGS = [LlavaConfig(name=s.name, version=VERSION, description=s.description) for s in SOURCES]
    # Record batches as convert_shard cuts them (up to 1,000 rows): datasets would cut image datasets to 100.
    DEFAULT_WRITER_BATCH_SIZE = TABLE_ROWS

    config: LlavaConfig

    def _create_builder_config(self, *args, **kwargs):
        reset = _LOAD_TOKEN.set(self.token)  # set by datasets' __init__ before it makes the config
        try:
            return super()._create_builder_config(*args, **kwargs)
        finally:
            _LOAD_TOKEN.reset(reset)

    def __init__(self, *args, lock: LockMode | None = None, **kwargs):
        if kwargs.get("data_files") is not None:
            # A file config (files.py): not one of BUILDER_CONFIGS, so datasets builds it from these keywords,
            # named by config_name or after its first file.
            paths = data_file_paths(kwargs["data_files"])
            kwargs["data_files"] = list(paths)
            kwargs["name"] = file_config_name(kwargs.pop("config_name", None), paths)
            kwargs["version"] = VERSION
        # How the cache is locked does not change its content, so it is no config option (no cache key).
        self._lock_mode = lock_mode(lock)
        try:
            with datasets_locks(self._lock_mode):
                super().__init__(*args, **kwargs)
        except OSError as e:
            if not is_lock_error(e) and with_advice(e) is not e:
                raise with_advice(e) from e  # a cache_dir that is read-only, not writable, full
            raise explain_lock_error(e) from e
        except json.JSONDecodeError as e:
            # datasets reads an existing entry's dataset_info.json here, before any download_mode applies
            folder = getattr(self, "_cache_dir", None)
            if folder is None:
                raise
            raise DamagedEntry(
                f"{self.config.name}: the prepared entry is damaged: {os.path.join(folder, 'dataset_info.json')} "
                f"is not valid JSON (at byte {e.pos}: {e.msg}; truncated?); delete {folder} and prepare again"
            ) from None
        # Wrapped configs are built by datasets from our module; keep the public name in infos and paths.
        self.name = self.info.builder_name = "llava_hf"
        self._source: Source = _config_source(self.config)
        self._check_inputs()
        self._plan: Plan | None = None
        self._skip_dir: str | None = None
        self._main_pid: int | None = None
        self._num_proc: int | None = None  # of the prepare under way (download_and_prepare)

    def _check_inputs(self) -> None:
        config = self.config
        if isinstance(self._source, FileSource):
            if config.sample or config.data_dir:
                raise ValueError(f"{config.name}: data_files names the files to read; drop data_dir and sample")
            return
        check_options(
            self._source,
            data_dir=config.data_dir,
            image_dir=config.image_dir,
            sample=config.sample,
            image_sources=config.image_sources,
        )

    def _info(self) -> datasets.DatasetInfo:
        source = _config_source(self.config)
        return datasets.DatasetInfo(
            description=source.description,
            features=FEATURES,
            homepage=source.homepage,
            citation=source.citation,
            license=source.license,
        )

    def _split_generators(self, dl_manager):
        source, config = self._source, self.config
        if isinstance(source, FileSource):
            plan = plan_files(
                source,
                image_dir=config.image_dir,
                work_dir=self._cache_dir_root,
                embed_images=config.embed_images,
                on_bad_image=config.on_bad_image,
            )
            keyed = getattr(config, "_keyed_files", None)
            for index, sha in zip(plan.indexes, keyed or (), strict=False):
                if index.sha256 != sha:  # the scan read other bytes than the cache key names
                    raise SourceError(
                        index.label,
                        "changed while it was being prepared (its content is not what the cache key was made "
                        "from); run again once it is no longer being written",
                    )
            if plan.spec.multi_image:  # decided by the scan, before anything is written
                self.info.features = MULTI_IMAGE_FEATURES
        else:
            plan = plan_source(
                source,
                data_dir=config.data_dir,
                image_dir=config.image_dir,
                sample=config.sample,
                revision=config.revision,
                token=self.token,
                embed_images=config.embed_images,
                on_bad_image=config.on_bad_image,
                image_sources=config.image_sources,
                parallel=(self._num_proc or 1) > 1,
            )
        chat, metadata = plan.chat, plan.metadata
        logger.info(
            "%s: found %s (%s records, %.1f MB)%s; images from %s; %d shards",
            source.name,
            chat.path,
            f"{chat.num_records:,}",
            chat.size / 1e6,
            f" and {metadata.path}" if metadata else "",
            plan.images or "none",
            len(plan.shards),
        )
        if plan.inputs.origin not in ("sample", "files") and chat.num_records != source.num_records:
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
            with datasets_locks(self._lock_mode), stop_workers_on_interrupt():
                super().download_and_prepare(*args, **kwargs)
        except KeyboardInterrupt as e:
            if isinstance(e, PrepareInterrupted):
                raise
            raise interrupted(self.config.name, self.cache_dir) from None
        except Exception as e:
            # multiprocess raises TimeoutError from its cleanup when Ctrl-C lands while results are awaited
            if interrupt_in(e):
                raise interrupted(self.config.name, self.cache_dir) from None
            if isinstance(e, OSError) and is_lock_error(e):
                raise explain_lock_error(e) from e
            explained = explain(e, self.config.name, self.cache_dir)
            if explained is e:
                raise
            raise explained from e
        if self._plan is None:  # reused, not prepared here
            self._check_reused_files()
            self._check_reused_images()
            self._check_reused_skips()

    def _check_reused_skips(self) -> None:
        # An entry prepared with on_bad_image="skip" lacks the rows whose images were bad then; if those
        # images are there now (a mount that came up, files put back), the entry is stale. Only the skipped
        # rows' images are read (all of them, in parallel), never the others.
        path = os.path.join(self.cache_dir, REPORT_FILENAME)
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        skipped = report.get("skipped", {}).get("rows") or []
        location = self.config.image_dir or report.get("source", {}).get("images")
        if not skipped or not self.config.embed_images or location is None or not os.path.exists(location):
            return
        root = open_root(location, self._source.image_aliases)
        back = [
            (index, name)
            for (index, name), found in zip(skipped, root.read_many(name for _, name in skipped))
            if not isinstance(found, BadImage)
        ]
        if back:
            index, name = back[0]
            message = (
                f"{self.config.name}: {len(back):,} of the {len(skipped):,} rows skipped when this entry was prepared "
                f"now have their image in {location} (e.g. record {index}, {name!r}); the entry lacks them: pass "
                "download_mode='force_redownload' to prepare them in"
            )
            logger.warning(message)
            warnings.warn(message, stacklevel=3)

    def _check_reused_files(self) -> None:
        # A stat per file: a truncated or missing file (a full disk during a copy, a crash of the storage)
        # is named now, not met later as pyarrow's "Expected to be able to read N bytes" without a name.
        path = os.path.join(self.cache_dir, REPORT_FILENAME)
        try:
            files = load_files(path)
        except FileNotFoundError:
            return  # not an entry of this builder's (a datasets-written cache): nothing recorded
        except ValueError:
            raise DamagedEntry(
                f"{self.config.name}: the prepared entry is damaged: {path} is not valid JSON; {remedy(self.cache_dir)}"
            ) from None
        if files:  # entries prepared before checksums were recorded have none
            check_sizes(self.cache_dir, files, self.config.name)

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
        if "image" not in self.info.features:  # a multi-image file config: no single image to compare
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
        if spec.records and hasattr(images, "expect"):
            images.expect(spec.records)  # a local zip the config reads most of is read through in file order
        skips = SkipLog()
        try:
            for local_index, shard in enumerate(shards):
                table_index = -1
                for table_index, table in enumerate(convert_shard(shard, spec, images, skips)):
                    self._exit_if_orphaned()
                    yield Key(local_index, table_index), table
                if table_index == -1 and EMPTY_SHARD_NEEDS_A_TABLE:  # every row skipped (see compat)
                    yield Key(local_index, 0), self.info.features.arrow_schema.empty_table()
        finally:
            if hasattr(images, "finish"):  # the image store's fetch progress bar
                images.finish()
        if self._skip_dir is not None and shards:
            skips.save(os.path.join(self._skip_dir, f"shards-{shards[0].index:05d}.json"))
        elif self._skip_dir is None and skips.total():
            logger.warning(
                "%s: skipped %s rows with bad images (%s)", spec.config, f"{skips.total():,}", skips.summary()
            )

    def _prepare_split_single(self, *args, **kwargs):
        # Runs in each num_proc worker (and in the preparing process with num_proc 1): an error is made
        # explicit here, where it is an object, before datasets wraps it and multiprocess turns it into text.
        try:
            for item in super()._prepare_split_single(*args, **kwargs):
                if item[1] and self._skip_dir is not None:  # the job is done: its shards are written, closed
                    self._describe_shards(kwargs["fpath"], kwargs["job_id"], item[2][3])
                yield item
        except Exception as e:
            folder = os.path.dirname(kwargs.get("fpath") or self._output_dir).removesuffix(".incomplete")
            explained = explain(e, self.config.name, folder)
            if explained is e:
                raise
            raise explained from e

    def _describe_shards(self, fpath: str, job_id: int, num_shards: int) -> None:
        # The report's checksums of this job's shards, made here, in the worker that wrote them while their
        # pages are in memory: the preparing process would otherwise read every file again after the pool
        # is done, serially (~1 s for 558K rows). Kept by file identity, which datasets' renames preserve.
        described = {}
        for shard in range(num_shards):
            path = fpath.replace("SSSSS", f"{shard:05d}").replace("JJJJJ", f"{job_id:05d}")
            if os.path.isfile(path):
                described[inode_identity(path)] = describe_file(path)
        folder = os.path.join(self._skip_dir, _DESCRIBED_DIR)
        os.makedirs(folder, exist_ok=True)
        name = os.path.basename(fpath).replace("JJJJJ", f"{job_id:05d}").replace("SSSSS", "all")
        _write_json(os.path.join(folder, f"{name}.json"), described)  # one a split and job

    def _described(self) -> dict[str, dict[str, Any]]:
        known: dict[str, dict[str, Any]] = {}
        for path in glob.glob(os.path.join(self._skip_dir, _DESCRIBED_DIR, "*.json")):
            with open(path, encoding="utf-8") as f:
                known.update(json.load(f))
        return known

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
        self._num_proc = prepare_split_kwargs.get("num_proc")
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
            forget_directories()  # parsed ahead for this prepare's workers (convert.plan_source)
            shutil.rmtree(self._skip_dir, ignore_errors=True)
            self._skip_dir = None
            self._main_pid = None
            self._num_proc = None  # a later as_streaming_dataset() is no parallel prepare

    def _write_report(self) -> None:
        from ._version import __version__

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
                f"{self._plan.images} the right folder?",
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
                "images": self._plan.images,
            },
            "options": {"embed_images": self.config.embed_images, "on_bad_image": self.config.on_bad_image},
            "prepared_by": {"host": socket.gethostname(), "pid": os.getpid(), "llava_hf": __version__},
            # Size and checksums of every file written (dataset_info.json and LICENSE are added by _save_info).
            "files": record_files(self._output_dir, _written_files(self._output_dir), self._described()),
        }
        _write_json(os.path.join(self._output_dir, REPORT_FILENAME), report)

    def _save_info(self) -> None:
        super()._save_info()
        # datasets writes dataset_info.json (and LICENSE) after the data, inside "<entry>.incomplete": add them.
        path = os.path.join(self._output_dir, REPORT_FILENAME)
        if self._output_dir.endswith(".incomplete") and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
            files = report.setdefault("files", {})
            files.update(
                record_files(self._output_dir, [f for f in _written_files(self._output_dir) if f not in files])
            )
            _write_json(path, report)


def _written_files(folder: str) -> list[str]:
    return [
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file(follow_symlinks=False) and entry.name != REPORT_FILENAME and not entry.name.endswith(".lock")
    ]


def _write_json(path: str, value: Any) -> None:
    # Written whole, then renamed: a crash never leaves a truncated report.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)
