"""Fusion metrics: golden agreement with the reference evaluator, and hand-made definition checks."""
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddfm import metrics as M
from ddfm.metrics import METRICS, PROTOCOLS, compute_metrics, read_luma

GOLDEN = Path(__file__).resolve().parent / "golden" / "metrics"
REFERENCE = json.loads((GOLDEN / "metrics_reference.json").read_text())
TOL = 1e-4

# Xydeas-Petrovic constants, written out again so the tests do not lean on the module's copies.
Q_ALPHA_1 = 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))  # orientation term for identical angles


@lru_cache(maxsize=None)
def _luma(path):
    return read_luma(path)


def _source_dir(dataset, side):
    # metrics_reference.json names the sources as data/<dataset>/<modality>; they are copied
    # under golden/metrics/sources/<dataset>/<modality>.
    rel = REFERENCE["sources"][dataset][side]
    return GOLDEN / "sources" / Path(rel).relative_to("data")


# ---------------------------------------------------------------- golden agreement


@pytest.mark.parametrize("key", sorted(REFERENCE["results"]))
def test_reproduces_reference_evaluator(key):
    method, dataset = key.split("/")
    entry = REFERENCE["results"][key]
    fused_dir = GOLDEN / "fused" / method / dataset
    bad = []
    got_all = []
    for stem, expected in entry["per_image"].items():
        a = _luma(_source_dir(dataset, "a") / f"{stem}.png")
        b = _luma(_source_dir(dataset, "b") / f"{stem}.png")
        got = compute_metrics(a, b, read_luma(fused_dir / f"{stem}.png"))
        got_all.append(got)
        assert list(got) == list(METRICS)
        bad += [(stem, m, got[m], expected[m]) for m in expected if abs(got[m] - expected[m]) > TOL]
    assert not bad, f"{len(bad)} values off by more than {TOL}: {bad[:10]}"
    for m, value in entry["mean"].items():
        assert abs(np.mean([g[m] for g in got_all]) - value) <= TOL, m


def test_golden_covers_every_image():
    for key, entry in REFERENCE["results"].items():
        method, dataset = key.split("/")
        for stem in entry["per_image"]:
            assert (GOLDEN / "fused" / method / dataset / f"{stem}.png").is_file()
            assert (_source_dir(dataset, "a") / f"{stem}.png").is_file()
            assert (_source_dir(dataset, "b") / f"{stem}.png").is_file()


# ---------------------------------------------------------------- hand-made definitions


def _texture(seed, shape=(64, 64)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float64)


def _smooth_texture(seed, shape=(64, 64)):
    # Smooth structures plus noise, closer to a photograph than white noise.
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rng = np.random.default_rng(seed)
    base = 120 + 80 * np.sin(xx / (5 + seed)) * np.cos(yy / 7.0) + rng.normal(0, 8, shape)
    return np.clip(np.round(base), 0, 255)


def test_constant_image_has_no_information():
    f = np.full((40, 50), 77.0)
    assert M.en(f) == 0.0
    assert M.sd(f) == 0.0
    assert M.sf(f) == 0.0
    assert M.ag(f) == 0.0


def test_entropy_of_known_histograms():
    two = np.zeros((32, 32))
    two[:, 16:] = 200.0
    assert M.en(two) == pytest.approx(1.0, abs=1e-12)
    four = np.tile(np.array([0.0, 1.0, 2.0, 3.0]), (8, 8))
    assert M.en(four) == pytest.approx(2.0, abs=1e-12)
    assert M.sd(two) == pytest.approx(100.0, abs=1e-12)


def test_spatial_frequency_and_average_gradient_by_hand():
    h, w = 6, 8
    step = np.zeros((h, w))
    step[:, 4:] = 10.0
    # one column of horizontal neighbour pairs differs by 10, out of H x (W-1) pairs
    assert M.sf(step) == pytest.approx(10.0 / math.sqrt(w - 1), abs=1e-12)
    assert M.sf(step.T) == pytest.approx(10.0 / math.sqrt(w - 1), abs=1e-12)
    # central differences: columns 3 and 4 have gradient 5, i.e. 5/sqrt(2) per pixel
    assert M.ag(step) == pytest.approx(2 * 5 / math.sqrt(2) / w, abs=1e-12)
    # edge shifted to the border: one-sided difference 10 on column 0, central 5 on column 1
    border = np.zeros((h, w))
    border[:, 1:] = 10.0
    assert M.ag(border) == pytest.approx((10 + 5) / math.sqrt(2) / w, abs=1e-12)
    assert M.ag(border.T) == M.ag(border)


def test_identical_images():
    x = _smooth_texture(1)
    for protocol in PROTOCOLS:
        got = compute_metrics(x, x, x, protocol=protocol)
        assert got["MSE"] == 0.0
        assert got["PSNR"] == math.inf
        assert got["CC"] == pytest.approx(1.0, abs=1e-12)
        assert got["SSIM"] == pytest.approx(2.0, abs=1e-5)  # summed form: 1 per source
        assert got["VIF"] == pytest.approx(2.0, abs=1e-6)
    # MI(x, x) is the entropy of x: nats for reference, bits (= EN) for corrected
    en_bits = M.en(x)
    assert M.mi(x, x, x) == pytest.approx(2 * en_bits * math.log(2), abs=1e-10)
    assert M.mi(x, x, x, "corrected") == pytest.approx(2 * en_bits, abs=1e-10)


