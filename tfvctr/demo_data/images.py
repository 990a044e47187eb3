"""Procedural product-like ad images for the demo dataset (numpy + Pillow).

Each category has its own object silhouette (a shoe, a bag with a handle, a phone, a
bottle, a T-shirt, a watch, a hat, a laptop, a cup, a lamp). The object's colour
(hue/saturation/value), texture (plain, stripes, dots), size and position, the
background's colour and the amount of noise are the parameters of `simulator.py`'s
`sample_visuals`, which the click model's visual rules read: whatever raises CTR is
in the pixels. Drawing happens at 4x (2x above 64 px) and is downscaled, so edges
are anti-aliased.
"""

from __future__ import annotations

import colorsys
import functools
import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tfvctr.demo_data.simulator import TEXTURES

JPEG_QUALITY = 90

# A silhouette: draws the object's body on `body` and its accessories (soles, caps, dials,
# stems...) on `detail`, through `box(u0, v0, u1, v1)` / `pts([(u, v), ...])`, which map
# unit coordinates in [-0.5, 0.5] (u to the right, v down) onto the object's box.
Drawer = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, Callable, Callable, float], None]


def _shoes(body, detail, box, pts, b):
    body.polygon(
        pts([(-0.45, -0.3), (-0.12, -0.3), (0.0, -0.06), (0.3, 0.0), (0.5, 0.14), (0.5, 0.3), (-0.45, 0.3)]), fill=255
    )
    body.ellipse(box(0.25, -0.02, 0.5, 0.3), fill=255)
    detail.rectangle(box(-0.47, 0.22, 0.5, 0.32), fill=255)
    for u in (-0.05, 0.05, 0.15):
        detail.line(pts([(u, -0.1 + u * 0.4), (u + 0.05, 0.0 + u * 0.4)]), fill=255, width=max(1, int(0.025 * b)))


def _bags(body, detail, box, pts, b):
    body.rounded_rectangle(box(-0.45, -0.15, 0.45, 0.45), radius=0.06 * b, fill=255)
    body.arc(box(-0.25, -0.45, 0.25, 0.1), 180, 360, fill=255, width=max(1, int(0.07 * b)))
    detail.rectangle(box(-0.06, -0.08, 0.06, 0.04), fill=255)


def _phones(body, detail, box, pts, b):
    body.rounded_rectangle(box(-0.25, -0.48, 0.25, 0.48), radius=0.08 * b, fill=255)
    detail.ellipse(box(-0.18, -0.42, -0.08, -0.32), fill=255)
    detail.ellipse(box(-0.05, -0.42, 0.05, -0.32), fill=255)


def _bottles(body, detail, box, pts, b):
    body.rounded_rectangle(box(-0.2, -0.16, 0.2, 0.48), radius=0.06 * b, fill=255)
    body.polygon(pts([(-0.2, -0.14), (-0.07, -0.3), (0.07, -0.3), (0.2, -0.14)]), fill=255)
    body.rectangle(box(-0.07, -0.42, 0.07, -0.28), fill=255)
    detail.rectangle(box(-0.09, -0.5, 0.09, -0.4), fill=255)


def _shirts(body, detail, box, pts, b):
    body.polygon(
        pts([(-0.18, -0.45), (0.18, -0.45), (0.48, -0.28), (0.38, -0.06), (0.28, -0.12), (0.28, 0.48),
             (-0.28, 0.48), (-0.28, -0.12), (-0.38, -0.06), (-0.48, -0.28)]),
        fill=255,
    )  # fmt: skip
    detail.chord(box(-0.12, -0.56, 0.12, -0.36), 0, 180, fill=255)


def _watches(body, detail, box, pts, b):
    body.rectangle(box(-0.14, -0.5, 0.14, 0.5), fill=255)
    body.ellipse(box(-0.3, -0.3, 0.3, 0.3), fill=255)
    detail.ellipse(box(-0.21, -0.21, 0.21, 0.21), fill=255)


def _hats(body, detail, box, pts, b):
    body.pieslice(box(-0.3, -0.4, 0.3, 0.4), 180, 360, fill=255)
    body.ellipse(box(-0.5, -0.06, 0.5, 0.12), fill=255)
    detail.rectangle(box(-0.3, -0.1, 0.3, -0.02), fill=255)


def _laptops(body, detail, box, pts, b):
    body.rounded_rectangle(box(-0.38, -0.42, 0.38, 0.1), radius=0.03 * b, fill=255)
    body.polygon(pts([(-0.38, 0.13), (0.38, 0.13), (0.5, 0.3), (-0.5, 0.3)]), fill=255)
    detail.rectangle(box(-0.38, 0.1, 0.38, 0.13), fill=255)
    detail.ellipse(box(-0.05, -0.21, 0.05, -0.11), fill=255)


def _cups(body, detail, box, pts, b):
    body.polygon(pts([(-0.32, -0.3), (0.22, -0.3), (0.17, 0.38), (-0.27, 0.38)]), fill=255)
    body.ellipse(box(0.08, -0.18, 0.44, 0.22), outline=255, width=max(1, int(0.07 * b)))
    detail.ellipse(box(-0.45, 0.34, 0.35, 0.48), fill=255)


