"""Street furniture on poles: street lamps, traffic signs and traffic lights.

A mixin of :class:`.layout.StreetBuilder`; it draws with the primitives of
:class:`.street.StreetBase`.
"""
import functools

from .geometry import Part, Surface
from .street import POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, Light

__all__ = ["SignsMixin"]

class SignsMixin:
    """Poles, street lamps, traffic signs and traffic lights."""

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
