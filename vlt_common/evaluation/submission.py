"""Benchmark-server submissions: the Cityscapes and ACDC test servers' file formats.

With ``TEST.SUBMISSION.DIR`` set, ``--eval-only`` writes, for every test dataset, one PNG per
image into ``<DIR>/<dataset>/`` and the archive to upload, ``<DIR>/<dataset>.zip``:

- the PNG holds the official Cityscapes *label ids* (road 7, ..., bicycle 33), mapped from the
  model's train ids with cityscapesscripts' ``labels`` table, at the image's original size;
- Cityscapes (``*_leftImg8bit.png``): ``<city>/<city>_<seq>_<frame>_pred.png``. The server (and
  cityscapesscripts' ``evalPixelLevelSemanticLabeling``) finds a test image's prediction by the
  pattern ``<city>_<seq>_<frame>*.png`` anywhere in the archive;
- ACDC (``rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png``): the same relative path
  and file name as the test image, ``<condition>/<split>/<sequence>/<name>_rgb_anon.png``
  (the archive mirrors ``rgb_anon/``).
"""
import logging
import os
import zipfile

import numpy as np
import tqdm
from cityscapesscripts.helpers.labels import trainId2label
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from vlt_common.data.datasets.builtin_meta import CITYSCAPES_19_CLASSES
from vlt_common.utils.atomic import atomic_write, write_png

__all__ = [
    "SUBMISSION_FORMATS",
    "SubmissionWriter",
    "submission_path",
    "train_ids_to_label_ids",
    "zip_submission",
]

logger = logging.getLogger(__name__)

SUBMISSION_FORMATS = ("auto", "cityscapes", "acdc")
_CITYSCAPES_SUFFIX = "_leftImg8bit.png"
_ACDC_SUFFIX = "_rgb_anon.png"

# Train id (0..18) -> Cityscapes label id, from cityscapesscripts' table; other values map to 0
# ("unlabeled"), which the servers do not count.
_LABEL_IDS = np.zeros(256, dtype=np.uint8)
for _train_id in range(len(CITYSCAPES_19_CLASSES)):
    _LABEL_IDS[_train_id] = trainId2label[_train_id].id


def train_ids_to_label_ids(train_ids):
    """
    Args:
        train_ids (np.ndarray): int HxW map of train ids 0..18.

    Returns:
        np.ndarray: uint8 HxW map of Cityscapes label ids.
    """
    train_ids = np.asarray(train_ids)
    if train_ids.size and (train_ids.min() < 0 or train_ids.max() > 255):
        raise ValueError(f"train ids must lie in 0..255, got {train_ids.min()}..{train_ids.max()}")
    return _LABEL_IDS[train_ids.astype(np.int64)]


def _detect_format(file_name):
    base = os.path.basename(file_name)
    if base.endswith(_CITYSCAPES_SUFFIX):
        return "cityscapes"
    if base.endswith(_ACDC_SUFFIX):
        return "acdc"
    raise ValueError(
        f"{file_name}: no benchmark-server format for this file name; the Cityscapes server takes "
        f"'*{_CITYSCAPES_SUFFIX}' images, the ACDC server '*{_ACDC_SUFFIX}' images"
    )


def submission_path(file_name, fmt="auto"):
    """
    Where the prediction of a test image goes, relative to the submission folder.

    Args:
        file_name (str): the test image.
        fmt (str): "cityscapes", "acdc", or "auto" (from the file name's ending).

    Returns:
        str: e.g. "berlin/berlin_000123_000019_pred.png" or
        "fog/test/GOPR0475/GOPR0475_frame_000247_rgb_anon.png".

    Raises:
        ValueError: the file name does not follow the format's layout (the message names it).
    """
    if fmt not in SUBMISSION_FORMATS:
        raise ValueError(f"TEST.SUBMISSION.FORMAT must be one of {SUBMISSION_FORMATS}, got {fmt!r}")
    if fmt == "auto":
        fmt = _detect_format(file_name)
    base = os.path.basename(file_name)
    if fmt == "cityscapes":
        parts = base[: -len(_CITYSCAPES_SUFFIX)].split("_")
        if not base.endswith(_CITYSCAPES_SUFFIX) or len(parts) < 3:
            raise ValueError(
                f"{file_name}: a Cityscapes test image is named "
                f"<city>_<sequence>_<frame>{_CITYSCAPES_SUFFIX}"
            )
        stem = "_".join(parts)
        return f"{'_'.join(parts[:-2])}/{stem}_pred.png"
    parts = os.path.normpath(file_name).replace("\\", "/").split("/")
    if "rgb_anon" not in parts or not base.endswith(_ACDC_SUFFIX):
        raise ValueError(
            f"{file_name}: an ACDC test image lies at "
            f"rgb_anon/<condition>/<split>/<sequence>/<name>{_ACDC_SUFFIX}"
        )
    rel = parts[len(parts) - parts[::-1].index("rgb_anon"):]
    if len(rel) != 4:
        raise ValueError(
            f"{file_name}: expected rgb_anon/<condition>/<split>/<sequence>/<name>{_ACDC_SUFFIX}, "
            f"found {len(rel)} path parts after rgb_anon"
        )
    return "/".join(rel)