def _lamps(body, detail, box, pts, b):
    body.polygon(pts([(-0.2, -0.45), (0.2, -0.45), (0.36, -0.08), (-0.36, -0.08)]), fill=255)
    detail.rectangle(box(-0.03, -0.08, 0.03, 0.4), fill=255)
    detail.ellipse(box(-0.25, 0.36, 0.25, 0.48), fill=255)


SHAPES: dict[str, Drawer] = {
    "shoes": _shoes,
    "bags": _bags,
    "phones": _phones,
    "bottles": _bottles,
    "shirts": _shirts,
    "watches": _watches,
    "hats": _hats,
    "laptops": _laptops,
    "cups": _cups,
    "lamps": _lamps,
}

SHAPE_DESCRIPTIONS: dict[str, str] = {
    "shoes": "side view of a shoe: body with a rounded toe, a sole strip and laces",
    "bags": "rounded rectangle with an arched handle and a clasp",
    "phones": "tall rounded rectangle (the back of a phone) with two camera dots",
    "bottles": "bottle: body, shoulders, neck and cap",
    "shirts": "T-shirt silhouette with sleeves and a collar",
    "watches": "round case with a dial on a vertical strap",
    "hats": "dome crown on a flat brim with a band",
    "laptops": "open lid above a trapezoid base with a hinge and a logo",
    "cups": "tapered mug with a ring handle on a saucer",
    "lamps": "trapezoid shade on a thin stem with a round base",
}


@functools.lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    return yy, xx


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def render_ad(category: str, visual: dict[str, float], size: int, rng: np.random.Generator) -> Image.Image:
    """Renders one ad image.

    Args:
        category: one of `SHAPES`.
        visual: one ad's rendering parameters (the keys of `simulator.sample_visuals`).
        size: output side in pixels.
        rng: the ad's own generator (pixel noise), so images do not depend on order.

    Returns:
        An RGB `PIL.Image` of `size` x `size`.
    """
    ss = 4 if size <= 64 else 2
    S = size * ss
    b = float(visual["scale"]) * S
    cx, cy = float(visual["cx"]) * S, float(visual["cy"]) * S

    def box(u0: float, v0: float, u1: float, v1: float) -> list[float]:
        return [cx + u0 * b, cy + v0 * b, cx + u1 * b, cy + v1 * b]

    def pts(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(cx + u * b, cy + v * b) for u, v in points]

    body_img = Image.new("L", (S, S), 0)
    detail_img = Image.new("L", (S, S), 0)
    SHAPES[category](ImageDraw.Draw(body_img), ImageDraw.Draw(detail_img), box, pts, b)

    yy, xx = _grid(S)
    # Background: the studio colour with a soft vertical gradient and a floor shadow.
    bg = _rgb(visual["bg_hue"], visual["bg_sat"], visual["bg_val"])
    gradient = 1.0 + 0.12 * (0.5 - yy / S)
    image = np.clip(bg[None, None, :] * gradient[..., None], 0, 255)
    shadow = np.exp(-(((xx - cx) / (0.45 * b)) ** 2 + ((yy - (cy + 0.5 * b)) / (0.07 * b)) ** 2))
    image *= (1.0 - 0.35 * shadow)[..., None]

    # Object: its colour, textured, lit from the left.
    colour = _rgb(visual["hue"], visual["sat"], visual["val"])
    # Pattern colour: darker on light objects, lighter on dark ones, so the texture shows.
    pattern = colour * 0.45 if visual["val"] > 0.55 else colour * 0.4 + 150.0
    texture = TEXTURES[int(visual["texture"])]
    period = 0.2 * b
    if texture == "stripes":
        angle = np.deg2rad(float(visual["stripe_angle"]))
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        on = (phase - np.floor(phase)) < 0.5
    elif texture == "dots":
        dx = (xx - cx) / period
        dy = (yy - cy) / period
        on = (dx - np.round(dx)) ** 2 + (dy - np.round(dy)) ** 2 < 0.28**2
    else:
        on = np.zeros((S, S), dtype=bool)
    fill = np.where(on[..., None], pattern[None, None, :], colour[None, None, :])
    fill = fill * (1.08 - 0.16 * ((xx - (cx - 0.5 * b)) / max(b, 1.0)).clip(0, 1))[..., None]
    alpha = np.asarray(body_img, dtype=np.float32)[..., None] / 255.0
    image = image * (1.0 - alpha) + fill * alpha

    # Accessories in a neutral tone contrasting with the object.
    accent = np.full(3, 40.0 if visual["val"] > 0.55 else 225.0, dtype=np.float32)
    alpha = np.asarray(detail_img, dtype=np.float32)[..., None] / 255.0
    image = image * (1.0 - alpha) + accent * alpha

    small = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32) + rng.normal(0.0, float(visual["noise"]), (size, size, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes (baseline, no EXIF: identical inputs give identical bytes)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
