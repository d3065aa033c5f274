"""Prior-free fusion (`prior: none`): Bayesian fusion of Zhao et al. 2020, as released in BayesFusion.m.

Re-implemented from shared/reference/bayesfusion.md section 3 (no code of the release is reused).
Roles as in the paper and in DDFM: y = i - v, x = f - v, fused f = x + v.
Everything is float64 numpy, like the MATLAB original, so the 8-bit result matches the release.

With the released settings the output is close to the fixed blend 2/3 * visible + 1/3 * infrared
(reference section 4): the EM feedback drives most pixels to the clip w_b <= 2 w_a, where
f = (2 v + i) / 3. It is a classical model-based baseline, not DDFM (no diffusion prior).
"""
import os

import numpy as np
import scipy.fft as sfft

# FFT threads: the k-solve is the only costly step; rfft2 over rows parallelises well.
_WORKERS = max(1, min(os.cpu_count() or 1, 8))


def _difference_otfs(h, w):
    """Half-spectrum (rfft2 layout, h x (w//2+1)) transfer functions of the periodic forward differences.

    Built like MATLAB psf2otf([1,-1]) / psf2otf([1;-1]): the kernel is circularly shifted so that
    (D_h k)[r,c] = k[r,c+1] - k[r,c] and (D_v k)[r,c] = k[r+1,c] - k[r,c], both with wrap-around.
    """
    psf_h = np.zeros((h, w))
    psf_h[0, 0] = -1.0
    psf_h[0, -1 % w] += 1.0  # w == 1: the difference is identically zero, as in psf2otf
    psf_v = np.zeros((h, w))
    psf_v[0, 0] = -1.0
    psf_v[-1 % h, 0] += 1.0
    return sfft.rfft2(psf_h), sfft.rfft2(psf_v)


def _reversed_difference(k, dh, dv):
    """Release's u-step difference (quirk 1), written into dh, dv: (H,W) -> two (H,W).

    (d_h k)[r,c] = k[r,c] - k[r,c+1] with zero padding, so the last column keeps k[r,W]; d_v is the
    same along rows. It is the negative of D_h/D_v used in the k-solve; kept because the released
    outputs depend on it.
    """
    np.subtract(k[:, :-1], k[:, 1:], out=dh[:, :-1])
    dh[:, -1] = k[:, -1]
    np.subtract(k[:-1, :], k[1:, :], out=dv[:-1, :])
    dv[-1, :] = k[-1, :]


def bayes_fuse(ir, vi, *, iterations=15, sweeps=2, lam=0.5, eps=1e-6, clip=2.0):
    """Bayesian fusion (BayesFusion.m, Zhao et al. 2020): EM with an HQS/FFT M-step; (H,W) in [0,1] -> (H,W) in [0,1].

    ir: infrared / intensity source i; vi: visible / texture source v (the reference image).
    Both are single-channel arrays of the same, arbitrary size H x W with values in [0,1].
    Defaults are the released settings: `iterations` EM iterations (15) of `sweeps` HQS sweeps (2),
    TV weight `lam` (0.5), `eps` (1e-6) where the release adds it, and the weight clip
    w_b <= clip * w_a (2; None disables it, and the result then drifts toward the visible image).
    Returns f = x + v clipped to [0,1], float64. With the released settings f is close to
    2/3 * vi + 1/3 * ir (most pixels sit exactly at the clip); use `to_uint8` for the saved 8-bit image.
    """
    i = np.asarray(ir, dtype=np.float64)
    v = np.asarray(vi, dtype=np.float64)
    if i.ndim != 2 or i.shape != v.shape:
        raise ValueError(f"need two single-channel images of the same size, got {i.shape} and {v.shape}")
    if iterations < 1 or sweeps < 1:
        raise ValueError("iterations and sweeps must be >= 1")
    h, w = i.shape

    y = i - v
    k_h, k_v = _difference_otfs(h, w)
    # The k-solve uses unit weights throughout (quirk 2), so its Fourier denominator is fixed.
    denom = 1.0 + np.abs(k_h) ** 2 + np.abs(k_v) ** 2

    wa = np.ones_like(y)
    wb = np.ones_like(y)
    tau_a = 1.0
    tau_b = 1.0
    eta = 1.0  # scalar in the first iteration, a per-pixel image afterwards
    k = np.zeros_like(y)
    u_h = np.zeros_like(y)
    u_v = np.zeros_like(y)
    x = np.empty_like(y)
    rhs = np.empty_like(y)
    dh = np.empty_like(y)
    dv = np.empty_like(y)

    for _ in range(iterations):
        # M-step: HQS sweeps x -> k -> u. Weights and eta are constant within it.
        two_wa = 2.0 * wa
        x_den = two_wa + 2.0 * wb + eta
        two_wa_y = two_wa * y
        thr = lam / eta
        neg_thr = -thr
        for _ in range(sweeps):
            # x = (2 w_a y + eta k) / (2 w_a + 2 w_b + eta)
            np.multiply(eta, k, out=x)
            x += two_wa_y
            x /= x_den
            # (I + D_h'D_h + D_v'D_v) k = x + D_h'u_h + D_v'u_v with periodic forward differences D.
            # D'u is formed in space ((D_h'u)[r,c] = u[r,c-1] - u[r,c], wrapping): one FFT instead of
            # three, equal to conj(K) F(u) in Fourier space up to rounding.
            np.subtract(x, u_h, out=rhs)
            rhs -= u_v
            rhs[:, 1:] += u_h[:, :-1]
            rhs[:, 0] += u_h[:, -1]
            rhs[1:, :] += u_v[:-1, :]
            rhs[0, :] += u_v[-1, :]
            spec = sfft.rfft2(rhs, workers=_WORKERS)
            spec /= denom
            k = sfft.irfft2(spec, s=(h, w), workers=_WORKERS)
            # u = soft(d k, lam/eta) with the release's reversed, zero-padded difference d (quirk 1).
            # z - clip(z, -t, t) is soft(z, t) exactly, in two passes instead of four.
            _reversed_difference(k, dh, dv)
            np.subtract(dh, np.clip(dh, neg_thr, thr), out=u_h)
            np.subtract(dv, np.clip(dv, neg_thr, thr), out=u_v)

        # E-step with the x of the last sweep. Note the different eps placement of w_b and w_a.
        wb = np.sqrt(2.0 / (tau_b * (x * x + eps)))
        r = y - x + eps
        wa = np.sqrt(2.0 / (tau_a * (r * r)))
        if clip is not None:
            wb = np.minimum(wb, clip * wa)
        eta = (wa + wb) / 2.0
        tau_b = np.mean(1.0 / (wb + eps) + tau_b / 2.0)
        tau_a = np.mean(1.0 / (wa + eps) + tau_a / 2.0)

    return np.clip(x + v, 0.0, 1.0)


def to_uint8(f):
    """8-bit image as the release saves it (MATLAB imwrite of a double image): (H,W) float -> uint8.

    Saturates to [0,1], then round(255 * f) with halves rounded away from zero (MATLAB uint8()); NaN -> 0.
    """
    s = np.clip(np.asarray(f, dtype=np.float64), 0.0, 1.0) * 255.0
    g = np.floor(s)
    # s - floor(s) is exact, so only true halves round up (floor(s + 0.5) would also round 0.5 - 2^-54 up).
    g += (s - g) >= 0.5
    g[np.isnan(s)] = 0.0
    return g.astype(np.uint8)