def zip_submission(folder, members, zip_path):
    """
    Pack the files ``members`` (paths relative to ``folder``, "/"-separated) into ``zip_path``
    under those names, in sorted order, with a progress bar. Other files in ``folder`` (e.g.
    from an earlier run on other images) are left out. The archive appears only when complete.
    """

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for arcname in tqdm.tqdm(sorted(members), desc=f"zipping {os.path.basename(zip_path)}"):
                archive.write(os.path.join(folder, *arcname.split("/")), arcname)

    atomic_write(zip_path, write)


class SubmissionWriter(DatasetEvaluator):
    """
    Writes the benchmark-server files of one test dataset (see the module docstring): a label-id
    PNG per image in ``process``, the zip to upload in ``evaluate``. Works without labels (the
    test splits have none) and returns no metrics. Every rank writes its own images; the main
    process checks that every image of the dataset has its file and zips them.
    """

    def __init__(self, dataset_name, output_dir, fmt="auto", distributed=True):
        """
        Args:
            dataset_name (str): a registered dataset.
            output_dir (str): the submission folder (``TEST.SUBMISSION.DIR``); the files go to
                ``<output_dir>/<dataset_name>/`` and ``<output_dir>/<dataset_name>.zip``.
            fmt (str): one of :data:`SUBMISSION_FORMATS` (``TEST.SUBMISSION.FORMAT``).
            distributed (bool): wait for every rank before zipping.

        Raises:
            ValueError: an image of the dataset does not fit the format (checked here, before
                inference starts).
        """
        self._dataset_name = dataset_name
        self._folder = os.path.join(output_dir, dataset_name)
        self._zip_path = os.path.join(output_dir, f"{dataset_name}.zip")
        self._fmt = fmt
        self._distributed = distributed
        files = [d["file_name"] for d in DatasetCatalog.get(dataset_name)]
        self._expected = {submission_path(f, fmt) for f in files}
        if len(self._expected) != len(files):
            raise ValueError(
                f"{dataset_name}: {len(files)} images map to only {len(self._expected)} "
                "submission files (two images share a name)"
            )
        self._bar = None

    def reset(self):
        if self._bar is not None:
            self._bar.close()
        total = len(self._expected) if comm.get_world_size() == 1 else None
        self._bar = tqdm.tqdm(
            total=total, desc=f"submission {self._dataset_name}", unit="image",
            disable=not comm.is_main_process(),
        )

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): with "file_name", "height", "width".
            outputs (list[dict]): "sem_seg": float [K, H, W] scores at the original size.
        """
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            size = (inp["height"], inp["width"])
            if scores.dim() != 3 or tuple(scores.shape[1:]) != size:
                raise ValueError(
                    f"prediction for {inp['file_name']} has shape {tuple(scores.shape)}; the "
                    f"server needs [K, H, W] scores at the image's size (H, W)={size}"
                )
            label_ids = train_ids_to_label_ids(scores.argmax(dim=0).cpu().numpy())
            rel = submission_path(inp["file_name"], self._fmt)
            write_png(os.path.join(self._folder, *rel.split("/")), label_ids)
            if self._bar is not None:
                self._bar.update(1)

    def evaluate(self):
        if self._bar is not None:
            self._bar.close()
        if self._distributed:
            comm.synchronize()
            if not comm.is_main_process():
                return {}
        written = set()
        for dirpath, _, filenames in os.walk(self._folder):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self._folder)
                written.add(rel.replace(os.sep, "/"))
        missing = sorted(self._expected - written)
        if missing:
            raise RuntimeError(
                f"{self._dataset_name}: {len(missing)} of {len(self._expected)} test images have "
                f"no prediction in {self._folder} (e.g. {missing[:3]}); the server rejects an "
                "incomplete submission"
            )
        zip_submission(self._folder, self._expected, self._zip_path)
        logger.info(
            "Submission of %s: %d label-id PNGs in %s, archive to upload: %s",
            self._dataset_name, len(self._expected), self._folder, self._zip_path,
        )
        return {}
