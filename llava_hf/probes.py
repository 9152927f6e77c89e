"""Refuse `datasets.load_dataset("llava_hf", ...)` when another library calls it only to compare fingerprints.

`ray.data.from_huggingface(ds)` first reloads the dataset by its builder name, as if it were a Hub repo
id: `datasets.load_dataset(ds.info.dataset_name, ds.info.config_name, split=str(ds.split))`, and reads the
Hub's Parquet files when the fingerprints agree. For a llava_hf dataset that call has none of the options
the dataset was prepared with (data_dir, image_dir, cache_dir, ...): it would prepare the config again
with default options (for blip_558k a 27 GB download), or, when such an entry exists, send Ray on to ask
huggingface.co for a "llava_hf" repo. The call cannot be told from a user's by its arguments, so it is told
by its caller: when Ray's fingerprint check is on the stack, llava_hf raises before anything is resolved,
downloaded or prepared. Ray catches the error and reads the dataset it was given, on this node.
"""

from __future__ import annotations

import sys

# (module prefix, function) of the fingerprint checks known to call load_dataset by builder name.
FINGERPRINT_PROBES: tuple[tuple[str, str], ...] = (("ray.data", "list_parquet_urls_from_dataset"),)
# How many frames up the stack are searched (Ray's check calls load_dataset directly: a few frames).
_MAX_DEPTH = 64


class FingerprintProbeRefused(RuntimeError):
    """`datasets.load_dataset("llava_hf", ...)` called by a fingerprint check that must not prepare."""


def fingerprint_probe() -> str | None:
    """`module.function` of the fingerprint check that is calling now, or None."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        module = frame.f_globals.get("__name__", "")
        for prefix, function in FINGERPRINT_PROBES:
            if frame.f_code.co_name == function and (module == prefix or module.startswith(prefix + ".")):
                return f"{module}.{function}"
        frame = frame.f_back
    return None


def refuse_fingerprint_probe() -> None:
    """Raise FingerprintProbeRefused when a known fingerprint check is the caller (see the module docstring)."""
    caller = fingerprint_probe()
    if caller is not None:
        raise FingerprintProbeRefused(
            f'datasets.load_dataset("llava_hf", ...) called by {caller} only to compare fingerprints is '
            "refused: it has none of the dataset's options and would prepare the config again. The dataset "
            "passed to Ray is read as it is."
        )
