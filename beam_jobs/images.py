"""Reads, checks, resizes and re-encodes one ad image: the only image code of both Beam jobs.

`build_tfrecords` stores the result in every chunk of the ad; `embed_ads` decodes the same
bytes, so the visual tower sees at embedding time exactly the pixels it was trained on
(JPEG re-encoding included).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
JPEG_QUALITY = 95


class ImageError(ValueError):
    """An image that cannot be used; `code` is the dead-letter reason code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def read_bytes(uri: str) -> bytes:
    """Reads a local path or any Beam filesystem URI (gs://...)."""
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

    The pixel count is read from the header before any decoding, so a decompression bomb
    is refused without allocating its pixels. Pillow's own guard
    (`Image.MAX_IMAGE_PIXELS`, which warns above the limit and raises above twice it) is
    turned into an error too, in case the header check is bypassed by a format quirk.

    Raises:
        ImageError: with code `image_too_large` or `image_undecodable` and a readable message.
    """
    if image_format not in _FORMATS:
        raise ValueError(f"Invalid value received for argument `image_format`. Expected one of "
                         f"{sorted(_FORMATS)}. Received: image_format={image_format!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: parses the header only
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError("image_too_large", f"{name}: {width}x{height} = {width * height} pixels "
                                 f"exceeds dataset.max_image_pixels = {max_pixels}")
            if img.format == "JPEG":
                # Let libjpeg decode at the smallest DCT scale still >= the target size: faster, same result class.
                img.draft("RGB", (image_size, image_size))
            img.load()
            rgb = img.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("image_too_large", f"{name}: {_first_line(e)}") from None
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


def decode_image(encoded: bytes) -> np.ndarray:
    """Encoded image → float32 [H, W, 3] in [0, 1], as the trainer feeds the visual tower."""
    with Image.open(io.BytesIO(encoded)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
