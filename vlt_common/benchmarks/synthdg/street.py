"""The street builder's base: the scene's classes, its random street plan and the drawing
primitives (quads on the ground, the kerb and facades, fronts, ellipses, lines, boxes) that the
parts of the scene (:mod:`.scenery`, :mod:`.signs`, :mod:`.vehicles`, :mod:`.people`) are made of.

World coordinates are metres: x to the right, y up from the road, z away from the camera.
"""
import dataclasses

from vlt_common.label_spaces import CITYSCAPES_19_CLASSES

from .geometry import Canvas, Surface

__all__ = ["Light", "StreetBase"]

# Train ids of the classes the scenes are made of.
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = (
    CITYSCAPES_19_CLASSES.index(name)
    for name in ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                 "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                 "bus", "train", "motorcycle", "bicycle")
)

# Nearest depth drawn (metres); nearer geometry is clipped.
Z_NEAR = 0.6
# Height of the kerb: sidewalks are raised by it.
KERB = 0.15
# Things farther than this are not placed: they would be a few pixels tall at 256x512.
THING_MAX_Z = 65.0

@dataclasses.dataclass(frozen=True)
class Light:
    """
    A light source (used by the night style).

    Attributes:
        x, y, z (float): world position (metres).
        radius (float): radius of the emitting surface (metres).
        kind (str): "lamp", "head", "tail", "red", "yellow" or "green".
        ground (bool): whether it lights the ground around it (street lamps).
    """

    x: float
    y: float
    z: float
    radius: float
    kind: str
    ground: bool = False

class StreetBase:
    """One street's plan (lanes, sidewalks, depth) and the primitives that draw into its canvas;
    the part mixins add what stands in it."""

    def __init__(self, camera, rng):
        self.cam = camera
        self.rng = rng
        self.canvas = Canvas(camera, rng, SKY)
        self.instance_classes = []
        self.lights = []
        self.shadows = []
        # Objects standing in the street: (depth, draw callable), drawn far to near.
        self.objects = []

        r = rng
        self.lane_w = r.uniform(3.0, 3.6)
        self.n_lanes = int(r.choice([2, 2, 3, 4]))
        # The camera drives in one of the right-hand lanes (right-hand traffic).
        right_of_camera = int(r.integers(0, 2)) if self.n_lanes > 2 else 0
        self.xr = self.lane_w * (0.5 + right_of_camera) + r.uniform(-0.4, 0.4)
        self.xl = self.xr - self.n_lanes * self.lane_w
        self.two_way = self.n_lanes >= 2 and r.random() < 0.8
        self.sidewalk = {-1: r.uniform(1.8, 4.5), 1: r.uniform(1.8, 4.5)}
        self.terrain = {s: (r.uniform(1.0, 4.0) if r.random() < 0.45 else 0.0) for s in (-1, 1)}
        self.z_end = r.uniform(70.0, 180.0)

    def kerb_x(self, side):
        return self.xr if side > 0 else self.xl

    def sidewalk_outer(self, side):
        return self.kerb_x(side) + side * self.sidewalk[side]

    def facade_x(self, side):
        return self.sidewalk_outer(side) + side * self.terrain[side]

    def new_instance(self, class_id):
        self.instance_classes.append(class_id)
        return len(self.instance_classes) - 1

    def seg(self, class_id, part, surface, param, instance=-1, rnd=None):
        return self.canvas.segment(class_id, part, surface, param, instance, rnd)

    def horizontal(self, y, x0, x1, z0, z1, seg):
        """Quad on the plane y (x0..x1, z0..z1), clipped at the near plane."""
        z0 = max(z0, Z_NEAR)
        if z1 <= z0 or y >= self.cam.height:
            return
        u, v = self.cam.project([x0, x1, x1, x0], [y] * 4, [z0, z0, z1, z1])
        self.canvas.polygon(u, v, seg)

    def side(self, x, z0, z1, y0, y1, seg):
        """Quad on the plane x (z0..z1, y0..y1), clipped at the near plane."""
        z0 = max(z0, Z_NEAR)
        if z1 <= z0:
            return
        u, v = self.cam.project([x] * 4, [y0, y0, y1, y1], [z0, z1, z1, z0])
        self.canvas.polygon(u, v, seg)

    def front(self, z, x0, x1, y0, y1, seg):
        """Rectangle on the plane z (x0..x1, y0..y1)."""
        if z <= Z_NEAR:
            return
        u, v = self.cam.project([x0, x1, x1, x0], [y0, y0, y1, y1], [z] * 4)
        self.canvas.polygon(u, v, seg)

    def front_poly(self, z, xs, ys, seg):
        """Polygon on the plane z with world vertices (xs[i], ys[i])."""
        u, v = self.cam.project(xs, ys, [z] * len(xs))
        self.canvas.polygon(u, v, seg)

    def front_ellipse(self, z, x, y, rx, ry, seg):
        """Ellipse on the plane z centred at (x, y) with radii rx, ry (metres)."""
        u, v = self.cam.project(x, y, z)
        s = self.cam.scale(z)
        self.canvas.ellipse(u - rx * s, v - ry * s, u + rx * s, v + ry * s, seg)

    def front_line(self, z, xs, ys, width, seg):
        """Thick polyline on the plane z (width in metres)."""
        u, v = self.cam.project(xs, ys, [z] * len(xs))
        self.canvas.line(u, v, width * self.cam.scale(z), seg)

    def box(self, x0, x1, y0, y1, z0, z1, seg_front, seg_side, seg_top):
        """A box's faces visible from the camera: top (if below the eye), inner side, front."""
        if y1 < self.cam.height:
            self.horizontal(y1, x0, x1, z0, z1, seg_top)
        if x0 > 0:
            self.side(x0, z0, z1, y0, y1, seg_side)
        elif x1 < 0:
            self.side(x1, z0, z1, y0, y1, seg_side)
        self.front(z0, x0, x1, y0, y1, seg_front)

    def box_segs(self, class_id, part, x0, x1, z0, instance, rnd):
        """Segments (front, side) of a box's faces that share a material."""
        side_x = x0 if x0 > 0 else x1
        return (
            self.seg(class_id, part, Surface.FRONT, z0, instance, rnd),
            self.seg(class_id, part, Surface.SIDE, side_x, instance, rnd),
        )

    def shadow(self, x0, x1, z0, z1):
        z0 = max(z0, Z_NEAR)
        u, v = self.cam.project([x0, x1, x1, x0], [0.0] * 4, [z0, z0, z1, z1])
        self.shadows.append((u, v))

    def queue(self, z, draw):
        self.objects.append((z, draw))
