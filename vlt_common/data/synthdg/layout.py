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
import functools

import numpy as np

from vlt_common.data.datasets.builtin_meta import CITYSCAPES_19_CLASSES

from .geometry import Camera, Canvas, Part, Surface

__all__ = ["Layout", "Light", "make_layout"]

# Train ids of the classes the scenes are made of.
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = (
    CITYSCAPES_19_CLASSES.index(name)
    for name in ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                 "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                 "bus", "train", "motorcycle", "bicycle")
)

# Nearest depth drawn (metres); nearer geometry is clipped.
_Z_NEAR = 0.6
# Height of the kerb: sidewalks are raised by it.
_KERB = 0.15
# Things farther than this are not placed: they would be a few pixels tall at 256x512.
_THING_MAX_Z = 65.0


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
    return _StreetBuilder(camera, rng).build()


class _StreetBuilder:
    """Builds one street; the methods add parts of the scene in drawing order."""

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

    # ----------------------------------------------------------------------------------------
    # geometry helpers
    # ----------------------------------------------------------------------------------------
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
        z0 = max(z0, _Z_NEAR)
        if z1 <= z0 or y >= self.cam.height:
            return
        u, v = self.cam.project([x0, x1, x1, x0], [y] * 4, [z0, z0, z1, z1])
        self.canvas.polygon(u, v, seg)

    def side(self, x, z0, z1, y0, y1, seg):
        """Quad on the plane x (z0..z1, y0..y1), clipped at the near plane."""
        z0 = max(z0, _Z_NEAR)
        if z1 <= z0:
            return
        u, v = self.cam.project([x] * 4, [y0, y0, y1, y1], [z0, z1, z1, z0])
        self.canvas.polygon(u, v, seg)

    def front(self, z, x0, x1, y0, y1, seg):
        """Rectangle on the plane z (x0..x1, y0..y1)."""
        if z <= _Z_NEAR:
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
        z0 = max(z0, _Z_NEAR)
        u, v = self.cam.project([x0, x1, x1, x0], [0.0] * 4, [z0, z0, z1, z1])
        self.shadows.append((u, v))

    # ----------------------------------------------------------------------------------------
    # the scene, in drawing order
    # ----------------------------------------------------------------------------------------
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

    def backdrop(self):
        """Skyline or tree line across the end of the street."""
        r, z = self.rng, self.z_end
        kind = r.choice(["skyline", "skyline", "trees", "open"])
        x, x_max = self.facade_x(-1) - 60.0, self.facade_x(1) + 60.0
        while x < x_max and kind != "open":
            wid = r.uniform(6.0, 25.0)
            if kind == "skyline":
                seg = self.seg(BUILDING, Part.BODY, Surface.FRONT, z)
                self.front(z, x, x + wid, 0.0, r.uniform(6.0, 45.0), seg)
            else:
                seg = self.seg(VEGETATION, Part.BODY, Surface.FRONT, z)
                y, ry = r.uniform(2.0, 6.0), r.uniform(4.0, 9.0)
                self.front_ellipse(z, x + wid / 2, y, wid * 0.7, ry, seg)
            x += wid
        if kind == "trees":
            seg = self.seg(VEGETATION, Part.BODY, Surface.FRONT, z)
            self.front(z, x_max - 120.0, x_max, 0.0, 3.0, seg)

    def ground_behind(self):
        """Grass behind the blocks, seen through gaps between buildings and at the street's end."""
        for side in (-1, 1):
            fx = self.facade_x(side)
            far = fx + side * 80.0
            seg = self.seg(TERRAIN, Part.BODY, Surface.HORIZONTAL, 0.0)
            self.horizontal(0.0, min(fx, far), max(fx, far), 0.0, self.z_end, seg)

    def blocks(self, side):
        """Buildings (with windows) and gaps (parks, walls, fences) along one side, far to near."""
        r = self.rng
        spans, z = [], -6.0
        while z < self.z_end:
            length = r.uniform(8.0, 30.0)
            spans.append((z, min(z + length, self.z_end)))
            z += length
        fx = self.facade_x(side)
        for z0, z1 in reversed(spans):
            u = r.random()
            if u < 0.74:
                self.building(side, fx + side * r.uniform(0.0, 2.5), z0, z1)
            elif u < 0.87:
                self.park(side, fx, z0, z1)
            else:
                self.park(side, fx + side * 4.0, z0, z1)
                height = r.uniform(1.2, 3.0)
                cls = WALL if r.random() < 0.5 else FENCE
                self.side(fx, z0, z1, 0.0, height, self.seg(cls, Part.BODY, Surface.SIDE, fx))

    def building(self, side, x, z0, z1):
        r, cam = self.rng, self.cam
        height = r.choice([r.uniform(6.0, 14.0), r.uniform(12.0, 35.0)])
        rnd = r.random(4)
        # End wall facing the camera (seen where the nearer block is set back or lower).
        if z0 > _Z_NEAR:
            self.front(z0, min(x, x + side * 20), max(x, x + side * 20), 0.0, height,
                       self.seg(BUILDING, Part.BODY, Surface.FRONT, z0, rnd=rnd))
        self.side(x, z0, z1, 0.0, height, self.seg(BUILDING, Part.BODY, Surface.SIDE, x, rnd=rnd))
        floor = r.uniform(2.8, 3.6)
        col = r.uniform(2.2, 4.0)
        win_w, win_h = col * r.uniform(0.45, 0.7), floor * r.uniform(0.4, 0.65)
        shop = r.random() < 0.5
        y = r.uniform(0.8, 1.2)
        while y + win_h < height - 0.5:
            big = shop and y < 1.5
            h_here = floor * 0.75 if big else win_h
            zc = z0 + col * 0.6
            while zc + win_w < z1 - 0.3:
                w_here = col * 0.9 if big else win_w
                za, zb = max(zc, _Z_NEAR), zc + w_here
                # Skip windows narrower than ~1 pixel: they would only alias.
                if zb > za and cam.focal * abs(x) * (1 / za - 1 / zb) >= 1.2:
                    self.side(x, za, zb, y, y + h_here,
                              self.seg(BUILDING, Part.WINDOW, Surface.SIDE, x))
                zc += col
            y += floor

    def park(self, side, x, z0, z1):
        """Trees standing behind the facade line."""
        r = self.rng
        z = z1 - r.uniform(0.0, 3.0)
        while z > max(z0, _Z_NEAR + 1.0):
            self.tree(x + side * r.uniform(1.0, 6.0), z, big=True)
            z -= r.uniform(3.0, 7.0)

    def street_ground(self):
        r, z_end = self.rng, self.z_end
        road = self.seg(ROAD, Part.BODY, Surface.HORIZONTAL, 0.0)
        self.horizontal(0.0, self.xl, self.xr, 0.0, z_end, road)
        for side in (-1, 1):
            kerb, outer, fx = self.kerb_x(side), self.sidewalk_outer(side), self.facade_x(side)
            walk = self.seg(SIDEWALK, Part.BODY, Surface.HORIZONTAL, _KERB)
            self.horizontal(_KERB, min(kerb, outer), max(kerb, outer), 0.0, z_end, walk)
            kerb_face = self.seg(SIDEWALK, Part.FRAME, Surface.SIDE, kerb)
            self.side(kerb, 0.0, z_end, 0.0, _KERB, kerb_face)
            if self.terrain[side] > 0:
                grass = self.seg(TERRAIN, Part.BODY, Surface.HORIZONTAL, _KERB)
                self.horizontal(_KERB, min(outer, fx), max(outer, fx), 0.0, z_end, grass)
        # Lane markings: edge lines, dashed lane lines, and sometimes a zebra crossing.
        z_mark = min(z_end, 70.0)
        for x in (self.xl + 0.25, self.xr - 0.25):
            self.horizontal(0.0, x - 0.07, x + 0.07, 0.0, z_mark, self.mark_seg())
        for i in range(1, self.n_lanes):
            x = self.xl + i * self.lane_w
            centre = self.two_way and i == self.n_lanes // 2
            z, dash, gap = r.uniform(0.0, 6.0), (40.0 if centre else 3.0), (0.0 if centre else 6.0)
            while z < z_mark:
                self.horizontal(0.0, x - 0.07, x + 0.07, z, min(z + dash, z_mark), self.mark_seg())
                z += dash + gap
        self.crossing_z = r.uniform(8.0, 30.0) if r.random() < 0.35 else None
        if self.crossing_z is not None:
            x, z = self.xl + 0.4, self.crossing_z
            while x < self.xr - 0.5:
                self.horizontal(0.0, x, x + 0.5, z, z + 3.0, self.mark_seg())
                x += 1.0

    def mark_seg(self):
        return self.seg(ROAD, Part.MARKING, Surface.HORIZONTAL, 0.0)

    def side_barriers(self, side):
        """Fences, walls and hedges along the outer edge of the sidewalk (stretches of it)."""
        r = self.rng
        x = self.sidewalk_outer(side)
        z = r.uniform(-5.0, 20.0)
        while z < self.z_end:
            length = r.uniform(6.0, 40.0)
            if r.random() < 0.45:
                kind = r.choice([WALL, FENCE, VEGETATION])
                height = {WALL: r.uniform(0.6, 2.2), FENCE: r.uniform(0.9, 2.0),
                          VEGETATION: r.uniform(0.6, 1.6)}[kind]
                z1 = min(z + length, self.z_end)
                top = _KERB + height
                if kind == VEGETATION:
                    xo = x + side * r.uniform(0.6, 1.2)
                    seg = self.seg(VEGETATION, Part.BODY, Surface.HORIZONTAL, top)
                    self.horizontal(top, min(x, xo), max(x, xo), z, z1, seg)
                self.side(x, z, z1, _KERB, top, self.seg(kind, Part.BODY, Surface.SIDE, x))
            z += length + r.uniform(2.0, 20.0)

    # ----------------------------------------------------------------------------------------
    # objects in the street (queued, drawn far to near)
    # ----------------------------------------------------------------------------------------
    def queue(self, z, draw):
        self.objects.append((z, draw))

    def tree(self, x, z, big=False):
        r = self.rng
        trunk_h = r.uniform(2.0, 3.5) * (1.5 if big else 1.0)
        crown = r.uniform(1.3, 2.6) * (1.6 if big else 1.0)
        rnd = r.random(4)
        self.front(z, x - 0.15, x + 0.15, 0.0, trunk_h + crown * 0.5,
                   self.seg(VEGETATION, Part.TRUNK, Surface.FRONT, z, rnd=rnd))
        for _ in range(int(r.integers(3, 6))):
            cx = x + r.uniform(-0.6, 0.6) * crown
            cy = trunk_h + crown * r.uniform(0.6, 1.3)
            rx, ry = crown * r.uniform(0.6, 1.0), crown * r.uniform(0.6, 1.0)
            seg = self.seg(VEGETATION, Part.BODY, Surface.FRONT, z, rnd=rnd)
            self.front_ellipse(z, cx, cy, rx, ry, seg)

    def place_trees(self):
        r = self.rng
        for side in (-1, 1):
            if r.random() < 0.5:
                x = self.kerb_x(side) + side * 0.8
                z = r.uniform(3.0, 12.0)
                step = r.uniform(7.0, 15.0)
                while z < min(self.z_end, 90.0):
                    self.queue(z, functools.partial(self.tree, x, z))
                    z += step * r.uniform(0.8, 1.2)

    def place_poles(self):
        r = self.rng
        for side in (-1, 1):
            x = self.kerb_x(side) + side * 0.45
            if r.random() < 0.75:
                z, step = r.uniform(4.0, 20.0), r.uniform(18.0, 35.0)
                while z < min(self.z_end, 110.0):
                    self.queue(z, functools.partial(self.street_lamp, x, z, side))
                    z += step
            for _ in range(int(r.integers(0, 4))):
                z = r.uniform(4.0, 60.0)
                self.queue(z, functools.partial(self.sign_post, x + side * 0.3, z))
        if r.random() < 0.5:
            z = r.uniform(12.0, 45.0)
            for side in (-1, 1):
                x = self.kerb_x(side) + side * 0.5
                self.queue(z, functools.partial(self.signal_post, x, z, side))

    def street_lamp(self, x, z, side):
        r = self.rng
        height = r.uniform(6.0, 9.0)
        pole = self.seg(POLE, Part.BODY, Surface.FRONT, z)
        self.front(z, x - 0.09, x + 0.09, 0.0, height, pole)
        arm_end = x - side * r.uniform(1.0, 2.2)
        self.front_line(z, [x, arm_end], [height, height], 0.12, pole)
        self.front(z, min(arm_end, arm_end - side * 0.6), max(arm_end, arm_end - side * 0.6),
                   height - 0.25, height + 0.05, pole)
        lamp = self.seg(POLE, Part.LIGHT, Surface.FRONT, z)
        lx = arm_end - side * 0.3
        self.front(z, lx - 0.25, lx + 0.25, height - 0.32, height - 0.22, lamp)
        self.lights.append(Light(lx, height - 0.3, z, 0.3, "lamp", ground=True))

    def sign_post(self, x, z):
        r = self.rng
        top = r.uniform(2.2, 3.0)
        self.front(z, x - 0.04, x + 0.04, 0.0, top, self.seg(POLE, Part.BODY, Surface.FRONT, z))
        size = r.uniform(0.55, 0.85)
        cy = top + size * 0.4
        rnd = r.random(4)
        outer = self.seg(TRAFFIC_SIGN, Part.BODY, Surface.FRONT, z, rnd=rnd)
        inner = self.seg(TRAFFIC_SIGN, Part.INNER, Surface.FRONT, z, rnd=rnd)
        shape = r.choice(["circle", "triangle", "square", "diamond"])
        for seg, k in ((outer, 0.5), (inner, 0.36)):
            h = size * k
            if shape == "circle":
                self.front_ellipse(z, x, cy, h, h, seg)
            elif shape == "triangle":
                xs = [x - h * 1.1, x + h * 1.1, x]
                self.front_poly(z, xs, [cy - h * 0.8, cy - h * 0.8, cy + h * 1.1], seg)
            elif shape == "square":
                self.front(z, x - h, x + h, cy - h, cy + h, seg)
            else:
                xs = [x - h * 1.2, x, x + h * 1.2, x]
                self.front_poly(z, xs, [cy, cy - h * 1.2, cy, cy + h * 1.2], seg)

    def signal_post(self, x, z, side):
        """A traffic-light pole at the kerb and, sometimes, a mast arm over the road."""
        r = self.rng
        top = r.uniform(2.6, 3.4)
        pole = self.seg(POLE, Part.BODY, Surface.FRONT, z)
        self.front(z, x - 0.08, x + 0.08, 0.0, top, pole)
        state = int(r.integers(0, 3))
        self.signal_head(x, top + 0.5, z, state)
        if r.random() < 0.6:
            mast_y = r.uniform(5.2, 6.2)
            end = x - side * r.uniform(3.0, 6.0)
            self.front(z, x - 0.1, x + 0.1, 0.0, mast_y, pole)
            self.front_line(z, [x, end], [mast_y, mast_y], 0.14, pole)
            self.signal_head(end, mast_y - 0.55, z, state)

    def signal_head(self, x, cy, z, state):
        """Housing with three lenses (red, yellow, green from the top); ``state`` is lit."""
        rnd = self.rng.random(4)
        self.front(z, x - 0.17, x + 0.17, cy - 0.47, cy + 0.47,
                   self.seg(TRAFFIC_LIGHT, Part.BODY, Surface.FRONT, z, rnd=rnd))
        for i, kind in enumerate(("red", "yellow", "green")):
            ly = cy + 0.29 - 0.29 * i
            # rnd[0] tells the style which lens this is, rnd[1] < 0.5 that it is lit.
            lens_rnd = (i / 2.0, 0.0 if i == state else 1.0, rnd[2], rnd[3])
            lens = self.seg(TRAFFIC_LIGHT, Part.LIGHT, Surface.FRONT, z, rnd=lens_rnd)
            self.front_ellipse(z, x, ly, 0.1, 0.1, lens)
            if i == state:
                self.lights.append(Light(x, ly, z, 0.1, kind))

    # ---- vehicles ----------------------------------------------------------------------------
    def place_vehicles(self):
        r = self.rng
        z_max = min(self.z_end - 15.0, _THING_MAX_Z)
        tram_lane = int(r.integers(0, self.n_lanes)) if r.random() < 0.08 else -1
        own_lane = int(np.floor(-self.xl / self.lane_w))
        # Cars park in the outermost lane of a side (never the camera's own lane), which then
        # has no moving traffic.
        parking = {
            side: r.random() < 0.4 and lane != own_lane
            for side, lane in ((-1, 0), (1, self.n_lanes - 1))
        }
        for lane in range(self.n_lanes):
            if (lane == 0 and parking[-1]) or (lane == self.n_lanes - 1 and parking[1]):
                continue
            xc = self.xl + (lane + 0.5) * self.lane_w
            oncoming = self.two_way and lane < self.n_lanes // 2
            z = r.uniform(7.0, 14.0) if lane == own_lane else r.uniform(3.0, 12.0)
            while z < z_max:
                if lane == tram_lane:
                    kind = TRAIN
                else:
                    kind = r.choice([CAR, TRUCK, BUS], p=[0.8, 0.1, 0.1])
                length = {
                    CAR: r.uniform(4.0, 4.8),
                    TRUCK: r.uniform(7.0, 9.5),
                    BUS: r.uniform(10.0, 12.5),
                    TRAIN: r.uniform(20.0, 30.0),
                }[kind]
                z = self._after_crossing(z, length)
                if r.random() < 0.75:
                    x = xc + r.uniform(-0.3, 0.3)
                    self.queue(z, functools.partial(self.vehicle, kind, x, z, length, oncoming))
                z += length + r.uniform(2.0, 18.0)
        for side in (-1, 1):
            if parking[side]:
                x = self.kerb_x(side) - side * 1.2
                z = r.uniform(3.0, 15.0)
                while z < z_max:
                    length = r.uniform(4.0, 4.7)
                    z = self._after_crossing(z, length)
                    if r.random() < 0.8:
                        self.queue(z, functools.partial(self.vehicle, CAR, x, z, length, False))
                    z += length + r.uniform(1.0, 8.0)

    def _after_crossing(self, z, length):
        """Move a vehicle that would stand on the zebra crossing to just behind it."""
        c = self.crossing_z
        if c is not None and z < c + 3.5 and z + length > c - 1.0:
            return c + 3.5
        return z

    def vehicle(self, kind, x, z0, length, oncoming):
        r = self.rng
        inst = self.new_instance(kind)
        rnd = r.random(4)
        width = {CAR: r.uniform(1.7, 1.9), TRUCK: 2.5, BUS: 2.55, TRAIN: 2.65}[kind]
        x0, x1, z1 = x - width / 2, x + width / 2, z0 + length
        self.shadow(x0 - 0.15, x1 + 0.15, z0 - 0.2, z1 + 0.2)
        if kind == CAR:
            self._wheels(kind, x0, x1, z0, z1, 0.32, inst)
            self._body_box(kind, x0, x1, 0.28, 0.95, z0, z1, inst, rnd)
            cab = (z0 + 1.1, z1 - 0.7) if oncoming else (z0 + 0.7, z1 - 1.1)
            top = r.uniform(1.38, 1.55)
            self._cabin(kind, x0 + 0.12, x1 - 0.12, 0.95, top, cab[0], cab[1], inst, rnd)
        elif kind == TRUCK:
            cab, cargo_rnd = 2.3, r.random(4)
            top = r.uniform(3.2, 3.8)
            self._wheels(kind, x0, x1, z0, z1, 0.5, inst)
            # The nearer part is drawn last: the cab when oncoming, the cargo box otherwise.
            if oncoming:
                self._body_box(kind, x0, x1, 0.5, top, z0 + cab + 0.3, z1, inst, cargo_rnd)
                self._body_box(kind, x0, x1, 0.5, 2.9, z0, z0 + cab, inst, rnd)
                self._windscreen(kind, x0, x1, z0, 1.7, 2.7, inst)
            else:
                self._body_box(kind, x0, x1, 0.5, 2.9, z1 - cab, z1, inst, rnd)
                self._body_box(kind, x0, x1, 0.5, top, z0, z1 - cab - 0.3, inst, cargo_rnd)
        else:
            top = 3.1 if kind == BUS else 3.5
            self._wheels(kind, x0, x1, z0, z1, 0.5, inst)
            self._body_box(kind, x0, x1, 0.35, top, z0, z1, inst, rnd)
            self._side_windows(kind, x0, x1, z0, z1, 1.2, top - 0.6, inst)
            low = 1.2 if oncoming or kind == TRAIN else 1.6
            self._windscreen(kind, x0, x1, z0, low, top - 0.4, inst)
        self._vehicle_lights(kind, x0, x1, z0, oncoming, inst)

    def _body_box(self, kind, x0, x1, y0, y1, z0, z1, inst, rnd):
        front, side = self.box_segs(kind, Part.BODY, x0, x1, z0, inst, rnd)
        top = self.seg(kind, Part.BODY, Surface.HORIZONTAL, y1, inst, rnd)
        self.box(x0, x1, y0, y1, z0, z1, front, side, top)

    def _cabin(self, kind, x0, x1, y0, y1, z0, z1, inst, rnd):
        self._body_box(kind, x0, x1, y0, y1, z0, z1, inst, rnd)
        glass_front, glass_side = self.box_segs(kind, Part.WINDOW, x0, x1, z0, inst, rnd)
        self.front(z0, x0 + 0.08, x1 - 0.08, y0 + 0.05, y1 - 0.07, glass_front)
        side_x = x0 if x0 > 0 else x1
        if x0 > 0 or x1 < 0:
            self.side(side_x, z0 + 0.15, z1 - 0.15, y0 + 0.05, y1 - 0.08, glass_side)

    def _side_windows(self, kind, x0, x1, z0, z1, y0, y1, inst):
        if not (x0 > 0 or x1 < 0):
            return
        side_x = x0 if x0 > 0 else x1
        z = z0 + 1.5
        while z + 1.2 < z1 - 0.5:
            glass = self.seg(kind, Part.WINDOW, Surface.SIDE, side_x, inst)
            self.side(side_x, z, z + 1.2, y0, y1, glass)
            z += 1.45

    def _windscreen(self, kind, x0, x1, z0, y0, y1, inst):
        glass = self.seg(kind, Part.WINDOW, Surface.FRONT, z0, inst)
        self.front(z0, x0 + 0.15, x1 - 0.15, y0, y1, glass)

    def _wheels(self, kind, x0, x1, z0, z1, radius, inst):
        """Wheels on the visible side and at the bottom corners of the near face."""
        if x0 > 0 or x1 < 0:
            side_x = x0 if x0 > 0 else x1
            for zc in (z0 + radius + 0.4, z1 - radius - 0.4):
                if zc - radius <= _Z_NEAR:
                    continue
                # The wheel is a circle on the side plane: its image is close to an ellipse
                # spanning the projections of its front and back (u) and top and bottom (v).
                xs, zs = [side_x, side_x], [zc - radius, zc + radius]
                u, _ = self.cam.project(xs, [radius, radius], zs)
                _, v = self.cam.project(xs, [2 * radius, 0.0], [zc, zc])
                seg = self.seg(kind, Part.TYRE, Surface.SIDE, side_x, inst)
                self.canvas.ellipse(min(u), v[0], max(u), v[1], seg)
        tyre = self.seg(kind, Part.TYRE, Surface.FRONT, z0, inst)
        self.front(z0, x0 + 0.05, x0 + 0.3, 0.0, radius * 1.1, tyre)
        self.front(z0, x1 - 0.3, x1 - 0.05, 0.0, radius * 1.1, tyre)

    def _vehicle_lights(self, kind, x0, x1, z0, oncoming, inst):
        y = 0.75 if kind == CAR else 0.9
        name = "head" if oncoming or kind == TRAIN else "tail"
        # rnd[0] tells the style head (1) from tail (0) lights.
        rnd = (1.0 if name == "head" else 0.0, 0.0, 0.0, 0.0)
        light = self.seg(kind, Part.LIGHT, Surface.FRONT, z0, inst, rnd=rnd)
        for xa in (x0 + 0.1, x1 - 0.4):
            self.front(z0, xa, xa + 0.3, y, y + 0.16, light)
            self.lights.append(Light(xa + 0.15, y + 0.08, z0 - 0.05, 0.15, name))

    # ---- people and two-wheelers -------------------------------------------------------------
    def place_people(self):
        r = self.rng
        for side in (-1, 1):
            kerb, outer = self.kerb_x(side), self.sidewalk_outer(side)
            for _ in range(int(r.poisson(3.0))):
                z = r.uniform(3.0, min(self.z_end - 10.0, 50.0))
                x = r.uniform(min(kerb, outer) + 0.3, max(kerb, outer) - 0.3)
                self.queue(z, functools.partial(self.pedestrian, x, _KERB, z))
        if self.crossing_z is not None:
            for _ in range(int(r.integers(0, 4))):
                z = self.crossing_z + r.uniform(0.5, 2.5)
                x = r.uniform(self.xl + 0.5, self.xr - 0.5)
                self.queue(z, functools.partial(self.pedestrian, x, 0.0, z))

    def pedestrian(self, x, ground, z):
        """A standing or walking person on the plane z, feet at (x, ground)."""
        r = self.rng
        inst = self.new_instance(PERSON)
        rnd = r.random(4)
        h, g = r.uniform(1.55, 1.95), ground
        self.shadow(x - 0.3, x + 0.3, z - 0.2, z + 0.3)
        lower = self.seg(PERSON, Part.LOWER, Surface.FRONT, z, inst, rnd)
        stride = r.uniform(0.0, 0.22)
        hip_y = g + 0.47 * h
        for sgn in (-1, 1):
            xs = [x + sgn * 0.03, x + sgn * 0.16, x + sgn * (0.07 + stride),
                  x + sgn * (stride - 0.05)]
            self.front_poly(z, xs, [hip_y + 0.03 * h, hip_y + 0.03 * h, g, g], lower)
        shoulder_y = hip_y + 0.36 * h
        swing = r.uniform(-0.1, 0.1)
        hands = [(x - 0.25 + swing, hip_y - 0.02), (x + 0.25 + swing, hip_y - 0.02)]
        self._upper_body(PERSON, inst, rnd, z, x, x, hip_y, shoulder_y, hands, h)

    def rider(self, hip_x, hip_y, foot_x, foot_y, hand_x, hand_y, z):
        """A person sitting on a two-wheeler (side view): bent legs, leaning torso."""
        r = self.rng
        inst = self.new_instance(RIDER)
        rnd = r.random(4)
        h = r.uniform(1.6, 1.9)
        lower = self.seg(RIDER, Part.LOWER, Surface.FRONT, z, inst, rnd)
        knee_x, knee_y = hip_x + (foot_x - hip_x) * 1.2 + (hand_x - hip_x) * 0.3, hip_y - 0.1
        self.front_line(z, [hip_x, knee_x, foot_x], [hip_y, knee_y, foot_y], 0.16, lower)
        # The torso leans a third of the way towards the handle bar.
        torso_x = hip_x + (hand_x - hip_x) * 0.35
        shoulder_y = hip_y + 0.34 * h
        hands = [(hand_x, hand_y)]
        self._upper_body(RIDER, inst, rnd, z, torso_x, hip_x, hip_y, shoulder_y, hands, h)

    def _upper_body(self, class_id, inst, rnd, z, torso_x, hip_x, hip_y, shoulder_y, hands, h):
        """Torso (shoulders at torso_x, hips at hip_x), arms reaching ``hands``, and the head."""
        top = self.seg(class_id, Part.BODY, Surface.FRONT, z, inst, rnd)
        xs = [torso_x - 0.19, torso_x + 0.19, hip_x + 0.16, hip_x - 0.16]
        self.front_poly(z, xs, [shoulder_y, shoulder_y, hip_y - 0.05, hip_y - 0.05], top)
        for hand_x, hand_y in hands:
            shoulder_x = torso_x + (0.15 if hand_x >= torso_x else -0.15)
            self.front_line(z, [shoulder_x, hand_x], [shoulder_y - 0.03, hand_y], 0.09, top)
        skin = self.seg(class_id, Part.SKIN, Surface.FRONT, z, inst, rnd)
        self.front_ellipse(z, torso_x, shoulder_y + 0.1 * h, 0.06 * h, 0.084 * h, skin)

    def place_two_wheelers(self):
        r = self.rng
        # Riders crossing or riding along the street, drawn from the side.
        for _ in range(int(r.poisson(1.2))):
            z = r.uniform(5.0, min(self.z_end - 10.0, 45.0))
            x = r.uniform(self.xl + 1.0, self.xr - 1.0)
            kind = BICYCLE if r.random() < 0.6 else MOTORCYCLE
            self.queue(z, functools.partial(self.two_wheeler, kind, x, 0.0, z, ridden=True))
        # Parked bicycles on the sidewalks.
        for side in (-1, 1):
            if r.random() < 0.35:
                kerb, outer = self.kerb_x(side), self.sidewalk_outer(side)
                z = r.uniform(4.0, 30.0)
                for k in range(int(r.integers(1, 4))):
                    x = (kerb + outer) / 2 + r.uniform(-0.3, 0.3)
                    kind = BICYCLE if r.random() < 0.75 else MOTORCYCLE
                    zz = z + 0.8 * k
                    draw = functools.partial(self.two_wheeler, kind, x, _KERB, zz, ridden=False)
                    self.queue(zz, draw)

    def two_wheeler(self, kind, x, ground, z, ridden):
        """A bicycle or motorcycle in side view (heading left or right), optionally with a rider."""
        r = self.rng
        inst = self.new_instance(kind)
        rnd = r.random(4)
        d = 1 if r.random() < 0.5 else -1
        g = ground
        wheel_r = 0.34 if kind == BICYCLE else 0.32
        base = 1.05 if kind == BICYCLE else 1.4
        rear, fore = x - d * base / 2, x + d * base / 2
        self.shadow(min(rear, fore) - 0.3, max(rear, fore) + 0.3, z - 0.2, z + 0.4)
        tyre = self.seg(kind, Part.TYRE, Surface.FRONT, z, inst, rnd)
        spokes = self.seg(kind, Part.FRAME, Surface.FRONT, z, inst, rnd)
        for wx in (rear, fore):
            self.front_ellipse(z, wx, g + wheel_r, wheel_r, wheel_r, tyre)
            self.front_ellipse(z, wx, g + wheel_r, wheel_r * 0.8, wheel_r * 0.8, spokes)
        body = self.seg(kind, Part.BODY, Surface.FRONT, z, inst, rnd)
        seat = (x - d * 0.22, g + 0.92 if kind == BICYCLE else g + 0.82)
        bar = (x + d * 0.38, g + 1.0)
        hub_y = g + wheel_r
        if kind == BICYCLE:
            # Top tube and forks, then seat tube and chain stay, then down tube.
            self.front_line(z, [rear, seat[0], bar[0], fore], [hub_y, seat[1], bar[1], hub_y],
                            0.05, body)
            self.front_line(z, [rear, x, seat[0]], [hub_y, g + 0.3, seat[1]], 0.05, body)
            self.front_line(z, [x, bar[0] - d * 0.05], [g + 0.3, bar[1] - 0.15], 0.05, body)
        else:
            # Engine, tank and seat as one outline, then the front fork and the head light.
            xs = [rear + d * 0.25, x - d * 0.3, x + d * 0.45, fore - d * 0.1, x + d * 0.1,
                  rear + d * 0.35]
            ys = [g + 0.55, g + 0.85, g + 0.9, g + 0.5, g + 0.3, g + 0.35]
            self.front_poly(z, xs, ys, body)
            self.front_line(z, [x + d * 0.45, fore], [g + 1.0, hub_y], 0.07, body)
            light = self.seg(kind, Part.LIGHT, Surface.FRONT, z, inst, rnd=(1.0, 0.0, 0.0, 0.0))
            self.front_ellipse(z, x + d * 0.55, g + 0.85, 0.07, 0.07, light)
            self.lights.append(Light(x + d * 0.55, g + 0.85, z, 0.08, "head"))
        handle = [bar[0] - d * 0.1, bar[0] + d * 0.05]
        self.front_line(z, handle, [bar[1], bar[1] + 0.05], 0.05, body)
        if ridden:
            self.rider(seat[0], seat[1] + 0.08, x + d * 0.05, g + 0.3, bar[0], bar[1], z - 0.05)
