"""The adverse-condition styles: fog, night, rain and snow, applied to a daylight rendering.

Each effect is deliberately strong, so that a model trained on the source shows a clear domain
gap: fog loses contrast towards a grey-white haze that grows with depth (and with height in the
image), night is dark and noisy with street lamps, lit windows, head and tail lights and their
glows, rain darkens, blurs and streaks the image and makes the ground glossy, snow covers the
ground and the vegetation, brightens the scene, lowers its contrast and adds flakes.
"""
import numpy as np
from PIL import Image, ImageDraw

from .geometry import Part, Surface
from .render import blur, fbm
from .street import BUILDING as _BUILDING
from .street import ROAD as _ROAD
from .street import SIDEWALK as _SIDEWALK
from .street import SKY as _SKY
from .street import TERRAIN as _TERRAIN
from .street import VEGETATION as _VEGETATION

__all__ = ["WEATHER"]

def _desaturate(image, keep):
    grey = image.mean(axis=-1, keepdims=True)
    return grey + (image - grey) * keep

def _haze(image, geom, visibility, airlight):
    """Koschmieder's model: image * t + airlight * (1 - t), t = exp(-3 depth / visibility)."""
    t = np.exp(-3.0 * geom.depth / visibility)[..., None]
    return image * t + np.asarray(airlight, np.float32) * (1.0 - t)

def _scale(geom):
    """Image size relative to the default 512-pixel width (sizes of blurs, flakes, glows)."""
    return geom.image_hw[1] / 512.0

def fog(image, geom, rng, appearance):
    """Dense fog: transmission falls with depth; the haze is brighter higher in the image."""
    h = geom.image_hw[0]
    visibility = rng.uniform(30.0, 70.0)
    level = rng.uniform(0.72, 0.82)
    # Airlight grows towards the top of the image (the sky glows through the fog).
    airlight = (level + 0.08 * (1.0 - geom.rows / h))[..., None] * np.array(
        [0.97, 0.99, 1.0], np.float32
    )
    # Even the nearest objects lose some contrast.
    t = (0.85 * np.exp(-3.0 * geom.depth / visibility))[..., None]
    image = image * t + airlight * (1.0 - t)
    image = _desaturate(image, 0.7)
    return blur(image, 0.6 * _scale(geom))

def night(image, geom, rng, appearance):
    """Night: ambient light, street-lamp pools, own head lights, emitters with glows, noise."""
    x_w, y_w, z_w = geom.world
    h, w = geom.image_hw
    albedo = image
    ambient = rng.uniform(0.04, 0.08) * np.array([0.75, 0.85, 1.0], np.float32)
    light = np.broadcast_to(ambient, (h, w, 3)).copy()
    lamp = np.asarray(appearance.lamp, np.float32) / 255
    for source in geom.layout.lights:
        if source.ground:
            d2 = (x_w - source.x) ** 2 + (y_w - source.y) ** 2 + (z_w - source.z) ** 2
            light += (1.1 * 9.0 / (9.0 + d2))[..., None] * lamp
    # The camera car's own head lights light the road ahead.
    road_ahead = (geom.surface == Surface.HORIZONTAL) & (z_w < 45.0)
    beam = np.exp(-z_w / 10.0) * np.exp(-((x_w / (1.2 + 0.25 * z_w)) ** 2)) * 0.9
    head = np.asarray(appearance.head, np.float32) / 255
    light += np.where(road_ahead, beam, 0.0)[..., None] * head
    out = albedo * light

    sky = geom.label == _SKY
    up = np.clip((geom.layout.camera.horizon - geom.rows) / h, 0.0, 1.0)[..., None]
    night_sky = np.array([0.12, 0.09, 0.1], np.float32) * (1 - up) + np.array(
        [0.01, 0.015, 0.05], np.float32
    ) * up
    out = np.where(sky[..., None], night_sky, out)

    # Emitters: lit windows, lamps and lenses shine with their own colour.
    lit_window = (geom.label == _BUILDING) & (geom.part == Part.WINDOW) & (geom.rnd[..., 2] < 0.35)
    warm = np.array([1.0, 0.78, 0.42], np.float32) * (0.55 + 0.45 * geom.rnd[..., 3:4])
    out = np.where(lit_window[..., None], warm, out)
    emitters = geom.part == Part.LIGHT
    out = np.where(emitters[..., None], np.minimum(albedo * 1.3, 1.0), out)
    out = out + _glows(geom, appearance)

    noise = 0.03 * rng.standard_normal((h, w, 1), dtype=np.float32)
    noise = noise + 0.012 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return blur(out + noise, 0.5 * _scale(geom))

