"""The `llava-hf` command: one function per subcommand, each a thin call into the library."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence

from .catalog import CATALOG, CONFIG_NAMES


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(w) if cell[:1].isdigit() else cell.ljust(w) for cell, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def cmd_list(args: argparse.Namespace) -> int:
    """Configs, their published record counts and where they come from."""
    _print_table(
        ("config", "records", "hub repo", "file", "images"),
        [(s.name, f"{s.num_records:,}", s.repo_id, s.filename, s.image_layout) for s in CATALOG.values()],
    )
    return 0


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


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare one config into the Arrow cache and report what was written."""
    from .load import load_dataset, prepare_report

    ds = load_dataset(args.name, num_proc=args.num_proc, **_load_options(args))
    report = prepare_report(ds)
    folder = ds.cache_files[0]["filename"].rsplit("/", 1)[0]
    skipped = report["skipped"]["counts"]
    print(f"{args.name}: {len(ds):,} rows of {report['records']:,} records, {ds.info.dataset_size / 1e6:,.1f} MB")
    print("skipped: " + (", ".join(f"{reason} {count:,}" for reason, count in skipped.items()) or "none"))
    for reason, examples in report["skipped"]["examples"].items():
        for example in examples[:3]:
            print(f"  {reason}: record {example['index']} (id={example['id']!r}): {example['detail']}")
    print(f"cache: {folder}")
    return 0


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
    prepare.add_argument("name", choices=CONFIG_NAMES, metavar="NAME", help="config name (see `llava-hf list`)")
    prepare.add_argument("--num-proc", type=int, help="worker processes (each takes a range of rows)")
    _add_load_options(prepare)

    demo = add("demo", cmd_demo, "prepare every config from the embedded sample and print an example")
    demo.add_argument("--cache-dir", help="where prepared datasets are kept (default: the datasets cache)")
    demo.add_argument("--show", choices=CONFIG_NAMES, default="conversation_58k", help="config whose row 0 is shown")
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
