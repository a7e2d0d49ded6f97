"""Rendering a layout: per-pixel geometry, procedural textures, colours and shading.

:class:`SceneGeometry` recovers, for every pixel, the 3-D point it shows (from its segment's
surface), which gives depth for fog, world positions for lamp light and surface coordinates in
metres for textures (so a tiled sidewalk recedes in perspective). :func:`render_appearance` turns
a layout into a daylight image in one :class:`~.styles.Appearance`; the weather styles start from
that image (see :mod:`.weather`).
"""
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .geometry import Surface
from .street import SKY

__all__ = ["SceneGeometry", "render_appearance", "fbm", "blur"]

# Depth given to the sky (metres): far enough that fog hides it completely.
SKY_DEPTH = 1.0e4
_NOISE_TABLE_SIZE = 4096

class SceneGeometry:
    """
    Per-pixel quantities of one layout, computed once and shared by every domain's rendering.

    Args:
        layout (Layout): the scene.
        rng (np.random.Generator): draws the noise table behind every texture, so that all
            domains of a scene show the same asphalt grain and cloud shapes.

    Attributes:
        label, part, surface (np.ndarray): [H, W] uint8 maps from the segment table.
        rnd (np.ndarray): float32 [H, W, 4], the segment's random numbers.
        depth (np.ndarray): float32 [H, W] distance along the optical axis (metres).
        world (tuple[np.ndarray]): X, Y, Z float32 [H, W] world coordinates of each pixel.
        s, t (np.ndarray): float32 [H, W] surface coordinates (metres) for textures.
        footprint (np.ndarray): float32 [H, W] metres covered by one pixel (depth / focal).
        ground (np.ndarray): bool [H, W], pixels on the ground or a sidewalk.
        rows, cols (np.ndarray): float32 [H, W] pixel-centre coordinates.
    """

    def __init__(self, layout, rng):
        self.layout = layout
        cam = layout.camera
        h, w = cam.image_hw
        table = layout.segments
        seg = layout.seg
        self.label = table.class_id[seg]
        self.part = table.part[seg]
        self.surface = table.surface[seg]
        self.rnd = table.rnd[seg]
        param = table.param[seg].astype(np.float32)
        self.noise_table = rng.random(_NOISE_TABLE_SIZE).astype(np.float32)

        u = (np.arange(w, dtype=np.float32) + 0.5)[None, :] - cam.cx
        v = (np.arange(h, dtype=np.float32) + 0.5)[:, None] - cam.horizon
        f, cam_h = cam.focal, cam.height
        u, v = np.broadcast_to(u, (h, w)), np.broadcast_to(v, (h, w))
        # Depth of each surface kind; divisions are guarded because rounding puts a few pixels
        # of a plane on the wrong side of the horizon or the principal point.
        with np.errstate(divide="ignore", invalid="ignore"):
            z_horizontal = f * (cam_h - param) / v
            z_side = f * param / u
        z = np.select(
            [self.surface == Surface.HORIZONTAL, self.surface == Surface.SIDE,
             self.surface == Surface.FRONT],
            [z_horizontal, z_side, param],
            default=SKY_DEPTH,
        )
        z = np.where(np.isfinite(z) & (z > 0), z, SKY_DEPTH)
        z = np.minimum(z, SKY_DEPTH).astype(np.float32)
        x_w = np.where(self.surface == Surface.SIDE, param, u * z / f)
        y_w = np.where(self.surface == Surface.HORIZONTAL, param, cam_h - v * z / f)
        self.depth = z
        self.world = (x_w.astype(np.float32), y_w.astype(np.float32), z)
        # Textures run along the surface: ground (x, z), facades (z, y), fronts (x, y).
        self.s = np.where(self.surface == Surface.SIDE, z, x_w).astype(np.float32)
        self.t = np.where(self.surface == Surface.HORIZONTAL, z, y_w).astype(np.float32)
        self.footprint = z / f
        # The ground and the raised sidewalks (not car roofs or hedge tops).
        self.ground = (self.surface == Surface.HORIZONTAL) & (param < 0.2)
        self.image_hw = (h, w)
        # Pixel centres, for effects in image space (clouds, glows).
        self.rows, self.cols = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

    def mask(self, class_id, part=None):
        """bool [H, W]: pixels of ``class_id`` (and of ``part`` if given)."""
        m = self.label == class_id
        return m if part is None else m & (self.part == part)