def test_mutual_information_known_joint():
    yy, xx = np.mgrid[:32, :32]
    cols = (xx % 2) * 100.0
    rows = (yy % 2) * 100.0
    assert M.mi(cols, cols, cols) == pytest.approx(2 * math.log(2), abs=1e-12)
    assert M.mi(cols, cols, cols, "corrected") == pytest.approx(2.0, abs=1e-12)
    assert M.mi(rows, rows, cols) == pytest.approx(0.0, abs=1e-12)  # independent levels


def test_scd_cc_mse_psnr_by_hand():
    a, b = _smooth_texture(2), _smooth_texture(3)
    assert M.scd(a, b, a + b) == pytest.approx(2.0, abs=1e-12)  # F-B = A and F-A = B
    assert M.cc(a, a, 255 - a) == pytest.approx(-1.0, abs=1e-12)
    zero, twenty, ten = np.zeros((8, 8)), np.full((8, 8), 20.0), np.full((8, 8), 10.0)
    assert M.mse(zero, twenty, ten) == 100.0
    assert M.mse(zero, twenty, ten, "corrected") == 100.0
    assert M.psnr(zero, twenty, ten) == pytest.approx(0.0, abs=1e-6)  # peak = max(F) = 10
    assert M.psnr(zero, twenty, ten, "corrected") == pytest.approx(10 * math.log10(255**2 / 100))


def test_vif_degenerate_cases():
    x = _smooth_texture(4)
    flat = np.full_like(x, 50.0)
    assert M.vif(x, x, flat) == 0.0  # no signal passes to a flat fused image
    assert M.vif(flat, flat, flat) == 2.0  # 0/0 per source, mapped to 1 as in the reference
    with pytest.raises(ValueError):
        M.vif(x[:40, :40], x[:40, :40], x[:40, :40])


def test_qabf_definitions():
    a = _smooth_texture(5)
    # F = A/2 everywhere: relative strength 0.5 (Q_g = 0.9994 / 2), identical orientations
    expected = 0.9994 / 2 * Q_ALPHA_1
    for protocol in PROTOCOLS:
        assert M.qabf(a, a, a / 2, protocol) == pytest.approx(expected, abs=1e-12)
    # F == sources: corrected gives G = 1 everywhere
    assert M.qabf(a, a, a, "corrected") == pytest.approx(
        0.9994 / (1 + math.exp(-15 * 0.5)) * Q_ALPHA_1, abs=1e-12)
    # reference quirk: equal gradients score G = gF, so weak gradients (< 0.5) are penalised
    weak = a / 2000.0  # every Sobel strength here is below 0.5
    assert M.qabf(weak, weak, weak, "corrected") == pytest.approx(M.qabf(a, a, a, "corrected"))
    assert M.qabf(weak, weak, weak) < 0.2
    assert M.qabf(a, a, a) > 0.97


