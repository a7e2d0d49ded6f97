"""SynthDG: VLT's embedded, procedurally generated domain-generalization benchmark.

Street scenes with exact 19-class label maps (Cityscapes train ids) and instance boxes and masks
for the 8 thing classes, rendered in six domains that share their layouts: ``source`` (the
training style), ``palette`` (other colours and textures for every class), ``fog``, ``night``,
``rain`` and ``snow``. Deterministic from a seed, generated on first use under
``$DETECTRON2_DATASETS/synthdg``. See :mod:`.generate` for the on-disk layout and
:mod:`.register` for the dataset names.

Layout of the package: :mod:`.spec` (what a copy contains), :mod:`.layout` and its parts
(:mod:`.street` the plan and drawing primitives, :mod:`.scenery`, :mod:`.signs`, :mod:`.vehicles`,
:mod:`.people`) draw a scene's geometry and labels; :mod:`.styles`, :mod:`.render` and
:mod:`.weather` paint it in each domain; :mod:`.scene` and :mod:`.generate` write the copy;
:mod:`.register` puts it in Detectron2's catalogs like any other dataset; :mod:`.preview` (not
imported here: it draws with the evaluation package) writes the grid of one scene in every domain.
"""
from .generate import ensure_synthdg, read_manifest, synthdg_dir
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
]
