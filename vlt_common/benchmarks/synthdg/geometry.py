"""The pinhole camera and the painter's-algorithm canvas SynthDG draws scenes with.

World coordinates are metres: x to the right, y up (the ground is y = 0), z forward from the
camera. Every drawn primitive belongs to a *segment* that records its semantic class, its material
part, the surface it lies on (so that rendering can recover depth and surface coordinates per
pixel) and the instance it belongs to. Later primitives overwrite earlier ones, so scenes are drawn
far to near and the segment map is exact: labels, instance masks and colours all come from it.
"""
import dataclasses
import enum

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Camera", "Canvas", "Part", "Surface", "SegmentTable"]

class Surface(enum.IntEnum):
    """The kind of surface a segment lies on; with the segment's parameter it fixes the depth."""

    SKY = 0  # at infinity
    HORIZONTAL = 1  # plane y = param (the ground, car roofs, hedge tops)
    SIDE = 2  # plane x = param, parallel to the street (facades, car sides)
    FRONT = 3  # plane z = param, facing the camera (people, signs, car backs)

class Part(enum.IntEnum):
    """Material of a segment; styles colour (class, part) pairs, labels ignore parts."""

    BODY = 0  # the class's main material (paint, facade, clothes top, leaves, asphalt)
    WINDOW = 1
    TYRE = 2
    LIGHT = 3  # lamps: vehicle lights, street lamps, traffic-light lenses
    SKIN = 4
    LOWER = 5  # trousers, skirts
    MARKING = 6  # lane markings, crossings
    TRUNK = 7
    FRAME = 8  # bicycle frames, sign back plates
    INNER = 9  # the inner field of a traffic sign

@dataclasses.dataclass(frozen=True)
class Camera:
    """
    A level pinhole camera above the ground.

    Attributes:
        focal (float): focal length in pixels.
        cx (float): column of the principal point (pixels).
        horizon (float): row of the horizon (pixels).
        height (float): camera height above the ground (metres).
        image_hw (tuple[int, int]): image size.
    """

    focal: float
    cx: float
    horizon: float
    height: float
    image_hw: tuple

    def project(self, x, y, z):
        """Project world points (arrays or floats, z > 0) to pixel coordinates (u, v)."""
        z = np.asarray(z, dtype=np.float64)
        u = self.cx + self.focal * np.asarray(x, dtype=np.float64) / z
        v = self.horizon + self.focal * (self.height - np.asarray(y, dtype=np.float64)) / z
        return u, v

    def scale(self, z):
        """Pixels per metre of a fronto-parallel surface at depth ``z``."""
        return self.focal / z

class SegmentTable:
    """
    Per-segment attributes, appended as primitives are created.

    Arrays (after :meth:`finalize`), one entry per segment id:
        class_id (uint8): train id 0..18.
        part (uint8): :class:`Part`.
        surface (uint8): :class:`Surface`.
        param (float32): plane offset of the surface (metres).
        instance (int32): instance index, -1 for stuff.
        rnd (float32 [N, 4]): uniform numbers in [0, 1) a style turns into colour choices,
            tints and on/off states, so that the layout fixes them for every domain.
    """

    _FIELDS = ("class_id", "part", "surface", "param", "instance", "rnd")

    def __init__(self):
        self._rows = []

    def add(self, class_id, part, surface, param, instance, rnd):
        self._rows.append((class_id, int(part), int(surface), param, instance, rnd))
        return len(self._rows) - 1

    def __len__(self):
        return len(self._rows)

    def finalize(self):
        """Freeze the rows into numpy arrays (attributes named as in the class docstring)."""
        cols = list(zip(*self._rows))
        self.class_id = np.asarray(cols[0], dtype=np.uint8)
        self.part = np.asarray(cols[1], dtype=np.uint8)
        self.surface = np.asarray(cols[2], dtype=np.uint8)
        self.param = np.asarray(cols[3], dtype=np.float32)
        self.instance = np.asarray(cols[4], dtype=np.int32)
        self.rnd = np.asarray(cols[5], dtype=np.float32).reshape(len(self._rows), 4)
        return self

class Canvas:
    """
    Rasterises polygons, ellipses and thick lines into a segment-id map (painter's algorithm).

    Args:
        camera (Camera): the scene camera (its ``image_hw`` sets the canvas size).
        rng (np.random.Generator): draws the per-segment random numbers.
        sky_class (int): train id of segment 0, the sky, which everything is drawn over.
    """

    def __init__(self, camera, rng, sky_class):
        self.camera = camera
        self.rng = rng
        h, w = camera.image_hw
        self.segments = SegmentTable()
        self.segment(sky_class, Part.BODY, Surface.SKY, 0.0)
        self._image = Image.new("I", (w, h), 0)
        self._draw = ImageDraw.Draw(self._image)

    def segment(self, class_id, part, surface, param, instance=-1, rnd=None):
        """
        Create a segment and return its id.

        Args:
            class_id (int): train id.
            part (Part): material.
            surface (Surface): surface kind; ``param`` its offset in metres.
            instance (int): instance index or -1.
            rnd (array of 4 floats or None): the segment's random numbers; None draws new ones.
                Parts of one object share numbers (e.g. one paint colour per car).
        """
        if rnd is None:
            rnd = self.rng.random(4)
        return self.segments.add(class_id, part, surface, float(param), instance, tuple(rnd))

    def polygon(self, u, v, seg):
        """Fill the polygon with pixel vertices ``(u[i], v[i])`` with segment ``seg``."""
        self._draw.polygon([(float(a), float(b)) for a, b in zip(u, v)], fill=seg)

    def ellipse(self, u0, v0, u1, v1, seg):
        """Fill the axis-aligned ellipse inside the pixel box (u0, v0, u1, v1)."""
        self._draw.ellipse([float(u0), float(v0), float(max(u1, u0)), float(max(v1, v0))], fill=seg)

    def line(self, u, v, width, seg):
        """Draw a polyline through ``(u[i], v[i])`` of ``width`` pixels (at least 1)."""
        points = [(float(a), float(b)) for a, b in zip(u, v)]
        self._draw.line(points, fill=seg, width=max(1, int(round(width))))

    def finish(self):
        """Return the segment map (int32 [H, W]) and the finalized :class:`SegmentTable`."""
        return np.asarray(self._image, dtype=np.int32).copy(), self.segments.finalize()
