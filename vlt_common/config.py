"""Config keys shared by VLTSeg and VLTDet: backbone, fine-tuning mode, solver, DG evaluation.

Call :func:`add_vlt_common_config` on a Detectron2 ``CfgNode`` before merging a VLT yaml file.
Keys follow Detectron2's conventions; every key has a comment that states its meaning and units.

The projects (VLTSeg, VLTDet, a user's) own their keys: each adds them with its own
``add_*_config`` and announces that function with :func:`register_project_config` when it is
imported, so ``vlt_common`` never imports a project. ``vlt_common.engine.get_vlt_cfg`` applies
the registered functions; ``train_net.py`` imports the projects it serves.
"""
from typing import Callable, Dict

from detectron2.config import CfgNode as CN

__all__ = ["add_vlt_common_config", "register_project_config", "registered_project_configs"]

# Project name -> its add_*_config(cfg), in the order the projects were imported.
_PROJECT_CONFIGS: Dict[str, Callable] = {}


def register_project_config(name: str, add_config: Callable) -> None:
    """
    Announce a project's ``add_*_config(cfg)`` so that ``get_vlt_cfg`` adds its keys.

    A project's function adds only new keys (its own namespace); it must not change a value that
    Detectron2 or another project defines (the project's ``Base-*.yaml`` sets those), so that no
    task changes the defaults of another.

    Args:
        name (str): the project's package name (e.g. "vltseg").
        add_config (callable): ``add_config(cfg)`` edits a ``CfgNode`` in place.
    """
    if not callable(add_config):
        raise TypeError(f"register_project_config({name!r}): {add_config!r} is not callable")
    _PROJECT_CONFIGS[name] = add_config


def registered_project_configs() -> Dict[str, Callable]:
    """The registered projects' ``add_*_config`` functions (name -> function), in order."""
    return dict(_PROJECT_CONFIGS)


