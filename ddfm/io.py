"""Image I/O: pair discovery, decoding to luma (+ chroma), pad/crop to /32, atomic writes, progress.

Values on disk are 8-bit grey levels; `read_image` returns float64 luma in [0, 255] the way the
official code reads it (OpenCV's 8-bit read, then BT.601 luma of the RGB, rounded), plus the RGB
when the file really is colour so that its chroma can be put back on the fused luma. Decoding is
`metrics_io.decode_rgb8`, shared with the metrics, so a file has the same luma for fusion and for
evaluation; arrays given to the Python API follow the same convention (`source_from_array`).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddfm import color
from ddfm.files import publish, write_atomic as _write_atomic  # noqa: F401 (publish: re-exported)
from ddfm.metrics_io import IMAGE_EXTENSIONS, UnsupportedImageError, decode_rgb8, luma_from_rgb8

MULTIPLE = 32  # the ADM UNet has five stride-2 stages
# Floats within half a grey level of [0, 1] round into it; anything further out is not a [0,1] image.
FLOAT_TOLERANCE = 0.5 / 255.0


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
    """Image files of a folder as {stem: [paths]} (non-image files are ignored).

    More than one path under a stem (a.png and a.jpg) means the pair is ambiguous: find_pairs
    reports it instead of silently picking one.
    """
    found = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.setdefault(path.stem, []).append(path)
    return found


def _duplicate_message(stem, paths):
    """One line naming every file of a folder that shares a stem."""
    others = ", ".join(str(p) for p in paths[1:])
    return f"{paths[0]}: stem '{stem}' is also used by {others}; keep one image per stem"


def find_pairs(input_dir, modalities):
    """Match `<input_dir>/<mod_a>/<stem>.*` with `<input_dir>/<mod_b>/<stem>.*`.

    Returns (pairs, problems): problems are (stem, one-line message starting with a file of that
    stem) about files without a partner and stems used by several files of one folder (that pair
    is not fused). A missing or empty folder is fatal and raises FusionInputError.
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
        duplicates = [f[stem] for f in (a_files, b_files) if len(f.get(stem, ())) > 1]
        if duplicates:
            problems.extend((stem, _duplicate_message(stem, paths)) for paths in duplicates)
        elif stem not in b_files:
            problems.append((stem, f"{a_files[stem][0]}: no partner image '{stem}.*' in {folders[1]}"))
        elif stem not in a_files:
            problems.append((stem, f"{b_files[stem][0]}: no partner image '{stem}.*' in {folders[0]}"))
        else:
            pairs.append(Pair(stem, a_files[stem][0], b_files[stem][0]))
    return pairs, problems


def _reason(err):
    """The first line of an exception's message, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_image(path):
    """Decode one source file (metrics_io.decode_rgb8, the project's one convention).

    Every problem, a corrupt file, an unsupported mode, a decompression bomb or no memory for a
    huge image, raises FusionInputError naming the file: one bad pair must not stop the run.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            data = decode_rgb8(image)
    except UnsupportedImageError as err:
        raise FusionInputError(f"{path}: {_reason(err)}") from None
    except Image.DecompressionBombError as err:
        raise FusionInputError(f"{path}: image too large to decode safely ({_reason(err)})") from None
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise FusionInputError(f"{path}: cannot read image ({_reason(err)})") from None
    return _source(path, data)


def _source(path, data):
    """(H,W) grey or (H,W,3) RGB grey levels in [0,255] -> SourceImage (float64).

    RGB keeps its colour only if R,G,B differ.
    """
    if data.ndim == 2:
        return SourceImage(Path(path), data.astype(np.float64))
    # The official reader: BT.601 luma in float32 of the 8-bit RGB, rounded to whole grey levels.
    luma = luma_from_rgb8(data)
    grey = np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 1], data[..., 2])
    return SourceImage(Path(path), luma, None if grey else data.astype(np.float64))


def _array_levels(data, name):
    """Array values -> whole grey levels in [0,255], by the file reader's convention for the dtype.

    uint16 keeps its high byte (decode_rgb8 on a 16-bit file); other integers are grey levels and
    must lie in 0..255; floats are [0,1] and are rounded to grey levels like every file, so that
    `img / 255` fuses exactly as `img`. Anything else raises FusionInputError naming the dtype.
    """
    dtype = data.dtype
    if dtype == np.uint16:
        return (data >> 8).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        if data.size and (data.min() < 0 or data.max() > 255):
            raise FusionInputError(f"{name}: {dtype} values {data.min()}..{data.max()} are outside the "
                                   f"grey levels 0..255; pass uint8, uint16, or floats in [0, 1]")
        return data.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(data).all():
            raise FusionInputError(f"{name}: {dtype} image has NaN or infinite values")
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
            raise FusionInputError(f"{name}: {dtype} values {low:g}..{high:g} are outside [0, 1]; "
                                   f"float images are taken as [0, 1] (divide 8-bit data by 255)")
        return np.round(np.clip(data.astype(np.float64), 0.0, 1.0) * 255.0)
    raise FusionInputError(f"{name}: unsupported dtype {dtype}; pass uint8, uint16, or floats in [0, 1]")


def source_from_array(array, name="array"):
    """A SourceImage from an (H,W) or (H,W,3) array (CHW accepted), read like a file (_array_levels)."""
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[0] in (1, 3) and data.shape[-1] not in (1, 3):
        data = np.moveaxis(data, 0, -1)  # CHW (a torch habit) -> HWC
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] != 3):
        raise FusionInputError(f"{name}: expected an (H,W) or (H,W,3) image, got shape {data.shape}")
    return _source(name, _array_levels(data, name))


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


def cropped_size(h, w, multiple=MULTIPLE):
    """The official size rule: H - H mod 32 by W - W mod 32."""
    return h - h % multiple, w - w % multiple


def crop_top_left(image, multiple=MULTIPLE):
    """Keep the top-left cropped_size of an (H,W[,3]) array."""
    h, w = cropped_size(*image.shape[:2], multiple)
    return image[:h, :w]


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


def write_image_atomic(path, array, before_publish=None):
    """Write a PNG (uint8 grey or RGB) through a temporary file and a rename: never half a file."""
    _write_atomic(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"), before_publish)


def write_gif(path, frames, duration_ms=80):
    """An animated GIF of the progress frames (uint8 grey), so the sampling can be seen at a glance."""
    images = [Image.fromarray(f) for f in frames]
    _write_atomic(path, lambda handle: images[0].save(handle, format="GIF", save_all=True,
                                                      append_images=images[1:],
                                                      duration=duration_ms, loop=0))
