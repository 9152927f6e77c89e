"""llava_hf: the LLaVA training data as Hugging Face `datasets`.

Importing the package registers "llava_hf" with `datasets.load_dataset`.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from . import hook
from .builder import LlavaBuilder, LlavaConfig
from .catalog import CATALOG, CONFIG_NAMES
from .errors import SourceError
from .features import FEATURES
from .load import load_builder, load_dataset, prepare_report

try:
    __version__ = version("llava_hf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

logging.getLogger("llava_hf").addHandler(logging.NullHandler())

HOOK_INSTALLED: bool = hook.install()

__all__ = [
    "CATALOG",
    "CONFIG_NAMES",
    "FEATURES",
    "HOOK_INSTALLED",
    "LlavaBuilder",
    "LlavaConfig",
    "SourceError",
    "load_builder",
    "load_dataset",
    "prepare_report",
]
