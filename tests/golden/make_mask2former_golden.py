"""Write ``tests/golden/mask2former_tiny.pt``: golden tensors of official Mask2Former's semantic
head (MSDeformAttnPixelDecoder + MultiScaleMaskedTransformerDecoder), SetCriterion and
HungarianMatcher at a tiny size, run on CPU. ``tests/vltseg/test_official_checkpoint.py`` loads
the official weights from that file into VLT's head and compares VLT's outputs, losses and
matches with the official ones, without needing the official code.

Usage (the official checkout is read, never copied into this repository)::

    mkdir -p /tmp/m2f_official
    git --git-dir=/work/.mirror/facebookresearch+Mask2Former/repo archive HEAD \\
        | tar -x -C /tmp/m2f_official
    python tests/golden/make_mask2former_golden.py --official /tmp/m2f_official \\
        --revision "$(git --git-dir=/work/.mirror/facebookresearch+Mask2Former/repo rev-parse HEAD)"

How the official code runs here:
  * ``ms_deform_attn_func.py`` imports the compiled CUDA extension ``MultiScaleDeformableAttention``
    at import time. A stand-in module whose ops raise is put into ``sys.modules`` first; the
    official ``MSDeformAttn.forward`` catches the failing CUDA call and falls back to its own
    pure-PyTorch ``ms_deform_attn_core_pytorch`` (its CPU path). The script checks that the
    fallback was taken.
  * ``mask2former/__init__.py`` and ``mask2former/modeling/__init__.py`` (dataset registration,
    the Swin backbone) are skipped: both packages are entered as bare namespaces, and only the
    head, pixel decoder, transformer decoder, criterion and matcher modules are imported.
  * The modules are built with explicit constructor arguments (they are ``@configurable``)
    from ``CONFIG`` below, mapped as official ``from_config`` maps the config keys, except the
    deformable encoder's feed-forward width, which official ``from_config`` hard-codes to 1024
    (VLT: ``MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD``); the tiny model uses 64 to keep
    the file small.

Everything is float32 on CPU with fixed seeds. Weights: the official initialization, then
every parameter moved by ``PERTURB * N(0, 1)`` so that no weight keeps an initial constant (the
deformable offsets and attention weights start at zero), as after training. Run it with the
project's Python (torch, detectron2, fvcore, scipy, torchvision); VLT itself is not imported.

The file (``torch.load(..., weights_only=True)``) holds:
  * ``state_dict``: official key names (``sem_seg_head.*``, ``criterion.empty_weight``);
  * ``config`` (VLT config keys), ``channels``/``strides`` of the input maps, ``image_size``;
  * ``features`` (3 images) and ``targets`` (per image "labels" [N], bool "masks" [N, H, W]);
  * ``outputs`` in evaluation mode: pred_logits, pred_masks, aux_outputs, mask_features,
    encoder_features, multi_scale_features (training mode gives the same, checked here);
  * ``criterion``: ``seed``, ``weight_dict`` and, per case of ``CASES``, ``matcher_indices``
    (the matcher alone on each prediction, torch seeded before each call), ``losses`` (the
    criterion, torch seeded once before it) and ``criterion_indices`` (the matches made inside
    that criterion call, for diagnosis).
"""
import argparse
import os
import subprocess
import sys
import types

import torch
from torch import nn

# Sizes and loss settings, by VLT config key (the official key names where official has one).
CONFIG = {
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5,
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 4,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 2,
    # Official hard-codes 1024.
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
    "MODEL.MASK_FORMER.NHEADS": 4,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.DEC_LAYERS": 4,  # 3 decoder layers + the prediction from the queries
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 8,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.DROPOUT": 0.0,
    "MODEL.MASK_FORMER.DEEP_SUPERVISION": True,
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1,
    "MODEL.MASK_FORMER.CLASS_WEIGHT": 2.0,
    "MODEL.MASK_FORMER.MASK_WEIGHT": 5.0,
    "MODEL.MASK_FORMER.DICE_WEIGHT": 5.0,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 100,
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": 3.0,
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": 0.75,
}
# Heads and sampling points of the deformable encoder. Official from_config takes the heads from
# MODEL.MASK_FORMER.NHEADS (8 in every official config) and hard-codes 4 points; these are also
# VLT's defaults, so the test sets no key for them (their name differs between VLT versions).
ENCODER_HEADS, ENCODER_POINTS = 8, 4
CHANNELS = {"res2": 16, "res3": 24, "res4": 32, "res5": 40}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
# Padded image size: not a multiple of 32, so the maps round up (10x18, 5x9, 3x5, 2x3).
IMAGE_SIZE = (40, 72)
IGNORE_VALUE = 255
BUILD_SEED, DATA_SEED, LOSS_SEED = 0, 1, 2
PERTURB = 0.05
# Criterion cases: which images of the batch go in. Image 1 has no target (all ignored).
CASES = {"with_targets": [0, 2], "with_empty_image": [0, 1, 2]}


