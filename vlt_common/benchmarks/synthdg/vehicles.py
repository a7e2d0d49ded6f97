"""Vehicles in the lanes and parked: cars, trucks, buses and the odd tram, with their
bodies, windows, wheels and lights.

A mixin of :class:`.layout.StreetBuilder`; it draws with the primitives of
:class:`.street.StreetBase`.
"""
import functools

import numpy as np

from .geometry import Part, Surface
from .street import BUS, CAR, THING_MAX_Z, TRAIN, TRUCK, Z_NEAR, Light

__all__ = ["VehiclesMixin"]

class VehiclesMixin:
    """Cars, trucks, buses and trams, moving and parked."""

    def place_vehicles(self):
        r = self.rng
        z_max = min(self.z_end - 15.0, THING_MAX_Z)
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
                if zc - radius <= Z_NEAR:
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
