"""A Detectron2 checkpointer whose files are never half-written.

``kill -9`` during a save must not leave a truncated ``model_XXXX.pth`` that ``last_checkpoint``
points to: each file is written under a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), and ``last_checkpoint`` is re-tagged only after that.
"""
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from vlt_common.utils.atomic import atomic_write, atomic_write_bytes

__all__ = ["AtomicCheckpointer"]

logger = logging.getLogger(__name__)


class AtomicCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` with atomic ``save`` and ``tag_last_checkpoint``, and a
    clear error when ``MODEL.WEIGHTS`` names a file that does not exist.
    """

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def load(self, path, *args, **kwargs):
        # URLs ("detectron2://...", "https://...") are resolved by the path manager.
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS: checkpoint file {path!r} does not exist; expected a Detectron2 "
                "checkpoint (.pth written by VLT, or a model-zoo .pkl)"
            )
        return super().load(path, *args, **kwargs)
