"""The demo images: each class one distinctive object (shape x colour x texture) drawn at random
positions, scales and rotations on a noisy gradient background with clutter."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# class -> (shape, base colour or None for random, texture, aspect = width / height)
_LOOK: dict[int, tuple[str, tuple[int, int, int] | None, str, float]] = {
    0: ("ring", (240, 240, 240), "solid", 1.0),  # never drawn
    1: ("figure", None, "figure", 0.5),
    2: ("wheels", (35, 35, 35), "solid", 2.0),
    3: ("car", (205, 30, 30), "solid", 1.8),
    4: ("diamond", (240, 140, 20), "dstripes", 1.0),
    5: ("plane", (225, 225, 232), "solid", 1.3),
    6: ("rect", (240, 200, 20), "vstripes", 2.0),
    7: ("rect", (25, 115, 55), "checker", 3.0),
    8: ("truck", (30, 60, 205), "solid", 1.6),
    9: ("boat", (25, 190, 215), "solid", 1.2),
    10: ("rect", (28, 28, 28), "lights", 0.4),
    11: ("triangle", (215, 30, 25), "solid", 0.8),
    12: ("diamond", (25, 150, 65), "border", 1.0),  # never drawn
    13: ("octagon", (205, 25, 25), "border", 1.0),
    14: ("capsule", (150, 150, 158), "hstripes", 0.35),
    15: ("bench", (135, 85, 40), "solid", 2.5),
    16: ("star", (245, 220, 35), "solid", 1.0),
    17: ("pentagon", (200, 45, 200), "dots", 1.0),
    18: ("circle", (140, 92, 45), "dots", 1.4),
    19: ("hexagon", (110, 55, 165), "hstripes", 1.0),
}


def _regular(cx: float, cy: float, rx: float, ry: float, sides: int, start: float = -math.pi / 2,
             inner: float | None = None) -> list[tuple[float, float]]:
    points = []
    steps = sides * (2 if inner else 1)
    for k in range(steps):
        angle = start + 2 * math.pi * k / steps
        scale = inner if (inner and k % 2) else 1.0
        points.append((cx + rx * scale * math.cos(angle), cy + ry * scale * math.sin(angle)))
    return points


def _shape_mask(shape: str, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    x1, y1 = w - 1, h - 1
    cx, cy = x1 / 2, y1 / 2
    if shape == "circle":
        d.ellipse((0, 0, x1, y1), fill=255)
    elif shape == "ring":
        d.ellipse((0, 0, x1, y1), fill=255)
        d.ellipse((w * 0.28, h * 0.28, x1 - w * 0.28, y1 - h * 0.28), fill=0)
    elif shape == "rect":
        d.rectangle((0, 0, x1, y1), fill=255)
    elif shape == "triangle":
        d.polygon([(cx, 0), (x1, y1), (0, y1)], fill=255)
    elif shape == "diamond":
        d.polygon([(cx, 0), (x1, cy), (cx, y1), (0, cy)], fill=255)
    elif shape == "star":
        d.polygon(_regular(cx, cy, cx, cy, 5, inner=0.45), fill=255)
    elif shape in ("pentagon", "hexagon", "octagon"):
        sides = {"pentagon": 5, "hexagon": 6, "octagon": 8}[shape]
        d.polygon(_regular(cx, cy, cx, cy, sides, start=-math.pi / 2 + (math.pi / 8 if sides == 8 else 0)), fill=255)
    elif shape == "figure":  # head over a body with legs
        d.ellipse((w * 0.28, 0, x1 - w * 0.28, h * 0.24), fill=255)
        d.polygon([(w * 0.15, h * 0.26), (x1 - w * 0.15, h * 0.26), (x1, h * 0.62), (0, h * 0.62)], fill=255)
        d.rectangle((w * 0.18, h * 0.6, w * 0.44, y1), fill=255)
        d.rectangle((x1 - w * 0.44, h * 0.6, x1 - w * 0.18, y1), fill=255)
    elif shape == "wheels":  # two rings joined by a bar
        r = w * 0.25
        width = max(1, round(r * 0.4))
        for ccx in (r, x1 - r):
            d.ellipse((ccx - r, cy - r, ccx + r, cy + r), outline=255, width=width)
        d.line((r, cy, x1 - r, cy), fill=255, width=width)
    elif shape == "car":  # body and cabin
        d.rectangle((0, h * 0.42, x1, y1 * 0.85), fill=255)
        d.rectangle((w * 0.25, 0, x1 - w * 0.2, h * 0.45), fill=255)
        d.ellipse((w * 0.1, h * 0.65, w * 0.32, y1), fill=255)
        d.ellipse((x1 - w * 0.32, h * 0.65, x1 - w * 0.1, y1), fill=255)
    elif shape == "truck":  # cargo box and a lower cabin
        d.rectangle((0, 0, w * 0.68, y1), fill=255)
        d.rectangle((w * 0.72, h * 0.35, x1, y1), fill=255)
    elif shape == "plane":  # fuselage, wings, tail
        d.rectangle((0, h * 0.42, x1, h * 0.58), fill=255)
        d.polygon([(w * 0.45, 0), (w * 0.62, 0), (w * 0.56, y1), (w * 0.45, y1)], fill=255)
        d.rectangle((0, h * 0.25, w * 0.1, h * 0.75), fill=255)
    elif shape == "boat":  # hull and sail
        d.polygon([(0, h * 0.6), (x1, h * 0.6), (w * 0.8, y1), (w * 0.2, y1)], fill=255)
        d.polygon([(w * 0.5, 0), (w * 0.5, h * 0.55), (w * 0.15, h * 0.55)], fill=255)
    elif shape == "capsule":  # pole with a rounded head
        d.rounded_rectangle((0, 0, x1, h * 0.45), radius=max(1, w // 3), fill=255)
        d.rectangle((w * 0.35, h * 0.4, x1 - w * 0.35, y1), fill=255)
    elif shape == "bench":  # seat, back rest, legs
        d.rectangle((0, 0, x1, h * 0.22), fill=255)
        d.rectangle((0, h * 0.38, x1, h * 0.6), fill=255)
        d.rectangle((w * 0.08, h * 0.5, w * 0.16, y1), fill=255)
        d.rectangle((x1 - w * 0.16, h * 0.5, x1 - w * 0.08, y1), fill=255)
    else:  # pragma: no cover - table and code are written together
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _texture(kind: str, w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) float image of the object's surface."""
    out = np.empty((h, w, 3), dtype=np.float32)
    out[:] = colour
    second = np.clip(colour * 0.35 + (255 if colour.mean() < 90 else 0) * 0.5, 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(2, int(round(min(w, h) / rng.uniform(3.0, 5.0)))) if min(w, h) >= 6 else 2
    if kind == "hstripes":
        out[(yy // period) % 2 == 1] = second
    elif kind == "vstripes":
        out[(xx // period) % 2 == 1] = second
    elif kind == "dstripes":
        out[((xx + yy) // period) % 2 == 1] = second
    elif kind == "checker":
        out[((xx // period) + (yy // period)) % 2 == 1] = second
    elif kind == "dots":
        r = max(1.0, period * 0.35)
        spot = ((xx % (2 * period)) - period) ** 2 + ((yy % (2 * period)) - period) ** 2 <= r * r
        out[spot] = np.clip(colour * 0.3 + 170, 0, 255)
    elif kind == "border":
        rim = max(1, round(min(w, h) * 0.1))
        inner = (xx >= rim) & (xx < w - rim) & (yy >= rim) & (yy < h - rim)
        out[~inner] = (245, 245, 245)
    elif kind == "lights":
        for k, lamp in enumerate(((230, 30, 30), (240, 210, 30), (40, 200, 60))):
            cy = h * (k + 0.5) / 3
            spot = (xx - (w - 1) / 2) ** 2 + (yy - cy) ** 2 <= (min(w, h / 3) * 0.36) ** 2
            out[spot] = lamp
    elif kind == "figure":  # skin-tone head, clothes below
        skin = np.array([rng.uniform(110, 235), rng.uniform(80, 190), rng.uniform(60, 160)], dtype=np.float32)
        out[: max(1, int(h * 0.25))] = skin
        legs = np.clip(colour * rng.uniform(0.3, 0.8), 0, 255)
        out[int(h * 0.6):] = legs
    return out


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    c1, c2 = rng.uniform(30, 225, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle) + 0.5
    arr = c1 * (1 - t[..., None]) + c2 * t[..., None]
    blobs = (rng.random((rng.integers(3, 7), rng.integers(3, 7), 3)) * 255).astype(np.uint8)
    low = np.asarray(Image.fromarray(blobs).resize((w, h), Image.BILINEAR), dtype=np.float32) - 127.5
    arr += low * rng.uniform(0.1, 0.45)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 6)):  # clutter: lines and outlines that are no class
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        if rng.random() < 0.6:
            d.line((x0, y0, x1, y1) if rng.random() < 0.5 else (x0, y1, x1, y0), fill=colour,
                   width=int(rng.integers(1, 4)))
        else:
            d.rectangle((x0, y0, x1, y1), outline=colour, width=1)
    return img


def _draw_object(img: Image.Image, cls: int, size: float, rng: np.random.Generator) -> None:
    shape, base, texture, aspect = _LOOK[cls]
    W, H = img.size
    long_side = max(4.0, size * min(W, H))
    aspect *= rng.uniform(0.85, 1.18)
    w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    w, h = max(3, int(round(w))), max(3, int(round(h)))
    if base is None:  # the person's clothes: any colour, the shape is what tells
        colour = rng.uniform(20, 235, 3)
    else:
        colour = np.asarray(base, dtype=np.float64) * rng.uniform(0.75, 1.15, 3) + rng.normal(0, 12, 3)
    colour = np.clip(colour, 0, 255).astype(np.float32)
    surface = _texture(texture, w, h, colour, rng)
    surface += rng.normal(0, 6, surface.shape).astype(np.float32)
    patch = Image.fromarray(np.clip(surface, 0, 255).astype(np.uint8))
    mask = _shape_mask(shape, w, h)
    angle = float(rng.uniform(-35, 35))
    patch = patch.rotate(angle, resample=Image.BILINEAR, expand=True)
    mask = mask.rotate(angle, resample=Image.BILINEAR, expand=True)
    if rng.random() < 0.15:  # partly see-through (glass, shadow)
        mask = mask.point(lambda v: v * 3 // 5)
    pw, ph = patch.size
    # centre anywhere inside the image: objects near the border get clipped
    x = int(round(rng.uniform(0.05, 0.95) * W - pw / 2))
    y = int(round(rng.uniform(0.05, 0.95) * H - ph / 2))
    img.paste(patch, (x, y), mask)


def render(rng: np.random.Generator, instances: list[tuple[int, float]]) -> Image.Image:
    """One image of ``instances`` (class, size; later ones occlude earlier), exposure, noise and blur."""
    W, H = int(rng.integers(96, 161)), int(rng.integers(80, 141))
    img = _background(rng, W, H)
    for cls, size in instances:  # later instances occlude earlier ones
        _draw_object(img, cls, size, rng)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20)  # exposure
    arr += rng.normal(0, rng.uniform(3, 10), arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    return img
