"""The MATLAB evaluation dialect: Linfeng-Tang/Evaluation-for-Image-Fusion, quirks included.

Many infrared-visible papers score with that toolkit's ``analysis_Reference.m`` instead of CDDFuse's
Python evaluator (our ``reference`` protocol). This module computes what its main scripts compute,
with its input conventions, from the definitions in ``tests/golden/metrics/matlab_tang/README.md``
(checked per image against the toolkit run under GNU Octave). Inputs are HxW arrays of whole grey
levels in [0, 255] (files: ``matlab_grey_from_rgb8``); the toolkit gets uint8 images, hands EN and
MI the uint8 data and every other metric ``im2double(x) * 255`` (double, 0..255).

The toolkit's quirks, each reproduced where its metric is computed:
  - grey conversion: MATLAB ``rgb2gray`` weights (first row of inv(NTSC matrix)), rounded half away
    from zero, not BT.601's 0.299/0.587/0.114 rounded half to even;
  - MI: bits, summed over the sources, and its joint histogram merges grey levels 254 and 255
    (uint8 ``x + 1`` saturates at 255 when the bin index is formed); the marginals keep them apart;
  - PSNR: 20 log10(255 / sqrt(MSE)) with the MSE of images scaled to [0, 1] (about 48.1 dB above
    10 log10(255^2 / MSE) on the 0-255 scale); MSE is reported on the [0, 1] scale;
  - SSIM: the *average* 0.5 ssim(F, A) + 0.5 ssim(F, B) with MATLAB ``ssim`` defaults (11x11
    Gaussian, sigma 1.5, replicate padding, mean over the full-size map) and, because the images are
    double, MATLAB's data range 1: C1 = 1e-4, C2 = 9e-4 for 0-255 data;
  - VIF: VIFp(A, F) + VIFp(B, F) as the reference, but a NaN VIFp stays NaN (no replacement by 1);
  - AG: the sum over all H*W pixels divided by (H - 1)(W - 1);
  - Nabf: the toolkit calls ``analysis_nabf(A, B, F)`` although the function takes the fused image
    first, so "Nabf" scores the first source as if it were the fused image; ``Nabf_fused_first``
    is the documented order;
  - "MS_SSIM" is Ma et al.'s multi-scale MEF-SSIM with {A, B} as the exposure stack, not Wang's
    MS-SSIM.
EN, SD, SF, SCD, CC and Qabf equal the reference protocol's definitions (Qabf: zero-padded Sobel
and G = gF where gX == gF); this module takes them, and its helpers, from ``ddfm.metrics.common``.
FMI is not computed: the toolkit's pixel FMI depends on MATLAB's ``edge`` and FMI_w on the Wavelet
Toolbox, and no oracle could be produced for either.
Where files are read differently from MATLAB: 16-bit images keep their high byte (as everywhere in
this project; MATLAB would hand the toolkit uint16 data it does not expect), palette images are
expanded to RGB (MATLAB's imread returns the indices, which the toolkit would score as grey
levels), and JPEG decoders may differ from MATLAB's by one grey level.
"""
import math

import numpy as np
from scipy import ndimage

from ddfm.metrics import common

TANG_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG", "CC", "PSNR", "MSE",
                "Nabf", "MS_SSIM")
# Computed on request (--metrics) only: the Nabf the toolkit's function documents.
TANG_EXTRA = ("Nabf_fused_first",)

# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]).
_RGB2GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647],
                                    [1.0, -1.106, 1.703]]))[0]
_SSIM_C1 = (0.01 * 1.0) ** 2  # MATLAB ssim, DynamicRange = 1 for double input
_SSIM_C2 = (0.03 * 1.0) ** 2
_MEF_C = (0.03 * 255.0) ** 2
_MEF_WEIGHTS = np.array([0.0448, 0.2856, 0.3001]) / (0.0448 + 0.2856 + 0.3001)
_MEF_WINDOW = 11
_EPS = np.finfo(np.float64).eps  # MATLAB's eps
# Petrovic / Shreyamsha Kumar constants of analysis_nabf.
_NABF_TD, _NABF_WT_MIN, _NABF_LG = 2.0, 0.001, 1.5
_NABF_G = (0.9999, 19.0, 0.5)  # Gamma, kappa, sigma of the strength term
_NABF_A = (0.9995, 22.0, 0.5)  # of the orientation term


