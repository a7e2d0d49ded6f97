"""Appearances: the colours and textures SynthDG paints each class and material with.

Two appearances exist. ``SOURCE`` looks roughly like a European city on a clear day (grey
asphalt, tiled sidewalks, brick and plaster facades, green trees, a blue sky). ``PALETTE`` changes
the colour AND the texture of every class (red brick roads, striped blue sidewalks, pastel striped
facades, autumn trees with dotted leaves, sand, a sunset sky, neon clothes...). The weather
domains (fog, night, rain, snow) start from the source appearance, as ACDC's adverse conditions
show the same cities as Cityscapes.
"""
import dataclasses

import numpy as np

from .geometry import Part
from .layout import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
)

__all__ = ["Look", "Sky", "Appearance", "SOURCE", "PALETTE"]

_ANY = -1


@dataclasses.dataclass(frozen=True)
class Look:
    """
    How one (class, part) is painted.

    Attributes:
        colors (tuple[tuple[int, int, int]]): RGB choices; each segment (one car, one facade)
            picks one with its first random number.
        alt (float or tuple): the texture's second colour: an RGB triple, or a factor applied
            to the picked colour.
        texture (tuple[str, float]): pattern kind and period in metres (see
            :func:`.render.pattern`).
        jitter (float): relative brightness and hue jitter between segments.
    """

    colors: tuple
    alt: object = 0.8
    texture: tuple = ("flat", 1.0)
    jitter: float = 0.06


@dataclasses.dataclass(frozen=True)
class Sky:
    """Sky gradient (RGB at the zenith and at the horizon) and clouds."""

    zenith: tuple
    horizon: tuple
    cloud: tuple
    cloudiness: float


@dataclasses.dataclass(frozen=True)
class Appearance:
    """
    A full look of the scene.

    Attributes:
        name (str): for messages.
        looks (dict): (class_id, part) -> :class:`Look`; class_id -1 matches any class.
            Lookup order: (class, part), (any, part), (class, BODY).
        sky (Sky): the sky.
        sun_side (int): -1 when the sun lights the facades on the left, +1 on the right.
        lamp, head, tail (tuple): RGB of street lamps, head lights and tail lights.
        lenses (tuple): RGB of the red, yellow and green traffic-light lenses.
    """

    name: str
    looks: dict
    sky: Sky
    sun_side: int
    lamp: tuple
    head: tuple
    tail: tuple
    lenses: tuple

    def look(self, class_id, part):
        """The :class:`Look` of a class and part."""
        for key in ((class_id, part), (_ANY, part), (class_id, Part.BODY)):
            if key in self.looks:
                return self.looks[key]
        raise KeyError(f"appearance {self.name!r} has no look for class {class_id} part {part}")

    def segment_colours(self, class_id, part, rnd):
        """
        The two colours of segments of one class and part, from their random numbers.

        Args:
            class_id (int): train id.
            part (int): :class:`~.geometry.Part`.
            rnd (np.ndarray): float [N, 4], the segments' random numbers in [0, 1).

        Returns:
            tuple[np.ndarray, np.ndarray]: primary and texture colours, float32 [N, 3] in [0, 1].
        """
        if part == Part.LIGHT:
            rgb = self._light_colours(class_id, rnd)
            return rgb, rgb
        look = self.look(class_id, part)
        palette = np.asarray(look.colors, np.float32)
        rgb = palette[(rnd[:, 0] * len(palette)).astype(np.int64) % len(palette)]
        j = look.jitter
        rgb = rgb * (1.0 + j * (2 * rnd[:, 1:2] - 1))
        shift = np.stack([2 * rnd[:, 2] - 1, np.zeros_like(rnd[:, 2]), 2 * rnd[:, 3] - 1], axis=1)
        rgb = rgb + 60.0 * j * shift
        if isinstance(look.alt, tuple):
            alt = np.broadcast_to(np.asarray(look.alt, np.float32), rgb.shape)
        else:
            alt = rgb * look.alt
        return np.clip(rgb / 255, 0, 1), np.clip(alt / 255, 0, 1)

    def _light_colours(self, class_id, rnd):
        if class_id == TRAFFIC_LIGHT:
            # rnd[:, 0] is 0, 0.5, 1 for the red, yellow, green lens; rnd[:, 1] < 0.5 when lit.
            lenses = np.asarray(self.lenses, np.float32)[np.round(rnd[:, 0] * 2).astype(np.int64)]
            return lenses / 255 * np.where(rnd[:, 1:2] < 0.5, 1.0, 0.3)
        if class_id == POLE:
            colour = np.asarray(self.lamp, np.float32)
            return np.broadcast_to(colour / 255, (len(rnd), 3))
        head, tail = np.asarray(self.head, np.float32), np.asarray(self.tail, np.float32)
        return np.where(rnd[:, :1] >= 0.5, head, tail) / 255


