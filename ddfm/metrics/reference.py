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
EN, SD, SF, SCD, VIF (multi-scale pixel VIF, sigma_n^2 = 2), AG and CC are identical in both
(those shared with every dialect are defined in ``ddfm.metrics.common``).
Protocol ``tang`` is the MATLAB toolkit many IVIF papers use (Linfeng-Tang/Evaluation-for-Image-
Fusion); its definitions, names and quirks are in ``ddfm.metrics.tang``. ``cddfuse`` is an alias
of ``reference``.
"""
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from ddfm.metrics import common, tang

# Part of this module's public API: the definitions every protocol shares, and the file reader.
from ddfm.metrics.common import cc, en, scd, sd, sf, vifp_ratios  # noqa: F401
from ddfm.metrics.images import read_luma  # noqa: F401

METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG", "CC", "PSNR", "MSE")
PROTOCOLS = ("reference", "corrected")  # computed in this module
# tang: the MATLAB toolkit's dialect, in ddfm.metrics.tang.
ALL_PROTOCOLS = PROTOCOLS + ("tang",)
PROTOCOL_ALIASES = {"cddfuse": "reference"}


def _check_protocol(protocol):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def canonical_protocol(name: str) -> str:
    """'cddfuse' -> 'reference'; any other known protocol as it is; ValueError otherwise."""
    protocol = PROTOCOL_ALIASES.get(name, name)
    if protocol not in ALL_PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of "
                         f"{', '.join(ALL_PROTOCOLS + tuple(PROTOCOL_ALIASES))}")
    return protocol


def protocol_metrics(protocol: str, extras: bool = False) -> tuple[str, ...]:
    """The metric names a protocol computes by default (with ``extras``: also on request)."""
    if canonical_protocol(protocol) == "tang":
        return tang.TANG_METRICS + (tang.TANG_EXTRA if extras else ())
    return METRICS


# ---------------------------------------------------------------- AG


def ag(fused):
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2) with central differences (one-sided at the border)."""
    gx, gy = np.gradient(fused)  # central inside, one-sided on the first/last row and column
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# ---------------------------------------------------------------- MI, MSE, PSNR


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
    fl = common.levels(fused)
    total = _mi_pair(common.levels(a), fl) + _mi_pair(common.levels(b), fl)
    return float(total if protocol == "reference" else total / np.log(2.0))


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


# ---------------------------------------------------------------- VIF, Qabf


def vif(a, b, fused):
    """VIF: VIFp(A, F) + VIFp(B, F), 4-scale pixel-domain VIF (Sheikh & Bovik). -> about [0, 2]."""
    ratios = vifp_ratios(a, b, fused)
    ratios = np.where(np.isnan(ratios), 1.0, ratios)  # the reference maps a NaN VIFp to 1
    return float(ratios[0] + ratios[1])


def qabf(a, b, fused, protocol="reference"):
    """Qabf: Xydeas-Petrovic edge preservation, sum(Q_AF gA + Q_BF gB) / sum(gA + gB). -> [0, 1].

    ``reference``: zero-padded Sobel and G = gF where gX == gF; ``corrected``: edge replication
    and G = 1."""
    _check_protocol(protocol)
    return common.qabf(a, b, fused, reference=protocol == "reference")


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
    m = common.filter_valid(np.stack([f, f * f, a, a * a, a * f, b, b * b, b * f]),
                            common.gaussian_1d(11, 1.5))
    return sum(common.ssim_means_from_moments(m, c1, c2))


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


def compute_metrics(a: ArrayLike, b: ArrayLike, fused: ArrayLike, protocol: str = "reference",
                    metrics: Iterable[str] | None = None) -> dict[str, float]:
    """Metrics of one (A, B, F) triple of HxW grey-level arrays -> {name: float} in METRICS order.

    ``protocol``: reference (alias cddfuse), corrected, or tang (ddfm.metrics.tang: its metric
    names, e.g. Nabf and MS_SSIM, and its grey conversion for files, matlab_grey_from_rgb8).
    """
    protocol = canonical_protocol(protocol)
    a, b, fused = (np.asarray(x, dtype=np.float64) for x in (a, b, fused))
    if a.ndim != 2 or not (a.shape == b.shape == fused.shape):
        raise ValueError(f"need three 2-D arrays of one shape, got {a.shape}, {b.shape}, {fused.shape}")
    if protocol == "tang":
        return tang.compute_tang_metrics(a, b, fused, metrics=metrics)
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
