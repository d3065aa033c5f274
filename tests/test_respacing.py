"""Timestep respacing against respacing.json (tests/golden/README.md §3).

The goldens were written by the original guided-diffusion (commit 22e0df8) in float64 with
Python repr, so exact equality is expected for the maps and ~bit equality for the arrays.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion import create_sampler, get_named_beta_schedule
from guided_diffusion.respace import SpacedDiffusion, space_timesteps

GOLDEN = Path(__file__).parent / "golden"
RESPACING = json.loads((GOLDEN / "respacing.json").read_text())
EMPTY = "<empty string: no respacing>"
DERIVED = ["alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
           "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
           "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"]


def spec_of(case):
    return "" if case == EMPTY else case


def spaced(case):
    betas = get_named_beta_schedule("linear", 1000)
    return SpacedDiffusion(space_timesteps(1000, spec_of(case)), betas=betas)


@pytest.mark.parametrize("case", sorted(RESPACING["cases"]))
def test_timestep_map_matches_reference(case):
    expected = RESPACING["cases"][case]["timestep_map"]
    assert sorted(space_timesteps(1000, spec_of(case))) == expected
    if RESPACING["cases"][case].get("betas") is not None:
        diffusion = spaced(case)
        assert diffusion.timestep_map.dtype == np.int64
        assert diffusion.timestep_map.tolist() == expected
        assert diffusion.num_timesteps == RESPACING["cases"][case]["num_timesteps"]


@pytest.mark.parametrize("case", sorted(c for c, v in RESPACING["cases"].items() if v.get("betas")))
def test_respaced_betas_match_reference(case):
    np.testing.assert_allclose(spaced(case).betas, RESPACING["cases"][case]["betas"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", ["100", "10"])
def test_derived_arrays_match_reference(case):
    diffusion = spaced(case)
    for name in DERIVED:
        np.testing.assert_allclose(getattr(diffusion, name), RESPACING["cases"][case][name],
                                   rtol=1e-12, atol=0, err_msg=name)


def test_ddfm_spacing_is_non_uniform_and_ends_at_999():
    steps = sorted(space_timesteps(1000, "100"))
    assert steps[:7] == [0, 10, 20, 30, 40, 50, 61] and steps[-1] == 999
    assert sorted(space_timesteps(1000, "ddim100"))[-1] == 990


@pytest.mark.parametrize("spec", sorted(RESPACING["errors"]))
def test_rejected_specs_raise_value_error_naming_the_spec(spec):
    with pytest.raises(ValueError, match=repr(spec)):
        space_timesteps(1000, spec)
    with pytest.raises(ValueError, match=repr(spec)):
        create_sampler(timestep_respacing=spec)


@pytest.mark.parametrize("spec", ["abc", "ddimx", "10,,10", "-5", [1.5, "x"]])
def test_malformed_specs_raise_value_error(spec):
    with pytest.raises(ValueError, match="timestep_respacing"):
        space_timesteps(1000, spec)


def test_int_list_and_empty_forms():
    assert space_timesteps(1000, 100) == space_timesteps(1000, "100")
    assert space_timesteps(1000, [10, 10, 10]) == space_timesteps(1000, "10,10,10")
    assert space_timesteps(1000, (5, 10, 20)) == space_timesteps(1000, "5,10,20")
    assert space_timesteps(1000, "") == space_timesteps(1000, None) == set(range(1000))
    # DDFM's YAML gives timestep_respacing as the int 100.
    assert create_sampler(timestep_respacing=100).timestep_map.tolist() == \
        RESPACING["cases"]["100"]["timestep_map"]


def test_first_respaced_beta_is_computed_not_copied():
    # 1 - abar_0 / 1.0 rounds differently from the literal 1e-4; the original keeps that value.
    assert spaced("100").betas[0] == 9.999999999998899e-05


class RecordingModel:
    def __init__(self):
        self.seen = []

    def __call__(self, x, t):
        self.seen.append(t)
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


@pytest.mark.parametrize("rescale", [False, True])
def test_model_sees_original_timesteps(rescale):
    diffusion = create_sampler(timestep_respacing="10", rescale_timesteps=rescale)
    model = RecordingModel()
    x = torch.zeros(2, 3, 4, 4)
    diffusion.p_mean_variance(model, x, torch.tensor([9, 1]))
    t = model.seen[0]
    if rescale:
        assert t.dtype == torch.float32 and t.tolist() == [999.0, 111.0]
    else:
        assert t.dtype == torch.int64 and t.tolist() == [999, 111]
    wrapped = diffusion.wrap_model(model)
    wrapped(x, torch.tensor([0, 5]))
    assert model.seen[-1].tolist() == ([0.0, 555.0] if rescale else [0, 555])


def test_rescale_uses_original_length():
    diffusion = create_sampler(steps=500, timestep_respacing="10", rescale_timesteps=True)
    model = RecordingModel()
    diffusion.p_mean_variance(model, torch.zeros(1, 3, 4, 4), torch.tensor([9]))
    assert model.seen[0].tolist() == [499 * 2.0]
