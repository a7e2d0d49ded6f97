"""Data: dataset registration (imported for its side effect: every VLT dataset name is registered,
without file I/O), safe image/label reading (:mod:`.io`) and the dataset-mapper registry."""
from . import datasets, io
from .mapper_registry import DATASET_MAPPER_REGISTRY, build_dataset_mapper

__all__ = ["datasets", "io", "DATASET_MAPPER_REGISTRY", "build_dataset_mapper"]
