"""Image-fusion metrics (EN SD SF MI SCD VIF Qabf SSIM + AG CC PSNR MSE) under three protocols.

Inputs are float arrays of whole grey levels in [0, 255], all of one shape HxW: ``a`` and ``b`` are
the two sources (any modalities; IVF: a = infrared, b = visible; MIF: a = CT/PET/SPECT, b = MRI) and
``fused`` the fused image. Read files with ``read_luma`` to get the reference's inputs. EN and MI
count grey levels, so they round their input to whole levels first. Every metric that involves the
sources is symmetric in ``a`` and ``b``. VIF needs at least 41x41 pixels (4 scales).
Definitions: shared/reference/fusion_metrics.md.

Protocol ``reference`` (the default) reproduces the field's de-facto evaluator (CDDFuse's
``utils/Evaluator.py``, scikit-image 0.19), quirks included:
  - MI = I(F;A) + I(F;B) in nats (natural log);
  - SSIM = ssim(F,A) + ssim(F,B), each with a 7x7 box window, sample covariance (x 49/48),
    data range L = 2 (scikit-image 0.19's guess for float input), float32 arithmetic, mean over
    the map with a 3-pixel border cropped;
  - Qabf: 3x3 Sobel with zero padding (the image border becomes a strong edge), and relative
    strength G = gF where gX == gF (so equal gradients score G = gF, zero gradients G = 0);
  - PSNR = 10 log10(max(F)^2 / MSE), the fused image's own peak;
  - MSE (and the MSE inside PSNR) summed in float32 as the reference does (shifts MSE ~1e-3).
Protocol ``corrected`` keeps every definition and every aggregation (MI, VIF and SSIM stay the sum
over both sources) but uses the textbook conventions where the reference deviates:
  - MI in bits (= reference MI / ln 2);
  - SSIM per Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), population covariance,
    L = 255, float64, mean over the valid region (5-pixel border cropped); ssim(x, x) = 1;
  - Qabf: Sobel with edge replication (no artificial frame) and G = 1 where gX == gF;
  - PSNR with the 8-bit peak 255; MSE in float64.
EN, SD, SF, SCD, VIF (multi-scale pixel VIF, sigma_n^2 = 2), AG and CC are identical in both.
Protocol ``tang`` is the MATLAB toolkit many IVIF papers use (Linfeng-Tang/Evaluation-for-Image-
Fusion); its definitions, names and quirks are in ``ddfm.metrics_tang``. ``cddfuse`` is an alias
of ``reference``.
"""
import numpy as np
from scipy import fft as _fft
from scipy import ndimage

from ddfm.metrics_io import read_luma  # noqa: F401  (part of this module's public API)

METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG", "CC", "PSNR", "MSE")
PROTOCOLS = ("reference", "corrected")  # computed in this module
# tang: the MATLAB toolkit's dialect, in ddfm.metrics_tang (imported when first used).
ALL_PROTOCOLS = PROTOCOLS + ("tang",)
PROTOCOL_ALIASES = {"cddfuse": "reference"}

# Xydeas-Petrovic sigmoid constants (strength g, orientation alpha).
_QG, _KG, _SG = 0.9994, -15.0, 0.5
_QA, _KA, _SA = 0.9879, -22.0, 0.8
_VIF_NOISE = 2.0  # HVS noise variance sigma_n^2, 0-255 units
_VIF_EPS = 1e-10
_VIF_MIN_SIZE = 41  # smallest side that leaves a non-empty map at all 4 scales


def _check_protocol(protocol):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def canonical_protocol(name):
    """'cddfuse' -> 'reference'; any other known protocol as it is; ValueError otherwise."""
    protocol = PROTOCOL_ALIASES.get(name, name)
    if protocol not in ALL_PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of "
                         f"{', '.join(ALL_PROTOCOLS + tuple(PROTOCOL_ALIASES))}")
    return protocol


def protocol_metrics(protocol, extras=False):
    """The metric names a protocol computes by default (with ``extras``: also on request)."""
    if canonical_protocol(protocol) == "tang":
        from ddfm.metrics_tang import TANG_EXTRA, TANG_METRICS
        return TANG_METRICS + (TANG_EXTRA if extras else ())
    return METRICS


def _levels(img):
    """Whole grey levels as int64 in [0, 255]."""
    return np.clip(np.rint(img), 0, 255).astype(np.int64)


