"""Procedural street-scene layouts: geometry, labels and instances, independent of any style.

A layout is a straight street seen from a car: a road with lanes and markings, kerbs and
sidewalks, grass strips, building blocks with windows (and gaps with parks, walls or fences), a
backdrop at the end of the street, then everything that stands in the street: trees, street
lamps, traffic signs and lights, fences and hedges, cars, trucks, buses, the odd tram, parked and
ridden bicycles and motorcycles, and pedestrians. All 19 Cityscapes classes can occur.

Drawing order is the painter's algorithm: sky, backdrop, the ground behind the buildings, the
blocks from far to near, the street's ground, the walls along the sidewalk, then the street's
objects from far to near. Every object standing in the street lies between the camera and the
blocks, so this order gives exact occlusions.
"""
import dataclasses

import numpy as np

from .geometry import Camera
from .people import PeopleMixin
from .scenery import SceneryMixin
from .signs import SignsMixin
from .street import StreetBase
from .vehicles import VehiclesMixin

__all__ = ["Layout", "StreetBuilder", "make_layout"]

@dataclasses.dataclass
class Layout:
    """
    One scene's geometry.

    Attributes:
        camera (Camera): the camera.
        seg (np.ndarray): int32 [H, W] segment ids.
        segments (SegmentTable): attributes per segment id.
        instance_classes (list[int]): train id of each instance index.
        lights (list[Light]): light sources.
        shadows (list[tuple[np.ndarray, np.ndarray]]): pixel polygons (u, v) of contact shadows
            on the ground.
        lane_centres (list[float]): x of every lane centre (where snow has tyre tracks).
    """

    camera: Camera
    seg: np.ndarray
    segments: object
    instance_classes: list
    lights: list
    shadows: list
    lane_centres: list

    @property
    def label(self):
        """uint8 [H, W] train-id map (every pixel belongs to one of the 19 classes)."""
        return self.segments.class_id[self.seg]

    @property
    def instance_map(self):
        """int32 [H, W] instance index per pixel, -1 for stuff."""
        return self.segments.instance[self.seg]

def make_layout(rng, height, width):
    """
    Draw one random street scene.

    Args:
        rng (np.random.Generator): the scene's generator (the only source of randomness).
        height, width (int): image size in pixels. The scene is defined in metres, so the same
            generator state gives the same scene at any size.

    Returns:
        Layout
    """
    camera = Camera(
        focal=width * rng.uniform(0.6, 0.74),
        cx=width * rng.uniform(0.46, 0.54),
        horizon=height * rng.uniform(0.38, 0.5),
        height=rng.uniform(1.3, 1.8),
        image_hw=(height, width),
    )
    return StreetBuilder(camera, rng).build()

class StreetBuilder(SceneryMixin, SignsMixin, VehiclesMixin, PeopleMixin, StreetBase):
    """Builds one street: the base's plan and primitives, and one mixin per kind of part."""

    def build(self):
        self.backdrop()
        self.ground_behind()
        for side in (-1, 1):
            self.blocks(side)
        self.street_ground()
        for side in (-1, 1):
            self.side_barriers(side)
        self.place_trees()
        self.place_poles()
        self.place_vehicles()
        self.place_people()
        self.place_two_wheelers()
        for _, draw in sorted(self.objects, key=lambda item: -item[0]):
            draw()
        seg, table = self.canvas.finish()
        lane_centres = [self.xl + (i + 0.5) * self.lane_w for i in range(self.n_lanes)]
        return Layout(
            camera=self.cam,
            seg=seg,
            segments=table,
            instance_classes=self.instance_classes,
            lights=self.lights,
            shadows=self.shadows,
            lane_centres=lane_centres,
        )
