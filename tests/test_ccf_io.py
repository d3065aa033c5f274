"""ddfm.methods.ccf.io: the released CCF resize and outputs, against OpenCV (the release's own library)."""
import cv2
import numpy as np
import pytest

from ddfm.io import SourceImage
from ddfm.methods.ccf import io as ccf_io


@pytest.mark.parametrize("src_hw, dst_hw", [((70, 90), (64, 64)), ((64, 64), (32, 96)),
                                            ((100, 37), (96, 32)), ((576, 768), (512, 682)),
                                            ((33, 65), (32, 64)), ((40, 50), (40, 50))])
def test_resize_linear_equals_opencv_inter_linear(src_hw, dst_hw):
    rng = np.random.default_rng(sum(src_hw) + sum(dst_hw))
    image = rng.uniform(0, 255, (*src_hw, 3)).astype(np.float32)
    ours = ccf_io.resize_linear(image, *dst_hw)
    reference = cv2.resize(image, dst_hw[::-1])  # cv2 takes (w, h); INTER_LINEAR is its default
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-4
    grey = image[..., 0]
    assert np.abs(ccf_io.resize_linear(grey, *dst_hw) - cv2.resize(grey, dst_hw[::-1])).max() < 1e-4


def test_official_size_caps_the_short_side_and_keeps_the_portrait_quirk():
    assert ccf_io.official_size(64, 64) == (64, 64)
    assert ccf_io.official_size(70, 90) == (64, 64)
    assert ccf_io.official_size(512, 700) == (512, 672)  # short side 512 is not capped
    assert ccf_io.capped_size(576, 768) == (512, 682)    # landscape: width int(512 * 768 / 576)
    assert ccf_io.official_size(576, 768) == (512, 672)
    # Portrait: the release computes the height from w/h (the aspect inverted), quirk 10.
    assert ccf_io.capped_size(768, 576) == (384, 512)
    assert ccf_io.capped_size(768, 576, portrait_quirk=False) == (682, 512)
    assert ccf_io.official_size(768, 576) == (384, 512)
    assert ccf_io.capped_size(600, 600) == (512, 512)


def test_official_resize_is_the_two_released_opencv_resizes():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (600, 530, 3)).astype(np.float32)  # portrait, short side > 512
    h, w = ccf_io.capped_size(600, 530)
    reference = cv2.resize(cv2.resize(image, (w, h)), (w - w % 32, h - h % 32))
    ours = ccf_io.official_resize(image)
    assert ours.shape == reference.shape == (448, 512, 3)
    assert np.abs(ours - reference).max() < 1e-3


def test_recon_color_equals_opencv_ycrcb_round_trip_and_png_write(tmp_path):
    """The released recon_color: fused Y with the visible Cr/Cb (float YCrCb, offset 0.5), the
    float image written by cv2.imwrite (converted to 8 bits by rounding and saturation)."""
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (40, 50, 3)).astype(np.float32)
    grey = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    ycc = cv2.cvtColor(vis, cv2.COLOR_RGB2YCrCb)
    rgb = cv2.cvtColor(np.stack([grey, ycc[..., 1], ycc[..., 2]], -1), cv2.COLOR_YCrCb2RGB)
    cv2.imwrite(str(tmp_path / "c.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    reference = cv2.cvtColor(cv2.imread(str(tmp_path / "c.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(ccf_io.recon_color_uint8(grey, vis), reference)
    assert np.abs(ccf_io.ycrcb_luma(vis) - ycc[..., 0]).max() < 1e-4


def test_recon_outputs_min_max_and_truncate():
    sample = np.array([[[-1.0, 0.0, 1.0], [0.5, 0.2, -0.3]]], dtype=np.float32)
    out = ccf_io.recon_rgb_uint8(sample)  # global over the channels: -1 -> 0, 1 -> 255
    expected = ((sample + 1) / 2 * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 1, 0] == 191  # 0.75 * 255 = 191.25, truncated
    y = ccf_io.recon_luma_uint8(sample)
    assert y.shape == (1, 2) and y.max() == 255 and y.min() == 0


def test_grey_source_becomes_three_equal_channels():
    src = SourceImage("g.png", np.array([[0.0, 17.0], [255.0, 3.0]]))
    rgb = ccf_io.source_rgb(src)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.float32
    assert (rgb == src.luma[..., None]).all()