def _brute_ssim(x, y, window, data_range, sample_cov):
    """Direct windowed SSIM mean over the valid region (slow; small images only)."""
    k = window.shape[0]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    norm = window.size / (window.size - 1) if sample_cov else 1.0
    vals = []
    for i in range(x.shape[0] - k + 1):
        for j in range(x.shape[1] - k + 1):
            px, py = x[i:i + k, j:j + k], y[i:i + k, j:j + k]
            mx, my = np.sum(window * px), np.sum(window * py)
            vx = norm * (np.sum(window * px * px) - mx * mx)
            vy = norm * (np.sum(window * py * py) - my * my)
            vxy = norm * (np.sum(window * px * py) - mx * my)
            vals.append((2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_windows_match_their_definitions():
    a, b, f = _smooth_texture(6, (24, 26)), _smooth_texture(7, (24, 26)), _smooth_texture(8, (24, 26))
    box = np.full((7, 7), 1 / 49)
    expected = _brute_ssim(f, a, box, 2, True) + _brute_ssim(f, b, box, 2, True)
    assert M.ssim(a, b, f) == pytest.approx(expected, abs=1e-4)  # reference runs in float32
    t = np.arange(11) - 5.0
    g = np.exp(-t * t / (2 * 1.5**2))
    gauss = np.outer(g, g) / np.outer(g, g).sum()
    expected = _brute_ssim(f, a, gauss, 255, False) + _brute_ssim(f, b, gauss, 255, False)
    assert M.ssim(a, b, f, "corrected") == pytest.approx(expected, abs=1e-10)


def test_corrected_protocol_relations():
    a, b, f = _smooth_texture(9), _smooth_texture(10), _smooth_texture(11)
    ref = compute_metrics(a, b, f)
    cor = compute_metrics(a, b, f, protocol="corrected")
    assert cor["MI"] == pytest.approx(ref["MI"] / math.log(2), abs=1e-12)
    for m in ("EN", "SD", "SF", "SCD", "VIF", "AG", "CC"):
        assert cor[m] == ref[m], m
    assert cor["MSE"] == pytest.approx(ref["MSE"], rel=1e-6)
    assert cor["SSIM"] > ref["SSIM"]  # L = 255 rewards flat regions that L = 2 ignores


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_symmetric_in_sources(protocol):
    a, b, f = _smooth_texture(12), _texture(13), _smooth_texture(14)
    assert compute_metrics(a, b, f, protocol) == compute_metrics(b, a, f, protocol)


def test_api_validation_and_subsets():
    x = _smooth_texture(15)
    assert list(compute_metrics(x, x, x, metrics=["SSIM", "EN"])) == ["EN", "SSIM"]
    with pytest.raises(ValueError):
        compute_metrics(x, x, x, protocol="matlab")
    with pytest.raises(ValueError):
        compute_metrics(x, x, x, metrics=["NABF"])
    with pytest.raises(ValueError):
        compute_metrics(x, x, x[:-1])


# ---------------------------------------------------------------- reading


def test_read_luma_modes(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: 0.299 * 255 = 76.245 -> 76
    rgb[1, 1] = (10, 200, 30)  # 2.99 + 117.4 + 3.42 = 123.81 -> 124
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    y = read_luma(tmp_path / "rgb.png")
    assert y.dtype == np.float64 and y.shape == (4, 5)
    assert y[0, 0] == 76 and y[1, 1] == 124
    Image.fromarray(np.dstack([rgb, np.full((4, 5), 7, np.uint8)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_luma(tmp_path / "rgba.png"), y)  # alpha ignored
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_luma(tmp_path / "pal.png")[0, 0] == 76
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(read_luma(tmp_path / "grey.png"), grey)
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "grey3.png")
    assert np.array_equal(read_luma(tmp_path / "grey3.png"), grey)  # BT.601 of grey is grey
    Image.fromarray(np.full((3, 3), 0x1234, np.uint16)).save(tmp_path / "deep.png")
    assert np.all(read_luma(tmp_path / "deep.png") == 0x12)  # 16 -> 8 bits drops the low byte


def _mode_image(mode, rng, shape=(6, 7)):
    """A small image of the given PIL mode, with values that exercise its range."""
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, shape).astype(np.int32))
    rgb = Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


@pytest.mark.parametrize("mode,ext", [("I;16", ".png"), ("I", ".tif"), ("L", ".png"), ("RGB", ".png"),
                                      ("RGBA", ".png"), ("P", ".png"), ("LA", ".png"), ("1", ".png"),
                                      ("CMYK", ".tif"), ("RGB", ".jpg")])
def test_fusion_reader_and_metrics_reader_give_the_same_luma(tmp_path, mode, ext):
    """One decoding convention: ddfm.io.read_image (sample.py) sees what read_luma (evaluate.py) sees."""
    from ddfm import io

    path = tmp_path / f"m{ext}"
    _mode_image(mode, np.random.default_rng(5)).save(path)
    source = io.read_image(path)
    assert source.luma.dtype == np.float64
    assert np.array_equal(source.luma, read_luma(path))
    if source.rgb is not None:  # colour is kept as float64 RGB on [0, 255]
        assert source.rgb.dtype == np.float64 and source.rgb.shape == source.luma.shape + (3,)


def test_sixteen_bit_png_keeps_the_high_byte_in_both_readers(tmp_path):
    deep = np.array([[0, 255, 256, 0x12FF], [0x8000, 0xFEFF, 0xFF00, 0xFFFF]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    from ddfm import io

    expected = (deep >> 8).astype(np.float64)  # OpenCV's 16 -> 8 bit read, no rounding up
    assert np.array_equal(read_luma(tmp_path / "deep.png"), expected)
    assert np.array_equal(io.read_image(tmp_path / "deep.png").luma, expected)


def test_exif_orientation_is_applied_by_both_readers(tmp_path):
    from ddfm import io

    image = _mode_image("RGB", np.random.default_rng(6))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.png", exif=exif)
    luma = read_luma(tmp_path / "rot.png")
    assert luma.shape == (7, 6)
    assert np.array_equal(io.read_image(tmp_path / "rot.png").luma, luma)


@pytest.mark.parametrize("array,needle", [
    (np.full((4, 4), 70000, np.int32), "outside 0..65535"),
    (np.full((4, 4), -1, np.int32), "outside 0..65535"),
    (np.full((4, 4), 0.5, np.float32), "floating-point"),
    (np.full((4, 4), 3.0, np.float32), "floating-point"),
])
def test_unsupported_values_are_refused_by_both_readers(tmp_path, array, needle):
    from ddfm import io
    from ddfm.metrics.images import UnsupportedImageError

    path = tmp_path / "odd.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(UnsupportedImageError, match=needle):
        read_luma(path)
    with pytest.raises(io.FusionInputError) as info:
        io.read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message
