"""A synthetic dataset in the exact competition layout, so the whole study runs without the real data.

``python -m mlc_utils demo-data --out DIR [--n N] [--seed S] [--test-fraction F] [--force]`` writes::

    DIR/train.csv          ImageID,Labels,Caption   (competition dialect, see mlc_utils.data.csvio)
    DIR/test.csv           ImageID,Caption          (no labels, as on Kaggle)
    DIR/data/<ImageID>     JPEG images; train ids 0..n_train-1 first, test ids after them
    DIR/test_labels.csv    EXTRA (not in the real layout): the hidden test truth, ImageID,Labels,
                           in the same dialect, so tests and reports can score a submission
    DIR/demo_dataset.json  EXTRA: marks the folder as a demo dataset (generator, seed, n, ...)

Content, modelled on the real MS-COCO-derived data (class ids are the COCO ids 0..19, see
:data:`CLASS_NAMES`): class 1 ("person") on about 75% of the images, classes 0 and 12 never, a
long tail for the rest (car .14, truck .07, bench .065, ..., parking meter .008), 1 to 4 labels per
image, written in a random order as in the real file ("8 3 7").

Each class is one distinctive object (shape x colour x texture: a red octagon with a white rim for
"stop sign", a yellow striped bar for "bus", a two-tone figure for "person", ...) drawn at random
positions, scales and rotations, with colour jitter, occlusion and clipping at the border, on a
noisy gradient background with clutter; image sizes vary (96-160 x 80-140 px).

Captions mention the objects imperfectly: several synonyms per class (some shared: "a vehicle" for
car and truck), about a quarter of the objects left out, negated distractors ("with no dog in
sight"), a few wrong mentions. The two modalities are made complementary on purpose: a *small*
object (hard to see) is usually mentioned, a large one (easy to see) is the one most often left
out, so an image-only and a caption-only model are both good but imperfect, with different errors.

A small, seed-determined share of captions carries the real files' quirks: unescaped inner quotes
(``a sign that reads "STOP" on it``), a caption ending in a quoted word, raw newlines, a blank
line, a trailing ``/``, commas. Every quirk occurs at least once in each dataset.

The same seed gives byte-identical files (every image draws from its own ``(seed, index)`` random
stream). The dataset is built in a temporary sibling folder and then moved in, so a killed run
never leaves a half-written dataset behind.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from mlc_utils.core.io import atomic_write_text
from mlc_utils.data.csvio import write_competition_csv
from mlc_utils.data.labels import LabelSpace

CLASS_NAMES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse",
)
NUM_CLASSES = len(CLASS_NAMES)
PERSON = 1
MARKER = "demo_dataset.json"
GENERATOR = "mlc_utils.data.demo"
FORMAT_VERSION = 1
JPEG_QUALITY = 90
MIN_N = 10
DEFAULT_N = 1500
DEFAULT_TEST_FRACTION = 0.25  # the real data: 30,000 train + 10,000 test
MAX_LABELS = 4
SMALL, LARGE = (0.13, 0.22), (0.26, 0.58)  # object size ranges, as a share of the image's short side
QUIRKS = ("inner_quotes", "ends_with_quote", "newline", "blank_line", "trailing_slash", "commas")

# Target share of images holding each class (the real training set's frequencies, roughly).
TARGET_FREQUENCY: dict[int, float] = {
    1: 0.75, 2: 0.03, 3: 0.14, 4: 0.035, 5: 0.03, 6: 0.04, 7: 0.035, 8: 0.07, 9: 0.03, 10: 0.04,
    11: 0.015, 13: 0.015, 14: 0.008, 15: 0.065, 16: 0.03, 17: 0.045, 18: 0.045, 19: 0.03,
}

# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _other_rates() -> np.ndarray:
    """Per-class Bernoulli rates for the non-person classes, so the *final* frequencies hit the targets.

    An image without a person must hold something else, so those images redraw until they do; that
    lifts every rate by ``1 / (1 - P(nothing))`` on the non-person share. Solve the fixed point.
    """
    target = np.zeros(NUM_CLASSES)
    for cls, freq in TARGET_FREQUENCY.items():
        if cls != PERSON:
            target[cls] = freq
    p_person = TARGET_FREQUENCY[PERSON]
    rates = target.copy()
    for _ in range(100):
        p_nothing = float(np.prod(1.0 - rates))
        rates = target / (p_person + (1.0 - p_person) / (1.0 - p_nothing))
    return rates


_RATES = _other_rates()


def _sample_labels(rng: np.random.Generator) -> list[int]:
    """1..4 distinct classes, in a random order (the real file does not sort them)."""
    has_person = rng.random() < TARGET_FREQUENCY[PERSON]
    while True:
        others = np.flatnonzero(rng.random(NUM_CLASSES) < _RATES).tolist()
        total = len(others) + has_person
        if 1 <= total <= MAX_LABELS:
            break
    labels = others + ([PERSON] if has_person else [])
    return [labels[i] for i in rng.permutation(len(labels))]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

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


def _object_sizes(rng: np.random.Generator, labels: list[int]) -> list[tuple[int, float]]:
    """Instances to draw: (class, size as a share of the image's short side), in drawing order."""
    instances = []
    for cls in labels:
        copies = 1 + int(rng.random() < (0.3 if cls == PERSON else 0.1))
        for _ in range(copies):
            small = rng.random() < 0.25
            size = rng.uniform(SMALL[0], SMALL[1]) if small else rng.uniform(LARGE[0], LARGE[1])
            instances.append((cls, float(size)))
    return [instances[i] for i in rng.permutation(len(instances))]


def _render(rng: np.random.Generator, instances: list[tuple[int, float]]) -> Image.Image:
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


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

SYNONYMS: dict[int, tuple[str, ...]] = {
    1: ("a man", "a woman", "a person", "a boy", "a girl", "a child", "people", "a skier", "a player",
        "a lady", "a guy", "two men", "a group of people"),
    2: ("a bicycle", "a bike", "two bikes", "a red bicycle"),
    3: ("a car", "cars", "a sedan", "a taxi", "a vehicle", "a parked car"),
    4: ("a motorcycle", "a motorbike", "a scooter", "a dirt bike"),
    5: ("an airplane", "a plane", "a jet", "an aircraft", "a jumbo jet"),
    6: ("a bus", "a double decker bus", "a city bus", "a school bus"),
    7: ("a train", "a locomotive", "a passenger train", "a subway car"),
    8: ("a truck", "a pickup", "a lorry", "a delivery van", "a vehicle"),
    9: ("a boat", "a sailboat", "a ship", "a canoe", "a yacht"),
    10: ("a traffic light", "a stop light", "traffic signals", "a signal"),
    11: ("a fire hydrant", "a hydrant", "a red hydrant"),
    12: ("a street sign", "street signs"),
    13: ("a stop sign", "a red sign", "a sign"),
    14: ("a parking meter", "a meter", "parking meters"),
    15: ("a bench", "a park bench", "a wooden bench", "a seat"),
    16: ("a bird", "a pigeon", "a seagull", "birds", "a duck"),
    17: ("a cat", "a kitten", "a kitty", "a tabby cat"),
    18: ("a dog", "a puppy", "a pup", "a dog on a leash"),
    19: ("a horse", "a pony", "horses", "a brown horse"),
}
_NEG_NOUN = {c: ("people" if c == PERSON else CLASS_NAMES[c]) for c in range(1, NUM_CLASSES)}
_PLACES = ("on a city street", "in a park", "near the water", "at the station", "on the road", "in a parking lot",
           "outside a building", "in a field", "on a sunny day", "at night", "", "")
_SINGLE = ("{L} {P}.", "There is {L} {P}.", "A photo of {L} {P}.", "An image showing {L}.", "{L} can be seen {P}.",
           "Close up of {L}.", "This picture shows {L} {P}.", "{L} {P} today.")
_MULTI = ("{F} next to {R} {P}.", "{F} standing near {R}.", "{F} {P} with {R} in the background.",
          "{F} and {R} {P}.", "{F} beside {R}.", "{F} sitting close to {R} {P}.")
_FILLERS = ("A view of a busy street.", "A picture taken on a sunny day.", "An outdoor scene on a cloudy afternoon.",
            "A blurry photo of a street corner.", "Some things are in this picture.", "A scene in the city.")
_NEGATIONS = (" with no {N} in sight", ", but no {N} anywhere", " next to where {A} used to be",
              " and not a single {N}")
_SECOND = ("The photo was taken outside.", "It looks like a nice day.", "Nobody seems to notice.",
           "The picture is a bit dark.")
_SIGN_WORDS = ("STOP", "OPEN", "SALE", "EXIT", "ONE WAY", "PARKING", "spray.")


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    comma = "," if len(phrases) > 2 and rng.random() < 0.4 else ""  # the Oxford comma, sometimes
    return ", ".join(phrases[:-1]) + f"{comma} and {phrases[-1]}"


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _absent_class(rng: np.random.Generator, present: set[int]) -> int:
    choices = [c for c in TARGET_FREQUENCY if c not in present]
    weights = np.array([TARGET_FREQUENCY[c] if c != PERSON else 0.1 for c in choices])
    return choices[int(rng.choice(len(choices), p=weights / weights.sum()))]


def _tidy(text: str) -> str:
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" .", ".").replace(" ,", ",")
    return text[0].upper() + text[1:]


