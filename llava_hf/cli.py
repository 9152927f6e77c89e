"""The `llava-hf` command: one function per subcommand, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from .catalog import CATALOG, CONFIG_NAMES
from .formats import TRAINER_FORMATS


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        line = "  ".join(cell.rjust(w) if cell[:1].isdigit() else cell.ljust(w) for cell, w in zip(row, widths))
        print(line.rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def cmd_list(args: argparse.Namespace) -> int:
    """Configs, their published record counts and where they come from."""
    _print_table(
        ("config", "records", "hub repo", "file", "images"),
        [(s.name, f"{s.num_records:,}", s.repo_id, s.filename, s.image_layout) for s in CATALOG.values()],
    )
    return 0


def _config_or_files(value: str) -> str:
    """A catalog config name, or the user's own LLaVA-format files (a path or glob); argparse type check."""
    from .load import is_data_files

    if value in CONFIG_NAMES or is_data_files(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose a config: {', '.join(CONFIG_NAMES)}; or give LLaVA-format files: "
        "a path or glob of .json, .jsonl, optionally .gz)"
    )


def _target(args: argparse.Namespace, value: str) -> tuple[str, dict]:
    # A data file is loaded as a file config, named by --name (default: the file's stem).
    from .load import is_data_files

    if is_data_files(value):
        from .files import data_file_paths, file_config_name

        return file_config_name(args.name, data_file_paths(value)), {"data_files": value}
    if args.name:
        raise ValueError(f"--name names a config built from data files; {value!r} is a catalog config")
    return value, {}


def _load_options(args: argparse.Namespace) -> dict:
    return dict(
        data_dir=args.data_dir,
        image_dir=args.image_dir,
        cache_dir=args.cache_dir,
        embed_images=not args.no_embed_images,
        on_bad_image=args.on_bad_image,
        sample=args.sample,
        revision=args.revision,
    )


def _image_sources(values: list[str] | None) -> dict[str, str] | None:
    # "--image-source COLLECTION=URL_OR_PATH", repeatable; the library checks the names and values.
    if not values:
        return None
    mapping = {}
    for value in values:
        collection, sep, location = value.partition("=")
        if not sep or not location:
            raise ValueError(
                f"--image-source takes COLLECTION=URL_OR_PATH, e.g. coco/train2017=/data/train2017.zip; got {value!r}"
            )
        mapping[collection] = location
    return mapping


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare one config into the Arrow cache and report what was written; images a config fetches are
    fetched first, with progress."""
    from .load import load_dataset, prepare_report
    from .store import prefetch_for_prepare

    name, files = _target(args, args.config)
    options = _load_options(args)
    image_sources = _image_sources(args.image_source)
    if not files:  # file configs read their images from image_dir
        fetched = prefetch_for_prepare(name, image_sources=image_sources, progress=not args.quiet, **options)
        if fetched is not None:
            print(fetched.summary())
    ds = load_dataset(name, num_proc=args.num_proc, image_sources=image_sources, **files, **options)
    report = prepare_report(ds)
    folder = ds.cache_files[0]["filename"].rsplit("/", 1)[0]
    skipped = report["skipped"]["counts"]
    print(f"{name}: {len(ds):,} rows of {report['records']:,} records, {ds.info.dataset_size / 1e6:,.1f} MB")
    print("skipped: " + (", ".join(f"{reason} {count:,}" for reason, count in skipped.items()) or "none"))
    for reason, examples in report["skipped"]["examples"].items():
        for example in examples[:3]:
            print(f"  {reason}: record {example['index']} (id={example['id']!r}): {example['detail']}")
    print(f"cache: {folder}")
    return 0


def cmd_fetch_images(args: argparse.Namespace) -> int:
    """Fetch exactly the images the named configs reference into the store (or --to DIR); exit 0 only when
    none failed."""
    from .store import fetch_images

    report = fetch_images(
        args.names,
        to=args.to,
        data_dir=args.data_dir,
        image_sources=_image_sources(args.image_source),
        revision=args.revision,
        progress=not args.quiet,
    )
    print(report.summary())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Prepare every config from the embedded sample and show one conversation."""
    from .load import load_dataset

    rows = []
    example = None
    for name in CONFIG_NAMES:
        ds = load_dataset(name, sample=True, cache_dir=args.cache_dir)
        images = len(ds) - ds.data.column("image").null_count
        rows.append((name, len(ds), images, ", ".join(sorted(set(ds["source"])))))
        if name == args.show:
            example = ds[0]
    print()
    _print_table(("config", "rows", "images", "sources"), rows)
    if example is not None:
        image = example["image"]
        print(f"\n{args.show} row 0: id={example['id']!r}, image {image.format} {image.size[0]}x{image.size[1]}")
        for turn in example["conversations"]:
            text = textwrap.shorten(turn["value"].replace("\n", " \\n "), 100)
            print(f"  {turn['from']:>5}: {text}")
    return 0


