"""Registry of dataset mappers, so that a config key (``INPUT.DATASET_MAPPER_NAME``) picks the
mapper instead of an if-chain in ``train_net.py``."""
from detectron2.data import DatasetMapper
from detectron2.utils.registry import Registry

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper"]

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers: callables that turn one dataset dict into the model's input dict.

A registered object is called as ``obj(cfg, is_train)`` (a ``@configurable`` class works) and must
return a callable ``mapper(dataset_dict) -> dict``.
"""


def build_dataset_mapper(cfg, is_train):
    """
    Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` ("": Detectron2's
    ``DatasetMapper``).

    Args:
        cfg (CfgNode): the config.
        is_train (bool): training (augmentation, targets) or inference.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if not name:
        return DatasetMapper(cfg, is_train)
    try:
        mapper_cls = DATASET_MAPPER_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered mapper; registered: "
            f"{sorted(k for k, _ in DATASET_MAPPER_REGISTRY)}"
        ) from e
    return mapper_cls(cfg, is_train)
