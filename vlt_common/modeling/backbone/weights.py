"""
Loading pre-trained trunk weights from the files users download.

Supported files (detected from their content, not their names):

- OpenAI CLIP TorchScript archives (``ViT-B-16.pt``, ``ViT-L-14.pt``; weights in fp16);
- ``torch.save`` pickles: open_clip state dicts (``.bin``, ``.pt``), EVA-CLIP's
  ``EVA02_CLIP_*_s*B.pt``, timm / DINOv2 / MAE / SAM ``.pth`` files, optionally wrapped under
  ``"state_dict"``, ``"model"`` or ``"module"`` and with DDP's ``module.`` prefix;
- ``.safetensors`` files (open_clip and timm on the Hugging Face hub).

:func:`~.conversion.convert_embeddings` converts the patch kernel and the position embeddings to
the trunk's shapes (in float32), the trunk's :class:`~.trunk_adapter.TrunkAdapter` maps the keys
to the trunk's names; this module reads the file, checks shapes and reports what did not load.
Unreadable files raise errors that name the file and say what is wrong with it (a directory, a
truncated safetensors file or zip archive: usually an incomplete download).
"""
import json
import logging
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from tabulate import tabulate
from torch import nn

from .conversion import convert_embeddings
from .trunk_adapter import get_trunk_adapter

__all__ = ["TrunkLoadReport", "read_checkpoint", "load_trunk_state_dict"]

logger = logging.getLogger(__name__)

# Wrappers under which training scripts store the weights, in the order they are tried.
_STATE_DICT_WRAPPERS = ("state_dict", "model", "module")
# Rows of the missing / unexpected table shown before it is cut.
_MAX_TABLE_ROWS = 40
# The first bytes of a zip archive (torch.save, TorchScript) and the hint for a broken file.
_ZIP_MAGIC = b"PK\x03\x04"
_INCOMPLETE_HINT = "the file looks truncated: is the download complete? Download it again"


