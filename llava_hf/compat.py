"""What differs between the `datasets` releases llava_hf supports (4.0.0 to 5.2.0), in one place.

Everything else in the package uses the API the whole range shares; a difference found between two
releases gets a name here, with the release that introduced it. Compared between 4.0.0, 4.4.2, 5.0.0,
5.1.0 and 5.2.0 and found the same: `load.dataset_module_factory`'s signature and `DatasetModule`'s
fields (hook.py), `table._memory_mapped_arrow_table_from_file`, `MemoryMappedTable.__getstate__`,
`arrow_dataset.query_table` and `table_iter` (reader.py), `utils._filelock.FileLock` as
`builder.FileLock` (locking.py), `BuilderConfig.create_config_id` and the cache path (the same folder on
4.0.0, 5.0.0 and 5.2.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import datasets.builder
from packaging.specifiers import SpecifierSet
from packaging.version import Version

# The releases the test suite runs on (.ci/run: 4.0.0, a middle release and the newest). The upper bound
# is the newest tested release, as in pyproject's pin.
TESTED_DATASETS = SpecifierSet(">=4.0,<5.3")
DATASETS_VERSION = Version(datasets.__version__)

if hasattr(datasets.builder, "Key"):
    Key = datasets.builder.Key
else:

    @dataclass
    class Key:
        """The key of a generated table: `datasets.builder.Key` arrived in datasets 4.4. Before it the builder
        ignores the keys of `_generate_tables`, so any value works; this keeps one spelling for both."""

        original_shard_id: int
        item_or_batch_id: int

        def __str__(self) -> str:
            return str((self.original_shard_id, self.item_or_batch_id))


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE), as huggingface_hub itself decides:
    `constants.is_offline_mode()` since huggingface_hub 1.x, the `constants.HF_HUB_OFFLINE` flag before."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return check() if check is not None else bool(constants.HF_HUB_OFFLINE)


# datasets 4.4 to 5.0 count the rows of each `Key.original_shard_id` in a list indexed by position, so a
# shard that yields no table followed by one that does raises IndexError; 5.1 pads the list. Where it
# matters, a shard whose rows were all skipped yields one empty table.
EMPTY_SHARD_NEEDS_A_TABLE = hasattr(datasets.builder, "Key") and DATASETS_VERSION in SpecifierSet("<5.1")
