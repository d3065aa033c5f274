"""What every evaluation dialect shares: grey levels, entropy, windows, Sobel, and the metrics
defined alike everywhere (EN, SD, SF, SCD, CC, multi-scale VIFp, Qabf, SSIM from local moments).

``ddfm.metrics`` (reference / corrected) and ``ddfm.metrics.tang`` (the MATLAB toolkit) both build
on this module and on nothing of each other. Inputs are float arrays of whole grey levels in
[0, 255] of one shape HxW: ``a`` and ``b`` the sources, ``fused`` the fused image. Definitions:
shared/reference/fusion_metrics.md.
"""
import numpy as np
from scipy import fft as _fft

# Xydeas-Petrovic sigmoid constants (strength g, orientation alpha).
_QG, _KG, _SG = 0.9994, -15.0, 0.5
_QA, _KA, _SA = 0.9879, -22.0, 0.8
_VIF_NOISE = 2.0  # HVS noise variance sigma_n^2, 0-255 units
_VIF_EPS = 1e-10
VIF_MIN_SIZE = 41  # smallest side that leaves a non-empty map at all 4 scales


def levels(img):
    """Whole grey levels as int64 in [0, 255]."""
    return np.clip(np.rint(img), 0, 255).astype(np.int64)


def pearson(x, y):
    """Pearson correlation over all pixels (nan when either input is constant)."""
    xc = x - x.mean()
    yc = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))


def entropy_bits(counts, n):
    """Shannon entropy (bits) of a histogram of n samples."""
    p = counts[counts > 0] / n
    return float(-np.sum(p * np.log2(p)))


def gaussian_1d(size, sigma):
    """Normalised 1-D factor of a size x size Gaussian window (fspecial('gaussian', size, sigma))."""
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


# ---------------------------------------------------------------- EN, SD, SF, SCD, CC


def en(fused):
    """EN: Shannon entropy (bits) of the 256-level histogram of F. HxW -> [0, 8]."""
    return entropy_bits(np.bincount(levels(fused).ravel(), minlength=256), fused.size)


def sd(fused):
    """SD: population standard deviation of F on the 0-255 scale. HxW -> [0, 127.5]."""
    return float(np.std(fused))


def sf(fused):
    """SF: sqrt(RF^2 + CF^2), mean squared horizontal / vertical neighbour differences of F."""
    rf2 = np.mean(np.diff(fused, axis=1) ** 2)
    cf2 = np.mean(np.diff(fused, axis=0) ** 2)
    return float(np.sqrt(rf2 + cf2))


def scd(a, b, fused):
    """SCD: r(A, F - B) + r(B, F - A), Pearson correlations of differences. -> [-2, 2]."""
    return pearson(a, fused - b) + pearson(b, fused - a)


def cc(a, b, fused):
    """CC: (r(A, F) + r(B, F)) / 2 with Pearson r. -> [-1, 1]."""
    return (pearson(a, fused) + pearson(b, fused)) / 2.0


# ---------------------------------------------------------------- VIF


def _vif_kernel(n):
    """Normalised 1-D factor of the NxN Gaussian window (sigma = N/5) of vifp_mscale."""
    # The 2-D window zeroes entries below eps * max; for N <= 17, sigma = N/5 none is that small,
    # so the window is exactly separable.
    return gaussian_1d(n, n / 5.0)


def filter_valid(stack, g):
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
    m = filter_valid(products, g)
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
    if min(np.shape(fused)) < VIF_MIN_SIZE:
        raise ValueError(f"VIF needs images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE}")
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


# ---------------------------------------------------------------- Qabf


def sobel(img, pad_mode):
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
    gx, gy = sobel(img, "constant" if zero_pad else "edge")
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


def qabf(a, b, fused, reference):
    """Qabf: Xydeas-Petrovic edge preservation, sum(Q_AF gA + Q_BF gB) / sum(gA + gB). -> [0, 1].

    ``reference``: the reference evaluator's conventions (zero-padded Sobel, G = gF where
    gX == gF); otherwise the textbook ones (edge replication, G = 1)."""
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
