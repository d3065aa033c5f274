"""Image reading for the fusion metrics: the reference evaluator's rounded BT.601 luma.

The reference evaluator (CDDFuse's ``utils/Evaluator.py``) reads every image, sources and fused
results alike, as 8-bit 3-channel BGR (OpenCV's default colour mode), converts it to float32 grey
with Y = 0.299 R + 0.587 G + 0.114 B, and rounds Y to whole numbers. ``read_luma`` reproduces that
with Pillow so that the metrics receive exactly the integers the reference sees. The official DDFM
code reads its sources the same way, so ``ddfm.io`` uses ``luma_from_rgb8`` too.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Shared with ddfm.io: the same files count as images everywhere in the project.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")

# BT.601 luma weights as float32, the precision of the reference's colour conversion.
_WB = np.float32(0.114)
_WG = np.float32(0.587)
_WR = np.float32(0.299)


def _to_rgb8(img):
    """HxWx3 uint8 (or HxW uint8 for grey) as OpenCV's default read would give it."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img)
    if mode.startswith("I;16") or mode == "I":
        # OpenCV maps 16-bit data to 8 bits by dropping the low byte.
        raw = np.asarray(img).astype(np.int64)
        if raw.size and raw.max() > 65535:
            raise ValueError(f"unsupported {mode} image with values above 65535")
        return (np.clip(raw, 0, 65535) >> 8).astype(np.uint8)
    if mode == "F":
        raise ValueError("floating-point images are not supported; save the fused image as 8-bit")
    # RGBA (alpha dropped), LA, P (palette expanded), 1, CMYK, YCbCr, ...
    return np.asarray(img.convert("RGB"))


def luma_from_rgb8(rgb):
    """Rounded BT.601 luma of an HxWx3 RGB array on [0, 255] -> HxW float64 of whole numbers."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    # Same float32 evaluation order as the reference (B, G, R weights on BGR data), then ties-to-even.
    y = b * _WB + g * _WG + r * _WR
    return np.round(y).astype(np.float64)


def read_luma(path):
    """Reference read of one image file -> HxW float64 of whole grey levels in [0, 255].

    Grey 8-bit images are returned as they are (their luma equals their value); 16-bit images lose
    their low byte; RGBA/palette/other modes go through RGB. EXIF orientation is applied, as the
    reference's OpenCV read does. Raises OSError/ValueError for unreadable files.
    """
    with Image.open(Path(path)) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
        return luma_from_rgb8(_to_rgb8(img))
