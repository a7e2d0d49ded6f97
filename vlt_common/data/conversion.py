"""The one driver behind every dataset-conversion tool: parallel, atomic, resumable.

- :func:`parallel_imap` runs a function over many items in a ``multiprocessing.Pool`` with a tqdm
  progress bar (in-process when ``workers <= 1``).
- :class:`IdMapper` turns a source dataset's label ids into train ids through a lookup table and
  counts pixels whose id the source label space does not define.
- :func:`convert_label_maps` converts label files to train-id PNGs: each output is written under a
  temporary name and renamed into place, and outputs that are already complete are skipped, so an
  interrupted run finishes where it stopped.
- :func:`write_png` and :func:`write_json` are the atomic writers.

Dataset-specific code only says which files to convert and with which id table
(``vlt_common.data.datasets.prepare``) or how to build COCO records
(``vlt_common.data.datasets.coco_converters``).
"""
import dataclasses
import io
import json
import logging
import multiprocessing
import os
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from vlt_common.utils.atomic import atomic_write_bytes

__all__ = [
    "parallel_imap",
    "IdMapper",
    "ConversionSummary",
    "convert_label_maps",
    "png_is_complete",
    "write_png",
    "write_json",
]

logger = logging.getLogger(__name__)

# Every PNG ends with an empty IEND chunk: length 0, type "IEND", CRC ae426082.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Files named in a warning about unknown label ids (the rest are only counted).
_MAX_FILES_IN_WARNING = 10


