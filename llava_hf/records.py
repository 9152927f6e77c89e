"""Pure functions from a raw LLaVA JSON record to a validated row, and back. No I/O.

A raw record (all files share this shape):

    {"id": "000000033471", "image": "000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus in the image?"},
                       {"from": "gpt", "value": "The bus in the image is white and red."}]}

Anything a record carries beyond the schema's fields is kept, as JSON, in the row's `extra` column:
the record's own extra keys under their names, and under reserved keys starting with "@": `@id` (an id
that was not a string), `@image` (an explicit null image), `@turns` (extra keys of each turn, aligned
with the turns), `@metadata` (extra keys of the pretrain metadata record) and `@order` (the record's keys in
the source's order, kept only when `restore_record` would not give that order by itself; in `@metadata`
too, for the metadata record).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from .errors import SourceError

RECORD_KEYS = ("id", "image", "conversations")
TURN_KEYS = ("from", "value")
METADATA_FIELDS = ("caption", "blip_caption", "url")
TEXT_ONLY = "text_only"
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Row:
    """One validated record, in the column order of `features.FEATURES`."""

    id: str
    image: str | None
    conversations: tuple[tuple[str, str], ...]
    source: str
    caption: str | None = None
    blip_caption: str | None = None
    url: str | None = None
    extra: str | None = None
    # Multi-image configs (column `images`): every image name in order; None for a text-only row.
    images: tuple[str, ...] | None = None

    def image_names(self) -> tuple[str, ...]:
        """The names of the images this row embeds, in order (none for a text-only row)."""
        if self.images is not None:
            return self.images
        return (self.image,) if self.image is not None else ()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(row: Row) -> str | None:
    """What makes `row`'s text impossible to store as UTF-8 (an unpaired UTF-16 surrogate, which JSON
    allows as a lone escape such as \\ud83d), or None."""
    fields = [("id", row.id), ("image", row.image), ("source", row.source)]
    fields += [(name, getattr(row, name)) for name in (*METADATA_FIELDS, "extra")]
    for k, (role, value) in enumerate(row.conversations):
        fields += [(f"turn {k} 'from'", role), (f"turn {k} 'value'", value)]
    for where, value in fields:
        match = _LONE_SURROGATE.search(value) if value else None
        if match:
            code = f"\\u{ord(match.group()):04x}"
            return f"{where} holds an unpaired UTF-16 surrogate ({code} at character {match.start()}), not valid text"
    return None


def record_id(raw: Any) -> object:
    """The id of a raw record for error messages, whatever the record looks like."""
    return raw.get("id") if isinstance(raw, dict) else None


def _normalise_id(value: Any, *, file: str, index: int) -> tuple[str, bool]:
    """The id as a string, and whether it was something else in the file."""
    if isinstance(value, str):
        return value, False
    # `id` is a string in most files but an int in some mix665k rows; both become strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), True
    expected = "a string or an integer 'id'"
    raise SourceError(file, f"expected {expected}, got {_describe(value)}", index, value)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{type(value).__name__} {text[:60]}"


def _escape_key(key: str) -> str:
    # Reserved `extra` keys start with "@"; a source key that does too is stored with one more "@".
    return "@" + key if key.startswith("@") else key


def _unescape_key(key: str) -> str:
    return key[1:] if key.startswith("@@") else key


def parse_record(
    raw: Any,
    *,
    file: str,
    index: int,
    config: str,
    source_from: Literal["config", "image_collection"] = "config",
    metadata: Any = None,
    metadata_file: str | None = None,
    multi_image: bool = False,
) -> Row:
    """Validate one raw record (and its metadata record, for pretrain configs) into a `Row`.

    With `multi_image` (a config whose files hold list-valued images), the row's `images` holds every
    image name in order (a single name becomes a one-element list) and `image` is None.

    Raises `SourceError` naming `file`, `index` and the record's id when the record is not a JSON object,
    has no usable `id` or `conversations`, has a turn without a string `from`/`value`, when the metadata
    record belongs to another id, or (reason "image_count") when a list of images does not match the
    number of `<image>` tokens.
    """
    if not multi_image:
        row = _parse_common(raw, config, source_from, metadata)
        if row is not None:
            return row
    if not isinstance(raw, dict):
        raise SourceError(file, f"expected a JSON object, got {_describe(raw)}", index)
    if "id" not in raw:
        raise SourceError(file, "expected an 'id' key, found keys " + ", ".join(map(repr, raw)), index)
    rid, id_was_other = _normalise_id(raw["id"], file=file, index=index)

    extra: dict[str, Any] = {_escape_key(k): v for k, v in raw.items() if k not in RECORD_KEYS}
    if id_was_other:
        extra["@id"] = raw["id"]
    # Extra keys may stand before `conversations` (mix665k's ShareGPT rows: id, model, conversations).
    restored_order = ["id", *(["image"] if "image" in raw else []), "conversations"]
    restored_order += [k for k in raw if k not in RECORD_KEYS]
    if list(raw) != restored_order:
        extra["@order"] = list(raw)

    # Text-only rows (mix665k) have no `image` key; an explicit null is kept in `extra` to be restored.
    image = raw.get("image")
    images = None
    if "image" in raw and image is None:
        extra["@image"] = None
    elif multi_image and isinstance(image, list):
        images = _image_list(image, file=file, index=index, rid=rid)
        image = None
    elif image is not None and (not isinstance(image, str) or not image):
        expected = "a file name or a list of file names" if multi_image else "a file name"
        raise SourceError(file, f"expected 'image' to be {expected}, got {_describe(image)}", index, rid)
    elif multi_image and image is not None:
        # A single name in a multi-image config: a one-element list, restored as the plain name it was.
        images, image = (image,), None
        extra["@one_image"] = True

    turns, turn_extras = _parse_turns(raw, file=file, index=index, rid=rid)
    if any(turn_extras):
        extra["@turns"] = turn_extras
    if images is not None and not extra.get("@one_image"):
        tokens = sum(value.count(IMAGE_TOKEN) for _, value in turns)
        # LLaVA-NeXT puts the images first and writes no token at all ("images first"): zero is allowed.
        if tokens not in (0, len(images)):
            raise SourceError(
                file,
                f"has {len(images)} images but {tokens} {IMAGE_TOKEN!r} tokens; expected {len(images)} (one per "
                "image, in order) or none (images first)",
                index,
                rid,
                reason="image_count",
            )

    fields = {name: None for name in METADATA_FIELDS}
    if metadata is not None:
        fields, metadata_extra = _parse_metadata(
            metadata, rid=rid, image=image, file=file, metadata_file=metadata_file or "metadata", index=index
        )
        if metadata_extra:
            extra["@metadata"] = metadata_extra

    if image is None and not images:
        source = TEXT_ONLY
    elif source_from == "image_collection" and image is not None and "/" in image:
        # mix665k: the first path component names the image collection (coco, gqa, ocr_vqa, ...).
        source = image.split("/", 1)[0]
    else:
        source = config

    return Row(
        id=rid,
        image=image,
        conversations=turns,
        source=source,
        extra=json.dumps(extra, ensure_ascii=False, separators=(",", ":")) if extra else None,
        images=images,
        **fields,
    )


# The metadata key orders that need no `extra`: id, image, then the fields present, in METADATA_FIELDS order.
_PLAIN_METADATA_KEYS = frozenset(
    ("id", "image", *(name for k, name in enumerate(METADATA_FIELDS) if mask >> k & 1))
    for mask in range(1 << len(METADATA_FIELDS))
)


def _parse_common(raw: Any, config: str, source_from: str, metadata: Any) -> Row | None:
    """The row of a record of the common shape (string id and image, plain turns, plain metadata), or None.

    Most records of every LLaVA file have that shape and give a row without `extra`; checking for it is
    several times cheaper per record than the general path, which handles (and names the errors of) the rest.
    None sends the record to the general path, which gives the same row for any record this accepts.
    """
    if type(raw) is not dict or tuple(raw) != RECORD_KEYS:
        return None
    rid, image, conversations = raw["id"], raw["image"], raw["conversations"]
    if type(rid) is not str or type(image) is not str or not image or type(conversations) is not list:
        return None
    turns = []
    for turn in conversations:
        # Two keys, both strings: no per-turn extras (the order of a turn's keys is not kept, see restore_record).
        if type(turn) is not dict or len(turn) != 2:
            return None
        role, value = turn.get("from"), turn.get("value")
        if type(role) is not str or type(value) is not str:
            return None
        turns.append((role, value))
    fields = _NO_METADATA
    if metadata is not None:
        if type(metadata) is not dict or tuple(metadata) not in _PLAIN_METADATA_KEYS:
            return None
        if metadata["id"] != rid or metadata["image"] != image:
            return None
        fields = {name: metadata.get(name) for name in METADATA_FIELDS}
        # A present field must be a string; a null one would need `@order` to restore its key.
        if any(type(metadata[k]) is not str for k in metadata if k in METADATA_FIELDS):
            return None
    # mix665k: the first path component names the image collection (coco, gqa, ocr_vqa, ...).
    source = image.split("/", 1)[0] if source_from == "image_collection" and "/" in image else config
    # The row without its dataclass __init__ (a frozen one sets each field through object.__setattr__:
    # ~1.9 us a row, against 0.6 us for this); the same object, equal to Row(...) of the same fields.
    row = object.__new__(Row)
    row.__dict__.update(
        id=rid, image=image, conversations=tuple(turns), source=source, **fields, extra=None, images=None
    )
    return row


_NO_METADATA: dict[str, None] = {name: None for name in METADATA_FIELDS}


def _image_list(value: list, *, file: str, index: int, rid: str) -> tuple[str, ...]:
    for k, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise SourceError(file, f"image {k}: expected a file name, got {_describe(name)}", index, rid)
    return tuple(value)


def _parse_turns(
    raw: dict, *, file: str, index: int, rid: str
) -> tuple[tuple[tuple[str, str], ...], list[dict[str, Any]]]:
    conversations = raw.get("conversations")
    if not isinstance(conversations, list):
        got = "no 'conversations' key" if "conversations" not in raw else _describe(conversations)
        raise SourceError(file, f"expected 'conversations' to be a list of turns, got {got}", index, rid)
    turns = []
    extras = []
    for turn_index, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise SourceError(
                file,
                f"turn {turn_index}: expected an object with 'from' and 'value', got {_describe(turn)}",
                index,
                rid,
            )
        for key in TURN_KEYS:
            if not isinstance(turn.get(key), str):
                got = "it is missing" if key not in turn else f"got {_describe(turn[key])}"
                raise SourceError(file, f"turn {turn_index}: expected a string {key!r}, {got}", index, rid)
        turns.append((turn["from"], turn["value"]))
        # Some turns carry extra keys; they are kept per turn so that the record can be restored.
        extras.append({k: v for k, v in turn.items() if k not in TURN_KEYS})
    return tuple(turns), extras


def _parse_metadata(
    metadata: Any, *, rid: str, image: str | None, file: str, metadata_file: str, index: int
) -> tuple[dict[str, str | None], dict[str, Any]]:
    if not isinstance(metadata, dict):
        raise SourceError(metadata_file, f"expected a JSON object, got {_describe(metadata)}", index)
    meta_id = metadata.get("id")
    if isinstance(meta_id, int) and not isinstance(meta_id, bool):
        meta_id = str(meta_id)
    if meta_id != rid:
        raise SourceError(
            file,
            f"{metadata_file} has id {metadata.get('id')!r} at the same record; the chat and metadata files "
            "must be parallel (same order, same ids)",
            index,
            rid,
        )
    fields: dict[str, str | None] = {}
    for name in METADATA_FIELDS:
        value = metadata.get(name)
        # About 10% of CC3M rows have no BLIP caption, and LCS-558K has no original caption: null.
        if value is not None and not isinstance(value, str):
            raise SourceError(metadata_file, f"expected a string {name!r}, got {_describe(value)}", index, rid)
        fields[name] = value
    extra = {
        _escape_key(k): v
        for k, v in metadata.items()
        if k not in ("id", *METADATA_FIELDS) and not (k == "image" and v == image)
    }
    # The order restore_record gives: id, image, the non-null fields, then the extra keys (an extra `image`
    # that differs from the chat's keeps the place of the chat's).
    restored = dict.fromkeys(["id", *(["image"] if image is not None else [])])
    restored.update(dict.fromkeys(name for name in METADATA_FIELDS if fields[name] is not None))
    restored.update(dict.fromkeys(k for k in metadata if _escape_key(k) in extra))
    restored_order = list(restored)
    if list(metadata) != restored_order:
        extra["@order"] = list(metadata)
    return fields, extra


def restore_record(row: dict[str, Any], *, with_metadata: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Rebuild the raw chat record, and with `with_metadata` the pretrain metadata record, from a row.

    `row` is a dataset row whose `image` is the relative image name (or None), or whose `images` is the
    list of relative names (multi-image configs). The inverse of
    `parse_record`: `restore_record` of a parsed record gives back the source records, key for key.
    """
    extra = json.loads(row["extra"]) if row.get("extra") else {}
    record: dict[str, Any] = {"id": extra.pop("@id", row["id"])}
    one_image = extra.pop("@one_image", False)
    if row.get("images") is not None:
        # Multi-image rows: `images` holds the relative names; a record that named one image plainly gets it back.
        record["image"] = row["images"][0] if one_image else list(row["images"])
    elif row.get("image") is not None:
        record["image"] = row["image"]
    elif "@image" in extra:
        record["image"] = extra.pop("@image")
    turn_extras = extra.pop("@turns", None) or [{} for _ in row["conversations"]]
    record["conversations"] = [
        {"from": turn["from"], "value": turn["value"], **more}
        for turn, more in zip(row["conversations"], turn_extras, strict=True)
    ]
    metadata_extra = extra.pop("@metadata", {})
    order = extra.pop("@order", None)
    record.update({_unescape_key(k): v for k, v in extra.items()})
    record = _in_order(record, order)
    if not with_metadata:
        return record, None
    metadata: dict[str, Any] = {"id": record["id"]}
    if "image" in record:
        metadata["image"] = record["image"]
    for name in METADATA_FIELDS:
        if row.get(name) is not None:
            metadata[name] = row[name]
    order = metadata_extra.pop("@order", None)
    metadata.update({_unescape_key(k): v for k, v in metadata_extra.items()})
    return record, _in_order(metadata, order)


def _in_order(record: dict[str, Any], order: list[str] | None) -> dict[str, Any]:
    """`record` with its keys in the source's `order` (keys it does not name keep their place after them)."""
    if not order:
        return record
    return {**{k: record[k] for k in order if k in record}, **record}