def matlab_grey_from_rgb8(rgb):
    """MATLAB ``rgb2gray`` of HxWx3 uint8 (HxW passes through) -> HxW float64 of whole levels."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    y = _RGB2GRAY[0] * r + _RGB2GRAY[1] * g + _RGB2GRAY[2] * b
    # imlincomb's conversion back to uint8 rounds half away from zero (y >= 0) and saturates.
    return np.clip(np.floor(y + 0.5), 0, 255)


_SSIM_WINDOW = common.gaussian_1d(11, 1.5)  # no entry is below eps * max: exactly separable


# ---------------------------------------------------------------- MI with the 254/255 merge


def _mi_pair_bits(x_levels, f_levels):
    """H(X) + H(F) - H(X, F) in bits; the joint histogram puts levels 254 and 255 in one bin."""
    n = x_levels.size
    # Quirk (Hab.m): the bin index is uint8(x) + 1, which saturates, so 255 lands in 254's bin.
    joint = np.bincount((np.minimum(x_levels, 254) * 256 + np.minimum(f_levels, 254)).ravel(),
                        minlength=65536)
    h_x = common.entropy_bits(np.bincount(x_levels.ravel(), minlength=256), n)
    h_f = common.entropy_bits(np.bincount(f_levels.ravel(), minlength=256), n)
    return h_x + h_f - common.entropy_bits(joint, n)


def mi(a, b, fused):
    """MI (bits): [H(A) + H(F) - H(A,F)] + [H(B) + H(F) - H(B,F)] with the 254/255 joint-bin merge."""
    fl = common.levels(fused)
    return _mi_pair_bits(common.levels(a), fl) + _mi_pair_bits(common.levels(b), fl)


# ---------------------------------------------------------------- PSNR, MSE, AG, VIF


def mse(a, b, fused):
    """MSE on the [0, 1] scale: (mean (A - F)^2 + mean (B - F)^2) / 2 of images divided by 255."""
    a, b, fused = (np.asarray(x, dtype=np.float64) / 255.0 for x in (a, b, fused))
    return float(0.5 * np.mean((fused - a) ** 2) + 0.5 * np.mean((fused - b) ** 2))


def psnr(a, b, fused):
    """PSNR (dB) as the toolkit: 20 log10(255 / sqrt(MSE on the [0, 1] scale))."""
    err = mse(a, b, fused)
    # Quirk: 255 over the root of an MSE on the [0, 1] scale (the peak should be 1 there).
    return 20.0 * math.log10(255.0 / math.sqrt(err)) if err > 0 else math.inf


def ag(fused):
    """AG: MATLAB ``gradient`` magnitudes sqrt((gx^2 + gy^2) / 2) summed, divided by (H-1)(W-1)."""
    h, w = np.shape(fused)
    gy, gx = np.gradient(np.asarray(fused, dtype=np.float64))
    # Quirk: the sum runs over all H*W pixels but is divided by (H-1)(W-1).
    return float(np.sum(np.sqrt((gx * gx + gy * gy) / 2.0)) / ((h - 1) * (w - 1)))


def vif(a, b, fused):
    """VIF: VIFp(A, F) + VIFp(B, F); unlike the reference a NaN VIFp is not replaced by 1."""
    ratios = common.vifp_ratios(a, b, fused)
    return float(ratios[0] + ratios[1])  # Quirk (vs reference): NaN for a source flat everywhere


# ---------------------------------------------------------------- SSIM (MATLAB defaults)


def _gauss_same(stack):
    """11x11 Gaussian (sigma 1.5) filtering of each slice, same size, replicate padding."""
    out = ndimage.correlate1d(stack, _SSIM_WINDOW, axis=-1, mode="nearest")
    return ndimage.correlate1d(out, _SSIM_WINDOW, axis=-2, mode="nearest")


def _gauss_moments(a, b, f):
    """Local Gaussian moments [F, F^2, A, A^2, AF, B, B^2, BF, AB], shared by SSIM and MS_SSIM.

    Away from the 5-pixel border they equal 'valid' filtering, which is what MEF-SSIM's first
    scale needs, so one filtering serves both metrics.
    """
    return _gauss_same(np.stack([f, f * f, a, a * a, a * f, b, b * b, b * f, a * b]))


def ssim(a, b, fused, moments=None):
    """SSIM: 0.5 ssim(F, A) + 0.5 ssim(F, B), MATLAB ``ssim`` on double 0-255 data (range 1)."""
    f, a, b = (np.asarray(x, dtype=np.float64) for x in (fused, a, b))
    m = _gauss_moments(a, b, f) if moments is None else moments
    # Quirk: the average of the two SSIMs (the reference sums them), over the full-size map.
    ssim_fa, ssim_fb = common.ssim_means_from_moments(m, _SSIM_C1, _SSIM_C2)
    return 0.5 * ssim_fa + 0.5 * ssim_fb


# ---------------------------------------------------------------- "MS_SSIM" = MEF-SSIM


def _valid(stack, weights):
    """'valid' separable correlation of each slice with weights x weights (odd length)."""
    half = weights.size // 2
    out = ndimage.correlate1d(stack, weights, axis=-1, mode="constant")[..., half:-half]
    return ndimage.correlate1d(out, weights, axis=-2, mode="constant")[..., half:-half, :]


def _box_sums(stack, n):
    """'valid' n x n window sums of each slice from an integral image.

    Exact here: the first scale holds whole numbers and each halving adds two binary digits, so
    every partial sum is representable in float64.
    """
    c = np.zeros(stack.shape[:-2] + (stack.shape[-2] + 1, stack.shape[-1] + 1))
    np.cumsum(np.cumsum(stack, axis=-1), axis=-2, out=c[..., 1:, 1:])
    return c[..., n:, n:] - c[..., :-n, n:] - c[..., n:, :-n] + c[..., :-n, :-n]


def _mef_ssim_scale(x1, x2, f, gauss=None):
    """Mean MEF-SSIM map of one scale for the two-image stack (x1, x2) and fused f.

    Per 11x11 window (valid positions) the toolkit builds a desired patch from the sources' mean-
    removed patches, weighted by their contrast ed_k = ||x_k - mu_k|| + 0.001 raised to
    p = tan(pi/2 R) (R: structure consistency), rescales it to the largest contrast and compares its
    structure with F's under the Gaussian window. Every term is a linear combination of local
    moments, so the patch loops become box (consistency, contrast) and Gaussian (comparison)
    filterings of products.
    """
    n = _MEF_WINDOW * _MEF_WINDOW
    box = _box_sums(np.stack([x1, x2, x1 * x1, x2 * x2, x1 * x2]), _MEF_WINDOW)
    # n * variance from exact box sums (whole numbers at the first scale).
    nvar1 = np.maximum(box[2] - box[0] * box[0] / n, 0.0)
    nvar2 = np.maximum(box[3] - box[1] * box[1] / n, 0.0)
    ncov = box[4] - box[0] * box[1] / n
    ed1, ed2 = np.sqrt(nvar1) + 0.001, np.sqrt(nvar2) + 0.001  # the toolkit's +0.001
    # Structure consistency R = ||sum_k (x_k - mu_k)|| / sum_k ||x_k - mu_k|| (with eps guards).
    consistency = (np.sqrt(np.maximum(nvar1 + nvar2 + 2 * ncov, 0.0)) + _EPS) / (
        np.sqrt(nvar1) + np.sqrt(nvar2) + _EPS)
    consistency = np.clip(consistency, _EPS, 1 - _EPS)
    power = np.minimum(np.tan(np.pi / 2 * consistency), 10.0)
    w1 = (ed1 / _MEF_WINDOW) ** power + _EPS
    w2 = (ed2 / _MEF_WINDOW) ** power + _EPS
    c1, c2 = w1 / (w1 + w2) / ed1, w2 / (w1 + w2) / ed2  # patch = c1 (x1 - mu1) + c2 (x2 - mu2)
    norm = np.sqrt(np.maximum(c1 * c1 * nvar1 + c2 * c2 * nvar2 + 2 * c1 * c2 * ncov, 0.0))
    scale = np.maximum(ed1, ed2) / np.where(norm > 0, norm, np.inf)
    scale = np.where(norm > 0, scale, 1.0)  # a zero patch stays zero
    c1 *= scale
    c2 *= scale
    # gauss: 'valid' Gaussian moments [X1, X2, F, X1^2, X2^2, X1X2, F^2, X1F, X2F] when known
    g = gauss if gauss is not None else _valid(
        np.stack([x1, x2, f, x1 * x1, x2 * x2, x1 * x2, f * f, x1 * f, x2 * f]), _SSIM_WINDOW)
    v11, v22, v12 = g[3] - g[0] * g[0], g[4] - g[1] * g[1], g[5] - g[0] * g[1]
    var_r = c1 * c1 * v11 + c2 * c2 * v22 + 2 * c1 * c2 * v12
    var_f = g[6] - g[2] * g[2]
    cov = c1 * (g[7] - g[0] * g[2]) + c2 * (g[8] - g[1] * g[2])
    return float(np.mean((2 * cov + _MEF_C) / (var_r + var_f + _MEF_C)))


def _halve(x):
    """imfilter(x, ones(2)/4, 'symmetric', 'same') then every second row and column."""
    if x.shape[0] % 2:
        x = np.concatenate([x, x[-1:]], axis=0)
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4.0


def ms_ssim(a, b, fused, moments=None):
    """The toolkit's "MS_SSIM": 3-scale MEF-SSIM of F against the stack {A, B}, prod Q_l^w_l.

    Quirk: the name says MS-SSIM (Wang), the code is MEF-SSIM (Ma et al., exposure fusion).

    ``moments``: _gauss_moments(a, b, fused) when already computed (for SSIM).
    """
    images = [np.asarray(x, dtype=np.float64) for x in (a, b, fused)]
    levels = len(_MEF_WEIGHTS)
    if min(images[2].shape) / 2 ** (levels - 1) < _MEF_WINDOW:
        raise ValueError(f"MS_SSIM needs images of at least {_MEF_WINDOW * 2 ** (levels - 1)} pixels "
                         f"a side")
    m = _gauss_moments(*images) if moments is None else moments
    half = _MEF_WINDOW // 2
    first = m[[2, 5, 0, 3, 6, 8, 1, 4, 7], half:-half, half:-half]  # reordered as _mef_ssim_scale's
    quality = [_mef_ssim_scale(*images, gauss=first)]
    for _ in range(1, levels):
        images = [_halve(x) for x in images]
        quality.append(_mef_ssim_scale(*images))
    return float(np.prod(np.asarray(quality) ** _MEF_WEIGHTS))


# ---------------------------------------------------------------- Nabf


def _strength_orientation(img):
    """Shreyamsha Kumar's Sobel (kernels / 8, image mirrored by one pixel: x[-1] = x[1]) ->
    strength and orientation arctan(gv / gh)."""
    gx, gy = common.sobel(np.asarray(img, dtype=np.float64), "reflect")
    # Dividing by 8 is exact. conv2 flips the kernels: both components change sign, which leaves
    # strengths and the orientation differences used below unchanged.
    gv, gh = gx / 8.0, -gy / 8.0
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.arctan(gv / gh)  # +-pi/2 where gh == 0 only
    return np.hypot(gv, gh), np.where((gv == 0) & (gh == 0), 0.0, angle)


def _preservation(g_x, a_x, g_f, a_f):
    """Q_XF = sqrt(Q_g Q_a) of Petrovic's model with Shreyamsha Kumar's constants."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(g_x > g_f, g_f / g_x, g_x / g_f)
    rel = np.where((g_x == 0) | (g_f == 0), 0.0, rel)
    agree = np.abs(np.abs(a_x - a_f) - np.pi / 2) * 2 / np.pi
    (n_g, k_g, s_g), (n_a, k_a, s_a) = _NABF_G, _NABF_A
    q_g = n_g / (1 + np.exp(-k_g * (rel - s_g)))
    q_a = n_a / (1 + np.exp(-k_a * (agree - s_a)))
    return np.sqrt(q_g * q_a)


