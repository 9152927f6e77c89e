"""llava_hf: the LLaVA training data as Hugging Face `datasets`.

Importing the package registers "llava_hf" with `datasets.load_dataset`.
"""

import logging

from . import hook, reader
from ._version import __version__ as __version__
from .builder import LlavaBuilder, LlavaConfig
from .catalog import CATALOG, CONFIG_NAMES
from .errors import SourceError
from .failures import PrepareError, PrepareInterrupted
from .features import FEATURES, MULTI_IMAGE_FEATURES
from .files import as_multi_image
from .formats import export_for_trainer, to_llamafactory, to_llava, to_messages, to_trl
from .hub import export, push_to_hub
from .integrity import DamagedEntry, PreparedCheck
from .load import load_builder, load_dataset, prepare_report, verify_prepared
from .preview import write_preview
from .recipes import BUILTIN_RECIPES, MixReport, Recipe, RecipeError, load_recipe, mix, resolve, write_mix
from .stats import compute_stats, stats_markdown, write_histograms, write_stats
from .verify import VerifyReport, verify

logging.getLogger("llava_hf").addHandler(logging.NullHandler())

HOOK_INSTALLED: bool = hook.install()
reader.freeze_gc_across_fork()

__all__ = [
    "BUILTIN_RECIPES",
    "CATALOG",
    "CONFIG_NAMES",
    "DamagedEntry",
    "FEATURES",
    "HOOK_INSTALLED",
    "MULTI_IMAGE_FEATURES",
    "LlavaBuilder",
    "LlavaConfig",
    "MixReport",
    "PrepareError",
    "PrepareInterrupted",
    "PreparedCheck",
    "Recipe",
    "RecipeError",
    "SourceError",
    "VerifyReport",
    "as_multi_image",
    "compute_stats",
    "export",
    "export_for_trainer",
    "load_builder",
    "load_dataset",
    "load_recipe",
    "mix",
    "prepare_report",
    "push_to_hub",
    "resolve",
    "stats_markdown",
    "to_llamafactory",
    "to_llava",
    "to_messages",
    "to_trl",
    "verify",
    "verify_prepared",
    "write_histograms",
    "write_mix",
    "write_preview",
    "write_stats",
]
