"""Image I/O: pair discovery, decoding to luma (+ chroma), pad/crop to /32, atomic writes, progress.

Values on disk are 8-bit grey levels; `read_image` returns float64 luma in [0, 255] the way the
official code reads it (OpenCV's 8-bit read, then BT.601 luma of the RGB, rounded), plus the RGB
when the file really is colour so that its chroma can be put back on the fused luma. Decoding is
`metrics_io.decode_rgb8`, shared with the metrics, so a file has the same luma for fusion and for
evaluation; arrays given to the Python API follow the same convention (`source_from_array`).
"""
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from ddfm import color
from ddfm.common import FusionInputError, one_line
from ddfm.files import write_atomic
from ddfm.metrics.images import IMAGE_EXTENSIONS, UnsupportedImageError, decode_rgb8, luma_from_rgb8

MULTIPLE = 32  # the ADM UNet has five stride-2 stages
# Floats within half a grey level of [0, 1] round into it; anything further out is not a [0,1] image.
FLOAT_TOLERANCE = 0.5 / 255.0
# Legacy imageio's rounding offset: floor(v + HALF_DOWN) rounds halves down (see legacy_imageio_uint8).
HALF_DOWN = 0.499999999


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


def _not_files(folder):
    """{stem: path} of entries named like images that are not regular files (a folder, a pipe):
    reported as such, never read (a pipe would block) nor taken for a missing image."""
    return {path.stem: path for path in sorted(Path(folder).iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_file()}


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
    not_files = [_not_files(f) for f in folders]
    pairs, problems = [], []
    for stem in sorted(set(a_files) | set(b_files) | set(not_files[0]) | set(not_files[1])):
        duplicates = [f[stem] for f in (a_files, b_files) if len(f.get(stem, ())) > 1]
        odd = [entries[stem] for entries in not_files if stem in entries]
        if duplicates:
            problems.extend((stem, _duplicate_message(stem, paths)) for paths in duplicates)
        elif odd:
            problems.append((stem, f"{odd[0]}: not a regular file (a folder or pipe named like an image)"))
        elif stem not in b_files:
            problems.append((stem, f"{a_files[stem][0]}: no partner image '{stem}.*' in {folders[1]}"))
        elif stem not in a_files:
            problems.append((stem, f"{b_files[stem][0]}: no partner image '{stem}.*' in {folders[0]}"))
        else:
            pairs.append(Pair(stem, a_files[stem][0], b_files[stem][0]))
    return pairs, problems


def read_file_bytes(path):
    """A source file's bytes (sample.py hashes and decodes the same bytes); one line if unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise FusionInputError(f"{path}: cannot read image ({one_line(err)})") from None


def read_image(path, data=None):
    """Decode one source file (metrics_io.decode_rgb8, the project's one convention); data: its
    bytes when the caller has read them already.

    Every problem, a corrupt file, an unsupported mode, a decompression bomb or no memory for a
    huge image, raises FusionInputError naming the file: one bad pair must not stop the run.
    """
    path = Path(path)
    source = path if data is None else BytesIO(data)
    try:
        with Image.open(source) as image:
            data = decode_rgb8(image)
    except UnsupportedImageError as err:
        raise FusionInputError(f"{path}: {one_line(err)}") from None
    except Image.DecompressionBombError as err:
        raise FusionInputError(f"{path}: image too large to decode safely ({one_line(err)})") from None
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        reason = one_line(err).replace(f" {source!r}", "")  # Pillow names the buffer: the path says it
        raise FusionInputError(f"{path}: cannot read image ({reason})") from None
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
                                   f"float images are taken as [0, 1] (divide by {255 if high <= 255 else 65535} first)")
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


def legacy_imageio_uint8(image):
    """The official float -> 8-bit PNG conversion: legacy imageio's ``image_as_uint`` for a float array.

    skimage.io.imsave hands the float image to imageio, whose legacy ``core.util.image_as_uint``
    stretched it in float64 from [min, max] to [0, 255] and truncated v + 0.499999999: halves round
    down, 2.5 -> 2 and 3.5 -> 3 (np.round gives 2 and 4). The official recon image already spans
    [0, 255], so the stretch is the identity to float64 rounding, but it is done as imageio did it.
    """
    image = np.asarray(image).astype(np.float64)
    low, high = image.min(), image.max()
    if high == low:
        return image.astype(np.uint8)
    return ((image - low) / (high - low) * 255.0 + HALF_DOWN).astype(np.uint8)


def official_minmax(luma):
    """The official per-image min-max of a luma to [0, 255], in float32 (zeros for a flat image)."""
    luma = np.asarray(luma, dtype=np.float32)
    low, high = luma.min(), luma.max()
    return (luma - low) / (high - low) * 255.0 if high > low else np.zeros_like(luma)


def luma_to_uint8(luma, normalize):
    """Fused luma on the [-1,1] scale -> uint8 grey levels.

    minmax: official_minmax, then the official save (legacy_imageio_uint8); clip: the fixed map
    [-1,1] -> [0,255], clipped, rounded with the same halves-down rule, so that both settings give
    a value the same grey level.
    """
    if normalize == "minmax":
        return legacy_imageio_uint8(official_minmax(luma))
    scaled = np.clip(color.to_unit(np.asarray(luma, dtype=np.float32)) * 255.0, 0.0, 255.0)
    return np.floor(scaled.astype(np.float64) + HALF_DOWN).astype(np.uint8)


def progress_to_uint8(luma):
    """The official progress image: official_minmax, truncated (not rounded) to uint8."""
    return official_minmax(luma).astype(np.uint8)


def _fit_in_gamut(grey, chroma):
    """Shrink each pixel's chroma toward 0 until grey + chroma lies in [0, 255]^3 (luma unchanged).

    grey: (H,W,1) luma; chroma: (H,W,3) RGB offsets whose BT.601 luma is 0. Returns the largest
    s <= 1 per pixel (H,W,1) with 0 <= grey + s * chroma <= 255: the saturation that fits.
    """
    room = np.where(chroma > 0, 255.0 - grey, -grey)  # distance to the face the offset points at
    limit = np.divide(room, chroma, out=np.full_like(chroma, np.inf), where=chroma != 0)
    return np.clip(limit.min(axis=-1, keepdims=True), 0.0, 1.0)


def _round_keeping_luma(rgb, grey):
    """Round an RGB image on [0, 255] to uint8 so that its rounded luma (luma_from_rgb8) is `grey`.

    Plain rounding moves a pixel's luma by up to half a level and so its rounded luma by one. Where
    it does, the nearest of the 8 floor/ceil corners with the right luma is taken: the corners'
    lumas lie at most 0.587 apart, so one of them always rounds to `grey`.
    """
    out = np.clip(np.round(rgb), 0, 255)
    wrong = luma_from_rgb8(out.astype(np.uint8)) != grey
    if wrong.any():
        exact, target = rgb[wrong], grey[wrong]
        bits = np.array([[(k >> c) & 1 for c in range(3)] for k in range(8)], dtype=np.float64)
        corners = np.clip(np.floor(exact)[None] + bits[:, None], 0, 255)  # (8, n, 3)
        fits = luma_from_rgb8(corners.astype(np.uint8)) == target[None]
        distance = np.where(fits, ((corners - exact[None]) ** 2).sum(-1), np.inf)
        out[wrong] = corners[distance.argmin(0), np.arange(len(exact))]
    return out.astype(np.uint8)


def recombine_chroma(grey_u8, rgb):
    """Put fused luma under the BT.601 chroma of a colour source -> uint8 RGB with exactly that luma.

    The source's chroma is its RGB minus its own BT.601 luma (full-range YCbCr with Y replaced and
    inverted is exactly grey + that offset). Where grey + chroma leaves the RGB cube, the chroma is
    scaled toward grey until it fits, instead of clipping channels, which would change the luma.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    grey = np.asarray(grey_u8, dtype=np.float64)
    chroma = rgb - (rgb @ np.array(color.LUMA_WEIGHTS))[..., None]
    out = grey[..., None] + _fit_in_gamut(grey[..., None], chroma) * chroma
    return _round_keeping_luma(out, grey)


def encode_png(array):
    """The PNG file of a uint8 grey or RGB image, as bytes (what write_image_atomic writes)."""
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_atomic(path, array, before_publish=None):
    """Write a PNG (uint8 grey or RGB) through a temporary file and a rename: never half a file."""
    write_atomic(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"), before_publish)


def write_gif(path, frames, duration_ms=80):
    """An animated GIF of the progress frames (uint8 grey), so the sampling can be seen at a glance."""
    images = [Image.fromarray(f) for f in frames]
    write_atomic(path, lambda handle: images[0].save(handle, format="GIF", save_all=True,
                                                      append_images=images[1:],
                                                      duration=duration_ms, loop=0))