def _looks(**entries):
    """Build a looks dict from keyword pairs ``CLASS=Look`` / ``CLASS__PART=Look``."""
    names = {
        "ROAD": ROAD, "SIDEWALK": SIDEWALK, "BUILDING": BUILDING, "WALL": WALL, "FENCE": FENCE,
        "POLE": POLE, "TRAFFIC_LIGHT": TRAFFIC_LIGHT, "TRAFFIC_SIGN": TRAFFIC_SIGN,
        "VEGETATION": VEGETATION, "TERRAIN": TERRAIN, "SKY": SKY, "PERSON": PERSON,
        "RIDER": RIDER, "CAR": CAR, "TRUCK": TRUCK, "BUS": BUS, "TRAIN": TRAIN,
        "MOTORCYCLE": MOTORCYCLE, "BICYCLE": BICYCLE, "ANY": _ANY,
    }
    looks = {}
    for key, look in entries.items():
        cls, _, part = key.partition("__")
        looks[(names[cls], Part[part] if part else Part.BODY)] = look
    return looks


SOURCE = Appearance(
    name="source",
    looks=_looks(
        ROAD=Look(((82, 82, 86), (92, 90, 88), (74, 76, 80)), 0.72, ("noise", 0.35), 0.05),
        ROAD__MARKING=Look(((226, 226, 216),), 0.85, ("noise", 0.5)),
        SIDEWALK=Look(((158, 150, 142), (172, 168, 160), (140, 140, 146)), 0.7, ("tiles", 0.6)),
        SIDEWALK__FRAME=Look(((178, 174, 166),), 0.8, ("noise", 0.3)),
        BUILDING=Look(
            ((196, 178, 148), (156, 88, 66), (128, 128, 134), (208, 204, 194), (204, 168, 104),
             (168, 154, 140), (110, 100, 96)),
            0.84, ("bricks", 0.6), 0.08,
        ),
        BUILDING__WINDOW=Look(((48, 58, 72), (62, 72, 88), (40, 44, 52)), 2.0, ("noise", 1.0)),
        WALL=Look(((168, 162, 152), (140, 136, 130), (180, 170, 150)), 0.8, ("bricks", 0.4)),
        FENCE=Look(((128, 134, 118), (120, 124, 126)), 0.45, ("lattice", 0.25)),
        POLE=Look(((118, 118, 118), (96, 98, 100), (140, 140, 136)), 0.9, ("noise", 0.5)),
        TRAFFIC_LIGHT=Look(((38, 38, 38), (52, 56, 48)), 0.8),
        TRAFFIC_SIGN=Look(((196, 30, 32), (30, 70, 170), (210, 210, 210))),
        TRAFFIC_SIGN__INNER=Look(((236, 236, 230), (240, 200, 40))),
        VEGETATION=Look(((62, 112, 42), (48, 96, 34), (88, 120, 50)), 0.55, ("noise", 0.45)),
        VEGETATION__TRUNK=Look(((92, 72, 52), (80, 66, 56)), 0.8, ("stripes_s", 0.1)),
        TERRAIN=Look(((112, 150, 72), (140, 140, 84), (124, 136, 76)), 0.75, ("noise", 0.3)),
        SKY=Look(((128, 170, 220),)),
        PERSON=Look(
            ((40, 40, 48), (160, 30, 30), (30, 60, 120), (200, 200, 190), (90, 90, 60),
             (120, 80, 50), (60, 110, 150)),
            0.8, ("noise", 0.2), 0.15,
        ),
        RIDER=Look(((40, 40, 48), (200, 60, 30), (30, 60, 120), (220, 220, 60), (70, 70, 70)),
                   0.8, ("noise", 0.2), 0.15),
        ANY__LOWER=Look(((40, 48, 80), (30, 30, 34), (90, 80, 70), (60, 60, 66)), 0.8),
        ANY__SKIN=Look(((224, 182, 150), (190, 140, 105), (140, 96, 70), (96, 66, 50)), 0.9),
        CAR=Look(
            ((180, 182, 186), (230, 230, 228), (30, 30, 34), (150, 24, 26), (30, 52, 120),
             (70, 72, 76), (110, 110, 96), (200, 200, 205)),
            0.85, ("noise", 1.0), 0.08,
        ),
        TRUCK=Look(((232, 232, 228), (190, 40, 30), (40, 70, 150), (220, 170, 40), (90, 100, 90)),
                   0.85, ("noise", 1.0)),
        BUS=Look(((220, 190, 40), (190, 40, 40), (230, 230, 225), (40, 90, 160)), 0.85,
                 ("noise", 1.0)),
        TRAIN=Look(((230, 230, 225), (200, 40, 40), (40, 120, 70)), 0.85, ("noise", 1.0)),
        MOTORCYCLE=Look(((30, 30, 34), (170, 30, 30), (60, 60, 140), (200, 200, 200)), 0.8),
        BICYCLE=Look(((40, 40, 44), (180, 30, 30), (30, 90, 160), (200, 200, 200), (40, 120, 60))),
        ANY__FRAME=Look(((118, 118, 120),), 0.7, ("stripes_s", 0.04)),
        ANY__TYRE=Look(((26, 26, 28), (34, 34, 36)), 0.8),
        ANY__WINDOW=Look(((40, 50, 62), (52, 60, 70), (30, 34, 40)), 2.2, ("noise", 0.6)),
    ),
    sky=Sky(zenith=(96, 150, 215), horizon=(190, 212, 235), cloud=(236, 238, 242),
            cloudiness=0.35),
    sun_side=-1,
    lamp=(255, 236, 200),
    head=(255, 250, 230),
    tail=(220, 20, 20),
    lenses=((235, 30, 30), (250, 190, 20), (40, 230, 110)),
)