def _pearson(x, y):
    """Pearson correlation over all pixels (nan when either input is constant)."""
    xc = x - x.mean()
    yc = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))


# ---------------------------------------------------------------- single-image metrics


def _entropy_bits(counts, n):
    """Shannon entropy (bits) of a histogram of n samples."""
    p = counts[counts > 0] / n
    return float(-np.sum(p * np.log2(p)))


def en(fused):
    """EN: Shannon entropy (bits) of the 256-level histogram of F. HxW -> [0, 8]."""
    return _entropy_bits(np.bincount(_levels(fused).ravel(), minlength=256), fused.size)


def sd(fused):
    """SD: population standard deviation of F on the 0-255 scale. HxW -> [0, 127.5]."""
    return float(np.std(fused))


def sf(fused):
    """SF: sqrt(RF^2 + CF^2), mean squared horizontal / vertical neighbour differences of F."""
    rf2 = np.mean(np.diff(fused, axis=1) ** 2)
    cf2 = np.mean(np.diff(fused, axis=0) ** 2)
    return float(np.sqrt(rf2 + cf2))


def ag(fused):
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2) with central differences (one-sided at the border)."""
    gx, gy = np.gradient(fused)  # central inside, one-sided on the first/last row and column
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# ---------------------------------------------------------------- MI, SCD, CC, MSE, PSNR


def _mi_pair(x_levels, f_levels):
    """I(X;F) in nats from the 256x256 joint histogram of co-located grey levels."""
    n = x_levels.size
    joint = np.bincount((x_levels * 256 + f_levels).ravel(), minlength=65536).reshape(256, 256)
    px = joint.sum(axis=1)
    pf = joint.sum(axis=0)
    i, j = np.nonzero(joint)
    nij = joint[i, j].astype(np.float64)
    # sum p_ij ln(p_ij / (p_i p_j)) written with counts: ln(n_ij n / (n_i n_j))
    return float(np.sum(nij * (np.log(nij) + np.log(n) - np.log(px[i]) - np.log(pf[j]))) / n)


def mi(a, b, fused, protocol="reference"):
    """MI: I(F;A) + I(F;B); nats for ``reference``, bits for ``corrected``. HxW -> >= 0."""
    _check_protocol(protocol)
    fl = _levels(fused)
    total = _mi_pair(_levels(a), fl) + _mi_pair(_levels(b), fl)
    return float(total if protocol == "reference" else total / np.log(2.0))


def scd(a, b, fused):
    """SCD: r(A, F - B) + r(B, F - A), Pearson correlations of differences. -> [-2, 2]."""
    return _pearson(a, fused - b) + _pearson(b, fused - a)


def cc(a, b, fused):
    """CC: (r(A, F) + r(B, F)) / 2 with Pearson r. -> [-1, 1]."""
    return (_pearson(a, fused) + _pearson(b, fused)) / 2.0


def _mse(a, b, fused, protocol):
    if protocol == "reference":
        # The reference sums in float32 (NumPy's pairwise sum); at MSE ~ 2000 that moves the value
        # by up to ~1e-3, so the same float32 reduction is used to reproduce it.
        a, b, fused = (np.asarray(x, dtype=np.float32) for x in (a, b, fused))
        return (np.mean((a - fused) ** 2) + np.mean((b - fused) ** 2)) / np.float32(2)
    return (np.mean((a - fused) ** 2) + np.mean((b - fused) ** 2)) / 2.0


def mse(a, b, fused, protocol="reference"):
    """MSE: (mean (A - F)^2 + mean (B - F)^2) / 2 on the 0-255 scale (float32 sums for reference)."""
    _check_protocol(protocol)
    return float(_mse(a, b, fused, protocol))


def psnr(a, b, fused, protocol="reference"):
    """PSNR (dB) = 10 log10(peak^2 / MSE); peak = max(F) for ``reference``, 255 for ``corrected``."""
    _check_protocol(protocol)
    err = _mse(a, b, fused, protocol)
    peak = np.max(np.asarray(fused, dtype=err.dtype)) if protocol == "reference" else 255.0
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(peak * peak / err))


# ---------------------------------------------------------------- VIF


def _gaussian_1d(size, sigma):
    """Normalised 1-D factor of a size x size Gaussian window (fspecial('gaussian', size, sigma))."""
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _vif_kernel(n):
    """Normalised 1-D factor of the NxN Gaussian window (sigma = N/5) of vifp_mscale."""
    # The 2-D window zeroes entries below eps * max; for N <= 17, sigma = N/5 none is that small,
    # so the window is exactly separable.
    return _gaussian_1d(n, n / 5.0)


def _filter_valid(stack, g):
    """'valid' 2-D filtering of each (H, W) slice of ``stack`` with the separable window g x g."""
    n = g.size
    h, w = stack.shape[-2:]
    # Circular convolution of a length-L signal reproduces linear convolution on the valid part
    # whenever L >= H, so no padding is needed beyond a fast FFT length.
    lh, lw = _fft.next_fast_len(h, real=True), _fft.next_fast_len(w, real=True)
    spectrum = _fft.rfft2(stack, s=(lh, lw))
    # The window's spectrum is the outer product of its 1-D factors' spectra.
    spectrum *= _fft.fft(g, lh)[:, None] * _fft.rfft(g, lw)[None, :]
    return _fft.irfft2(spectrum, s=(lh, lw))[..., n - 1:h, n - 1:w]


def _blur_decimate(stack, g):
    """'valid' filtering with g x g followed by keeping every second row and column (index 0 on).

    Only the kept outputs are computed: each pass is a sum of strided shifted slices, which costs a
    quarter of filtering the whole image.
    """
    n = g.size
    h, w = stack.shape[-2:]
    rows = (h - n) // 2 + 1
    cols = (w - n) // 2 + 1
    tmp = sum(g[k] * stack[..., :, k:k + 2 * cols - 1:2] for k in range(n))
    return sum(g[k] * tmp[..., k:k + 2 * rows - 1:2, :] for k in range(n))


def _vif_scale_terms(images, g):
    """(num_s, den_s) per source (arrays of 2) of one VIFp scale; images = stack [A, B, F].

    The fix-ups (a)-(d) of the reference leave the gain g = 0 wherever the reference is flat
    (var_r < 1e-10), the distorted image is flat (var_f < 1e-10) or the covariance is negative;
    those pixels add log(1 + 0) = 0 to num, whatever their residual variance, and flat-reference
    pixels add 0 to den. Natural logs are used: the base cancels in num / den.
    """
    h, w = images.shape[1:]
    src, f = images[:2], images[2]
    products = np.empty((8, h, w))
    products[0:2] = src
    np.multiply(src, src, out=products[2:4])
    np.multiply(src, f, out=products[4:6])
    products[6] = f
    np.multiply(f, f, out=products[7])
    m = _filter_valid(products, g)
    mu_r, e_rr, e_rf, mu_f, e_ff = m[0:2], m[2:4], m[4:6], m[6], m[7]

    var_f = np.maximum(e_ff - mu_f * mu_f, 0.0)
    var_r = mu_r * mu_r
    np.subtract(e_rr, var_r, out=var_r)
    np.maximum(var_r, 0.0, out=var_r)
    var_r *= var_r >= _VIF_EPS  # fix-up (a): a flat reference has no variance
    cov = mu_r * mu_f
    np.subtract(e_rf, cov, out=cov)
    gain = var_r + _VIF_EPS
    np.divide(cov, gain, out=gain)
    np.maximum(gain, 0.0, out=gain)  # fix-up (c)
    gain *= var_f >= _VIF_EPS  # fix-up (b); where (a) applies, var_r = 0 zeroes the term anyway
    sv = gain * cov
    np.subtract(var_f, sv, out=sv)
    np.maximum(sv, _VIF_EPS, out=sv)  # fix-up (d)
    sv += _VIF_NOISE
    t = gain * gain
    t *= var_r
    t /= sv
    num = np.log1p(t, out=t).sum(axis=(1, 2))
    var_r /= _VIF_NOISE
    den = np.log1p(var_r, out=var_r).sum(axis=(1, 2))
    return num, den


def vifp_ratios(a, b, fused):
    """(VIFp(A, F), VIFp(B, F)) as an array of 2, NaN where a source is flat at every scale."""
    if min(np.shape(fused)) < _VIF_MIN_SIZE:
        raise ValueError(f"VIF needs images of at least {_VIF_MIN_SIZE}x{_VIF_MIN_SIZE}")
    images = np.stack([np.asarray(x, dtype=np.float64) for x in (a, b, fused)])
    num = np.zeros(2)
    den = np.zeros(2)
    for scale in range(1, 5):
        g = _vif_kernel(2 ** (5 - scale) + 1)
        if scale > 1:
            # Blur with the current scale's window ('valid'), then keep every second row/column.
            images = _blur_decimate(images, g)
        terms = _vif_scale_terms(images, g)
        num += terms[0]
        den += terms[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def vif(a, b, fused):
    """VIF: VIFp(A, F) + VIFp(B, F), 4-scale pixel-domain VIF (Sheikh & Bovik). -> about [0, 2]."""
    ratios = vifp_ratios(a, b, fused)
    ratios = np.where(np.isnan(ratios), 1.0, ratios)  # the reference maps a NaN VIFp to 1
    return float(ratios[0] + ratios[1])


# ---------------------------------------------------------------- Qabf


def _sobel(img, pad_mode):
    """3x3 Sobel (gx, gy) as true convolution with the reference kernels; 'same' size output,
    the image padded by one pixel with np.pad's ``pad_mode``."""
    p = np.pad(img, 1, mode=pad_mode)
    smooth_v = p[:-2, :] + 2.0 * p[1:-1, :] + p[2:, :]  # [1,2,1] down the columns, (H, W+2)
    smooth_h = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # [1,2,1] along the rows, (H+2, W)
    gx = smooth_v[:, :-2] - smooth_v[:, 2:]  # f[j-1] - f[j+1]: the flipped x-kernel
    gy = smooth_h[2:, :] - smooth_h[:-2, :]  # f[i+1] - f[i-1]: the flipped y-kernel
    return gx, gy


