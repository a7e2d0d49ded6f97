"""Tiny backbone configs shared by the backbone, weight and parity tests."""

from detectron2.config import get_cfg

from vlt_common.config import add_vlt_common_config


def tiny_cfg(arch="ViT-B-16", **keys):
    """A config for a depth-2, width-64, 2-head trunk of ``arch``; ``keys`` set other
    MODEL.VLT_BACKBONE keys."""
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    bcfg = cfg.MODEL.VLT_BACKBONE
    bcfg.ARCH, bcfg.EMBED_DIM, bcfg.DEPTH, bcfg.NUM_HEADS = arch, 64, 2, 2
    for key, value in keys.items():
        setattr(bcfg, key, value)
    return cfg


def single_cfg(arch="ViT-B-16", **keys):
    return tiny_cfg(arch, OUTPUT="single", OUT_FEATURES=["last_feat"], **keys)