def import_official(root: str) -> dict[str, object]:
    """Import the official classes from the checkout at ``root`` (see the module docstring)."""
    package = os.path.join(root, "mask2former")
    if not os.path.isfile(os.path.join(package, "modeling", "criterion.py")):
        raise FileNotFoundError(f"--official {root!r}: no mask2former/modeling/criterion.py there")
    calls = {"cuda_op": 0}

    def unavailable(*args, **kwargs):
        calls["cuda_op"] += 1
        raise RuntimeError("MultiScaleDeformableAttention stand-in: no compiled CUDA op")

    stand_in = types.ModuleType("MultiScaleDeformableAttention")
    stand_in.ms_deform_attn_forward = unavailable
    stand_in.ms_deform_attn_backward = unavailable
    sys.modules["MultiScaleDeformableAttention"] = stand_in
    for name, path in [("mask2former", package), ("mask2former.modeling", package + "/modeling")]:
        namespace = types.ModuleType(name)
        namespace.__path__ = [path]
        sys.modules[name] = namespace
    from mask2former.modeling.criterion import SetCriterion
    from mask2former.modeling.matcher import HungarianMatcher
    from mask2former.modeling.meta_arch.mask_former_head import MaskFormerHead
    from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
    from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import (
        MultiScaleMaskedTransformerDecoder,
    )

    for cls in (MaskFormerHead, MSDeformAttnPixelDecoder, SetCriterion):
        where = os.path.realpath(sys.modules[cls.__module__].__file__)
        if not where.startswith(os.path.realpath(root)):
            raise ImportError(f"{cls.__name__} was imported from {where}, not from {root}")
    return {
        "MaskFormerHead": MaskFormerHead,
        "MSDeformAttnPixelDecoder": MSDeformAttnPixelDecoder,
        "MultiScaleMaskedTransformerDecoder": MultiScaleMaskedTransformerDecoder,
        "SetCriterion": SetCriterion,
        "HungarianMatcher": HungarianMatcher,
        "calls": calls,
    }