def _strength_angle(img, zero_pad):
    """Sobel strength sqrt(gx^2 + gy^2) and orientation arctan(gy / gx) (pi/2 where gx == 0)."""
    gx, gy = _sobel(img, "constant" if zero_pad else "edge")
    strength = gx * gx
    strength += gy * gy
    np.sqrt(strength, out=strength)
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.arctan(gy / gx)  # +-inf or nan where gx == 0, replaced next
    return strength, np.where(gx == 0, np.pi / 2, angle)


def _edge_preservation(g_x, a_x, g_f, a_f, reference):
    """Q_XF = Q_g * Q_alpha per pixel for one source X against F."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.minimum(g_x, g_f) / np.maximum(g_x, g_f)  # 0/0 only where gX == gF == 0
    # Reference quirk: where gX == gF the relative strength is gF itself, not 1.
    rel = np.where(g_x == g_f, g_f if reference else 1.0, rel)
    # Q_g = Gamma_g / (1 + exp(kappa_g (G - sigma_g))), evaluated in place
    rel -= _SG
    rel *= _KG
    np.exp(rel, out=rel)
    rel += 1.0
    q = np.divide(_QG, rel, out=rel)
    # Q_alpha with A = 1 - |aX - aF| / (pi/2)
    agree = np.subtract(a_x, a_f)
    np.abs(agree, out=agree)
    agree *= -2.0 / np.pi
    agree += 1.0 - _SA
    agree *= _KA
    np.exp(agree, out=agree)
    agree += 1.0
    q /= agree
    q *= _QA
    return q


def qabf(a, b, fused, protocol="reference"):
    """Qabf: Xydeas-Petrovic edge preservation, sum(Q_AF gA + Q_BF gB) / sum(gA + gB). -> [0, 1]."""
    _check_protocol(protocol)
    reference = protocol == "reference"
    ga, aa = _strength_angle(np.asarray(a, dtype=np.float64), reference)
    gb, ab = _strength_angle(np.asarray(b, dtype=np.float64), reference)
    gf, af = _strength_angle(np.asarray(fused, dtype=np.float64), reference)
    q_a = _edge_preservation(ga, aa, gf, af, reference)
    q_b = _edge_preservation(gb, ab, gf, af, reference)
    q_a *= ga
    q_b *= gb
    q_a += q_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(q_a) / np.sum(ga + gb))


# ---------------------------------------------------------------- SSIM


def _ssim_reference(f, sources):
    """Sum of skimage-0.19 SSIM(F, X): 7x7 box, sample covariance, L = 2, float32 arithmetic."""
    c1 = np.float32((0.01 * 2) ** 2)
    c2 = np.float32((0.03 * 2) ** 2)
    cov_norm = np.float32(49.0 / 48.0)

    def box(x):
        # Box mean over the 7x7 window; the 3-pixel border is cropped below, so mode is irrelevant.
        return ndimage.uniform_filter(x, size=7)[3:-3, 3:-3]

    f = f.astype(np.float32)
    uf, uff = box(f), box(f * f)
    vf = cov_norm * (uff - uf * uf)
    total = 0.0
    for x in sources:
        x = x.astype(np.float32)
        ux, uxx, ufx = box(x), box(x * x), box(f * x)
        vx = cov_norm * (uxx - ux * ux)
        vfx = cov_norm * (ufx - uf * ux)
        num = (2 * uf * ux + c1) * (2 * vfx + c2)
        den = (uf * uf + ux * ux + c1) * (vf + vx + c2)
        total += float(np.mean(num / den, dtype=np.float64))
    return total


def _ssim_corrected(f, sources):
    """Sum of Wang et al. SSIM(F, X): 11x11 Gaussian (sigma 1.5), L = 255, float64, valid region."""
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    a, b = sources
    # All local moments in one batched 'valid' filtering (the 5-pixel border has no full window).
    m = _filter_valid(np.stack([f, f * f, a, a * a, a * f, b, b * b, b * f]), _gaussian_1d(11, 1.5))
    return sum(ssim_means_from_moments(m, c1, c2))


def ssim_means_from_moments(m, c1, c2):
    """(mean SSIM(F, A), mean SSIM(F, B)) from local moments m = [F, F^2, A, A^2, AF, B, B^2, BF]
    (population form, any window) and the constants C1, C2."""
    uf, vf = m[0], m[1] - m[0] * m[0]
    means = []
    for ux, uxx, ufx in (m[2:5], m[5:8]):
        vx = uxx - ux * ux
        vfx = ufx - uf * ux
        num = (2 * uf * ux + c1) * (2 * vfx + c2)
        den = (uf * uf + ux * ux + c1) * (vf + vx + c2)
        means.append(float(np.mean(num / den)))
    return means


def ssim(a, b, fused, protocol="reference"):
    """SSIM: ssim(F, A) + ssim(F, B) under the protocol's conventions. -> at most 2."""
    _check_protocol(protocol)
    arrays = [np.asarray(x, dtype=np.float64) for x in (a, b, fused)]
    if protocol == "reference":
        return _ssim_reference(arrays[2], arrays[:2])
    return _ssim_corrected(arrays[2], arrays[:2])


