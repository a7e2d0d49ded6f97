"""The street's ground and surroundings: backdrop, building blocks, parks, the road with
its markings, kerbs and sidewalks, walls and fences along them, and trees.

A mixin of :class:`.layout.StreetBuilder`; it draws with the primitives of
:class:`.street.StreetBase`.
"""
import functools

from .geometry import Part, Surface
from .street import BUILDING, FENCE, KERB, ROAD, SIDEWALK, TERRAIN, VEGETATION, WALL, Z_NEAR

__all__ = ["SceneryMixin"]

class SceneryMixin:
    """Road, sidewalks, blocks, barriers and trees."""

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
        if z0 > Z_NEAR:
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
                za, zb = max(zc, Z_NEAR), zc + w_here
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
        while z > max(z0, Z_NEAR + 1.0):
            self.tree(x + side * r.uniform(1.0, 6.0), z, big=True)
            z -= r.uniform(3.0, 7.0)

    def street_ground(self):
        r, z_end = self.rng, self.z_end
        road = self.seg(ROAD, Part.BODY, Surface.HORIZONTAL, 0.0)
        self.horizontal(0.0, self.xl, self.xr, 0.0, z_end, road)
        for side in (-1, 1):
            kerb, outer, fx = self.kerb_x(side), self.sidewalk_outer(side), self.facade_x(side)
            walk = self.seg(SIDEWALK, Part.BODY, Surface.HORIZONTAL, KERB)
            self.horizontal(KERB, min(kerb, outer), max(kerb, outer), 0.0, z_end, walk)
            kerb_face = self.seg(SIDEWALK, Part.FRAME, Surface.SIDE, kerb)
            self.side(kerb, 0.0, z_end, 0.0, KERB, kerb_face)
            if self.terrain[side] > 0:
                grass = self.seg(TERRAIN, Part.BODY, Surface.HORIZONTAL, KERB)
                self.horizontal(KERB, min(outer, fx), max(outer, fx), 0.0, z_end, grass)
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
                top = KERB + height
                if kind == VEGETATION:
                    xo = x + side * r.uniform(0.6, 1.2)
                    seg = self.seg(VEGETATION, Part.BODY, Surface.HORIZONTAL, top)
                    self.horizontal(top, min(x, xo), max(x, xo), z, z1, seg)
                self.side(x, z, z1, KERB, top, self.seg(kind, Part.BODY, Surface.SIDE, x))
            z += length + r.uniform(2.0, 20.0)

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
