"""The tang protocol (MATLAB toolkit dialect): golden values from the toolkit run under Octave, and
hand-made checks of each quirk it reproduces."""
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddfm.metrics import compute_metrics, read_luma, tang as T
from ddfm.metrics.evaluation import evaluate_protocols
from test_metrics import _smooth_texture as _texture

GOLDEN = Path(__file__).resolve().parent / "golden" / "metrics"
TANG = json.loads((GOLDEN / "matlab_tang" / "values.json").read_text())
SOURCES = {"TNO": ("TNO/ir", "TNO/vi"), "MRI_CT": ("MRI_CT/ct", "MRI_CT/mri")}


@lru_cache(maxsize=None)
def _grey(path):
    return read_luma(path)  # the golden files are grey (sources R = G = B): both greys agree


def _triple(method, dataset, stem):
    a_dir, b_dir = SOURCES[dataset]
    return (_grey(GOLDEN / "sources" / a_dir / f"{stem}.png"), _grey(GOLDEN / "sources" / b_dir / f"{stem}.png"),
            _grey(GOLDEN / "fused" / method / dataset / f"{stem}.png"))


def _close(got, expected):
    """Within 1e-4 absolute, or relative for values above 1 (PSNR, SD, ...)."""
    return abs(got - expected) <= 1e-4 * max(1.0, abs(expected))


@pytest.mark.parametrize("key", [f"{m}/{d}" for m in TANG["values"] for d in TANG["values"][m]])
def test_reproduces_the_matlab_toolkit(key):
    method, dataset = key.split("/")
    bad, seen = [], set()
    for stem, expected in TANG["values"][method][dataset].items():
        got = compute_metrics(*_triple(method, dataset, stem), protocol="tang", metrics=list(expected))
        seen.update(expected)
        bad += [(stem, m, got[m], v) for m, v in expected.items() if not _close(got[m], v)]
    assert not bad, bad[:10]
    assert seen >= {"EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG", "PSNR", "MSE", "CC"}


def test_golden_covers_every_toolkit_metric():
    metrics = {m for d in TANG["values"].values() for rows in d.values() for row in rows.values() for m in row}
    assert metrics == set(T.TANG_METRICS + T.TANG_EXTRA)


# ---------------------------------------------------------------- quirks, by hand


def test_matlab_rgb2gray_weights_and_rounding():
    # rgb2gray's weights (first row of inv(NTSC)), rounded half away from zero
    weights = np.array([0.298936021, 0.587043074, 0.114020904])
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    expected = np.floor(rgb.astype(np.float64) @ weights + 0.5)
    assert np.array_equal(T.matlab_grey_from_rgb8(rgb), expected)
    # where it parts from BT.601: (177, 10, 208) is 82.4985 for MATLAB, 82.505 for BT.601
    colour = np.array([[[177, 10, 208]]], np.uint8)
    assert T.matlab_grey_from_rgb8(colour)[0, 0] == 82
    assert read_luma_of(colour) == 83
    assert T.matlab_grey_from_rgb8(np.array([[[255, 255, 255]]], np.uint8))[0, 0] == 255
    assert T.matlab_grey_from_rgb8(np.full((2, 2), 7, np.uint8)).tolist() == [[7, 7], [7, 7]]


def read_luma_of(rgb):
    from ddfm.metrics.images import luma_from_rgb8
    return luma_from_rgb8(rgb)[0, 0]


def test_mi_merges_levels_254_and_255_in_the_joint_histogram():
    # A has 254 and 255 in equal halves; F copies A. Bits: H(A) = H(F) = 1, but the joint
    # histogram sees one bin, H(A, F) = 0, so each term is 2 instead of 1.
    a = np.where(np.arange(64)[None, :] % 2 == 0, 254.0, 255.0).repeat(8, axis=0)
    assert T.mi(a, a, a) == pytest.approx(4.0, abs=1e-12)
    b = a - 100.0  # 154/155: no merge, the textbook I(A;F) = 1 bit per source
    assert T.mi(b, b, b) == pytest.approx(2.0, abs=1e-12)
    x = _texture(1)
    assert T.mi(x, x, x) == pytest.approx(compute_metrics(x, x, x, "corrected")["MI"], abs=1e-9)


def test_psnr_mse_ag_conventions():
    zero, ten = np.zeros((8, 8)), np.full((8, 8), 10.0)
    mse01 = (10 / 255) ** 2 / 2  # ((F-A)^2 + (F-B)^2) / 2 on [0, 1] with B = F
    assert T.mse(zero, ten, ten) == pytest.approx(mse01, rel=1e-12)
    assert T.psnr(zero, ten, ten) == pytest.approx(20 * math.log10(255 / math.sqrt(mse01)), rel=1e-12)
    assert T.psnr(zero, ten, ten) - 10 * math.log10(255**2 / (100 / 2)) == pytest.approx(
        10 * math.log10(255**2), rel=1e-12)  # the 48.13 dB offset
    x = _texture(2)
    h, w = x.shape
    reference_ag = compute_metrics(x, x, x)["AG"]  # divides by H * W
    assert T.ag(x) == pytest.approx(reference_ag * h * w / ((h - 1) * (w - 1)), rel=1e-12)


