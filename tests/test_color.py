"""Colour conversions: closed-form checks, plus the matrices against the ones stored in the DDFM trace
(golden/DDFM_TRACES.md §3, `ycbcr_from_rgb` / `rgb_from_ycbcr`, skimage's as used by the official code)."""
from pathlib import Path

import torch

from ddfm.color import (
    RGB_FROM_YCBCR,
    YCBCR_FROM_RGB,
    official_luma_in,
    official_luma_out,
    paper_luma_in,
    paper_luma_out,
    rgb_to_luma,
    rgb_to_ycbcr_studio,
    to_signed,
    to_unit,
    ycbcr_studio_to_rgb,
)

GOLDEN = Path(__file__).parent / "golden"


def _rand(shape, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def test_studio_matrices_are_skimage_ones_stored_in_trace():
    trace = torch.load(GOLDEN / "ddfm_trace_mrict_r25.pt", weights_only=True)
    assert torch.equal(YCBCR_FROM_RGB, trace["ycbcr_from_rgb"])
    # skimage inverts with LAPACK, torch.linalg.inv differently: ~1e-18, irrelevant after the float32 cast.
    assert (RGB_FROM_YCBCR - trace["rgb_from_ycbcr"]).abs().max() < 1e-15


def test_studio_round_trip_is_identity():
    rgb = _rand((2, 3, 8, 9), -1, 1)
    back = ycbcr_studio_to_rgb(rgb_to_ycbcr_studio(rgb))
    assert back.dtype == torch.float32
    assert (back - rgb).abs().max() < 2e-6


def test_studio_luma_is_affine_in_bt601_luma():
    # f~ = (16 + 219 L)/255 with L = 0.299 R + 0.587 G + 0.114 B (ddfm_official.md §3 step 3).
    rgb = _rand((2, 3, 8, 9), -1, 1, seed=1)
    f_tilde, _ = official_luma_in(rgb)
    assert f_tilde.shape == (2, 1, 8, 9)
    assert (f_tilde - (16 + 219 * rgb_to_luma(rgb)) / 255).abs().max() < 1e-6


def test_f_tilde_range_for_clamped_input_is_exact():
    x0 = _rand((1, 3, 16, 16), -1.5, 1.5, seed=2).clamp(-1, 1)
    x0[..., 0, 0] = -1.0
    x0[..., 0, 1] = 1.0
    f_tilde, _ = official_luma_in(x0)
    lo = torch.tensor((16 - 219) / 255, dtype=torch.float32)
    hi = torch.tensor(235 / 255, dtype=torch.float32)
    assert f_tilde.min() == lo and f_tilde.max() == hi
    assert f_tilde[..., 0, 0] == lo and f_tilde[..., 0, 1] == hi


def test_official_writeback_sets_luma_and_keeps_chroma():
    x0 = _rand((2, 3, 8, 9), -1, 1, seed=3)
    f_tilde, aux = official_luma_in(x0)
    ycc = rgb_to_ycbcr_studio(x0)
    assert (f_tilde - ycc[:, :1]).abs().max() < 1e-6
    F = _rand((2, 1, 8, 9), -0.9, 0.9, seed=4)
    x0_rect = official_luma_out(x0, aux, F)
    # The shortcut equals the full studio inverse with Y replaced by F (the official write-back).
    full = ycbcr_studio_to_rgb(torch.cat([F, ycc[:, 1:]], dim=1))
    assert (x0_rect - full).abs().max() < 1e-5
    assert x0_rect.shape == x0.shape and x0_rect.dtype == torch.float32
    # Luma of the result is (255 F - 16)/219; every channel moved by the same amount; chroma kept.
    assert (rgb_to_luma(x0_rect) - (255 * F - 16) / 219).abs().max() < 1e-6
    shift = x0_rect - x0
    assert (shift - shift[:, :1]).abs().max() < 1e-5
    assert (rgb_to_ycbcr_studio(x0_rect)[:, 1:] - ycc[:, 1:]).abs().max() < 1e-6
    # Writing back the unchanged luma is the identity; no clamping (values may leave [-1, 1]).
    assert (official_luma_out(x0, aux, f_tilde) - x0).abs().max() < 2e-6
    assert official_luma_out(x0, aux, torch.full_like(F, 1.0)).max() > 1.0


def test_paper_luma_pair_shifts_channels_equally():
    x0 = _rand((2, 3, 8, 9), -1, 1, seed=5)
    luma, aux = paper_luma_in(x0)
    F = _rand((2, 1, 8, 9), -1, 1, seed=6)
    x0_rect = paper_luma_out(x0, aux, F)
    assert (rgb_to_luma(x0_rect) - F).abs().max() < 1e-6
    assert (x0_rect - x0 - (F - luma)).abs().max() < 1e-6


def test_grey_has_its_own_luma():
    grey = _rand((2, 1, 5, 6), 0, 1, seed=8).expand(2, 3, 5, 6)
    assert (rgb_to_luma(grey) - grey[:, :1]).abs().max() < 1e-6


def test_value_range_helpers():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(to_signed(x), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(to_unit(to_signed(x)), x)
    # The official preprocessing order (g/255)*2-1 in float32 (DDFM_TRACES §5 item 2).
    trace = torch.load(GOLDEN / "ddfm_trace_mrict_r25.pt", weights_only=True)
    g = trace["vi_gray_u8"].to(torch.float32)[None, None]
    assert torch.equal(to_signed(g / 255), trace["I"])
