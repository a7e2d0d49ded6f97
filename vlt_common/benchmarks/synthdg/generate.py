"""Writing SynthDG to disk: on first use, atomically, and safely when several processes ask at once.

Layout of a copy (``<root>/synthdg``)::

    manifest.json                         spec + per split: domains, scenes, instance annotations
    labels/<split>/<index>.png            uint8 train ids (shared by every domain of the scene)
    images/<domain>/<split>/<index>.jpg   RGB renderings

The copy is built in a temporary folder next to it and renamed into place when complete, so
``<root>/synthdg`` either does not exist or is whole. An exclusive ``fcntl`` lock on
``<root>/.synthdg.lock`` makes concurrent callers (e.g. the ranks of a DDP job on one machine)
wait for the one that generates, then read its copy.
"""
import fcntl
import glob
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time

from PIL import Image

from vlt_common.data.prepare.conversion import parallel_imap

from .scene import synthesize_scene
from .spec import DEFAULT_SPEC, SPLITS

__all__ = ["ensure_synthdg", "read_manifest", "synthdg_dir", "image_path", "label_path"]

logger = logging.getLogger(__name__)

_DIRNAME = "synthdg"
_MANIFEST = "manifest.json"
_LOCK = ".synthdg.lock"
_TMP_PREFIX = ".synthdg-tmp-"
# JPEG keeps a default copy around 40 MB (PNG of the noisy renderings would be ~5x larger);
# libjpeg output is deterministic for the same pixels and settings.
_JPEG_QUALITY = 92

def synthdg_dir(root):
    """The folder of the SynthDG copy under a datasets root."""
    return os.path.join(root, _DIRNAME)

def image_path(split, domain, index):
    """Path of a rendering, relative to the copy's folder."""
    return os.path.join("images", domain, split, f"{index:05d}.jpg")

def label_path(split, index):
    """Path of a label map, relative to the copy's folder."""
    return os.path.join("labels", split, f"{index:05d}.png")

def read_manifest(directory, spec=None):
    """
    Read a complete copy's manifest.

    Args:
        directory (str): the copy's folder (``<root>/synthdg``).
        spec (SynthDGSpec or None): if given, the copy must have been made from it.

    Returns:
        dict: the manifest, or None when ``directory`` does not exist.

    Raises:
        RuntimeError: the folder exists but is not a complete copy, or was made from another
            spec; the message names the folder and says how to fix it.
    """
    if not os.path.isdir(directory):
        return None
    path = os.path.join(directory, _MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise RuntimeError(
            f"{directory} exists but has no {_MANIFEST}, so it is not a complete SynthDG copy "
            "(copies are renamed into place only when complete). Delete it to regenerate."
        ) from e
    except json.JSONDecodeError as e:
        raise RuntimeError(
            f"{path} is not valid JSON ({e}); delete {directory} to regenerate"
        ) from e
    if spec is not None and manifest.get("spec") != spec.to_dict():
        raise RuntimeError(
            f"The SynthDG copy in {directory} was generated from spec {manifest.get('spec')}, "
            f"but {spec.to_dict()} was requested. Delete the folder or use another datasets root."
        )
    return manifest

def ensure_synthdg(root, spec=DEFAULT_SPEC, num_workers=None):
    """
    Return the folder of the SynthDG copy under ``root``, generating it first if needed.

    Safe to call from several processes at once: one generates while the others wait on a lock
    file, then all read the same complete copy.

    Args:
        root (str): datasets root (e.g. ``$DETECTRON2_DATASETS``); created if missing.
        spec (SynthDGSpec): what to generate.
        num_workers (int or None): generator processes; None uses every available core.
            Daemonic processes (e.g. data-loader workers) generate in-process.

    Returns:
        str: ``<root>/synthdg``.
    """
    directory = synthdg_dir(root)
    if read_manifest(directory, spec) is not None:
        return directory
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, _LOCK), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Another process is generating SynthDG in %s; waiting for it", root)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if read_manifest(directory, spec) is not None:
                return directory
            # Left-overs of a generator that was killed; nobody else can be writing them now.
            for stale in glob.glob(os.path.join(root, _TMP_PREFIX + "*")):
                logger.info("Removing incomplete SynthDG folder %s", stale)
                shutil.rmtree(stale)
            tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root)
            try:
                _generate(tmp, spec, num_workers)
                os.rename(tmp, directory)
            finally:
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return directory

def _generate(out_dir, spec, num_workers):
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0))
    if multiprocessing.current_process().daemon:
        num_workers = 1  # daemonic processes may not have children
    tasks = []
    for split in SPLITS:
        os.makedirs(os.path.join(out_dir, "labels", split))
        for domain in spec.domains(split):
            os.makedirs(os.path.join(out_dir, "images", domain, split))
        tasks += [(out_dir, spec, split, i) for i in range(spec.num_scenes(split))]
    logger.info(
        "Generating SynthDG (%d scenes, %dx%d, seed %d) in %s with %d processes",
        len(tasks), spec.height, spec.width, spec.seed, out_dir, num_workers,
    )
    start = time.perf_counter()
    splits = {split: {"domains": list(spec.domains(split)), "scenes": []} for split in SPLITS}
    for split, record in parallel_imap(_write_scene, tasks, workers=num_workers, desc="SynthDG"):
        splits[split]["scenes"].append(record)
    manifest = {"spec": spec.to_dict(), "splits": splits}
    # Written last: a folder with a manifest is complete (and the rename publishes it at once).
    with open(os.path.join(out_dir, _MANIFEST), "w") as f:
        json.dump(manifest, f)
    logger.info("SynthDG generated in %.1f s", time.perf_counter() - start)

def _write_scene(task):
    """Render one scene into ``out_dir``; returns (split, manifest record)."""
    out_dir, spec, split, index = task
    scene = synthesize_scene(spec, split, index, spec.domains(split))
    Image.fromarray(scene.label).save(os.path.join(out_dir, label_path(split, index)))
    for domain, image in scene.images.items():
        path = os.path.join(out_dir, image_path(split, domain, index))
        Image.fromarray(image).save(path, quality=_JPEG_QUALITY)
    return split, {"index": index, "annotations": scene.annotations}