def _caption(rng: np.random.Generator, instances: list[tuple[int, float]], labels: list[int],
             quirks: set[str]) -> tuple[str, dict]:
    largest = {}
    for cls, size in instances:
        largest[cls] = max(size, largest.get(cls, 0.0))
    mentioned, stats = [], {"objects": len(labels), "mentioned": 0, "negation": 0, "wrong": 0}
    for cls in labels:
        smallness = float(np.clip((LARGE[1] - largest[cls]) / (LARGE[1] - SMALL[0]), 0.0, 1.0))
        if rng.random() < 0.55 + 0.4 * smallness:  # small: nearly always named; large: often left out
            mentioned.append(_pick(rng, SYNONYMS[cls]))
            stats["mentioned"] += 1
    present = set(labels)
    if rng.random() < 0.05:  # a plain wrong mention
        mentioned.append(_pick(rng, SYNONYMS[_absent_class(rng, present)]))
        stats["wrong"] = 1
    if rng.random() < 0.03:  # a class that is never labelled
        mentioned.append(_pick(rng, SYNONYMS[12]))
    mentioned = [mentioned[i] for i in rng.permutation(len(mentioned))]
    place = _pick(rng, _PLACES)
    if not mentioned:
        text = _pick(rng, _FILLERS)
    elif len(mentioned) == 1 or rng.random() < 0.5:
        text = _pick(rng, _SINGLE).format(L=_join(mentioned, rng), P=place)
    else:
        text = _pick(rng, _MULTI).format(F=mentioned[0], R=_join(mentioned[1:], rng), P=place)
    text = _tidy(text)
    if rng.random() < 0.08:  # a negated distractor: the word is there, the object is not
        absent = _absent_class(rng, present)
        form = _pick(rng, _NEGATIONS)
        text = text[:-1] + form.format(N=_NEG_NOUN[absent], A=_pick(rng, SYNONYMS[absent])) + "."
        stats["negation"] = 1

    # the real files' quirks
    if "commas" in quirks:
        text = _pick(rng, ("In this picture, ", "Well, ", "Outside, ")) + text[0].lower() + text[1:]
    if "inner_quotes" in quirks:
        text = text[:-1] + f' with a sign that reads "{_pick(rng, _SIGN_WORDS)}" on it.'
    if "blank_line" in quirks:
        text += "\n\n" + _pick(rng, _SECOND)
    elif "newline" in quirks:
        text += "\n" + _pick(rng, _SECOND)
    if "ends_with_quote" in quirks:
        text = text[:-1] + f' under a sign that reads "{_pick(rng, _SIGN_WORDS)}"'
    elif "trailing_slash" in quirks:
        text = text[:-1] + "/"
    return text, stats