class OfficialHeadAndCriterion(nn.Module):
    """The part of official ``MaskFormer`` that holds the head's state: ``sem_seg_head`` and
    ``criterion`` (same attribute names, so the state dict has the official key names)."""

    def __init__(self, official: dict[str, object]):
        super().__init__()
        c = CONFIG
        from detectron2.layers import ShapeSpec

        shapes = {k: ShapeSpec(channels=CHANNELS[k], stride=STRIDES[k]) for k in CHANNELS}
        pixel_decoder = official["MSDeformAttnPixelDecoder"](
            shapes,
            transformer_dropout=c["MODEL.MASK_FORMER.DROPOUT"],
            transformer_nheads=ENCODER_HEADS,
            transformer_dim_feedforward=c["MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD"],
            transformer_enc_layers=c["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS"],
            conv_dim=c["MODEL.SEM_SEG_HEAD.CONVS_DIM"],
            mask_dim=c["MODEL.SEM_SEG_HEAD.MASK_DIM"],
            norm=c["MODEL.SEM_SEG_HEAD.NORM"],
            transformer_in_features=c[
                "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"
            ],
            common_stride=c["MODEL.SEM_SEG_HEAD.COMMON_STRIDE"],
        )
        points = {layer.self_attn.n_points for layer in pixel_decoder.transformer.encoder.layers}
        if points != {ENCODER_POINTS}:
            raise RuntimeError(
                f"official encoder samples {points} points, expected {ENCODER_POINTS}"
            )
        predictor = official["MultiScaleMaskedTransformerDecoder"](
            c["MODEL.SEM_SEG_HEAD.CONVS_DIM"],  # in_channels for "multi_scale_pixel_decoder"
            mask_classification=True,
            num_classes=c["MODEL.SEM_SEG_HEAD.NUM_CLASSES"],
            hidden_dim=c["MODEL.MASK_FORMER.HIDDEN_DIM"],
            num_queries=c["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"],
            nheads=c["MODEL.MASK_FORMER.NHEADS"],
            dim_feedforward=c["MODEL.MASK_FORMER.DIM_FEEDFORWARD"],
            dec_layers=c["MODEL.MASK_FORMER.DEC_LAYERS"] - 1,
            pre_norm=c["MODEL.MASK_FORMER.PRE_NORM"],
            mask_dim=c["MODEL.SEM_SEG_HEAD.MASK_DIM"],
            enforce_input_project=c["MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ"],
        )
        self.sem_seg_head = official["MaskFormerHead"](
            shapes,
            num_classes=c["MODEL.SEM_SEG_HEAD.NUM_CLASSES"],
            pixel_decoder=pixel_decoder,
            ignore_value=IGNORE_VALUE,
            transformer_predictor=predictor,
            transformer_in_feature="multi_scale_pixel_decoder",
        )
        # As official MaskFormer.from_config builds them.
        class_w = c["MODEL.MASK_FORMER.CLASS_WEIGHT"]
        mask_w = c["MODEL.MASK_FORMER.MASK_WEIGHT"]
        dice_w = c["MODEL.MASK_FORMER.DICE_WEIGHT"]
        num_points = c["MODEL.MASK_FORMER.TRAIN_NUM_POINTS"]
        matcher = official["HungarianMatcher"](
            cost_class=class_w, cost_mask=mask_w, cost_dice=dice_w, num_points=num_points
        )
        weight_dict = {"loss_ce": class_w, "loss_mask": mask_w, "loss_dice": dice_w}
        aux = {}
        for i in range(c["MODEL.MASK_FORMER.DEC_LAYERS"] - 1):
            aux.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        weight_dict.update(aux)
        self.criterion = official["SetCriterion"](
            c["MODEL.SEM_SEG_HEAD.NUM_CLASSES"],
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=c["MODEL.MASK_FORMER.NO_OBJECT_WEIGHT"],
            losses=["labels", "masks"],
            num_points=num_points,
            oversample_ratio=c["MODEL.MASK_FORMER.OVERSAMPLE_RATIO"],
            importance_sample_ratio=c["MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO"],
        )


class RecordingMatcher(nn.Module):
    """Wraps a matcher and keeps every assignment it returns, in call order."""

    def __init__(self, matcher: nn.Module):
        super().__init__()
        self.matcher = matcher
        self.calls: list[list[list[torch.Tensor]]] = []

    def forward(self, outputs, targets):
        indices = self.matcher(outputs, targets)
        self.calls.append([[i.clone(), j.clone()] for i, j in indices])
        return indices


