"""Image reading for the fusion metrics: the reference evaluator's rounded BT.601 luma.

The reference evaluator (CDDFuse's ``utils/Evaluator.py``) reads every image, sources and fused
results alike, as 8-bit 3-channel BGR (OpenCV's default colour mode), converts it to float32 grey
with Y = 0.299 R + 0.587 G + 0.114 B, and rounds Y to whole numbers. ``read_luma`` reproduces that
with Pillow so that the metrics receive exactly the integers the reference sees. The official DDFM
code reads its sources the same way, so ``ddfm.io`` decodes with ``decode_rgb8`` and
``luma_from_rgb8`` too: a file has one luma in the whole project.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Shared with ddfm.io: the same files count as images everywhere in the project.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")

# BT.601 luma weights as float32, the precision of the reference's colour conversion.
_WR = np.float32(0.299)
_WG = np.float32(0.587)
_WB = np.float32(0.114)


class UnsupportedImageError(ValueError):
    """A file Pillow decodes but whose pixel values have no 8-bit reading here (floats, > 16 bits)."""


def decode_rgb8(img):
    """An open PIL image -> HxWx3 uint8 RGB, or HxW uint8 for grey, as OpenCV's default read gives it.

    The one decoding convention of the project: ``read_luma`` (metrics) and ``ddfm.io.read_image``
    (fusion sources) both go through here, so a file has the same luma everywhere. EXIF orientation
    is applied first (OpenCV's imread does so). 16-bit data keeps its high byte (OpenCV's 16 -> 8
    bit conversion, also what the official DDFM reader gets). Raises UnsupportedImageError for
    floating-point images and integer images outside 0..65535, which OpenCV would not read as
    8-bit grey levels either; Pillow's own errors (OSError, ValueError, ...) pass through.
    """
    img = ImageOps.exif_transpose(img)
    img.load()
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img)
    if mode in ("1", "LA"):
        # Grey with a 1-bit depth or an alpha channel: OpenCV's 3 equal channels have this luma.
        return np.asarray(img.convert("L"))
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img).astype(np.int64)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise UnsupportedImageError(f"unsupported {mode} image with values outside 0..65535 "
                                        f"({raw.min()}..{raw.max()}); save it as 8 or 16 bit")
        # OpenCV maps 16-bit data to 8 bits by dropping the low byte.
        return (raw >> 8).astype(np.uint8)
    if mode == "F":
        raise UnsupportedImageError("unsupported floating-point image; save it as 8 or 16 bit")
    # RGBA (alpha dropped), P (palette expanded), CMYK, YCbCr, ...
    return np.asarray(img.convert("RGB"))


def _fma32(x, weight, addend):
    """float32 fused multiply-add x*weight + addend, rounded once, for x in 0..255.

    The float64 product and sum are exact here (x has 8 bits, weight and addend 24), so the single
    cast to float32 is the hardware FMA's single rounding.
    """
    return (x * np.float64(weight) + addend.astype(np.float64)).astype(np.float32)


def luma_from_rgb8(rgb):
    """Rounded BT.601 luma of an HxWx3 RGB array on [0, 255] -> HxW float64 of whole numbers.

    What the reference and the official reader get from OpenCV: the uint8 image cast to float32,
    ``cvtColor(BGR2GRAY)``, ``np.round`` (ties to even). In the opencv-python wheels on x86 with FMA
    that conversion is fma(R, 0.299f, fma(B, 0.114f, G * 0.587f)) in float32, bit for bit on all
    256^3 colours (checked with 4.7, 4.10 and 5.0; only 5.0, in 2 of the last 4-7 pixels of a row
    whose width mod 8 is 4-7, adds G before B, which rounds 830 colours differently there). A plain
    float32 sum rounds 546 colours differently, e.g. RGB (53, 119, 200): 108.5 -> 108, not 109.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    green = (g * np.float64(_WG)).astype(np.float32)  # exact product, one rounding
    y = _fma32(r, _WR, _fma32(b, _WB, green))
    return np.round(y).astype(np.float64)


def read_luma(path):
    """Reference read of one image file -> HxW float64 of whole grey levels in [0, 255].

    Grey 8-bit images are returned as they are (their luma equals their value); 16-bit images lose
    their low byte; RGBA/palette/other modes go through RGB. EXIF orientation is applied, as the
    reference's OpenCV read does (see ``decode_rgb8``). Raises OSError/ValueError (among them
    UnsupportedImageError) for unreadable files.
    """
    with Image.open(Path(path)) as img:
        return luma_from_rgb8(decode_rgb8(img))