def caption_quirks(caption: str) -> set[str]:
    """Which of :data:`QUIRKS` a caption shows (read off the text, so it also works on real captions)."""
    found = set()
    if '"' in caption.rstrip('"'):
        found.add("inner_quotes")
    if caption.endswith('"'):
        found.add("ends_with_quote")
    if "\n" in caption:
        found.add("newline")
    if "\n\n" in caption:
        found.add("blank_line")
    if caption.endswith("/"):
        found.add("trailing_slash")
    if "," in caption:
        found.add("commas")
    return found


def _assign_quirks(seed: int, n: int) -> list[set[str]]:
    """Each row's quirks: rare, seed-determined, and every kind at least once."""
    rng = np.random.default_rng([seed, n, 7_777_777])
    rates = {"inner_quotes": 0.02, "ends_with_quote": 0.01, "newline": 0.01, "blank_line": 0.005,
             "trailing_slash": 0.01, "commas": 0.02}
    draws = rng.random((n, len(QUIRKS)))
    rows = [{q for k, q in enumerate(QUIRKS) if draws[i, k] < rates[q]} for i in range(n)]
    ends = ("ends_with_quote", "trailing_slash")  # both rewrite the caption's end: one per caption
    for row in rows:
        if set(ends) <= row:
            row.discard("trailing_slash")
    forced = rng.choice(n, size=len(QUIRKS), replace=False)
    for row, quirk in zip(forced, QUIRKS):
        rows[int(row)].add(quirk)
        if quirk in ends:
            rows[int(row)].discard(ends[1 - ends.index(quirk)])
    return rows


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class DemoDirError(FileExistsError):
    """The output folder holds something that is not a previous demo dataset (use ``force``)."""


