"""color: auto keeps the fused luma: the saved RGB's luma (read as the evaluator reads it) is the grey result.

Sources are PET/SPECT-like pseudo-colour images (matplotlib colormaps over smooth fields, black
background) and saturated synthetic colours.
"""
import numpy as np
import pytest
from matplotlib import colormaps

import sample
from ddfm import io
from ddfm.metrics.images import luma_from_rgb8
from helpers import make_dataset, read_png

WEIGHTS = np.array([0.299, 0.587, 0.114])


def smooth_field(h, w, seed):
    """A smooth [0, 1] field: a few Gaussian blobs, zero far from them (a PET-like background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.zeros((h, w))
    for cy, cx, size in zip(rng.uniform(0, h, 5), rng.uniform(0, w, 5), rng.uniform(0.08, 0.25, 5)):
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size * min(h, w)) ** 2))
    return field / field.max()


def pseudo_colour(cmap, h, w, seed):
    """A PET/SPECT-like uint8 RGB image: a colormap over a smooth field."""
    return np.round(colormaps[cmap](smooth_field(h, w, seed))[..., :3] * 255).astype(np.uint8)


def chroma(rgb):
    """RGB minus its own BT.601 luma: the colour offset that recombination keeps (or shrinks)."""
    rgb = rgb.astype(np.float64)
    return rgb - (rgb @ WEIGHTS)[..., None]


@pytest.mark.parametrize("cmap", ["jet", "hot", "nipy_spectral"])
def test_luma_of_recombined_pseudo_colour_is_the_fused_grey(cmap):
    h, w = 61, 83
    rgb = pseudo_colour(cmap, h, w, seed=1)
    # A fused grey unrelated to the source's own luma: bright where the colour is dark and back.
    grey = np.round(255 * smooth_field(h, w, seed=2)).astype(np.uint8)
    out = io.recombine_chroma(grey, rgb)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    assert np.array_equal(luma_from_rgb8(out), grey)


def test_saturated_colours_lose_saturation_not_luma_or_hue():
    rng = np.random.default_rng(3)
    primaries = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                          [255, 0, 255]], dtype=np.uint8)
    colours = np.concatenate([primaries, rng.integers(0, 256, (58, 3), dtype=np.uint8)])
    # Every colour under every fused grey level: 64 colours x 256 levels.
    rgb = np.broadcast_to(colours[:, None], (64, 256, 3))
    grey = np.broadcast_to(np.arange(256, dtype=np.uint8), (64, 256))
    out = io.recombine_chroma(grey, rgb)
    assert np.array_equal(luma_from_rgb8(out), grey)
    src, got = chroma(rgb), chroma(out)
    src_norm, got_norm = np.linalg.norm(src, axis=-1), np.linalg.norm(got, axis=-1)
    # Saturation never grows (beyond rounding) ...
    assert (got_norm <= src_norm + 1.0).all()
    # ... and where enough of it is left to have a direction, the hue is the source's.
    clear = got_norm > 20
    cosine = (src * got).sum(-1)[clear] / (src_norm * got_norm)[clear]
    assert clear.sum() > 5000 and cosine.min() > 0.99


def test_in_gamut_pixels_get_exactly_the_source_chroma():
    rgb = pseudo_colour("viridis", 40, 50, seed=4)
    grey = np.round(255 * smooth_field(40, 50, seed=7)).astype(np.uint8)
    target = grey[..., None] + chroma(rgb)
    inside = ((target >= 0) & (target <= 255)).all(-1)
    out = io.recombine_chroma(grey, rgb)
    assert 0.3 < inside.mean() < 1
    # Within one level per channel (rounding, and the luma-keeping choice of floor or ceil).
    assert np.abs(out[inside] - target[inside]).max() <= 1.0


def test_colour_pet_output_reads_as_the_grey_result(tmp_path):
    """sample.py on a PET/MRI pair: the colour output's luma (as evaluate.py reads it) is the grey run."""
    pet = pseudo_colour("jet", 48, 70, seed=5)
    mri = np.round(255 * smooth_field(48, 70, seed=6) ** 0.5).astype(np.uint8)
    make_dataset(tmp_path / "in", {"p": (pet, mri)}, mods=("pet", "mri"))
    for colour, folder in (("auto", "colour"), ("grey", "grey")):
        assert sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / folder),
                            "--quiet", "prior=none", "modalities=[pet, mri]", f"color={colour}"]) == 0
    out = read_png(tmp_path / "colour" / "recon" / "p.png")
    grey = read_png(tmp_path / "grey" / "recon" / "p.png")
    assert out.shape == (48, 70, 3) and grey.shape == (48, 70)
    assert np.array_equal(luma_from_rgb8(out), grey)
