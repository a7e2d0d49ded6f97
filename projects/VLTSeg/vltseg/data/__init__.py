"""VLTSeg's data pipeline: the ``"semantic_dg"`` dataset mapper and its augmentations."""
from .dataset_mapper import SemanticDGDatasetMapper, build_semantic_augmentations
from .transforms import PhotometricDistortion, PhotometricDistortionTransform, RandomRescale

__all__ = [
    "SemanticDGDatasetMapper",
    "build_semantic_augmentations",
    "PhotometricDistortion",
    "PhotometricDistortionTransform",
    "RandomRescale",
]