def add_vlt_common_config(cfg):
    """
    Add the keys under ``MODEL.VLT_BACKBONE``, the VLT solver keys and the DG-evaluation keys.

    Args:
        cfg (CfgNode): a Detectron2 config (e.g. from ``detectron2.config.get_cfg()``); edited
            in place.
    """
    # ---------------------------------------------------------------------------------------------
    # Vision-foundation-model ViT backbone (vlt_common.modeling.backbone.CLIPViTBackbone)
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.VLT_BACKBONE = CN()
    # Which trunk to build. open_clip model names ("ViT-B-16", "ViT-L-14", "EVA02-B-16",
    # "EVA02-L-14") build the visual tower of that CLIP model; "timm:<name>" builds a timm ViT
    # (e.g. "timm:vit_large_patch14_dinov2", "timm:samvit_base_patch16",
    # "timm:vit_large_patch16_224.mae", "timm:vit_base_patch16_224.augreg_in21k_ft_in1k").
    cfg.MODEL.VLT_BACKBONE.ARCH = "ViT-B-16"
    # Local path of the pre-trained trunk weights, in the format users download: OpenAI CLIP
    # TorchScript ".pt", open_clip state dicts (".bin", ".pt", ".safetensors"), EVA-CLIP
    # "EVA02_CLIP_*_s4B.pt", or timm checkpoints. "" keeps the random initialization.
    # (MODEL.WEIGHTS, loaded afterwards, is a whole-model Detectron2 checkpoint.)
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ""
    # Shrink the architecture (tiny demo and test models): width, number of blocks and attention
    # heads of the trunk; 0 keeps the architecture's own value. Pre-trained weights of the full
    # model do not fit a shrunk trunk.
    cfg.MODEL.VLT_BACKBONE.EMBED_DIM = 0
    cfg.MODEL.VLT_BACKBONE.DEPTH = 0
    cfg.MODEL.VLT_BACKBONE.NUM_HEADS = 0
    # Output layout: "multiscale" gives four maps res2..res5 at strides 4/8/16/32 (for
    # Mask2Former); "single" gives one map "last_feat" at the patch stride (for ViTDet's
    # SimpleFeaturePyramid).
    cfg.MODEL.VLT_BACKBONE.OUTPUT = "multiscale"
    # 0-based indices of the blocks whose tokens form res2..res5 in "multiscale" mode. Empty:
    # the default for the depth (3/5/7/11 for 12 blocks, 9/14/19/23 for 24 blocks, evenly spread
    # otherwise).
    cfg.MODEL.VLT_BACKBONE.OUT_INDICES = []
    # Names of the maps to return (a subset of res2..res5, or ["last_feat"] for "single").
    cfg.MODEL.VLT_BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # How "multiscale" mode rescales the four patch-stride maps to strides p/4, p/2, p, 2p:
    #   "learnable": ViTDet's paths (transposed convolutions for x4 / x2, max-pooling for x0.5;
    #                12.6M parameters at width 1024), VLTSeg's choice;
    #   "interpolate": bilinear interpolation by x4, x2, x1, x0.5 with no parameters, as official
    #                Rein does (its frozen and Rein configs; the Rein configs here set it).
    cfg.MODEL.VLT_BACKBONE.NECK = "learnable"
    # Patch size the model runs at. 16 resamples the patch-embedding kernel of patch-14 models
    # (ViT-L/14, EVA02-L/14, DINOv2) to 16x16, as Rein and EVA-02 detection do, so that strides
    # are exactly 4/8/16/32. 0 keeps the pre-trained patch size (strides then scale by p/16).
    cfg.MODEL.VLT_BACKBONE.PATCH_SIZE = 16
    # How a pre-trained patch kernel of another size is converted to PATCH_SIZE: "pinv" (timm's
    # resample_patch_embed, FlexiViT's pseudo-inverse: tokens keep their scale) or "interpolate"
    # (bicubic interpolation of the kernel, Rein's official DINOv2 conversion; its tokens are
    # ~1.3x larger for 14 -> 16). Rein's configs use "interpolate".
    cfg.MODEL.VLT_BACKBONE.PATCH_RESAMPLE = "pinv"
    # Grid [rows, columns] of the stored position embeddings: the checkpoint's grid is resized to
    # it once at load time (bicubic, no antialias), as Rein converts DINOv2's 37x37 to [32, 32]
    # for 512 px crops at patch 16. [] keeps the pre-training grid. Either way the embeddings are
    # interpolated at run time to inputs of another grid (DINOv2 trunks: DINOv2's own formula).
    cfg.MODEL.VLT_BACKBONE.POS_EMBED_GRID = []
    # Stochastic depth rate of the last block (linearly increasing over the blocks).
    cfg.MODEL.VLT_BACKBONE.DROP_PATH_RATE = 0.0
    # Recompute the blocks' activations in backward to save memory (slower).
    cfg.MODEL.VLT_BACKBONE.GRAD_CHECKPOINT = False
    # Keep the image tower's final norm and CLIP projection (ln_post/proj, timm's norm/head),
    # loaded from PRETRAINED and trainable, and run every block: DenseCLIP's pixel embeddings
    # for VLTSeg's text head (MODEL.VLTSEG.TEXT_HEAD), which requires it. False strips them.
    cfg.MODEL.VLT_BACKBONE.CLIP_HEAD = False
    # Blocks to freeze when FINETUNE is "full": 0 trains everything; N > 0 freezes the patch and
    # position embeddings and the first N blocks; -1 freezes the whole trunk.
    cfg.MODEL.VLT_BACKBONE.FREEZE_BLOCKS = 0
    # Fine-tuning mode (one switch for the comparison study):
    #   "full": fine-tune the trunk (VLTSeg), subject to FREEZE_BLOCKS;
    #   "frozen": the trunk is frozen, only the neck and the head train;
    #   "rein": the trunk is frozen and Rein adapters (MODEL.VLT_BACKBONE.REIN) train;
    #   "frozen_warmup": frozen for SOLVER.FROZEN_BACKBONE_ITERS iterations, then "full".
    cfg.MODEL.VLT_BACKBONE.FINETUNE = "full"

    # Rein ("Stronger, Fewer, & Superior", CVPR 2024), used when FINETUNE is "rein".
    cfg.MODEL.VLT_BACKBONE.REIN = CN()
    # Number of learnable tokens per layer (m in the paper).
    cfg.MODEL.VLT_BACKBONE.REIN.NUM_TOKENS = 100
    # Rank of the low-rank token factorization T = A B (r in the paper).
    cfg.MODEL.VLT_BACKBONE.REIN.RANK = 16
    # Initial value of the learnable scale applied to the refinement (official: 1e-3).
    cfg.MODEL.VLT_BACKBONE.REIN.SCALE_INIT = 1e-3
    # (Linking Rein's tokens to the decoder queries is VLTSeg's: MODEL.VLTSEG.REIN.*.)

    # ---------------------------------------------------------------------------------------------
    # Solver (vlt_common.solver); Detectron2's SOLVER keys keep their meaning.
    # ---------------------------------------------------------------------------------------------
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # lr multiplier of backbone parameters (ignored when SOLVER.LAYER_DECAY < 1).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Layer-wise lr decay rate (ViTDet/BEiT): a backbone parameter of layer id l gets
    # lr * LAYER_DECAY ** (num_layers + 1 - l); 1.0 disables it.
    cfg.SOLVER.LAYER_DECAY = 1.0
    # Weight decay of position embeddings, cls tokens, query and level embeddings.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Power of the "WarmupPolyLR" schedule: lr * (1 - iter / max_iter) ** POWER.
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # With MODEL.VLT_BACKBONE.FINETUNE "frozen_warmup": iterations with the trunk frozen.
    cfg.SOLVER.FROZEN_BACKBONE_ITERS = 0
    # Gradient accumulation: each iteration (one optimizer step) runs this many forward/backward
    # passes of SOLVER.IMS_PER_BATCH / ACCUMULATION_STEPS images (over all processes) and steps
    # once on the summed, 1/ACCUMULATION_STEPS-scaled gradients. SOLVER.IMS_PER_BATCH stays the
    # batch of one optimizer step, and MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD and
    # TEST.EVAL_PERIOD count optimizer steps. E.g. the paper's batch 16 on 2 GPUs:
    # IMS_PER_BATCH 16, ACCUMULATION_STEPS 4 (2 images per GPU per pass). 1 disables it.
    cfg.SOLVER.ACCUMULATION_STEPS = 1

    # ---------------------------------------------------------------------------------------------
    # Data (vlt_common.data.mapper_registry)
    # ---------------------------------------------------------------------------------------------
    # Registered dataset mapper (vlt_common.data.DATASET_MAPPER_REGISTRY) used for training and
    # testing: "semantic_dg" (VLTSeg, set in Base-VLTSeg.yaml), "detection_lsj" (VLTDet, set in
    # Base-VLTDet.yaml). "" uses Detectron2's own DatasetMapper.
    cfg.INPUT.DATASET_MAPPER_NAME = ""

    # ---------------------------------------------------------------------------------------------
    # Domain-generalization evaluation (vlt_common.evaluation)
    # ---------------------------------------------------------------------------------------------
    cfg.TEST.DG = CN()
    # Test dataset measured in the source domain: the denominator of rPD. "" uses the first
    # entry of DATASETS.TEST.
    cfg.TEST.DG.SOURCE_DATASET = ""
    # Prediction overlays written per test domain (0 disables them).
    cfg.TEST.DG.NUM_VIS = 4
    # Test datasets evaluated at half their label resolution: labels resized to (H // 2, W // 2)
    # with nearest neighbours, predictions bilinearly. Official Rein evaluates Mapillary so
    # (its "half" validation set; the Rein configs list "mapillary_val"); empty: full resolution.
    cfg.TEST.DG.HALF_RESOLUTION_DATASETS = []
    # mIoU of a class absent from a test set's ground truth: "nan" leaves it out of the mean
    # (Detectron2's SemSegEvaluator); "zero" counts it as IoU 0 when it was predicted, as the
    # official cityscapesscripts evaluation and the benchmark servers do (used by the configs that
    # target paper / server numbers). Printed in the DG report.
    cfg.TEST.MIOU_ABSENT_CLASSES = "nan"

    # Benchmark-server submissions (vlt_common.evaluation.submission).
    cfg.TEST.SUBMISSION = CN()
    # Folder for the test servers' files: every dataset of DATASETS.TEST gets label-id PNGs in
    # <DIR>/<dataset>/ and the archive to upload, <DIR>/<dataset>.zip. "" writes none.
    cfg.TEST.SUBMISSION.DIR = ""
    # "cityscapes" (<city>/<city>_<seq>_<frame>_pred.png), "acdc"
    # (<condition>/<split>/<sequence>/<name>_rgb_anon.png) or "auto" (from the image names).
    cfg.TEST.SUBMISSION.FORMAT = "auto"
