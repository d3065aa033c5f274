"""Named colour and value-range conversions, in torch, for (N, C, H, W) tensors.

Two YCbCr flavours live here and must not be mixed up:

* studio swing (skimage ``rgb2ycbcr``/``ycbcr2rgb``, ITU-R BT.601 with Y in [16, 235]) is what the
  official DDFM loop uses on x0 *inside* the sampling loop (ddfm_official.md §3, §4.5);
* full-range BT.601 (JPEG / OpenCV) belongs to I/O: its luma weights (LUMA_WEIGHTS) give the
  chroma that ``ddfm.io.recombine_chroma`` keeps; the sources' 8-bit luma is OpenCV's exact float32
  arithmetic, ``ddfm.metrics.images.luma_from_rgb8``.

Every matrix is a float64 module constant defined once below; functions cast where they use them.
"""
import torch

# --- value ranges ---------------------------------------------------------------------------------


def to_signed(x01):
    """Map [0, 1] to the diffusion range [-1, 1] (x*2 - 1, the official (g/255)*2-1 order)."""
    return x01 * 2 - 1


def to_unit(x):
    """Map the diffusion range [-1, 1] to [0, 1]."""
    return (x + 1) / 2


# --- studio-swing YCbCr (skimage), used inside the official loop ---------------------------------

# skimage's ycbcr_from_rgb: rows give Y, Cb, Cr on the [0, 255] scale for RGB on [0, 1].
YCBCR_FROM_RGB = torch.tensor(
    [[65.481, 128.553, 24.966],
     [-37.797, -74.203, 112.0],
     [112.0, -93.786, -18.214]],
    dtype=torch.float64,
)
# skimage inverts with LAPACK; torch's float64 inverse differs from it by ~1e-18, far below float32.
RGB_FROM_YCBCR = torch.linalg.inv(YCBCR_FROM_RGB)
YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)


def _apply_matrix(matrix, x):
    """Per-pixel out[:, d] = sum_c matrix[d, c] * x[:, c] (skimage's ``arr @ matrix.T``)."""
    return torch.einsum("dc,nchw->ndhw", matrix, x)


def rgb_to_ycbcr_studio(rgb):
    """skimage rgb2ycbcr followed by /255, as the official loop applies it to x0.

    rgb: (N, 3, H, W) float, nominally in [-1, 1] (the official code feeds [-1, 1] although skimage
    expects [0, 1]). Returns (N, 3, H, W) of the same dtype: Y/255, Cb/255, Cr/255, where
    Y = 16 + 65.481 R + 128.553 G + 24.966 B. The product runs in the input dtype (float32 in the
    official code), then the offsets are added, then the division by 255.
    """
    matrix = YCBCR_FROM_RGB.to(device=rgb.device, dtype=rgb.dtype)
    offset = YCBCR_OFFSET.to(device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (_apply_matrix(matrix, rgb) + offset) / 255


def ycbcr_studio_to_rgb(ycc):
    """Inverse of ``rgb_to_ycbcr_studio``: x255 in the input dtype, then skimage ycbcr2rgb in float64.

    ycc: (N, 3, H, W) holding Y/255, Cb/255, Cr/255. Returns (N, 3, H, W) RGB (no clamping) in the
    input dtype. Order as in the official write-back (DDFM_TRACES §5 item 6): the x255 happens in
    float32, the offset subtraction and the inverse matrix in float64, then the cast back.
    """
    scaled = (ycc * 255).to(torch.float64)
    offset = YCBCR_OFFSET.to(device=ycc.device).view(1, 3, 1, 1)
    rgb = _apply_matrix(RGB_FROM_YCBCR.to(device=ycc.device), scaled - offset)
    return rgb.to(ycc.dtype)


# --- full-range BT.601 luma (the paper variant's EM input, progress images) -----------------------

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_luma(rgb):
    """BT.601 luma 0.299 R + 0.587 G + 0.114 B (OpenCV BGR->GRAY weights), any value range.

    rgb: (N, 3, H, W). Returns (N, 1, H, W) in the same range and dtype.
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    wr, wg, wb = LUMA_WEIGHTS
    return wr * r + wg * g + wb * b


# --- luma in / luma out around the EM step ---------------------------------------------------------
# Both pairs share one signature so the sampling loop can pick them by name:
#     f, aux = luma_in(x0);  ...EM on f -> F...;  x0_rect = luma_out(x0, aux, F)


# The studio Y row sums to 219 and the chroma rows to 0, so the inverse matrix's first column is
# (1, 1, 1)/219: replacing Y/255 by F and inverting only shifts R, G, B by 255 (F - Y/255)/219.
# The loop therefore needs just the Y row going in and that shift coming out, never the full
# 3x3 round trip (which the official code does on the CPU in float64 at every step).
STUDIO_Y_GAIN = 255.0 / 219.0
# The studio Y row as Python floats, read once: a per-call .tolist() would break a compiled step.
STUDIO_Y_WEIGHTS = tuple(float(w) for w in YCBCR_FROM_RGB[0])


def official_luma_in(x0):
    """Official loop step 3: f~ = studio-swing Y/255 of the clamped x0 (ddfm_official.md §3).

    x0: (N, 3, H, W) in [-1, 1]. Returns (f_tilde, f_tilde): f_tilde (N, 1, H, W) =
    (16 + 65.481 R + 128.553 G + 24.966 B)/255, in [(16-219)/255, 235/255] for clamped x0; the
    second copy is what ``official_luma_out`` needs. Equals channel 0 of ``rgb_to_ycbcr_studio``.
    """
    wr, wg, wb = STUDIO_Y_WEIGHTS
    y = wr * x0[:, 0:1] + wg * x0[:, 1:2] + wb * x0[:, 2:3]
    f_tilde = (y + 16.0) / 255
    return f_tilde, f_tilde


def official_luma_out(x0, f_tilde, F):
    """Official loop step 5: replace Y/255 by F, keep the network's Cb/Cr, invert; no re-clamp.

    x0: (N, 3, H, W) clamped estimate; f_tilde: (N, 1, H, W) from ``official_luma_in``; F: (N, 1, H, W)
    EM output. Returns x0 + 255 (F - f~)/219 on every channel: the same as the full studio inverse
    with Y replaced (to float32 rounding), whose luma is (255 F - 16)/219.
    """
    return x0 + (F - f_tilde) * STUDIO_Y_GAIN


def paper_luma_in(x0):
    """Paper variant: EM acts on the BT.601 luma L of x0, in the sources' range [-1, 1].

    x0: (N, 3, H, W) in [-1, 1]. Returns (L (N, 1, H, W), L again as the write-back aux).
    """
    luma = rgb_to_luma(x0)
    return luma, luma


def paper_luma_out(x0, luma, F):
    """Paper variant write-back: shift R, G, B equally so the new luma equals f^ (chroma kept).

    x0: (N, 3, H, W); luma: (N, 1, H, W) from ``paper_luma_in``; F: (N, 1, H, W). Returns
    x0 + (F - L) on every channel; not clamped. Works because the luma weights sum to one.
    """
    return x0 + (F - luma)
