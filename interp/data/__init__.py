"""Stage 0 of the data path, prompts. The dataset registry: named benchmark datasets, generic files and the built-in demo set → :class:`Record` s.

Files come from the mirror directory in ``$ANYDEPTH_DATA`` (layout ``<mirror>/<folder>/<file>``) or are
downloaded from their pinned public URL into ``$ANYDEPTH_CACHE/datasets`` (default ``~/.cache/anydepth``),
sha256-checked either way.
"""

from interp.data.fetch import CACHE_ENV, DATA_ENV, FileSpec
from interp.data.loaders import load_file
from interp.data.records import BENIGN, HARMFUL, LABELS, DatasetInfo, Record
from interp.data.registry import dataset_names, list_datasets, load_dataset, verify_dataset


def load_demo_set() -> list[Record]:
    """The built-in demo set (harmful requests and topic-matched benign twins); needs no external data."""
    return load_dataset("demo")


__all__ = [
    "BENIGN", "CACHE_ENV", "DATA_ENV", "HARMFUL", "LABELS", "DatasetInfo", "FileSpec", "Record",
    "dataset_names", "list_datasets", "load_dataset", "load_demo_set", "load_file", "verify_dataset",
]