def _validate(n, seed, test_fraction) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_N:
        raise ValueError(f"n: must be an integer >= {MIN_N} (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0 (got {seed!r})")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: must be strictly between 0 and 1 (got {test_fraction!r})")


def _read_marker(out_dir: Path) -> dict | None:
    try:
        marker = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR else None


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """``(n_train, n_test)``: the test share rounded, at least one image on each side."""
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    return n - n_test, n_test


def _scenes(n: int, seed: int):
    """Per image: (image_id, labels, instances, caption, caption stats); images are not drawn here.

    Labels, object sizes, pixels and caption each draw from their own ``(seed, index, k)`` stream, so
    the rows can be rebuilt without rendering, and image ``i`` does not depend on the other images.
    """
    quirk_rows = _assign_quirks(seed, n)
    for index in range(n):
        labels = _sample_labels(np.random.default_rng([seed, index, 0]))
        instances = _object_sizes(np.random.default_rng([seed, index, 1]), labels)
        caption, stats = _caption(np.random.default_rng([seed, index, 3]), instances, labels, quirk_rows[index])
        yield f"{index}.jpg", labels, instances, caption, stats


def demo_rows(n: int = DEFAULT_N, seed: int = 0) -> pd.DataFrame:
    """The rows :func:`make_demo_dataset` writes (``ImageID, Labels, Caption``; train rows first, then
    test rows, split by :func:`split_sizes`), computed without drawing or writing any image."""
    _validate(n, seed, 0.5)
    rows = [{"ImageID": image_id, "Labels": labels, "Caption": caption}
            for image_id, labels, _, caption, _ in _scenes(int(n), int(seed))]
    return pd.DataFrame(rows, columns=["ImageID", "Labels", "Caption"])


