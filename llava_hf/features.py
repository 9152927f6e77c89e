"""The one schema shared by every config, and how validated rows become Arrow tables.

One raw record and the row it becomes (cc3m_595k, with its metadata record joined):

    {"id": "GCC_train_002582585", "image": "GCC_train_002582585.jpg",
     "conversations": [{"from": "human", "value": "Provide a brief description of the given image.\\n<image>"},
                       {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."}]}
    -> id="GCC_train_002582585", image={bytes: <the JPEG file>, path: "GCC_train_002582585.jpg"},
       conversations=[{from: "human", value: ...}, {from: "gpt", value: ...}], source="cc3m_595k",
       caption="olive oil is a healthy ingredient used liberally .", blip_caption="...", url="http://...",
       extra=null
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from datasets import Features, Image, List, Value

from .records import Row

FEATURES = Features(
    {
        "id": Value("string"),
        # Null for text-only rows. The bytes are the image file as-is; `path` is its name in the source.
        "image": Image(),
        "conversations": List({"from": Value("string"), "value": Value("string")}),
        # The config name; for mix665k the image collection (coco, gqa, ...) or `text_only`.
        "source": Value("string"),
        # Pretrain metadata (null elsewhere): original alt-text (CC3M), BLIP caption, image URL.
        "caption": Value("string"),
        "blip_caption": Value("string"),
        "url": Value("string"),
        # JSON of everything the source record had beyond these columns (see records.py); null when none.
        "extra": Value("string"),
    }
)

SCHEMA = FEATURES.arrow_schema
IMAGE_TYPE = SCHEMA.field("image").type
TURN_TYPE = SCHEMA.field("conversations").type.value_type

# The schema of a config whose files hold list-valued images ("image": ["a.jpg", "b.jpg"], LLaVA-NeXT's
# form): `images`, every image in order, in place of `image`; null or [] for a text-only row. Same
# columns otherwise, in the same order.
MULTI_IMAGE_FEATURES = Features(
    dict(("images", List(Image())) if name == "image" else (name, feature) for name, feature in FEATURES.items())
)
MULTI_IMAGE_SCHEMA = MULTI_IMAGE_FEATURES.arrow_schema


def binary_array(values: Sequence[bytes | None]) -> pa.Array:
    """A binary array of `values` (None for null, bytes-like otherwise), copied once into a buffer of
    pyarrow's memory pool: 2-5x faster than `pa.array` on batches of 100 images of 130 KB, where this copy
    is most of the CPU time of preparing. The pool reuses the memory of the tables already written, where
    a `bytes` join took fresh pages from the system every table: 44,000 against 4,000 page faults, and
    ~15% of the time, in a prepare of 5,000 images of 130 KB."""
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]:,} bytes do not fit one Arrow binary array")
    nulls = sum(v is None for v in values)
    validity = pa.array([v is not None for v in values], pa.bool_()).buffers()[1] if nulls else None
    data = pa.allocate_buffer(int(offsets[-1]))
    out = memoryview(data).cast("B")
    for value, start, end in zip(values, offsets.tolist(), offsets[1:].tolist()):
        if value is not None:
            try:
                out[start:end] = value
            except (TypeError, ValueError):  # a buffer of another item format (int8, "c", a pa.Buffer)
                out[start:end] = memoryview(value).cast("B")
    return pa.Array.from_buffers(
        pa.binary(), len(values), [validity, pa.py_buffer(offsets.astype(np.int32)), data], nulls
    )


def image_array(images: Sequence[tuple[bytes | None, str] | None]) -> pa.StructArray:
    """The `image` column: one (bytes, path) pair per row, None for text-only rows."""
    mask = pa.array([image is None for image in images], pa.bool_())
    data = binary_array([image[0] if image else None for image in images])
    paths = pa.array([image[1] if image else None for image in images], pa.string())
    return pa.StructArray.from_arrays([data, paths], fields=list(IMAGE_TYPE), mask=mask)


def images_array(images: Sequence[Sequence[tuple[bytes | None, str]] | None]) -> pa.ListArray:
    """The `images` column of a multi-image config: a list of (bytes, path) pairs per row, None for null."""
    offsets = np.zeros(len(images) + 1, np.int32)
    np.cumsum([len(row) if row else 0 for row in images], out=offsets[1:])
    values = image_array([picture for row in images if row for picture in row])
    mask = pa.array([row is None for row in images], pa.bool_())
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), values, type=MULTI_IMAGE_SCHEMA.field("images").type, mask=mask
    )


def conversations_array(rows: Sequence[Row]) -> pa.ListArray:
    offsets = [0]
    roles: list[str] = []
    values: list[str] = []
    for row in rows:
        for role, value in row.conversations:
            roles.append(role)
            values.append(value)
        offsets.append(len(roles))
    turns = pa.StructArray.from_arrays(
        [pa.array(roles, pa.string()), pa.array(values, pa.string())], fields=list(TURN_TYPE)
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), turns)


def rows_to_table(rows: Sequence[Row], images: Sequence, multi_image: bool = False) -> pa.Table:
    """An Arrow table in `SCHEMA` from validated rows and their images (same length, same order); with
    `multi_image`, in `MULTI_IMAGE_SCHEMA`, each row's images a list of (bytes, path) pairs or None."""
    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} rows but {len(images)} images")
    columns = [
        pa.array([row.id for row in rows], pa.string()),
        images_array(images) if multi_image else image_array(images),
        conversations_array(rows),
        *(pa.array([getattr(row, name) for row in rows], pa.string()) for name in SCHEMA.names[3:]),
    ]
    return pa.Table.from_arrays(columns, schema=MULTI_IMAGE_SCHEMA if multi_image else SCHEMA)
