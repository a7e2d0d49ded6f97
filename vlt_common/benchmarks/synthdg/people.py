"""People: pedestrians on the sidewalks and crossings, and bicycles and motorcycles,
parked or ridden.

A mixin of :class:`.layout.StreetBuilder`; it draws with the primitives of
:class:`.street.StreetBase`.
"""
import functools

from .geometry import Part, Surface
from .street import BICYCLE, KERB, MOTORCYCLE, PERSON, RIDER, Light

__all__ = ["PeopleMixin"]

class PeopleMixin:
    """Pedestrians, riders and two-wheelers."""

    def place_people(self):
        r = self.rng
        for side in (-1, 1):
            kerb, outer = self.kerb_x(side), self.sidewalk_outer(side)
            for _ in range(int(r.poisson(3.0))):
                z = r.uniform(3.0, min(self.z_end - 10.0, 50.0))
                x = r.uniform(min(kerb, outer) + 0.3, max(kerb, outer) - 0.3)
                self.queue(z, functools.partial(self.pedestrian, x, KERB, z))
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
                    draw = functools.partial(self.two_wheeler, kind, x, KERB, zz, ridden=False)
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