def make_features(generator: torch.Generator, batch: int) -> dict[str, torch.Tensor]:
    """Backbone maps of a batch of IMAGE_SIZE images; sizes round up like a strided conv."""
    h, w = IMAGE_SIZE
    return {
        k: torch.randn(batch, CHANNELS[k], -(-h // s), -(-w // s), generator=generator)
        for k, s in STRIDES.items()
    }


def make_targets(generator: torch.Generator, batch: int) -> list[dict[str, torch.Tensor]]:
    """Per image, the targets official MaskFormerSemanticDatasetMapper makes from a label map:
    one binary mask per class present, ignored pixels in no mask. Image 1 is all ignored, so it
    has no target; image 2 lacks class 0, so target indices and class ids differ."""
    num_classes = CONFIG["MODEL.SEM_SEG_HEAD.NUM_CLASSES"]
    h, w = IMAGE_SIZE
    targets = []
    for b in range(batch):
        # Blobs: argmax of smooth random class scores, with an ignored band.
        scores = torch.randn(1, num_classes, h // 8, w // 8, generator=generator)
        if b == 2:
            scores[:, 0] = -1e4
        scores = nn.functional.interpolate(scores, size=(h, w), mode="bilinear")
        labels = scores[0].argmax(0)
        labels[:, -7:] = IGNORE_VALUE
        if b == 1:
            labels[:] = IGNORE_VALUE
        classes = [c for c in labels.unique().tolist() if c != IGNORE_VALUE]
        masks = torch.stack([labels == c for c in classes]) if classes else torch.zeros(
            0, h, w, dtype=torch.bool
        )
        targets.append({"labels": torch.tensor(classes, dtype=torch.int64), "masks": masks})
    return targets


def predictions(out: dict[str, object]) -> dict[str, object]:
    """Detached copies of pred_logits, pred_masks and aux_outputs."""
    return {
        "pred_logits": out["pred_logits"].detach().clone(),
        "pred_masks": out["pred_masks"].detach().clone(),
        "aux_outputs": [
            {k: a[k].detach().clone() for k in ("pred_logits", "pred_masks")}
            for a in out["aux_outputs"]
        ],
    }


def select(out: dict[str, object], images: list[int]) -> dict[str, object]:
    """The predictions of some images of the batch."""
    return {
        "pred_logits": out["pred_logits"][images],
        "pred_masks": out["pred_masks"][images],
        "aux_outputs": [{k: a[k][images] for k in a} for a in out["aux_outputs"]],
    }


def generate(root: str, revision: str) -> dict[str, object]:
    official = import_official(root)
    torch.manual_seed(BUILD_SEED)
    model = OfficialHeadAndCriterion(official)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * PERTURB)
    generator = torch.Generator().manual_seed(DATA_SEED)
    features = make_features(generator, batch=3)
    targets = make_targets(generator, batch=3)
    head = model.sem_seg_head

    head.eval()
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = head.pixel_decoder.forward_features(
            features
        )
        eval_out = predictions(head(features))
    if official["calls"]["cuda_op"] == 0:
        raise RuntimeError("the official MSDeformAttn did not take its CPU fallback")

    # Training mode: official dropout is 0 in the head (MODEL.MASK_FORMER.DROPOUT in the encoder,
    # hard-coded in the decoder), so the predictions must be the evaluation ones.
    head.train()
    train_out = head(features)
    for key in ("pred_logits", "pred_masks"):
        if not torch.equal(train_out[key], eval_out[key]):
            raise RuntimeError(f"official {key} differ between training and evaluation mode")

    criterion = model.criterion
    recorder = RecordingMatcher(criterion.matcher)
    criterion.matcher = recorder
    cases = {}
    for name, images in CASES.items():
        outputs, case_targets = select(train_out, images), [targets[i] for i in images]
        # The matcher alone, on each prediction (final, then auxiliary), torch seeded per call.
        matches = []
        for prediction in [outputs] + outputs["aux_outputs"]:
            torch.manual_seed(LOSS_SEED)
            pair = {k: prediction[k] for k in ("pred_logits", "pred_masks")}
            matches.append([[i, j] for i, j in recorder.matcher(pair, case_targets)])
        # The criterion, torch seeded once: its matcher calls and loss points share the stream.
        recorder.calls = []
        torch.manual_seed(LOSS_SEED)
        losses = criterion(outputs, case_targets)
        cases[name] = {
            "images": images,
            "matcher_indices": matches,
            "losses": {k: v.detach().clone() for k, v in losses.items()},
            "criterion_indices": recorder.calls,
        }
    criterion.matcher = recorder.matcher

    return {
        "source": {
            "repository": "facebookresearch/Mask2Former",
            "revision": revision,
            "torch": str(torch.__version__),
            "generator": "tests/golden/make_mask2former_golden.py",
        },
        "config": CONFIG,
        "channels": CHANNELS,
        "strides": STRIDES,
        "image_size": IMAGE_SIZE,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "features": features,
        "targets": targets,
        "outputs": {
            **eval_out,
            "mask_features": mask_features,
            "encoder_features": encoder_features,
            "multi_scale_features": multi_scale,
        },
        "criterion": {"seed": LOSS_SEED, "weight_dict": dict(criterion.weight_dict),
                      "cases": cases},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of official Mask2Former")
    parser.add_argument(
        "--revision", default="", help="commit of that checkout (recorded in the file)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "mask2former_tiny.pt"),
    )
    args = parser.parse_args()
    revision = args.revision
    if not revision and os.path.isdir(os.path.join(args.official, ".git")):
        revision = subprocess.run(
            ["git", "-C", args.official, "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    torch.set_num_threads(1)
    golden = generate(os.path.abspath(args.official), revision or "unknown")
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")
    for name, case in golden["criterion"]["cases"].items():
        total = sum(v.item() for v in case["losses"].values())
        print(f"  {name}: images {case['images']}, {len(case['losses'])} losses, sum {total:.6f}")


if __name__ == "__main__":
    main()