def make_demo_dataset(out_dir: str | os.PathLike, n: int = DEFAULT_N, seed: int = 0,
                      test_fraction: float = DEFAULT_TEST_FRACTION, *, force: bool = False) -> dict:
    """Write a synthetic dataset of ``n`` images (train + test) to ``out_dir``; return a summary dict.

    ``out_dir`` must not exist, be empty, or hold a previous demo dataset (recognised by its
    ``demo_dataset.json``; its stale images are removed, nothing else); anything else raises
    :class:`DemoDirError` unless ``force`` (then the dataset's files are written over, others kept).
    Raises ``ValueError`` naming the argument for a bad ``n`` (>= 10), ``seed`` (>= 0) or
    ``test_fraction`` (strictly between 0 and 1).

    The summary holds ``n, n_train, n_test, seed, test_fraction, class_names, label_frequency``
    (share of all images holding each class), ``labels_per_image`` (min, mean, max),
    ``mention_rate`` (share of objects named in their caption), ``negations``, ``wrong_mentions``,
    ``quirks`` (rows showing each), ``image_width``/``image_height`` (min, max), ``out_dir`` and ``seconds``.
    """
    started = time.perf_counter()
    _validate(n, seed, test_fraction)
    n, seed, test_fraction = int(n), int(seed), float(test_fraction)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoDirError(f"{out_dir} exists and is not a folder")
    previous = _read_marker(out_dir) if out_dir.is_dir() else None
    if out_dir.is_dir() and previous is None and not force:
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise DemoDirError(f"{out_dir} is not empty ({shown}) and is not a previous demo dataset (no {MARKER}); "
                               "choose a new or empty folder, or pass --force to write the dataset's files into it")

    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.absolute().name}.demo-", dir=parent))
    try:
        summary = _build(tmp, n, seed, test_fraction)
        _publish(tmp, out_dir, previous, n)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary["out_dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _build(root: Path, n: int, seed: int, test_fraction: float) -> dict:
    """Write the whole dataset under ``root``; return the summary (also written as the marker)."""
    (root / "data").mkdir()
    n_train, n_test = split_sizes(n, test_fraction)
    rows, sizes = [], []
    mentions = objects = negations = wrong = 0
    for index, (image_id, labels, instances, caption, stats) in enumerate(_scenes(n, seed)):
        image = _render(np.random.default_rng([seed, index, 2]), instances)
        sizes.append(image.size)
        image.save(root / "data" / image_id, "JPEG", quality=JPEG_QUALITY)
        rows.append({"ImageID": image_id, "Labels": labels, "Caption": caption})
        mentions += stats["mentioned"]
        objects += stats["objects"]
        negations += stats["negation"]
        wrong += stats["wrong"]
    frame = pd.DataFrame(rows, columns=["ImageID", "Labels", "Caption"])
    write_competition_csv(frame.iloc[:n_train], root / "train.csv")
    write_competition_csv(frame.iloc[n_train:][["ImageID", "Caption"]], root / "test.csv")
    _write_test_labels(frame.iloc[n_train:], root / "test_labels.csv")

    multi_hot = LabelSpace(NUM_CLASSES).encode(frame["Labels"].tolist())
    per_image = multi_hot.sum(axis=1)
    widths, heights = zip(*sizes)
    summary = {
        "generator": GENERATOR, "format_version": FORMAT_VERSION,
        "n": n, "n_train": n_train, "n_test": n_test, "seed": seed, "test_fraction": test_fraction,
        "class_names": list(CLASS_NAMES),
        "label_frequency": [round(float(v), 4) for v in multi_hot.mean(axis=0)],
        "labels_per_image": [int(per_image.min()), round(float(per_image.mean()), 3), int(per_image.max())],
        "mention_rate": round(mentions / objects, 4), "negations": negations, "wrong_mentions": wrong,
        "quirks": {q: sum(q in caption_quirks(c) for c in frame["Caption"]) for q in QUIRKS},
        "image_width": [min(widths), max(widths)], "image_height": [min(heights), max(heights)],
        "files": {"train": "train.csv", "test": "test.csv", "test_truth": "test_labels.csv", "images": "data/"},
    }
    (root / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_test_labels(frame: pd.DataFrame, path: Path) -> None:
    """``ImageID,Labels`` as a Kaggle submission spells it. Not through ``write_competition_csv``,
    which writes only the train/test shapes (both with a caption); no field here needs quoting."""
    lines = ["ImageID,Labels"] + [f"{image_id},{LabelSpace.format(labels)}"
                                  for image_id, labels in zip(frame["ImageID"], frame["Labels"])]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _publish(tmp: Path, out_dir: Path, previous: dict | None, n: int) -> None:
    """Move the finished dataset into place; each file lands whole (``os.replace``)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)  # one rename publishes the whole dataset
        return
    data = out_dir / "data"
    if not data.is_dir():
        os.replace(tmp / "data", data)
    else:
        for item in sorted((tmp / "data").iterdir()):
            os.replace(item, data / item.name)
        old_n = previous.get("n") if previous else None
        if isinstance(old_n, int):  # drop the previous demo's images this one does not have
            for index in range(n, old_n):
                stale = data / f"{index}.jpg"
                if stale.is_file():
                    stale.unlink()
    for name in ("test_labels.csv", "test.csv", "train.csv", MARKER):  # the marker last
        os.replace(tmp / name, out_dir / name)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlc_utils demo-data",
        description="Write a synthetic dataset in the competition layout (train.csv, test.csv, data/) "
                    "so the study runs without the real data.",
        epilog="Besides the real layout it writes test_labels.csv (the hidden test truth, ImageID,Labels, "
               f"for scoring a submission) and {MARKER} (marks the folder as a demo dataset).")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous demo dataset)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"images in all, train + test (>= {MIN_N}; "
                                                                 f"default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files "
                                                            "(default 0)")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help=f"share of images in test.csv, 0 < F < 1 (default {DEFAULT_TEST_FRACTION})")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder that is not a "
                                                             "previous demo dataset (other files are kept)")
    return parser


def cli(argv: list[str]) -> int:
    """``demo-data``: 0 on success, 2 for a bad option, 1 when the output folder is refused."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help or an argparse error (already printed)
        return int(stop.code or 0)
    checks = [(args.n < MIN_N, f"--n must be at least {MIN_N} (got {args.n})"),
              (args.seed < 0, f"--seed must be >= 0 (got {args.seed})"),
              (not 0.0 < args.test_fraction < 1.0,
               f"--test-fraction must be strictly between 0 and 1 (got {args.test_fraction})")]
    errors = [message for bad, message in checks if bad]
    if errors:
        for message in errors:
            print(f"demo-data: error: {message}", file=sys.stderr)
        return 2
    try:
        summary = make_demo_dataset(args.out, n=args.n, seed=args.seed, test_fraction=args.test_fraction,
                                    force=args.force)
    except OSError as err:  # DemoDirError, or a folder that cannot be written
        print(f"demo-data: error: {err}", file=sys.stderr)
        return 1
    freq = summary["label_frequency"]
    top = sorted(range(NUM_CLASSES), key=lambda c: -freq[c])[:6]
    print(f"demo-data: wrote {summary['n_train']} train + {summary['n_test']} test images to {summary['out_dir']} "
          f"in {summary['seconds']:.1f} s (seed {summary['seed']})")
    print("  most frequent classes: " + ", ".join(f"{c} {CLASS_NAMES[c]} {freq[c]:.3f}" for c in top))
    print(f"  labels per image: min {summary['labels_per_image'][0]}, mean {summary['labels_per_image'][1]}, "
          f"max {summary['labels_per_image'][2]}; objects named in captions: {summary['mention_rate']:.0%}")
    print(f"  test truth (not part of the real layout): {Path(summary['out_dir']) / 'test_labels.csv'}")
    return 0
