"""A self-contained HTML page to look at a dataset before training on it.

Each sampled row shows its image (downscaled, embedded as a base64 data URI, so the page is one file that
opens anywhere without the images) beside its conversation, with the row index, id, source and image
name. All text is HTML-escaped: LLaVA turns contain `<image>` and ShareGPT rows contain HTML and code.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import random
from typing import Any

import datasets
from PIL import Image, ImageOps

THUMBNAIL_SIDE = 320

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; } .meta { color: #666; font-size: 12px; }
.row { display: flex; gap: 20px; background: white; border: 1px solid #ddd; border-radius: 6px;
       padding: 14px; margin: 14px 0; }
.picture { flex: 0 0 auto; width: 330px; } .picture img { max-width: 100%; border: 1px solid #ccc; }
.no-image { width: 320px; height: 80px; display: flex; align-items: center; justify-content: center;
            background: #eee; color: #777; border-radius: 4px; text-align: center; }
.conversation { flex: 1 1 auto; min-width: 0; } h2 { font-size: 14px; margin: 0 0 8px; }
.turn { margin: 6px 0; } .speaker { font-weight: 600; }
.turn pre { white-space: pre-wrap; word-wrap: break-word; margin: 2px 0 0; font: inherit; }
.human pre { background: #eef4fb; } .gpt pre { background: #f2f7ee; } .turn pre { padding: 6px 8px; }
code { background: #f1f1f1; padding: 0 3px; }
"""


def write_preview(
    ds: datasets.Dataset | datasets.IterableDataset,
    out: str | os.PathLike,
    *,
    n: int = 16,
    seed: int | None = 0,
    title: str | None = None,
    thumbnail_side: int = THUMBNAIL_SIDE,
) -> dict[str, Any]:
    """Write one HTML page showing `n` rows of `ds`; return {"path", "rows", "images", "unreadable"}.

    Rows are a random sample drawn with `seed` (the same rows every time), in dataset order; `seed=None`
    takes the first `n` rows, and so does an `IterableDataset`. Images are downscaled to `thumbnail_side`
    pixels and embedded as JPEG (PNG when they have transparency); an image PIL cannot decode is shown as a
    note instead of stopping the page. Text-only rows show a "text-only" box and no `<img>`.
    Raises ValueError when `n` or `thumbnail_side` is below 1.
    """
    for name, value in (("n", n), ("thumbnail_side", thumbnail_side)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    rows = _sample(ds, n, seed)
    title = title or f"{ds.info.config_name or 'dataset'}: {len(rows)} rows"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    images = unreadable = 0
    for index, row in rows:
        if "images" in row:  # a multi-image config: every image of the row, in order
            shown = [_picture(image, thumbnail_side) for image in row["images"] or []] or [_picture(None, 0)]
            picture = "".join(markup for markup, _ in shown)
            images += sum(ok is True for _, ok in shown)
            unreadable += sum(ok is False for _, ok in shown)
        else:
            picture, ok = _picture(row["image"], thumbnail_side)
            images += ok is True
            unreadable += ok is False
        parts.append(_row_html(index, row, picture))
    parts.append("</body></html>\n")
    path = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return {"path": path, "rows": len(rows), "images": images, "unreadable": unreadable}


def _sample(ds: datasets.Dataset | datasets.IterableDataset, n: int, seed: int | None) -> list[tuple[int, dict]]:
    """(row index, row with the image as {bytes, path}) pairs; images are not decoded here."""
    if isinstance(ds, datasets.IterableDataset):
        table = next(ds.with_format("arrow").iter(batch_size=n), None)
        return list(enumerate(table.to_pylist() if table is not None else []))
    if seed is None or n >= len(ds):
        indices = list(range(min(n, len(ds))))
    else:
        indices = sorted(random.Random(seed).sample(range(len(ds)), n))
    if not indices:
        return []
    return list(zip(indices, ds.with_format("arrow")[indices].to_pylist(), strict=True))


def _picture(image: dict | None, side: int) -> tuple[str, bool | None]:
    """(HTML of the row's picture, True if an image was embedded / False if unreadable / None if text-only)."""
    if image is None:
        return '<div class="no-image">text-only row</div>', None
    name = image.get("path") or ""
    try:
        data = image["bytes"] if image.get("bytes") is not None else _read(name)
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format, im.size
            im.seek(0)  # first frame of a GIF
            thumb = ImageOps.exif_transpose(im.convert("RGBA" if _has_alpha(im) else "RGB"))
        thumb.thumbnail((side, side))
        buffer = io.BytesIO()
        if thumb.mode == "RGBA":
            mime = "image/png"
            thumb.save(buffer, format="PNG")
        else:
            mime = "image/jpeg"
            thumb.save(buffer, format="JPEG", quality=85)
    except Exception as e:  # PIL raises many types on damaged files; the page shows why instead
        note = f"image {name!r} could not be decoded: {type(e).__name__}: {e}"
        return f'<div class="no-image">{html.escape(note)}</div>', False
    uri = f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
    caption = f"{name} · {fmt} {size[0]}×{size[1]}"
    return (
        f'<img src="{uri}" width="{thumb.width}" height="{thumb.height}" alt="{html.escape(name)}">'
        f'<div class="meta">{html.escape(caption)}</div>'
    ), True


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def _read(path: str) -> bytes:
    # Prepared with embed_images=False: a local path or a zip:// URL.
    import fsspec

    with fsspec.open(path, "rb") as f:
        return f.read()


def _row_html(index: int, row: dict, picture: str) -> str:
    e = html.escape
    heading = f"row {index} · id <code>{e(str(row['id']))}</code> · source <code>{e(str(row['source']))}</code>"
    turns = "".join(
        f'<div class="turn {e(t["from"])}"><span class="speaker">{e(t["from"])}</span><pre>{e(t["value"])}</pre></div>'
        for t in row["conversations"]
    )
    details = [(k, row.get(k)) for k in ("caption", "blip_caption", "url") if row.get(k) is not None]
    if row.get("extra"):
        details.append(("extra", json.dumps(json.loads(row["extra"]), ensure_ascii=False)))
    more = "".join(f'<div class="meta">{e(k)}: {e(str(v))}</div>' for k, v in details)
    return (
        f'<section class="row"><div class="picture">{picture}</div>'
        f'<div class="conversation"><h2>{heading}</h2>{turns}{more}</div></section>'
    )
