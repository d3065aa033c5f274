"""Image I/O: pair discovery, decoding to luma (+ chroma), pad/crop to /32, atomic writes, progress.

Values on disk are 8-bit grey levels; `read_image` returns float64 luma in [0, 255] the way the
official code reads it (BT.601 luma of the decoded RGB, rounded), plus the RGB when the file really
is colour so that its chroma can be put back on the fused luma.
"""
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ddfm import color
from ddfm.metrics_io import IMAGE_EXTENSIONS, luma_from_rgb8

MULTIPLE = 32  # the ADM UNet has five stride-2 stages


class FusionInputError(ValueError):
    """Bad input (a file, a pair or a folder), reported as one line naming it."""


@dataclass
class Pair:
    """One registered pair: `a` plays the infrared (intensity) role, `b` the visible (texture) role."""
    stem: str
    a: Path
    b: Path


@dataclass
class SourceImage:
    """A decoded source: luma (H,W) float64 in [0,255]; rgb (H,W,3) float64 in [0,255] if colour."""
    path: Path
    luma: np.ndarray
    rgb: np.ndarray = None


def list_images(folder):
    """Image files of a folder by stem (non-image files are ignored); the first of a stem wins."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.setdefault(path.stem, path)
    return found


def find_pairs(input_dir, modalities):
    """Match `<input_dir>/<mod_a>/<stem>.*` with `<input_dir>/<mod_b>/<stem>.*`.

    Returns (pairs, problems): problems are one-line messages about files without a partner.
    A missing or empty folder is fatal and raises FusionInputError.
    """
    folders = [Path(input_dir) / m for m in modalities]
    for folder in folders:
        if not folder.is_dir():
            raise FusionInputError(f"{folder}: input folder not found")
    a_files, b_files = (list_images(f) for f in folders)
    if not a_files and not b_files:
        raise FusionInputError(f"{folders[0]} and {folders[1]}: no images found")
    pairs, problems = [], []
    for stem in sorted(set(a_files) | set(b_files)):
        if stem not in b_files:
            problems.append(f"{a_files[stem]}: no partner image '{stem}.*' in {folders[1]}")
        elif stem not in a_files:
            problems.append(f"{b_files[stem]}: no partner image '{stem}.*' in {folders[0]}")
        else:
            pairs.append(Pair(stem, a_files[stem], b_files[stem]))
    return pairs, problems


def _decode_rgb(image):
    """Any PIL mode -> float64 RGB (H,W,3) in [0,255], or (H,W) for single-channel images."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greys keep their precision: 65535 maps to 255.
        arr = np.asarray(image, dtype=np.float64)
        return arr / 257.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else arr
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        return arr * 255.0 if arr.max(initial=0) <= 1.0 else np.clip(arr, 0, 255)
    if mode in ("1", "L", "LA"):
        return np.asarray(image.convert("L"), dtype=np.float64)
    # RGB, RGBA (alpha dropped), P (palette expanded), CMYK, YCbCr, LAB, HSV ...
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def read_image(path):
    """Decode one source file; a corrupt or unreadable file raises FusionInputError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # as OpenCV's imread (the official reader) does
            data = _decode_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FusionInputError(f"{path}: cannot read image ({reason})") from None
    return _source(path, data)


def _source(path, data):
    """(H,W) grey or (H,W,3) RGB in [0,255] -> SourceImage; RGB keeps its colour only if R,G,B differ."""
    if data.ndim == 2:
        return SourceImage(Path(path), data)
    # The official reader: BT.601 luma in float32 of the 8-bit RGB, rounded to whole grey levels.
    luma = luma_from_rgb8(data)
    grey = np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 1], data[..., 2])
    return SourceImage(Path(path), luma, None if grey else data)


def source_from_array(array, name="array"):
    """A SourceImage from an (H,W) or (H,W,3) array: uint8 as is, floats taken as [0,1]."""
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[0] in (1, 3) and data.shape[-1] not in (1, 3):
        data = np.moveaxis(data, 0, -1)  # CHW (a torch habit) -> HWC
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] != 3):
        raise FusionInputError(f"{name}: expected an (H,W) or (H,W,3) image, got shape {data.shape}")
    return _source(name, data.astype(np.float64) * (1.0 if data.dtype == np.uint8 else 255.0))


def check_pair(stem, src_a, src_b):
    """Same size, at least 32 px on each side; raises FusionInputError naming the pair."""
    if src_a.luma.shape != src_b.luma.shape:
        (ha, wa), (hb, wb) = src_a.luma.shape, src_b.luma.shape
        raise FusionInputError(f"{src_a.path} ({wa}x{ha}) and {src_b.path} ({wb}x{hb}): "
                               f"pair '{stem}' has images of different sizes")
    h, w = src_a.luma.shape
    if min(h, w) < MULTIPLE:
        raise FusionInputError(f"{src_a.path}: image is {w}x{h}, smaller than {MULTIPLE} px on a side")


def pad_amounts(h, w, multiple=MULTIPLE):
    """Bottom/right padding that makes (h, w) divisible by `multiple`."""
    return (-h) % multiple, (-w) % multiple


def pad_reflect(image, multiple=MULTIPLE):
    """Reflect-pad an (H,W) array at the bottom/right to a multiple (edges stay natural)."""
    ph, pw = pad_amounts(*image.shape, multiple)
    return np.pad(image, ((0, ph), (0, pw)), mode="reflect") if (ph or pw) else image


def crop_top_left(image, multiple=MULTIPLE):
    """The official size rule: keep the top-left H - H mod 32 by W - W mod 32 of an (H,W[,3]) array."""
    h, w = image.shape[:2]
    return image[:h - h % multiple, :w - w % multiple]


def luma_to_uint8(luma, normalize):
    """Fused luma on the [-1,1] scale -> uint8 grey levels.

    minmax: per-image min-max to [0,255] then round (the official recon output);
    clip: the fixed map [-1,1] -> [0,255], clipped.
    """
    luma = np.asarray(luma, dtype=np.float32)
    if normalize == "minmax":
        low, high = luma.min(), luma.max()
        scaled = (luma - low) / (high - low) * 255.0 if high > low else np.zeros_like(luma)
    else:
        scaled = np.clip(color.to_unit(luma) * 255.0, 0.0, 255.0)
    return np.round(scaled.astype(np.float64)).astype(np.uint8)


def progress_to_uint8(luma):
    """The official progress image: min-max to [0,255], truncated (not rounded) to uint8."""
    luma = np.asarray(luma, dtype=np.float32)
    low, high = luma.min(), luma.max()
    scaled = (luma - low) / (high - low) * 255.0 if high > low else np.zeros_like(luma)
    return scaled.astype(np.uint8)


def recombine_chroma(grey_u8, rgb):
    """Put fused luma under the full-range BT.601 chroma of a colour source -> uint8 RGB."""
    source = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float64) / 255.0).permute(2, 0, 1)[None]
    ycc = color.rgb_to_ycbcr_bt601(source)
    ycc[:, 0] = torch.from_numpy(grey_u8.astype(np.float64) / 255.0)
    out = color.ycbcr_bt601_to_rgb(ycc)[0].permute(1, 2, 0).numpy() * 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_image_atomic(path, array):
    """Write a PNG (uint8 grey or RGB) through a temporary file and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(array).save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_gif(path, frames, duration_ms=80):
    """An animated GIF of the progress frames (uint8 grey), so the sampling can be seen at a glance."""
    images = [Image.fromarray(f) for f in frames]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=0)
    os.replace(tmp, path)