def test_ssim_is_the_average_with_data_range_one():
    x = _texture(3)
    assert T.ssim(x, x, x) == pytest.approx(1.0, abs=1e-12)
    # brute force at one interior pixel is the definition; the mean over the full map with
    # replicate padding is pinned by the golden test. Here: range 1 constants make a flat
    # region against a different flat region score near 0 (C1 = 1e-4 is tiny).
    a, f = np.full((32, 32), 100.0), np.full((32, 32), 101.0)
    expected = (2 * 100 * 101 + 1e-4) / (100**2 + 101**2 + 1e-4)  # luminance term; structure = 1
    assert T.ssim(a, a, f) == pytest.approx(expected, abs=1e-12)


def test_vif_nan_is_not_replaced():
    flat = np.full((64, 64), 50.0)
    assert math.isnan(T.vif(flat, flat, flat))
    assert compute_metrics(flat, flat, flat)["VIF"] == 2.0  # the reference maps NaN to 1


def test_nabf_argument_order():
    a, b, f = _texture(4), _texture(5), _texture(6)
    assert T.nabf(a, b, f) == T.nabf_kumar(a, b, f)  # the toolkit's call: A as the fused image
    assert T.nabf_fused_first(a, b, f) == T.nabf_kumar(f, a, b)
    assert T.nabf(a, b, f) != T.nabf_fused_first(a, b, f)
    # no artefacts where F is never stronger than both sources: F = A
    assert T.nabf_fused_first(a, b, a) == 0.0
    # a noisy fused image has strong artefacts; a smooth blend almost none
    blend = np.round((a + b) / 2)
    noisy = np.clip(blend + np.random.default_rng(0).normal(0, 40, a.shape), 0, 255)
    assert T.nabf_fused_first(a, b, noisy) > 10 * T.nabf_fused_first(a, b, blend)


def test_mef_ssim_properties():
    x = _texture(7, (96, 96))
    assert T.ms_ssim(x, x, x) == pytest.approx(1.0, abs=2e-3)  # desired patch = x's, rescaled
    noisy = np.clip(x + np.random.default_rng(1).normal(0, 30, x.shape), 0, 255)
    assert T.ms_ssim(x, x, noisy) < T.ms_ssim(x, x, x) - 0.05
    with pytest.raises(ValueError):
        T.ms_ssim(x[:40], x[:40], x[:40])  # 3 scales of an 11x11 window need 44 pixels a side


def test_compute_metrics_tang_names_and_order():
    x = _texture(8)
    got = compute_metrics(x, x, x, protocol="tang")
    assert list(got) == list(T.TANG_METRICS)
    assert all(type(v) is float for v in got.values())
    assert list(compute_metrics(x, x, x, "tang", metrics=["Nabf_fused_first", "EN"])) == ["EN", "Nabf_fused_first"]
    y, z = _texture(9), _texture(10)
    full = compute_metrics(x, y, z, "tang")  # SSIM and MS_SSIM share their Gaussian moments
    assert compute_metrics(x, y, z, "tang", metrics=["MS_SSIM"])["MS_SSIM"] == pytest.approx(full["MS_SSIM"], abs=1e-12)
    assert T.ssim(x, y, z) == pytest.approx(full["SSIM"], abs=1e-12)
    assert compute_metrics(x, y, z, "cddfuse") == compute_metrics(x, y, z, "reference")
    with pytest.raises(ValueError):
        compute_metrics(x, x, x, "tang", metrics=["FMI"])


def test_evaluation_reads_colour_with_each_protocols_grey(tmp_path):
    rng = np.random.default_rng(9)
    for name in ("ir", "vi", "fused"):
        (tmp_path / name).mkdir()
        rgb = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / name / "c.png")
    results = evaluate_protocols(tmp_path / "ir", tmp_path / "vi", {"f": tmp_path / "fused"},
                                 protocols=["all"], metrics=["EN", "MI", "SSIM"])
    assert [r["protocol"] for r in results] == ["reference", "corrected", "tang"]

    def rgb(name):
        return np.asarray(Image.open(tmp_path / name / "c.png"))

    matlab = [T.matlab_grey_from_rgb8(rgb(n)) for n in ("ir", "vi", "fused")]
    bt601 = [read_luma(tmp_path / n / "c.png") for n in ("ir", "vi", "fused")]
    assert not np.array_equal(matlab[2], bt601[2])  # random colours: the two greys differ
    tang = results[2]["methods"]["f"]["per_image"]["c"]
    assert tang == compute_metrics(*matlab, "tang", metrics=["EN", "MI", "SSIM"])
    assert results[0]["methods"]["f"]["per_image"]["c"] == compute_metrics(*bt601, metrics=["EN", "MI", "SSIM"])