def blur(image, sigma):
    """Gaussian blur over the spatial axes of an [H, W] or [H, W, C] float image."""
    if sigma <= 0:
        return image
    sigmas = (sigma, sigma) + (0,) * (image.ndim - 2)
    return ndimage.gaussian_filter(image, sigmas, mode="nearest")

def _lattice_value(table, i, j):
    # Hash of integer lattice coordinates into the random table (large primes decorrelate axes).
    idx = (i * 73856093) ^ (j * 19349663)
    return table[idx & (_NOISE_TABLE_SIZE - 1)]

def value_noise(table, s, t, period):
    """Smooth value noise in [0, 1] at the given period (same units as ``s`` and ``t``)."""
    gs, gt = s / period, t / period
    i0, j0 = np.floor(gs), np.floor(gt)
    fs, ft = gs - i0, gt - j0
    fs, ft = fs * fs * (3 - 2 * fs), ft * ft * (3 - 2 * ft)
    i0, j0 = i0.astype(np.int64), j0.astype(np.int64)
    a = _lattice_value(table, i0, j0)
    b = _lattice_value(table, i0 + 1, j0)
    c = _lattice_value(table, i0, j0 + 1)
    d = _lattice_value(table, i0 + 1, j0 + 1)
    return (a + (b - a) * fs) * (1 - ft) + (c + (d - c) * fs) * ft

def fbm(table, s, t, period, octaves=3):
    """Fractal noise in [0, 1]: octaves of value noise, each half the period and amplitude."""
    total, norm, amp = 0.0, 0.0, 1.0
    for k in range(octaves):
        total = total + amp * value_noise(table, s + 17.0 * k, t - 11.0 * k, period / 2**k)
        norm += amp
        amp *= 0.5
    return total / norm

def pattern(kind, period, table, s, t):
    """
    Texture weight in [0, 1] of a pattern kind at surface coordinates (s, t).

    Args:
        kind (str): "flat", "noise", "tiles", "bricks", "stripes_s", "stripes_t", "checker",
            "dots", "lattice" or "blotches".
        period (float): the pattern's scale in metres.

    Returns:
        (weights, mean): weights [N] and the value they fade to where the pattern is finer
        than the pixels (anti-aliasing).
    """
    if kind == "flat":
        return np.zeros_like(s), 0.0
    if kind == "noise":
        return fbm(table, s, t, period), 0.5
    if kind == "blotches":
        return (fbm(table, s, t, period) > 0.55).astype(np.float32), 0.4
    if kind == "stripes_s":
        return 0.5 + 0.5 * np.sin(2 * np.pi * s / period), 0.5
    if kind == "stripes_t":
        return 0.5 + 0.5 * np.sin(2 * np.pi * t / period), 0.5
    if kind == "checker":
        return ((np.floor(s / period) + np.floor(t / period)) % 2).astype(np.float32), 0.5
    if kind == "dots":
        fs, ft = s / period - np.floor(s / period) - 0.5, t / period - np.floor(t / period) - 0.5
        return (fs * fs + ft * ft < 0.09).astype(np.float32), 0.28
    if kind in ("tiles", "bricks", "lattice"):
        gt = t / (period * (0.5 if kind == "bricks" else 1.0))
        row = np.floor(gt)
        gs = s / period + (0.5 * (row % 2) if kind == "bricks" else 0.0)
        ds, dt = np.abs(gs - np.round(gs)), np.abs(gt - np.round(gt))
        width = 0.12 if kind == "lattice" else 0.05
        joint = ((ds < width) | (dt < width)).astype(np.float32)
        if kind == "lattice":
            return joint, 0.45
        # Each tile or brick gets its own shade so the joints are not the only structure.
        cell = _lattice_value(table, np.floor(gs).astype(np.int64), row.astype(np.int64))
        return np.maximum(joint, 0.45 * cell), 0.35
    raise ValueError(f"unknown SynthDG texture pattern {kind!r}")

