"""Makes `datasets.load_dataset("llava_hf", name, ...)` build with `LlavaBuilder`.

datasets (4.0 and later) has no loading scripts, and registering a packaged module would glob and stat
every file under `data_dir` into the cache key (minutes for a 600K-image folder). Instead the module
factory is wrapped: for the name "llava_hf" it returns our builder module directly, touching no data file;
every other name goes to datasets untouched. This relies on `datasets.load.dataset_module_factory`, so it
is installed only on the datasets versions it was tested with: `TESTED_DATASETS`, datasets 4.0.0 to 5.2.x
(.ci/run runs the suite on the newest, and these hooks' tests on 4.0.0 and 5.0.0; what differs between
the releases is in compat.py). On another version `import llava_hf` warns that the hooks are off.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import os
import re
import sys
import warnings
from functools import cache, wraps
from importlib import resources

import datasets
import datasets.inspect
import datasets.load
from datasets.load import DatasetModule
from packaging.version import Version

from .compat import TESTED_DATASETS

NAME = "llava_hf"
BUILDER_MODULE = "llava_hf.builder"

# Every module whose code decides what a prepared dataset contains. The cache key hashes their code
# (not their comments or docstrings), so a change in any of them gives a new cache entry.
_CONTENT_MODULES = (
    "builder",
    "catalog",
    "convert",
    "errors",
    "features",
    "files",
    "image_collections",
    "images",
    "records",
    "sources",
    "store",
    "zipdir",
)


_HEX64 = re.compile("[0-9a-f]{64}")


def _code_only(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@cache
def module_hash() -> str:
    """Hash of the code that shapes prepared data; part of every cache path. Computed on first use, not
    at import, and once per process. Parsing the modules costs ~0.3 s, so the result is kept in the datasets
    cache under a key of the sources' bytes (and the Python version, whose `ast` it depends on): a later
    process with the same code reads it back in a millisecond; a memo that cannot be read or written is
    recomputed, never trusted half-written."""
    package = resources.files("llava_hf")
    sources = [(name, package.joinpath(f"{name}.py").read_bytes()) for name in _CONTENT_MODULES]
    raw = hashlib.sha256(f"{sys.version_info[0]}.{sys.version_info[1]}".encode())
    for name, text in sources:
        raw.update(name.encode() + b"\0" + hashlib.sha256(text).digest())
    memo = os.path.join(str(datasets.config.HF_DATASETS_CACHE), "llava_hf_code", raw.hexdigest())
    try:
        with open(memo, encoding="ascii") as f:
            known = f.read()
        if _HEX64.fullmatch(known):
            return known
    except (OSError, UnicodeDecodeError):
        pass
    digest = hashlib.sha256()
    for name, text in sources:
        digest.update(name.encode())
        digest.update(_code_only(text.decode("utf-8")).encode())
    value = digest.hexdigest()
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        tmp = f"{memo}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(value)
        os.replace(tmp, memo)
    return value


def __getattr__(name: str) -> str:
    if name == "MODULE_HASH":  # the hash as a module constant, computed when first asked for
        return module_hash()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dataset_module(revision: str | Version | None = None) -> DatasetModule:
    """The module datasets builds "llava_hf" with; a `revision` selects the source repo's revision."""
    importlib.import_module(BUILDER_MODULE)
    builder_kwargs = {"dataset_name": NAME}
    if revision is not None:
        builder_kwargs["revision"] = str(revision)
    return DatasetModule(BUILDER_MODULE, module_hash(), builder_kwargs)


def install() -> bool:
    """Install the hooks (load_dataset("llava_hf") and lazy file opening, see reader.py); False, with a
    warning, on a datasets version outside `TESTED_DATASETS`."""
    original = datasets.load.dataset_module_factory
    if getattr(original, "__llava_hf__", False):
        return True
    if Version(datasets.__version__) not in TESTED_DATASETS:
        warnings.warn(
            f"llava_hf: datasets {datasets.__version__} is outside the tested range {TESTED_DATASETS}, so the "
            f'datasets.load_dataset("llava_hf", ...) hook and the lazy opening of prepared files were not '
            "installed. llava_hf.load_dataset(...) works as usual, with datasets' own file opening.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    from . import probes, reader

    reader.install()

    @wraps(original)
    def dataset_module_factory(path, *args, **kwargs):
        if path == NAME:
            probes.refuse_fingerprint_probe()  # Ray's from_huggingface check: prepare nothing (probes.py)
            revision = kwargs.get("revision", args[0] if args else None)
            return dataset_module(revision)
        return original(path, *args, **kwargs)

    dataset_module_factory.__llava_hf__ = True
    datasets.load.dataset_module_factory = dataset_module_factory
    datasets.inspect.dataset_module_factory = dataset_module_factory
    return True
