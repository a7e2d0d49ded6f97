"""SynthDG: VLT's embedded, procedurally generated domain-generalization benchmark.

Street scenes with exact 19-class label maps (Cityscapes train ids) and instance boxes and masks
for the 8 thing classes, rendered in six domains that share their layouts: ``source`` (the
training style), ``palette`` (other colours and textures for every class), ``fog``, ``night``,
``rain`` and ``snow``. Deterministic from a seed, generated on first use under
``$DETECTRON2_DATASETS/synthdg``. See :mod:`.generate` for the on-disk layout and
:mod:`.register` for the dataset names.
"""
from .generate import ensure_synthdg, read_manifest, synthdg_dir
from .preview import write_preview
from .register import load_synthdg, register_synthdg
from .scene import Scene, synthesize_scene
from .spec import DEFAULT_SPEC, DOMAINS, SOURCE_DOMAIN, SPLITS, TARGET_DOMAINS, SynthDGSpec

__all__ = [
    "DEFAULT_SPEC",
    "DOMAINS",
    "SOURCE_DOMAIN",
    "SPLITS",
    "TARGET_DOMAINS",
    "Scene",
    "SynthDGSpec",
    "ensure_synthdg",
    "load_synthdg",
    "read_manifest",
    "register_synthdg",
    "synthdg_dir",
    "synthesize_scene",
    "write_preview",
]
