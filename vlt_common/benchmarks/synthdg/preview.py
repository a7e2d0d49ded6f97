"""A preview grid of SynthDG: one validation scene in every domain, plus its label map."""
import numpy as np
from PIL import Image, ImageDraw

from vlt_common.data.io import read_image, read_sem_seg
from vlt_common.label_spaces import CITYSCAPES_19_COLORS, IGNORE_LABEL
from vlt_common.utils.atomic import write_png

from .generate import ensure_synthdg, image_path, label_path, read_manifest
from .spec import DEFAULT_SPEC, DOMAINS

__all__ = ["write_preview"]

_COLUMNS = 4

def write_preview(root, out_path, spec=DEFAULT_SPEC, index=0):
    """
    Generate SynthDG if needed and write a grid of validation scene ``index``: every domain's
    rendering, then the shared label map, each tile captioned.

    Args:
        root (str): datasets root.
        out_path (str): PNG to write (atomically).
        spec (SynthDGSpec): the copy.
        index (int): validation scene to show.
    """
    # Imported here: the data package must not depend on the evaluation package (matplotlib).
    from vlt_common.evaluation.visualize import colorize_sem_seg

    directory = ensure_synthdg(root, spec)
    num_val = len(read_manifest(directory, spec)["splits"]["val"]["scenes"])
    if not 0 <= index < num_val:
        raise ValueError(f"preview scene index {index} is outside the {num_val} validation scenes")
    tiles = [
        (domain, read_image(f"{directory}/{image_path('val', domain, index)}", "RGB"))
        for domain in DOMAINS
    ]
    label = read_sem_seg(
        f"{directory}/{label_path('val', index)}",
        len(CITYSCAPES_19_COLORS),
        IGNORE_LABEL,
        (spec.height, spec.width),
    )
    tiles.append(("label map", colorize_sem_seg(label, CITYSCAPES_19_COLORS, IGNORE_LABEL)))
    rows = -(-len(tiles) // _COLUMNS)
    h, w = spec.height, spec.width
    grid = Image.new("RGB", (_COLUMNS * w, rows * h), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for k, (caption, tile) in enumerate(tiles):
        x, y = (k % _COLUMNS) * w, (k // _COLUMNS) * h
        grid.paste(Image.fromarray(tile), (x, y))
        draw.rectangle([x, y, x + 8 + 7 * len(caption), y + 14], fill=(0, 0, 0))
        draw.text((x + 4, y + 2), caption, fill=(255, 255, 255))
    write_png(out_path, np.asarray(grid))