PALETTE = Appearance(
    name="palette",
    looks=_looks(
        ROAD=Look(((176, 78, 58), (160, 66, 62), (184, 98, 72)), 0.72, ("bricks", 0.35), 0.06),
        ROAD__MARKING=Look(((250, 210, 40),), 0.8, ("stripes_s", 0.2)),
        SIDEWALK=Look(((58, 72, 120), (70, 60, 110)), 1.4, ("stripes_s", 0.5)),
        SIDEWALK__FRAME=Look(((230, 120, 40),), 0.8, ("checker", 0.2)),
        BUILDING=Look(
            ((236, 170, 190), (160, 220, 200), (190, 170, 230), (240, 220, 150), (150, 200, 230)),
            0.82, ("stripes_s", 0.8), 0.08,
        ),
        BUILDING__WINDOW=Look(((240, 200, 80), (250, 150, 60)), 0.75, ("checker", 0.4)),
        WALL=Look(((120, 60, 140), (90, 40, 110)), 1.5, ("dots", 0.3)),
        FENCE=Look(((70, 40, 80),), (250, 130, 30), ("lattice", 0.35)),
        POLE=Look(((210, 180, 40), (230, 200, 60)), 0.55, ("stripes_t", 0.4)),
        TRAFFIC_LIGHT=Look(((235, 235, 235), (200, 220, 240)), 0.8, ("stripes_t", 0.15)),
        TRAFFIC_SIGN=Look(((40, 160, 80), (150, 40, 160)), 0.7, ("checker", 0.08)),
        TRAFFIC_SIGN__INNER=Look(((20, 20, 20), (250, 250, 100))),
        VEGETATION=Look(((210, 100, 30), (180, 50, 40), (220, 160, 40)), 0.55, ("dots", 0.35)),
        VEGETATION__TRUNK=Look(((220, 220, 210),), 0.3, ("stripes_t", 0.25)),
        TERRAIN=Look(((214, 192, 120), (196, 170, 100)), 0.8, ("stripes_s", 1.2)),
        SKY=Look(((250, 170, 120),)),
        PERSON=Look(
            ((250, 80, 180), (60, 240, 120), (250, 240, 60), (80, 200, 250), (250, 140, 40)),
            0.7, ("checker", 0.1), 0.15,
        ),
        RIDER=Look(((250, 80, 180), (60, 240, 120), (250, 240, 60), (80, 200, 250)), 0.7,
                   ("checker", 0.1), 0.15),
        ANY__LOWER=Look(((200, 200, 210), (240, 120, 120), (120, 240, 240)), 0.7,
                        ("stripes_t", 0.1)),
        ANY__SKIN=Look(((200, 170, 230), (170, 220, 200), (240, 200, 160)), 0.9),
        CAR=Look(
            ((120, 220, 200), (250, 160, 190), (250, 230, 120), (180, 140, 240), (255, 255, 255),
             (100, 200, 100)),
            0.8, ("stripes_t", 0.3), 0.08,
        ),
        TRUCK=Look(((255, 140, 0), (120, 200, 255), (200, 255, 120)), 0.75, ("checker", 0.5)),
        BUS=Look(((100, 60, 200), (0, 170, 170)), 0.75, ("stripes_s", 0.8)),
        TRAIN=Look(((250, 250, 100), (100, 100, 250)), 0.75, ("stripes_s", 1.0)),
        MOTORCYCLE=Look(((250, 250, 250), (60, 250, 60)), 0.7, ("stripes_s", 0.1)),
        BICYCLE=Look(((250, 250, 0), (0, 250, 250), (250, 0, 250))),
        ANY__FRAME=Look(((210, 210, 120),), 0.6, ("dots", 0.05)),
        ANY__TYRE=Look(((120, 120, 130),), 0.8),
        ANY__WINDOW=Look(((170, 240, 255), (210, 250, 255)), 0.7, ("stripes_s", 0.3)),
    ),
    sky=Sky(zenith=(120, 70, 150), horizon=(250, 170, 120), cloud=(255, 210, 190),
            cloudiness=0.5),
    sun_side=1,
    lamp=(200, 230, 255),
    head=(200, 230, 255),
    tail=(250, 120, 250),
    lenses=((250, 60, 160), (250, 250, 120), (80, 220, 250)),
)