@dataclass
class TrunkLoadReport:
    """What :func:`load_trunk_state_dict` did with a checkpoint (trunk-relative key names)."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped_head: List[str] = field(default_factory=list)


def read_checkpoint(path: str, *, expected: str = "") -> Tuple[Dict[str, torch.Tensor], str]:
    """
    Read the tensors of a checkpoint file.

    Args:
        path (str): local file.
        expected (str): what should be at ``path``, for the error message if it is missing
            (e.g. "the OpenAI CLIP ViT-B-16.pt or an open_clip checkpoint").

    Returns:
        tuple[dict[str, Tensor], str]: the flat state dict (CPU tensors, wrappers and DDP's
        ``module.`` prefix removed) and the format, one of ``"torchscript"``, ``"safetensors"``,
        ``"torch"``.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        IsADirectoryError: ``path`` is a directory.
        ValueError: the file is truncated, in no supported format or holds no state dict.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"Pre-trained weights path '{path}' is a directory, not a checkpoint file"
            + (f"; expected {expected}." if expected else ".")
        )
    if not os.path.isfile(path):
        hint = f"; expected {expected} there" if expected else ""
        raise FileNotFoundError(f"Pre-trained weights not found at '{path}'{hint}.")
    if _is_torchscript(path):
        # OpenAI's CLIP releases are TorchScript archives; only their weights are used.
        state_dict, fmt = torch.jit.load(path, map_location="cpu").state_dict(), "torchscript"
    elif _safetensors_header(path) is not None:
        try:
            state_dict, fmt = load_safetensors(path, device="cpu"), "safetensors"
        except SafetensorError as e:
            raise ValueError(
                f"Cannot read the safetensors file '{path}' ({e}); {_INCOMPLETE_HINT}."
            ) from e
    else:
        state_dict, fmt = _find_state_dict(_torch_load(path), path), "torch"
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict), fmt


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # torch.jit.save writes the model's code next to the pickled data; torch.save does not.
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _torch_load(path: str):
    """``torch.load`` of a torch.save'd file, with errors that name the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    error = None
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        error = f"a zip archive without its central directory; {_INCOMPLETE_HINT}"
    elif head[8:9] == b"{" and not head.startswith(_ZIP_MAGIC):
        # An 8-byte header length, then "{": a safetensors file cut inside its header.
        error = f"a safetensors file shorter than its header says; {_INCOMPLETE_HINT}"
    elif not head.startswith(_ZIP_MAGIC) and head[:1] != b"\x80":
        # torch.save writes a zip archive (torch >= 1.6) or a pickle (protocol 2+ starts 0x80).
        error = "neither a zip archive nor a pickle"
    if error is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except EOFError as e:
            error = f"EOFError: {e}; {_INCOMPLETE_HINT}"
        except (pickle.UnpicklingError, RuntimeError) as e:
            error = f"{type(e).__name__}: {e}"
    raise ValueError(
        f"Cannot read '{path}' as a checkpoint ({error}). Expected a TorchScript archive, "
        "a safetensors file or a torch.save'd state dict of tensors."
    )


def _safetensors_header(path: str):
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), or None."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > os.path.getsize(path) - 8:
        return None
    with open(path, "rb") as f:
        f.seek(8)
        try:
            return json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def _find_state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
        if tensors:
            return tensors
        for key in _STATE_DICT_WRAPPERS:
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], path)
    found = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"No state dict in '{path}': expected a dict of tensors, possibly under one of "
        f"{list(_STATE_DICT_WRAPPERS)}; found {found}."
    )


def load_trunk_state_dict(
    trunk: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    patch_resample: str = "pinv",
    clip_head: bool = False,
) -> TrunkLoadReport:
    """
    Load a checkpoint's tensors into a trunk.

    The patch kernel and the position embeddings are first converted to the trunk's patch size
    and grid in float32 (:func:`~.conversion.convert_embeddings`), then the keys are converted by
    the trunk's adapter. Keys of the pooling / projection head are skipped (the trunk may still
    hold the head: it is removed when the backbone is built) except, with ``clip_head``, the
    final norm and CLIP projection (the adapter's ``clip_head_names``), which load like the
    blocks; missing and unexpected keys are logged as a table, and any shape mismatch is an
    error.

    Args:
        trunk (nn.Module): a vision tower with a registered adapter.
        state_dict (dict[str, Tensor]): as returned by :func:`read_checkpoint`.
        source (str): name of the file, for messages.
        patch_resample (str): how a patch kernel of another size is converted, "pinv" or
            "interpolate" (MODEL.VLT_BACKBONE.PATCH_RESAMPLE).
        clip_head (bool): also load the CLIP projection and final norm
            (MODEL.VLT_BACKBONE.CLIP_HEAD).

    Returns:
        TrunkLoadReport

    Raises:
        ValueError: a tensor's shape differs from the trunk's, or no tensor matches the trunk.
    """
    adapter = get_trunk_adapter(trunk)
    state_dict = convert_embeddings(state_dict, trunk, adapter.grid_size(trunk), patch_resample)
    converted = adapter.convert_checkpoint(state_dict, trunk)
    kept = adapter.clip_head_names if clip_head else ()
    model_state = {
        k: v for k, v in trunk.state_dict().items() if not adapter.is_head_key(k, kept)
    }
    report = TrunkLoadReport()
    to_load = {}
    mismatched = []
    for key, value in converted.items():
        if adapter.is_head_key(key, kept):
            report.skipped_head.append(key)
        elif key not in model_state:
            report.unexpected.append(key)
        elif value.shape != model_state[key].shape:
            mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    if mismatched:
        lines = "\n".join(f"  {k}: checkpoint {c} vs model {m}" for k, c, m in mismatched[:20])
        more = f"\n  ... and {len(mismatched) - 20} more" if len(mismatched) > 20 else ""
        raise ValueError(
            f"Shape mismatch between '{source}' and the {adapter.family} trunk for "
            f"{len(mismatched)} tensor(s) (is MODEL.VLT_BACKBONE.ARCH / EMBED_DIM / DEPTH / "
            f"NUM_HEADS the architecture of these weights?):\n{lines}{more}"
        )
    if not to_load:
        raise ValueError(
            f"No tensor of '{source}' matches the {adapter.family} trunk "
            f"({len(converted)} keys after conversion, e.g. {sorted(converted)[:5]}); is it a "
            "checkpoint of MODEL.VLT_BACKBONE.ARCH?"
        )
    trunk.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(set(model_state) - set(to_load))
    report.unexpected.sort()
    logger.info(
        "Loaded %d tensors from '%s' into the %s trunk; skipped %d of its pooling head.",
        len(report.loaded),
        source,
        adapter.family,
        len(report.skipped_head),
    )
    _log_incompatible(report, model_state, converted, source)
    return report


def _log_incompatible(report, model_state, converted, source):
    rows = [("missing (random init)", k, tuple(model_state[k].shape)) for k in report.missing]
    rows += [("unexpected (ignored)", k, tuple(converted[k].shape)) for k in report.unexpected]
    if not rows:
        return
    table = tabulate(rows[:_MAX_TABLE_ROWS], headers=["status", "key", "shape"], tablefmt="pipe")
    cut = f"\n... {len(rows) - _MAX_TABLE_ROWS} more" if len(rows) > _MAX_TABLE_ROWS else ""
    logger.warning(
        "'%s': %d missing and %d unexpected keys:\n%s%s",
        source,
        len(report.missing),
        len(report.unexpected),
        table,
        cut,
    )

