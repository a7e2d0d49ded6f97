"""Atomic file writes: readers (and a process killed mid-write) see the old file or the whole new
one, never a truncated file."""
import io
import json
import os
import tempfile

import numpy as np
from PIL import Image

__all__ = ["atomic_write", "atomic_write_bytes", "write_json", "write_png"]


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write_fn, mode="wb"):
    """
    Write a file through a temporary file in the same folder, then rename it into place
    (``os.replace`` is atomic on POSIX). On an exception the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path (str): destination file.
        write_fn (callable): called with the open temporary file object.
        mode (str): "wb" or "w".
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """
    Args:
        path (str): destination file.
        data (bytes or str): the whole content.
    """
    atomic_write(path, lambda f: f.write(data), "wb" if isinstance(data, bytes) else "w")


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
