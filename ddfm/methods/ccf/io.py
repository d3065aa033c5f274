"""CCF's image conventions: the released resize, RGB inputs, and its two saved outputs.

The released CCF script (ccf_official.md §1, §6) reads both sources as 3-channel RGB floats,
resizes them (short side capped at 512, then each side down to a multiple of 32, bilinear), runs
on [-1, 1] RGB and saves `recon` (the RGB sample, global min-max, truncated) and `recon_color`
(the sample's luma with the visible image's Cr/Cb, OpenCV's float YCrCb). Everything here is
numpy, written from those definitions; OpenCV is only the tests' oracle.
"""
import numpy as np

from ddfm.io import MULTIPLE

SHORT_SIDE_CAP = 512  # the released script bounds GPU memory with this
# OpenCV's RGB <-> YCrCb coefficients (cvtColor, float images: chroma offset 0.5, not 128).
YCRCB_LUMA = (0.299, 0.587, 0.114)
YCRCB_FORWARD = (0.713, 0.564)                  # Cr = (R - Y) 0.713 + d, Cb = (B - Y) 0.564 + d
YCRCB_INVERSE = (1.403, -0.714, -0.344, 1.773)  # R = Y + 1.403 Cr', G = Y - 0.714 Cr' - 0.344 Cb', B = Y + 1.773 Cb'
FLOAT_DELTA = 0.5


def capped_size(h, w, portrait_quirk=True):
    """The released short-side cap: min(h, w) > 512 -> short side 512, the other int()-scaled.

    The released portrait branch (w <= h) sets the width to 512 and the height to int(512 w / h),
    i.e. the aspect ratio inverted (quirk 10); portrait_quirk=False uses int(512 h / w) instead.
    """
    if min(h, w) <= SHORT_SIDE_CAP:
        return h, w
    if w > h:
        return SHORT_SIDE_CAP, int(SHORT_SIDE_CAP * w / h)
    ratio = w / h if portrait_quirk else h / w
    return int(SHORT_SIDE_CAP * ratio), SHORT_SIDE_CAP


def official_size(h, w, portrait_quirk=True):
    """The size the released script samples at: capped_size, then each side down to /32."""
    h, w = capped_size(h, w, portrait_quirk)
    return h - h % MULTIPLE, w - w % MULTIPLE


def _linear_taps(src, dst):
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis (half-pixel centres,
    edge samples clamped): out[d] = (1 - f[d]) in[i0[d]] + f[d] in[i1[d]]."""
    scale = src / dst
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    frac[i0 < 0] = 0.0
    i0 = np.clip(i0, 0, src - 1)
    frac[i0 >= src - 1] = 0.0
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, frac


def resize_linear(image, h, w):
    """cv2.resize(image, (w, h)) with INTER_LINEAR for a float (H,W[,C]) array, in float32.

    The same size is a copy, as in OpenCV. Separable: rows first, then columns (OpenCV's float
    path does the same; results agree with it to float32 rounding).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape[:2] == (h, w):
        return image.copy()
    r0, r1, fr = _linear_taps(image.shape[0], h)
    c0, c1, fc = _linear_taps(image.shape[1], w)
    extra = (1,) * (image.ndim - 2)
    fc = fc.reshape((1, w) + extra)
    cols = image[:, c0] * (1 - fc) + image[:, c1] * fc
    fr = fr.reshape((h, 1) + extra)
    return cols[r0] * (1 - fr) + cols[r1] * fr


def official_resize(image, portrait_quirk=True):
    """The released preprocessing of one (H,W,3) float image: cap the short side, then /32."""
    h, w = image.shape[:2]
    capped = resize_linear(image, *capped_size(h, w, portrait_quirk))
    return resize_linear(capped, *official_size(h, w, portrait_quirk))


def source_rgb(src):
    """A SourceImage as (H,W,3) float grey levels: grey sources become 3 equal channels, as
    OpenCV's 3-channel read of a grey file does."""
    if src.rgb is not None:
        return np.asarray(src.rgb, dtype=np.float32)
    return np.repeat(np.asarray(src.luma, dtype=np.float32)[..., None], 3, axis=-1)


def recon_rgb_uint8(sample):
    """The released `recon`: (H,W,3) float sample -> global min-max over all channels, x255,
    truncated (astype uint8), in float32."""
    sample = np.asarray(sample, dtype=np.float32)
    low, high = sample.min(), sample.max()
    unit = (sample - low) / (high - low) if high > low else np.zeros_like(sample)
    return (unit * np.float32(255)).astype(np.uint8)


def ycrcb_luma(rgb):
    """OpenCV's float Y of an (H,W,3) RGB array (float32 sums, R first)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = (np.float32(c) for c in YCRCB_LUMA)
    return rgb[..., 0] * r + rgb[..., 1] * g + rgb[..., 2] * b


def recon_luma_uint8(sample):
    """The released fused grey: the sample's float Y, min-max, x255, truncated."""
    y = ycrcb_luma(sample)
    low, high = y.min(), y.max()
    unit = (y - low) / (high - low) if high > low else np.zeros_like(y)
    return (unit * np.float32(255)).astype(np.uint8)


def recon_color_uint8(grey_u8, visible_rgb):
    """The released `recon_color`: fused grey levels as Y with the visible image's Cr/Cb.

    grey_u8: (H,W) fused grey; visible_rgb: (H,W,3) float grey levels of the visible source at the
    same size. OpenCV's float YCrCb (offset 0.5) there and back, then its float -> 8-bit PNG
    conversion (round half to even, saturate).
    """
    vis = np.asarray(visible_rgb, dtype=np.float32)
    y_vis = ycrcb_luma(vis)
    half = np.float32(FLOAT_DELTA)
    cr = (vis[..., 0] - y_vis) * np.float32(YCRCB_FORWARD[0]) + half
    cb = (vis[..., 2] - y_vis) * np.float32(YCRCB_FORWARD[1]) + half
    y = np.asarray(grey_u8, dtype=np.float32)
    k_r, k_gr, k_gb, k_b = (np.float32(c) for c in YCRCB_INVERSE)
    crd, cbd = cr - half, cb - half
    rgb = np.stack([y + k_r * crd, y + k_gr * crd + k_gb * cbd, y + k_b * cbd], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