# ---------------------------------------------------------------- all at once

_SINGLE = {"EN": en, "SD": sd, "SF": sf, "AG": ag}
_PAIRED = {"SCD": scd, "VIF": vif, "CC": cc}
_BY_PROTOCOL = {"MI": mi, "Qabf": qabf, "SSIM": ssim, "PSNR": psnr, "MSE": mse}


def compute_metrics(a, b, fused, protocol="reference", metrics=None):
    """Metrics of one (A, B, F) triple of HxW grey-level arrays -> {name: float} in METRICS order.

    ``protocol``: reference (alias cddfuse), corrected, or tang (ddfm.metrics_tang: its metric
    names, e.g. Nabf and MS_SSIM, and its grey conversion for files, matlab_grey_from_rgb8).
    """
    protocol = canonical_protocol(protocol)
    a, b, fused = (np.asarray(x, dtype=np.float64) for x in (a, b, fused))
    if a.ndim != 2 or not (a.shape == b.shape == fused.shape):
        raise ValueError(f"need three 2-D arrays of one shape, got {a.shape}, {b.shape}, {fused.shape}")
    if protocol == "tang":
        from ddfm.metrics_tang import compute_tang_metrics
        return compute_tang_metrics(a, b, fused, metrics=metrics)
    names = METRICS if metrics is None else tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; expected names from {METRICS}")
    out = {}
    for name in METRICS:
        if name not in names:
            continue
        if name in _SINGLE:
            out[name] = _SINGLE[name](fused)
        elif name in _PAIRED:
            out[name] = _PAIRED[name](a, b, fused)
        else:
            out[name] = _BY_PROTOCOL[name](a, b, fused, protocol)
        out[name] = float(out[name])  # plain floats, never NumPy scalars, in every output file
    return out