def nabf_kumar(fused, a, b):
    """Modified N_abf (Shreyamsha Kumar): weighted 1 - Q where F is stronger than both sources."""
    g_f, a_f = _strength_orientation(fused)
    g_a, a_a = _strength_orientation(a)
    g_b, a_b = _strength_orientation(b)
    q_a = _preservation(g_a, a_a, g_f, a_f)
    q_b = _preservation(g_b, a_b, g_f, a_f)
    wt_a = np.where(g_a >= _NABF_TD, g_a ** _NABF_LG, _NABF_WT_MIN)
    wt_b = np.where(g_b >= _NABF_TD, g_b ** _NABF_LG, _NABF_WT_MIN)
    artefact = (g_f > g_a) & (g_f > g_b)
    return float(np.sum(artefact * ((1 - q_a) * wt_a + (1 - q_b) * wt_b)) / np.sum(wt_a + wt_b))


def nabf(a, b, fused):
    """Nabf as the toolkit reports it: analysis_nabf(A, B, F), i.e. A taken as the fused image."""
    return nabf_kumar(a, b, fused)  # Quirk: analysis_Reference passes the fused image last


def nabf_fused_first(a, b, fused):
    """Nabf in the function's documented argument order: analysis_nabf(F, A, B)."""
    return nabf_kumar(fused, a, b)