def _segment_colours(appearance, table):
    """Primary and secondary colour (float32 [N, 3] in [0, 1]) of every segment."""
    keys = table.class_id.astype(np.int64) * 16 + table.part
    c1 = np.zeros((len(keys), 3), np.float32)
    c2 = np.zeros((len(keys), 3), np.float32)
    for key in np.flatnonzero(np.bincount(keys)):
        idx = np.flatnonzero(keys == key)
        c1[idx], c2[idx] = appearance.segment_colours(*divmod(int(key), 16), table.rnd[idx])
    return c1, c2

def render_appearance(geom, appearance):
    """
    Daylight rendering of a scene in one appearance (palette, textures, sun side).

    Args:
        geom (SceneGeometry): the scene.
        appearance (Appearance): colours and textures per class and part.

    Returns:
        np.ndarray: float32 [H, W, 3] image in [0, 1].
    """
    layout = geom.layout
    h, w = geom.image_hw
    c1, c2 = _segment_colours(appearance, layout.segments)
    seg = layout.seg
    base1, base2 = c1[seg], c2[seg]

    weight = np.zeros((h, w), np.float32)
    keys = geom.label.astype(np.int32) * 16 + geom.part
    for key in np.flatnonzero(np.bincount(keys.ravel())):
        class_id, part = divmod(int(key), 16)
        look = appearance.look(class_id, part)
        if look.texture[0] == "flat" or class_id == SKY:
            continue
        m = keys == key
        s, t = geom.s[m], geom.t[m]
        wgt, mean = pattern(look.texture[0], look.texture[1], geom.noise_table, s, t)
        # Fade patterns that are finer than ~3 pixels towards their mean (no moire).
        fade = np.clip((look.texture[1] / geom.footprint[m] - 2.0) / 4.0, 0.0, 1.0)
        weight[m] = mean + (wgt - mean) * fade
    image = base1 + (base2 - base1) * weight[..., None]

    sky = geom.label == SKY
    image[sky] = _sky(geom, appearance, sky)
    image *= _shading(geom, appearance)[..., None]
    image *= 1.0 - 0.5 * _shadow_map(geom)[..., None]
    return np.clip(image, 0.0, 1.0)

def _sky(geom, appearance, mask):
    """Sky colours of the pixels in ``mask``: a gradient from horizon to zenith, with clouds."""
    h, w = geom.image_hw
    horizon = geom.layout.camera.horizon
    sky = appearance.sky
    rows, cols = geom.rows[mask], geom.cols[mask]
    up = np.clip((horizon - rows) / max(horizon, 1.0), 0.0, 1.0)[:, None] ** 0.7
    low, high = np.asarray(sky.horizon, np.float32) / 255, np.asarray(sky.zenith, np.float32) / 255
    grad = low * (1 - up) + high * up
    # Clouds: noise stretched horizontally, in image units so that they look far away.
    n = fbm(geom.noise_table, cols / w * 6.0, rows / h * 14.0, 1.0, 4)
    cover = np.clip((n - (1.0 - sky.cloudiness)) * 4.0, 0.0, 1.0)[:, None]
    return grad * (1 - cover) + np.asarray(sky.cloud, np.float32) / 255 * cover

def _shading(geom, appearance):
    """Lambert-like factor per surface orientation, and ambient occlusion near the ground."""
    surface, x_w, y_w = geom.surface, geom.world[0], geom.world[1]
    lit_side = appearance.sun_side  # -1: facades on the left are lit, +1: on the right
    side = np.where(np.sign(x_w) == lit_side, 0.97, 0.7)
    factor = np.select(
        [surface == Surface.HORIZONTAL, surface == Surface.SIDE, surface == Surface.FRONT],
        [np.ones_like(x_w), side, np.full_like(x_w, 0.86)],
        default=1.0,
    )
    vertical = (surface == Surface.SIDE) | (surface == Surface.FRONT)
    occlusion = 1.0 - 0.3 * np.exp(-np.maximum(y_w, 0.0) / 0.4)
    return np.where(vertical, factor * occlusion, factor).astype(np.float32)

def _shadow_map(geom):
    """Soft contact shadows under vehicles, people and two-wheelers, on the ground only."""
    h, w = geom.image_hw
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for u, v in geom.layout.shadows:
        draw.polygon([(float(a), float(b)) for a, b in zip(u, v)], fill=255)
    shadow = blur(np.asarray(canvas, np.float32) / 255.0, 1.2 * w / 512)
    return np.where(geom.ground, shadow, 0.0)