def _print_trainer_export(format: str, result: dict) -> None:
    out = result["out_dir"]
    if format == "trl":
        print(f"wrote {result['rows']:,} rows ({result['images']:,} images) in {len(result['files'])} Parquet files")
        print(f'load with: datasets.load_dataset("parquet", data_dir={out!r}, split="train")')
    elif format == "llamafactory":
        print(f"wrote {result['rows']:,} rows to {result['file']} and {result['images']:,} images")
        if result["image_token_added"]:
            print(f"added <image> to {result['image_token_added']:,} rows whose text had none")
        skips = result["llamafactory_skips"]
        if skips["count"]:
            print(f"LLaMA-Factory will skip {skips['count']:,} rows: " + "; ".join(skips["examples"]))
        print(f"registered in {result['dataset_info']} (dataset_dir: {out}, dataset: {result['name']}):")
        print(json.dumps(result["stanza"], indent=2))
    else:
        also = f" and {result['metadata']}" if result["metadata"] else ""
        print(f"wrote {result['rows']:,} records to {result['json']}{also}; {result['images']:,} images")
        print(f"train with: --data_path {result['json']} --image_folder {result['image_folder']}")


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every record and image of a source without building it; exit 0 only when clean."""
    from .verify import verify, write_fix_list, write_report

    if args.prepared:
        return _verify_prepared(args)
    name, files = _target(args, args.config)
    report = verify(
        name,
        **files,
        data_dir=args.data_dir,
        image_dir=args.image_dir,
        sample=args.sample,
        revision=args.revision,
        num_proc=args.num_proc,
        decode=not args.no_decode,
        ignore=args.ignore or (),
        progress=not args.quiet,
    )
    print(report.summary())
    report_path = args.report or f"{name}-verify.json"
    write_report(report, report_path)
    print(f"report: {report_path}")
    if args.fix_list:
        print(f"fix list: {write_fix_list(report, args.fix_list):,} records (index, id) to skip in {args.fix_list}")
    return 0 if report.clean else 1


def _verify_prepared(args: argparse.Namespace) -> int:
    # The entry the same options would load, re-read as it is: nothing is prepared, no source is read.
    from .load import load_builder, verify_prepared

    name, files = _target(args, args.config)
    builder = load_builder(name, **files, **_load_options(args))
    if not os.path.exists(os.path.join(builder.cache_dir, "dataset_info.json")):
        print(f"{name}: not prepared in {builder.cache_dir} (run `llava-hf prepare` with the same options)")
        return 2
    check = verify_prepared(builder)
    print(check.summary())
    return 0 if check.intact else 1


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the figures of one config and write them (stats.json) with PNG histograms."""
    from .load import load_dataset
    from .stats import compute_stats, format_stats, write_stats

    name, files = _target(args, args.config)
    ds = load_dataset(name, **files, **_load_options(args))
    logging.getLogger("llava_hf").info("%s: %s rows; reading the text and image headers", name, f"{len(ds):,}")
    stats = compute_stats(ds, progress=not args.quiet)
    print(format_stats(stats, name))
    path, *histograms = write_stats(stats, args.out or f"{name}-stats")
    names = ", ".join(os.path.basename(p) for p in histograms)
    print(f"\nwrote {path} and {len(histograms)} histograms: {names}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page with sample rows of one config, images inline."""
    from .load import load_dataset
    from .preview import write_preview

    name, files = _target(args, args.config)
    ds = load_dataset(name, **files, **_load_options(args))
    which = "the first" if args.first else f"a random sample (seed {args.seed}) of"
    logging.getLogger("llava_hf").info("%s: %s rows; showing %s %d", name, f"{len(ds):,}", which, args.n)
    result = write_preview(ds, args.out, n=args.n, seed=None if args.first else args.seed)
    unreadable = f", {result['unreadable']} unreadable" if result["unreadable"] else ""
    print(f"wrote {result['path']}: {result['rows']} rows, {result['images']} images{unreadable}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write configs in the Hub layout (Parquet shards with the images embedded, and a generated card), or
    in a trainer's format (one folder per config when several are named)."""
    from .formats import export_for_trainer
    from .hub import CARD_FILENAME, MAX_SHARD_SIZE, export

    files: dict = {}
    if any(name not in CONFIG_NAMES for name in args.names):
        if len(args.names) != 1:
            raise ValueError("export takes one data file (or glob) at a time, or catalog configs")
        name, files = _target(args, args.names[0])
        args.names = [name]
    elif args.name:
        raise ValueError("--name names a config built from data files; give the files as NAME")
    if args.format != "hub":
        given = [
            flag for flag, value in (("--max-shard-size", args.max_shard_size), ("--default", args.default)) if value
        ]
        if given:
            print(f"llava-hf export: {', '.join(given)} only apply with --format hub", file=sys.stderr)
            return 2
        results = export_for_trainer(
            args.names,
            args.out_dir,
            args.format,
            num_proc=args.num_proc,
            overwrite=args.overwrite,
            progress=not args.quiet,
            **files,
            **_load_options(args),
        )
        for result in results.values():
            _print_trainer_export(args.format, result)
        return 0

    names = ", ".join(args.names)
    bound = args.max_shard_size or f"{MAX_SHARD_SIZE / 1e6:.0f}MB"
    print(f"exporting {names} to {args.out_dir} (Parquet shards of at most {bound})")
    figures = export(
        args.names,
        args.out_dir,
        max_shard_size=bound,
        default=args.default,
        num_proc=args.num_proc,
        **files,
        **_load_options(args),
    )
    rows = [
        (name, f"{f['rows']:,}", f"{f['images']:,}", f"{f['text_only']:,}", f"{sum(f['skipped'].values()):,}")
        + (len(f["shards"]), f"{f['download_size'] / 1e6:,.1f}")
        for name, f in figures.items()
    ]
    _print_table(("config", "rows", "images", "text-only", "skipped", "shards", "MB"), rows)
    print(f"card: {args.out_dir}/{CARD_FILENAME}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload an export folder to a Hub dataset repo."""
    from .hub import push, read_exports

    figures = read_exports(args.out_dir)
    if figures:
        files = sum(len(f["shards"]) for f in figures.values())
        size = sum(f["download_size"] for f in figures.values())
        print(f"found {', '.join(figures)} in {args.out_dir}: {files} Parquet files, {size / 1e6:,.1f} MB")
        branch = f" (branch {args.revision})" if args.revision else ""
        private = ", private if new" if args.private else ""
        print(f"pushing to {_hub_endpoint()}/datasets/{args.repo_id}{branch}{private}")
    try:
        info = push(
            args.out_dir,
            args.repo_id,
            private=True if args.private else None,
            revision=args.revision,
            commit_message=args.commit_message,
        )
    except OSError as e:  # huggingface_hub's HTTP, login and offline errors; the token is never in them
        print(f"llava-hf push: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not _is_transport_error(e):
            raise
        # Not an OSError in huggingface_hub 1.x and 2.x (httpx's, httpx2's): the Hub was not reached at all.
        print(f"llava-hf push: cannot reach {_hub_endpoint()} ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    print(f"done: {info.commit_url}")
    return 0


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _is_transport_error(error: BaseException) -> bool:
    """Whether `error` is an HTTP client's failure to reach a server (connect, DNS, timeout, protocol), as
    huggingface_hub's clients raise them: httpx (1.x), httpx2 (2.x), requests and urllib3 (0.x)."""
    clients = ("httpx", "httpx2", "httpcore", "requests", "urllib3")
    names = ("TransportError", "RequestError", "ConnectionError", "TimeoutException", "HTTPError")
    return any(kind.__module__.split(".")[0] in clients and kind.__name__ in names for kind in type(error).__mro__)


def _dir_default(values: list[str] | None, known=CATALOG) -> str | dict[str, str] | None:
    # "--image-dir DIR" is the default of every source; "--image-dir NAME=DIR" that of one config, NAME a
    # catalog config or (for a recipe) the name of one of its sources, its own files included.
    if not values:
        return None
    mapping = {}
    for value in values:
        config, sep, path = value.partition("=")
        named = bool(sep) and config in known
        mapping[config if named else "*"] = path if named else value
    return mapping["*"] if list(mapping) == ["*"] else mapping


def _print_mix_counts(report) -> None:
    _print_table(("#", "config", "take", "rows", "selected", "in mix", "unique"), report.table())


def cmd_mix(args: argparse.Namespace) -> int:
    """Write a mix of configs by a recipe with its report, or show the counts a recipe gives."""
    from .recipes import BUILTIN_RECIPES, load_recipe, published_counts, write_mix

    if args.list:
        for name, data in BUILTIN_RECIPES.items():
            report = published_counts(name)
            print(f"{name}: {data['description']}")
            print(f"{report.stopping_strategy}, seed {report.seed}: {report.total:,} rows on the published files")
            _print_mix_counts(report)
            print()
        return 0
    if args.recipe is None:
        print("llava-hf mix: name a recipe (a built-in, see --list, or a YAML file), or pass --list", file=sys.stderr)
        return 2
    recipe = load_recipe(args.recipe, seed=args.seed)
    takes = ", ".join(f"{s.config} ({s.take})" for s in recipe.sources)
    print(f"{recipe.label}: {recipe.stopping_strategy}, seed {recipe.seed}, {len(recipe.sources)} sources: {takes}")
    named = {*CATALOG, *(source.config for source in recipe.sources)}  # a file source by its name too
    options = dict(
        data_dir=_dir_default(args.data_dir, named),
        image_dir=_dir_default(args.image_dir, named),
        cache_dir=args.cache_dir,
        embed_images=False if args.no_embed_images else None,
        on_bad_image=args.on_bad_image,
        sample=True if args.sample else None,
        revision=args.revision,
    )
    if args.out is None:
        flag = {"embed_images": "--no-embed-images"}
        given = [flag.get(name, "--" + name.replace("_", "-")) for name, value in options.items() if value is not None]
        if given:
            print(f"llava-hf mix: {', '.join(given)} only apply with --out", file=sys.stderr)
            return 2
        report = published_counts(recipe)
        print(f"on the published files: {report.total:,} rows")
        _print_mix_counts(report)
        print("add --out DIR (and where the data is: --data-dir, --image-dir, or --sample) to write the mix")
        return 0
    print(f"writing the mix to {args.out}")
    try:
        report = write_mix(recipe, args.out, num_proc=args.num_proc, **options)
    except FileExistsError as e:
        print(f"llava-hf mix: {e}", file=sys.stderr)
        return 2
    _print_mix_counts(report)
    print(f"wrote {report.total:,} rows and mix_report.json to {args.out}")
    print(f"load with: datasets.load_from_disk({args.out!r})")
    return 0


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder with the source JSON files (default: download from the Hub)")
    parser.add_argument("--image-dir", help="folder or .zip of the images (default: the repo's images.zip)")
    parser.add_argument("--cache-dir", help="where prepared datasets are kept (default: the datasets cache)")
    parser.add_argument("--no-embed-images", action="store_true", help="store image paths instead of bytes")
    parser.add_argument(
        "--on-bad-image",
        choices=("raise", "skip"),
        default="raise",
        help="stop at the first missing/empty/non-image file (raise) or drop and count such rows (skip)",
    )
    parser.add_argument("--sample", action="store_true", help="use the embedded sample instead of real data")
    parser.add_argument("--revision", help="revision of the source Hub repo (default: main)")
    _add_name_option(parser)


def _add_name_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="the config name of data files given as NAME (default: the first file's stem)")


_NAME_HELP = "config name (see `llava-hf list`), or LLaVA-format data files: a path or glob of .json/.jsonl[.gz]"


_SOURCE_HELP = (
    "where a collection's images are read from instead of its official archive: a mirror URL, a zip or a "
    "folder, e.g. coco/train2017=/data/train2017.zip (repeatable; default: the file LLAVA_HF_IMAGE_SOURCES names)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-hf", description="The LLaVA training data as Hugging Face datasets.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="print only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, description=help, parents=[common])
        command.set_defaults(func=func)
        return command

    add("list", cmd_list, "list the configs, their record counts and sources")

    prepare = add("prepare", cmd_prepare, "prepare one config into the Arrow cache")
    prepare.add_argument("config", type=_config_or_files, metavar="NAME", help=_NAME_HELP)
    prepare.add_argument("--num-proc", type=int, help="worker processes (each takes a range of rows)")
    _add_load_options(prepare)
    prepare.add_argument("--image-source", action="append", metavar="COLLECTION=URL_OR_PATH", help=_SOURCE_HELP)

    fetch = add("fetch-images", cmd_fetch_images, "fetch the images configs reference into the image store")
    fetch.add_argument(
        "names", nargs="+", choices=CONFIG_NAMES, metavar="NAME", help="config names (see `llava-hf list`)"
    )
    fetch.add_argument("--to", help="folder to fetch into, in LLaVA's layout (default: the image store)")
    fetch.add_argument("--data-dir", help="folder with the source JSON files (default: download from the Hub)")
    fetch.add_argument("--revision", help="revision of the source Hub repo (default: main)")
    fetch.add_argument("--image-source", action="append", metavar="COLLECTION=URL_OR_PATH", help=_SOURCE_HELP)

    demo = add("demo", cmd_demo, "prepare every config from the embedded sample and print an example")
    demo.add_argument("--cache-dir", help="where prepared datasets are kept (default: the datasets cache)")
    demo.add_argument("--show", choices=CONFIG_NAMES, default="conversation_58k", help="config whose row 0 is shown")

    check = add("verify", cmd_verify, "check every record and image of a source without building it")
    check.add_argument("config", type=_config_or_files, metavar="NAME", help=_NAME_HELP)
    _add_name_option(check)
    check.add_argument("--data-dir", help="folder with the source JSON files (default: download from the Hub)")
    check.add_argument("--image-dir", help="folder or .zip of the images (default: the repo's images.zip)")
    check.add_argument("--sample", action="store_true", help="check the embedded sample")
    check.add_argument("--revision", help="revision of the source Hub repo (default: main)")
    check.add_argument("--num-proc", type=int, help="processes decoding images (default: all cores)")
    check.add_argument("--no-decode", action="store_true", help="skip the full decode of every image (fast)")
    check.add_argument(
        "--ignore", action="append", metavar="REASON", help="a reason that does not fail the check (repeatable)"
    )
    check.add_argument("--report", help="where to write the JSON report (default: NAME-verify.json)")
    check.add_argument("--fix-list", help="write the records with problems to this file, one 'index<TAB>id' a line")
    check.add_argument(
        "--prepared",
        action="store_true",
        help="check the prepared entry (the options of prepare) against its checksums instead of the source",
    )
    check.add_argument("--cache-dir", help="with --prepared: where prepared datasets are kept")
    check.add_argument("--no-embed-images", action="store_true", help="with --prepared: the entry stores paths")
    check.add_argument(
        "--on-bad-image", choices=("raise", "skip"), default="raise", help="with --prepared: as when prepared"
    )

    stats = add("stats", cmd_stats, "print statistics of one config and write them with PNG histograms")
    stats.add_argument("config", type=_config_or_files, metavar="NAME", help=_NAME_HELP)
    stats.add_argument("--out", help="folder for stats.json and the histograms (default: ./NAME-stats)")
    _add_load_options(stats)

    preview = add("preview", cmd_preview, "write one HTML page showing sample rows with their images")
    preview.add_argument("config", type=_config_or_files, metavar="NAME", help=_NAME_HELP)
    preview.add_argument("--out", required=True, help="the HTML file to write (self-contained: images inline)")
    preview.add_argument("-n", type=int, default=16, help="number of rows to show (default: 16)")
    preview.add_argument("--seed", type=int, default=0, help="seed of the random sample of rows (default: 0)")
    preview.add_argument("--first", action="store_true", help="show the first N rows instead of a random sample")
    _add_load_options(preview)

    export = add("export", cmd_export, "write configs as Hub-ready Parquet with a generated card, or for a trainer")
    export.add_argument(
        "names",
        nargs="+",
        type=_config_or_files,
        metavar="NAME",
        help="configs (see `llava-hf list`), or one data file",
    )
    export.add_argument("-o", "--out-dir", required=True, help="export folder; configs already there are kept")
    export.add_argument(
        "--format",
        choices=("hub", *TRAINER_FORMATS),
        default="hub",
        help="hub: Parquet shards + dataset card (default); "
        + "; ".join(f"{name}: {label}" for name, label in TRAINER_FORMATS.items()),
    )
    export.add_argument("--max-shard-size", help="hub: bound of each Parquet file, e.g. 200MB (default: 500MB)")
    export.add_argument(
        "--default", choices=CONFIG_NAMES, metavar="NAME", help="config loaded when none is named (default: kept)"
    )
    export.add_argument("--num-proc", type=int, help="worker processes for preparing (each takes a range of rows)")
    export.add_argument(
        "--overwrite", action="store_true", help="llava, llamafactory: replace JSON files no llava_hf export wrote"
    )
    _add_load_options(export)

    mix = add("mix", cmd_mix, "mix configs by a recipe and write them with mix_report.json, or show a recipe's counts")
    mix.add_argument("recipe", nargs="?", metavar="RECIPE", help="a built-in recipe (see --list) or a YAML file")
    mix.add_argument("--list", action="store_true", help="list the built-in recipes with their counts on the real data")
    mix.add_argument(
        "--out", help="folder to write the mix to (save_to_disk layout + mix_report.json); without it, show counts"
    )
    mix.add_argument("--seed", type=int, help="replace the recipe's seed")
    mix.add_argument("--num-proc", type=int, help="worker processes for preparing the sources")
    for option, what in (("--data-dir", "the source JSON files"), ("--image-dir", "the images (or a .zip)")):
        mix.add_argument(
            option,
            action="append",
            metavar="[CONFIG=]DIR",
            help=f"folder of {what} for sources that set none; CONFIG=DIR for one config (repeatable)",
        )
    mix.add_argument("--cache-dir", help="where prepared datasets and mixes are kept (default: the datasets cache)")
    mix.add_argument("--no-embed-images", action="store_true", help="store image paths instead of bytes")
    mix.add_argument(
        "--on-bad-image", choices=("raise", "skip"), help="for sources that set none (default: raise); see prepare"
    )
    mix.add_argument("--sample", action="store_true", help="use the embedded sample for sources that set no sample")
    mix.add_argument("--revision", help="revision of the source Hub repos (default: main)")

    push = add("push", cmd_push, "upload an export folder to a Hub dataset repo (token: HF_TOKEN or `hf auth login`)")
    push.add_argument("out_dir", metavar="OUT_DIR", help="a folder written by `llava-hf export`")
    push.add_argument("--repo-id", required=True, help="the dataset repo, ORG/NAME (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo is unchanged)")
    push.add_argument("--revision", help="branch to push to, created if missing (default: main)")
    push.add_argument("--commit-message", help="message of the upload commit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import SourceError

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("llava_hf")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args)
    except SourceError as e:  # names file, record and problem: no traceback needed
        print(f"llava-hf {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"llava-hf {args.command}: {e}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