# ---------------------------------------------------------------- all at once

_SINGLE = {"EN": common.en, "SD": common.sd, "SF": common.sf, "AG": ag}
_PAIRED = {"MI": mi, "SCD": common.scd, "VIF": vif,
           "Qabf": lambda a, b, f: common.qabf(a, b, f, reference=True),
           "SSIM": ssim, "CC": common.cc, "PSNR": psnr, "MSE": mse, "Nabf": nabf, "MS_SSIM": ms_ssim,
           "Nabf_fused_first": nabf_fused_first}


def compute_tang_metrics(a, b, fused, metrics=None):
    """Tang-toolkit metrics of one triple of HxW whole-grey-level arrays -> {name: float}."""
    names = TANG_METRICS if metrics is None else tuple(metrics)
    known = TANG_METRICS + TANG_EXTRA
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; expected names from {known}")
    # im2double(uint8) * 255: the toolkit's float images (x / 255 * 255 is exact for 0..255).
    a, b, fused = (np.asarray(x, dtype=np.float64) / 255.0 * 255.0 for x in (a, b, fused))
    shared = {}
    if "SSIM" in names and "MS_SSIM" in names and min(fused.shape) > _MEF_WINDOW:
        shared["moments"] = _gauss_moments(a, b, fused)
    out = {}
    for name in known:
        if name in names:
            fn = _SINGLE.get(name)
            if fn:
                out[name] = float(fn(fused))
            elif name in ("SSIM", "MS_SSIM"):
                out[name] = float(_PAIRED[name](a, b, fused, **shared))
            else:
                out[name] = float(_PAIRED[name](a, b, fused))
    return out
