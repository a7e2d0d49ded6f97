"""The one way VLT builds a config: Detectron2's defaults, vlt_common's keys and the keys of every
imported project (``vlt_common.config.register_project_config``).

``vlt_common`` imports no project: the entry point imports the projects it serves (``train_net.py``
imports ``vltseg`` and ``vltdet``; a user's project registers its own ``add_*_config`` the same
way), and each project registers its config keys, models and mappers when imported.
"""
import logging
import os

import torch
from detectron2.config import get_cfg as _get_d2_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vlt_common.config import add_vlt_common_config, registered_project_configs
from vlt_common.data.corruptions import register_corrupted_datasets

__all__ = ["get_vlt_cfg", "setup_cfg"]

logger = logging.getLogger(__name__)

# Top-level logger names of VLT's packages and tools.
VLT_LOGGERS = ("vlt_common", "vltseg", "vltdet", "vlt")


def get_vlt_cfg():
    """
    Returns:
        CfgNode: Detectron2's default config with the keys of vlt_common and of every imported
        project (``import vltseg`` adds VLTSeg's, ``import vltdet`` VLTDet's), so that any yaml of
        those projects merges into it.
    """
    cfg = _get_d2_cfg()
    add_vlt_common_config(cfg)
    for add_config in registered_project_configs().values():
        add_config(cfg)
    return cfg


def _merge_file(cfg, path):
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        raise KeyError(
            f"{path}: {e.args[0] if e.args else e}; the projects whose keys are registered: "
            f"{sorted(registered_project_configs())} (a project adds its keys when imported)"
        ) from e


def _check_overrides(cfg, opts):
    """Reject command-line overrides that are malformed or name a key no namespace defines
    (yacs would only assert)."""
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {len(opts)} items: {opts}")
    for key in opts[0::2]:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise KeyError(f"Unknown config key {key!r} on the command line")
            node = node[part]


def setup_cfg(args, *, log=True):
    """
    Build the frozen config of a run from command-line arguments, as Detectron2's tools do.

    Args:
        args (argparse.Namespace): with ``config_file`` and ``opts`` (see
            ``detectron2.engine.default_argument_parser``).
        log (bool): also run ``default_setup`` (logger, output folder, config dump, seeds).

    Returns:
        CfgNode

    Raises:
        KeyError: a key in the file or in ``opts`` that no namespace defines (yacs names it).
        FileNotFoundError: the config file does not exist.
    """
    cfg = get_vlt_cfg()
    if args.config_file:
        if not os.path.isfile(args.config_file):
            raise FileNotFoundError(f"--config-file: {args.config_file!r} does not exist")
        _merge_file(cfg, args.config_file)
    _check_overrides(cfg, args.opts)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE=cpu).")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    # Corrupted test domains are registered now, so that a bad name fails before training.
    register_corrupted_datasets(cfg.DATASETS.TEST)
    if log:
        default_setup(cfg, args)
        # default_setup configures Detectron2's loggers only; VLT's report, progress and
        # warnings go through these, to the console and to OUTPUT_DIR/log.txt.
        for name in VLT_LOGGERS:
            setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name=name)
    return cfg
