"""Data: safe image/label reading (:mod:`.io`), the dataset-mapper registry, the checks run before
training (:mod:`.checks`), offline preparation (:mod:`.prepare`) and dataset registration
(:mod:`.datasets`: importing it registers every downloaded dataset's names, without file I/O).

Importing this package registers nothing: a model that uses a mapper does not fill the catalogs.
:mod:`vlt_common.engine` (and so ``train_net.py`` and the tools) imports :mod:`.datasets` and
SynthDG's registration."""
from . import io
from .mapper_registry import DATASET_MAPPER_REGISTRY, build_dataset_mapper

__all__ = ["io", "DATASET_MAPPER_REGISTRY", "build_dataset_mapper"]