def parallel_imap(
    fn: Callable, items: Sequence, *, workers: int, desc: str, ordered: bool = True
) -> Iterator:
    """
    Apply ``fn`` to every item, in a process pool, with a progress bar.

    Args:
        fn (callable): a picklable (module-level) function of one item.
        items (sequence): the inputs.
        workers (int): processes; ``<= 1`` (or fewer than two items) runs in this process: no
            pickling, easy to debug.
        desc (str): progress-bar label.
        ordered (bool): yield results in the order of ``items`` (else as they finish).

    Yields:
        the results of ``fn``.
    """
    bar = tqdm(total=len(items), desc=desc, unit="file", dynamic_ncols=True)
    with bar:
        if workers <= 1 or len(items) < 2:
            for item in items:
                yield fn(item)
                bar.update()
            return
        # Big enough chunks to amortize the inter-process traffic, small enough to balance load.
        chunksize = max(1, min(64, len(items) // (workers * 8)))
        with multiprocessing.Pool(workers) as pool:
            imap = pool.imap if ordered else pool.imap_unordered
            for result in imap(fn, items, chunksize=chunksize):
                yield result
                bar.update()


class IdMapper:
    """
    Map a source label map to train ids with a lookup table.

    Ids listed in the table map to their train id (void classes to the ignore label); ids the
    table does not list are also set to the ignore label, and counted, because they mean the file
    is not in the expected label space.
    """

    def __init__(self, id_to_train_id: Mapping[int, int], ignore_label: int = 255):
        """
        Args:
            id_to_train_id (dict[int, int]): source id -> train id (0..254 or ``ignore_label``).
            ignore_label (int): value of ignored pixels in the output.
        """
        if not id_to_train_id or min(id_to_train_id) < 0:
            raise ValueError(f"id_to_train_id must map non-negative ids, got {id_to_train_id}")
        bad = {k: v for k, v in id_to_train_id.items() if not 0 <= v <= 255}
        if bad:
            raise ValueError(f"train ids must fit in 0..255 (uint8 PNG), got {bad}")
        # -1 marks ids the table does not define.
        self._lut = np.full(max(id_to_train_id) + 1, -1, dtype=np.int16)
        for source_id, train_id in id_to_train_id.items():
            self._lut[source_id] = train_id
        self.ignore_label = ignore_label

    def __call__(self, ids: np.ndarray) -> Tuple[np.ndarray, int]:
        """
        Args:
            ids (np.ndarray): HxW integer source ids.

        Returns:
            tuple[np.ndarray, int]: the HxW uint8 train-id map and the number of pixels whose id
            the table does not define (set to the ignore label).
        """
        ids = ids.astype(np.int64, copy=False)
        in_table = (ids >= 0) & (ids < len(self._lut))
        mapped = np.where(in_table, self._lut[np.where(in_table, ids, 0)], -1)
        unknown = mapped < 0
        num_unknown = int(np.count_nonzero(unknown))
        mapped[unknown] = self.ignore_label
        return mapped.astype(np.uint8), num_unknown


@dataclasses.dataclass
class ConversionSummary:
    """
    What a :func:`convert_label_maps` run did.

    Attributes:
        written (int): outputs written by this run.
        skipped (int): outputs that were already complete and left untouched.
        unknown_ids (dict[str, int]): source file -> pixels with ids outside the source label
            space (set to ignore).
    """

    written: int = 0
    skipped: int = 0
    unknown_ids: Dict[str, int] = dataclasses.field(default_factory=dict)


def png_is_complete(path: str) -> bool:
    """
    Whether ``path`` is a whole PNG file (it ends with the IEND chunk), so a file cut short by a
    tool that does not write atomically is redone rather than trusted.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < len(_PNG_END):
                return False
            f.seek(-len(_PNG_END), os.SEEK_END)
            return f.read() == _PNG_END
    except FileNotFoundError:
        return False


def write_png(path: str, array: np.ndarray) -> None:
    """
    Write a uint8 HxW (grey) or HxWx3 (RGB) array as a PNG, atomically.

    Args:
        path (str): destination; its folder is created if needed.
        array (np.ndarray): uint8 pixels.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"write_png({path}) expects uint8 pixels, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def write_json(path: str, obj) -> None:
    """
    Write ``obj`` as JSON, atomically.

    Args:
        path (str): destination; its folder is created if needed.
        obj: a JSON-serializable object.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj))


@dataclasses.dataclass(frozen=True)
class _LabelJob:
    """Convert one file: read ``src`` with ``reader``, map its ids, write ``dst``."""

    reader: Callable[[str], np.ndarray]
    mapper: IdMapper

    def __call__(self, paths: Tuple[str, str]) -> Tuple[str, int]:
        src, dst = paths
        train_ids, num_unknown = self.mapper(self.reader(src))
        write_png(dst, train_ids)
        return src, num_unknown


def convert_label_maps(
    jobs: Iterable[Tuple[str, str]],
    reader: Callable[[str], np.ndarray],
    id_to_train_id: Mapping[int, int],
    *,
    workers: int = 1,
    desc: str = "convert",
    ignore_label: int = 255,
) -> ConversionSummary:
    """
    Convert label maps to train-id PNGs; resumable and atomic.

    Outputs that are already complete PNGs are skipped (not rewritten); every other output is
    written under a temporary name and renamed into place, so an interrupted run leaves no
    half-written output and a rerun finishes the rest.

    Args:
        jobs (iterable[tuple[str, str]]): (source label file, output PNG) pairs.
        reader (callable): picklable ``reader(path) -> HxW integer ids`` for the source format.
        id_to_train_id (dict[int, int]): the source label space (see :class:`IdMapper`).
        workers (int): processes (see :func:`parallel_imap`).
        desc (str): progress-bar label.
        ignore_label (int): train id of void and unknown pixels.

    Returns:
        ConversionSummary: what was written, skipped, and which sources had unknown ids.
    """
    summary = ConversionSummary()
    todo: List[Tuple[str, str]] = []
    for src, dst in jobs:
        if png_is_complete(dst):
            summary.skipped += 1
        else:
            todo.append((src, dst))
    if summary.skipped:
        logger.info("%s: %d outputs already exist and are kept", desc, summary.skipped)
    job = _LabelJob(reader=reader, mapper=IdMapper(id_to_train_id, ignore_label))
    for src, num_unknown in parallel_imap(job, todo, workers=workers, desc=desc, ordered=False):
        summary.written += 1
        if num_unknown:
            summary.unknown_ids[src] = num_unknown
    if summary.unknown_ids:
        named = sorted(summary.unknown_ids.items())[:_MAX_FILES_IN_WARNING]
        logger.warning(
            f"{desc}: {len(summary.unknown_ids)} label files contain ids outside the source label "
            f"space (set to ignore {ignore_label}), e.g. "
            + ", ".join(f"{path} ({count} pixels)" for path, count in named)
        )
    return summary