def _glows(geom, appearance):
    """Gaussian halos around every light source, sized by its projected radius."""
    h, w = geom.image_hw
    cam = geom.layout.camera
    out = np.zeros((h, w, 3), np.float32)
    colours = {
        "lamp": appearance.lamp, "head": appearance.head, "tail": appearance.tail,
        "red": appearance.lenses[0], "yellow": appearance.lenses[1], "green": appearance.lenses[2],
    }
    for source in geom.layout.lights:
        if source.z <= 0.5:
            continue
        u, v = cam.project(source.x, source.y, source.z)
        sigma = 2.5 * source.radius * cam.scale(source.z) + 1.5 * _scale(geom)
        r = int(np.ceil(3 * sigma))
        u0, u1 = max(int(u) - r, 0), min(int(u) + r + 1, w)
        v0, v1 = max(int(v) - r, 0), min(int(v) + r + 1, h)
        if u0 >= u1 or v0 >= v1:
            continue
        d2 = (geom.cols[v0:v1, u0:u1] - u) ** 2 + (geom.rows[v0:v1, u0:u1] - v) ** 2
        strength = 0.7 if source.kind == "lamp" else 0.5
        colour = np.asarray(colours[source.kind], np.float32) / 255
        out[v0:v1, u0:u1] += (strength * np.exp(-d2 / (2 * sigma**2)))[..., None] * colour
    return out

def rain(image, geom, rng, appearance):
    """Rain: dark, desaturated, hazy and blurred, glossy wet ground, and rain streaks."""
    h, w = geom.image_hw
    scale = _scale(geom)
    tint = np.array([0.92, 0.96, 1.04], np.float32)
    out = _desaturate(image * rng.uniform(0.55, 0.7), 0.5) * tint
    out = _haze(out, geom, rng.uniform(90.0, 160.0), (0.36, 0.38, 0.41))
    # Wet ground: darker, with streaky reflections stretched along the image's vertical.
    sheen = fbm(geom.noise_table, geom.cols / (3.0 * scale), geom.rows / (40.0 * scale), 1.0, 2)
    wet = np.clip(out * 0.75 + 0.16 * np.clip(sheen - 0.35, 0, 1)[..., None], 0, 1)
    out = np.where(geom.ground[..., None], wet, out)
    out = blur(out, 1.0 * scale)

    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    n = int(0.004 * h * w)
    u, v = rng.uniform(0, w, n), rng.uniform(-0.1 * h, h, n)
    length = rng.uniform(8.0, 28.0, n) * scale
    angle = rng.uniform(-0.35, 0.35) + rng.normal(0.0, 0.04, n)
    u1, v1 = u + length * np.sin(angle), v + length * np.cos(angle)
    for a, b, c, d, value in zip(u, v, u1, v1, rng.integers(100, 231, n)):
        draw.line([(a, b), (c, d)], fill=int(value), width=1)
    streaks = blur(np.asarray(canvas, np.float32) / 255, 0.4 * scale)[..., None]
    return out + streaks * 0.45 * (0.9 - out)

def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)

def snow(image, geom, rng, appearance):
    """Snow: white ground cover (tyre tracks on the road), snowy trees, bright, low contrast."""
    h, w = geom.image_hw
    scale = _scale(geom)
    x_w = geom.world[0]
    horizontal = geom.surface == Surface.HORIZONTAL
    # How much of each kind of surface is covered (fraction of the noise range above threshold).
    level = np.select(
        [geom.label == _ROAD, geom.label == _SIDEWALK, geom.label == _TERRAIN,
         geom.label == _VEGETATION, horizontal],
        [0.5, 0.85, 0.95, 0.5, 0.9],
        default=0.0,
    ).astype(np.float32)
    snowy = level > 0
    cover = np.zeros((h, w), np.float32)
    n = fbm(geom.noise_table, geom.s[snowy], geom.t[snowy], 1.2)
    cover[snowy] = _smoothstep(n, 1.0 - level[snowy] - 0.08, 1.0 - level[snowy] + 0.08)
    tracks = np.zeros((h, w), np.float32)
    road = geom.label == _ROAD
    for centre in geom.layout.lane_centres:
        for offset in (-0.8, 0.8):
            tracks[road] += np.exp(-((x_w[road] - centre - offset) ** 2) / (2 * 0.22**2))
    tracks = np.clip(tracks, 0.0, 1.0)
    cover = cover * (1.0 - 0.85 * tracks)
    white = np.array([0.93, 0.95, 0.98], np.float32)
    out = image * (1.0 - 0.25 * tracks)[..., None]
    out = out * (1 - cover[..., None]) + white * cover[..., None]

    sky = (geom.label == _SKY)[..., None]
    overcast = (0.8 + 0.08 * (geom.rows / h))[..., None] * np.array([0.97, 0.98, 1.0], np.float32)
    out = np.where(sky, overcast, out)
    # Bright and flat: pull everything towards a light grey, then a light haze.
    out = out * 0.58 + 0.4 * np.array([0.92, 0.93, 0.96], np.float32)
    out = _haze(_desaturate(out, 0.8), geom, rng.uniform(80.0, 150.0), (0.88, 0.89, 0.92))

    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    n = int(0.006 * h * w)
    u, v = rng.uniform(0, w, n), rng.uniform(0, h, n)
    # Mostly small flakes, a few big near ones.
    radius = (0.4 + 1.8 * rng.random(n) ** 3) * scale
    for a, b, r, value in zip(u, v, radius, rng.integers(170, 256, n)):
        draw.ellipse([a - r, b - r, a + r, b + r], fill=int(value))
    flakes = blur(np.asarray(canvas, np.float32) / 255, 0.6 * scale)[..., None]
    return out + flakes * (0.97 - out)

# Domain name -> effect(image, geom, rng, appearance) -> image (float [H, W, 3]).
WEATHER = {"fog": fog, "night": night, "rain": rain, "snow": snow}
