"""Reads, checks, resizes and re-encodes one ad image: the only image code of both Beam jobs.

`build_tfrecords` stores the result in every chunk of the ad; `embed_ads` decodes the same
bytes, so the visual tower sees at embedding time exactly the pixels it was trained on
(JPEG re-encoding included).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tfvctr.errors import readable

_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
JPEG_QUALITY = 95
BACKGROUND = (255, 255, 255)  # transparent pixels become white, the usual product-photo background

# `dataset.max_image_pixels` is checked from the header in `prepare_image`; Pillow's global
# default (a warning above 89 M pixels, an error above 179 M) would overrule the config.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An image that cannot be used; `code` is the dead-letter reason code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def read_bytes(uri: str) -> bytes:
    """Reads a local path or any Beam filesystem URI (gs://...).

    A local path is read with `open` (0.02 ms): Beam's `FileSystems.open` resolves the
    filesystem and its options on every call, ~0.4 ms inside a pipeline (profile) and
    ~6 ms outside one (no options set), about what preparing the image itself costs, once
    per ad in both jobs (docs/beam_jobs.md, speed).
    """
    if "://" not in uri:
        try:
            with open(uri, "rb") as f:
                return f.read()
        except OSError as e:
            raise ImageError("image_unreadable", f"image {uri} cannot be read: {_first_line(e)}") from None
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(uri) as f:
            return f.read()
    except Exception as e:  # Beam wraps every filesystem's own error types
        raise ImageError("image_unreadable", f"image {uri} cannot be read: {_first_line(e)}") from None


def load_image(uri: str, image_size: int, image_format: str = "jpeg", max_pixels: int = 40_000_000) -> bytes:
    """Reads the image at `uri` and returns it encoded at `image_size`² in `image_format`."""
    return prepare_image(read_bytes(uri), image_size, image_format, max_pixels, name=uri)


def prepare_image(data: bytes, image_size: int, image_format: str = "jpeg", max_pixels: int = 40_000_000,
                  name: str = "image") -> bytes:
    """Decodes `data` once, squashes it to `image_size`² RGB and encodes it once.

    The pixel count is read from the header (`Image.open` decodes nothing) and checked
    against `max_pixels` (`dataset.max_image_pixels`) before any pixel is allocated.
    Pillow's own global bomb limit is switched off (`MAX_IMAGE_PIXELS = None` below) so the
    config decides, both ways. 16-bit images are scaled to 8 bits (65535 → 255), not
    clipped; transparent pixels are composited on `BACKGROUND` (white), not dropped to
    black (docs/bad_input.md).

    Raises:
        ImageError: with code `image_too_large` or `image_undecodable` and a readable message.
    """
    if image_format not in _FORMATS:
        raise ValueError(f"Invalid value received for argument `image_format`. Expected one of "
                         f"{sorted(_FORMATS)}. Received: image_format={image_format!r}")
    try:
        img = Image.open(io.BytesIO(data))  # lazy: parses the header only
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError("image_too_large", f"{name}: {width}x{height} = {width * height} pixels "
                             f"exceeds dataset.max_image_pixels = {max_pixels}")
        if img.format == "JPEG":
            # Let libjpeg decode at the smallest DCT scale still >= the target size: faster, same result class.
            img.draft("RGB", (image_size, image_size))
        img.load()
        rgb = to_rgb(img)
    except ImageError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise ImageError("image_undecodable", f"{name} cannot be decoded: {_first_line(e)}") from None
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if image_format == "jpeg":
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        rgb.save(out, format="PNG")
    return out.getvalue()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded Pillow image → 8-bit RGB.

    * 16-bit grey (`I;16*`, and `I` as PNG decodes 16-bit grey) is scaled by 255/65535;
      `Image.convert` would clip every value above 255 to white.
    * Transparency (`RGBA`, `LA`, `PA`, a palette or grey image with a transparent
      colour) is composited on `BACKGROUND`; `convert("RGB")` would drop the alpha and
      show whatever colour the transparent pixels happen to hold (often black).
    * Everything else (`L`, `1`, `P`, `CMYK`, `YCbCr`, ...) goes through `convert("RGB")`.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" or (img.mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def decode_image(encoded: bytes) -> np.ndarray:
    """Encoded image → float32 [H, W, 3] in [0, 1], as the trainer feeds the visual tower."""
    with Image.open(io.BytesIO(encoded)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _first_line(e: BaseException) -> str:
    # Pillow's messages name the file object ("cannot identify image file <_io.BytesIO
    # object at 0x7f...>"): reasons are read by people, so no reprs.
    return readable(str(e)) or type(e).__name__
