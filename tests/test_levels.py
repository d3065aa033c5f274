"""Grey levels in and out: the sources' luma equals OpenCV's, the fused image rounds like the official save.

Reading: the official DDFM reader and the reference evaluator cast OpenCV's uint8 BGR image to
float32, convert it with cvtColor(BGR2GRAY) and round with np.round (fusion_metrics.md §0,
ddfm_official.md §2.4). Writing: the official save is legacy imageio's float -> uint8 conversion,
floor(stretched + 0.499999999) (golden/DDFM_TRACES.md §1 item 6).
"""
import numpy as np
import pytest

from ddfm import io
from ddfm.metrics.images import luma_from_rgb8, read_luma
from helpers import load_golden, write_png


def _every_colour():
    """All 256^3 RGB colours as a 4096 x 4096 x 3 uint8 image (rows a multiple of 8 pixels wide)."""
    levels = np.arange(256, dtype=np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return np.stack([r, g, b], axis=-1).reshape(4096, 4096, 3)


def _opencv_luma(cv2, rgb):
    """The reference pipeline on an RGB uint8 array: BGR, float32, cvtColor BGR2GRAY, np.round."""
    bgr = np.ascontiguousarray(rgb[..., ::-1]).astype(np.float32)
    return np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).astype(np.float64)


def test_luma_equals_opencv_float32_on_every_8bit_colour():
    cv2 = pytest.importorskip("cv2")
    rgb = _every_colour()
    ours = luma_from_rgb8(rgb)
    theirs = _opencv_luma(cv2, rgb)
    differ = np.argwhere(ours != theirs)
    assert len(differ) == 0, f"{len(differ)} colours differ, e.g. RGB {rgb[tuple(differ[0])].tolist()}"


def test_luma_of_a_half_level_tie_follows_opencv():
    # 53*0.299 + 119*0.587 + 200*0.114 = 108.5 exactly; OpenCV's float32 (FMA) sum is 108.50001 -> 109.
    rgb = np.array([[[53, 119, 200], [0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    assert luma_from_rgb8(rgb).tolist() == [[109.0, 0.0, 255.0]]


def test_fusion_and_metrics_read_colour_files_as_opencv_does(tmp_path):
    """Both readers (sources for fusion, images for the metrics) give cv2.imread's luma."""
    cv2 = pytest.importorskip("cv2")
    rgb = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    rgb[0, 0] = (53, 119, 200)
    path = write_png(tmp_path / "colour.png", rgb)
    expected = np.round(cv2.cvtColor(cv2.imread(str(path)).astype(np.float32), cv2.COLOR_BGR2GRAY))
    assert np.array_equal(io.read_image(path).luma, expected)
    assert np.array_equal(read_luma(path), expected)
    assert expected[0, 0] == 109


# ------------------------------------------------------------------ final rounding


def test_legacy_imageio_conversion_rounds_halves_down():
    halves = np.arange(255, dtype=np.float32) + 0.5  # k + 0.5 for every k, odd and even
    image = np.concatenate([[0.0, 255.0], halves, halves + 1e-4]).astype(np.float32)
    out = io.legacy_imageio_uint8(image)
    k = np.arange(255)
    assert out[:2].tolist() == [0, 255]
    assert np.array_equal(out[2:257], k)          # ties go down: 2.5 -> 2 and 3.5 -> 3
    assert np.array_equal(out[257:], k + 1)       # anything above the tie goes up


def test_official_save_of_the_traces_is_bit_exact():
    """The trace's recon float image, converted by us, is its PNG (both traces, every pixel)."""
    for name in ("ddfm_trace_tno_r10.pt", "ddfm_trace_mrict_r25.pt"):
        trace = load_golden(name)
        ours = io.legacy_imageio_uint8(trace["recon_float"].numpy())
        assert np.array_equal(ours, trace["recon_png"].numpy()), name


def test_minmax_output_rounds_planted_ties_down():
    """luma_to_uint8('minmax'): a luma spanning [0, 255] min-maxes onto itself, so k + 0.5 stays a tie."""
    halves = np.arange(255, dtype=np.float32) + 0.5
    luma = np.concatenate([[0.0, 255.0], halves]).astype(np.float32)
    scaled = (luma - np.float32(0)) / np.float32(255) * np.float32(255)  # the official float32 min-max
    assert np.array_equal(scaled[2:], halves)  # ties survive it exactly
    out = io.luma_to_uint8(luma, "minmax")
    assert np.array_equal(out[2:], np.arange(255))
    odd = np.arange(255) % 2 == 1
    assert not np.array_equal(out[2:][odd], np.round(halves[odd])), "np.round would round odd k up"


def test_clip_output_rounds_planted_ties_down():
    """luma_to_uint8('clip') maps [-1, 1] to [0, 255]; exact ties k + 0.5 round down there too."""
    k = np.arange(255)
    luma = (np.float32(2) * (k + 0.5).astype(np.float32) / np.float32(255) - np.float32(1)).astype(np.float32)
    tie = (luma + np.float32(1)) / np.float32(2) * np.float32(255) == (k + 0.5)
    assert tie[k % 2 == 1].sum() > 50 and tie[k % 2 == 0].sum() > 50
    out = io.luma_to_uint8(luma[tie], "clip")
    assert np.array_equal(out, k[tie])
    assert io.luma_to_uint8(np.array([-2.0, -1.0, 1.0, 3.0], np.float32), "clip").tolist() == [0, 0, 255, 255]
