"""Gaussian diffusion sampling against tiny_sampler_trace.pt (tests/golden/README.md §4), plus
closed-form checks of the rectification hook and the noise contract.

The trace was written by the original guided-diffusion (commit 22e0df8) with the tiny UNet,
respacing "10", x_T and the 10 per-step noises stored. Row k is respaced index i = 9 - k.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion import create_model, create_sampler, dynamic_threshold, get_named_beta_schedule
from guided_diffusion.gaussian_diffusion import GaussianDiffusion

GOLDEN = Path(__file__).parent / "golden"
MODEL_KEYS = ("image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma",
              "class_cond", "use_checkpoint", "attention_resolutions", "num_heads",
              "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "dropout",
              "resblock_updown", "use_fp16", "use_new_attention_order")
# The official DDFM diffusion YAML, with the trace's respacing.
DDFM_DIFFUSION = dict(sampler="ddim", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
                      model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
                      rescale_timesteps=False, timestep_respacing="10")
TRACES = {  # name -> (sampler, clip_denoised, eta)
    "ddpm": ("ddpm", True, 0.0),
    "ddpm_noclip": ("ddpm", False, 0.0),
    "ddim_eta0": ("ddim", True, 0.0),
    "ddim_eta05": ("ddim", True, 0.5),
}


@pytest.fixture(scope="module")
def tiny_model():
    cfg = json.loads((GOLDEN / "tiny_unet_config.json").read_text())
    model = create_model(**{k: cfg[k] for k in MODEL_KEYS})
    model.load_state_dict(torch.load(GOLDEN / "tiny_unet_state_dict.pt", weights_only=True), strict=True)
    return model


@pytest.fixture(scope="module")
def trace():
    return torch.load(GOLDEN / "tiny_sampler_trace.pt", weights_only=True)


def sampler_for(name):
    kind, clip, eta = TRACES[name]
    return create_sampler(**dict(DDFM_DIFFUSION, sampler=kind, clip_denoised=clip, eta=eta))


def assert_trace_close(ours, ref, name, key, k):
    if name == "ddpm_noclip":  # |x0| reaches ~560: the README's relative tolerance
        err = ((ours - ref).abs() / (1 + ref.abs())).max().item()
        assert err <= 1e-4, f"{name}.{key} step {k}: rel err {err:.3g}"
    else:
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4, msg=f"{name}.{key} step {k}")


@pytest.mark.parametrize("name", sorted(TRACES))
def test_sampler_trace_replays_free_running(name, tiny_model, trace):
    diffusion = sampler_for(name)
    assert diffusion.timestep_map.tolist() == trace["timestep_map"].tolist()
    steps = []
    final = diffusion.sample_loop(tiny_model, (1, 3, 16, 16), noise=trace["x_T"],
                                  step_noise=trace["noise"][:, None], callback=steps.append)
    ref = trace[name]
    assert [s["i"] for s in steps] == ref["index"].tolist()
    assert [s["t_orig"] for s in steps] == ref["orig_t"].tolist()
    for k, step in enumerate(steps):
        for key in ref:
            if key in ("index", "orig_t"):
                continue
            ours = step["model_output" if key == "model_out" else key][0]
            assert_trace_close(ours, ref[key][k], name, key, k)
    assert torch.equal(final, steps[-1]["sample"])


@pytest.mark.parametrize("name", ["ddpm", "ddim_eta0"])
def test_step_maths_replays_stored_model_outputs(name, trace):
    """Feeding the stored UNet outputs isolates the diffusion maths from conv rounding."""
    diffusion = sampler_for(name)
    ref = trace[name]
    x = trace["x_T"]
    for k in range(10):
        t = torch.tensor([9 - k])
        out = diffusion.split_model_output(ref["model_out"][k:k + 1], x, t, clip_denoised=True)
        noise = trace["noise"][k:k + 1]
        if name == "ddpm":
            step = diffusion.ddpm_step(x, t, out["pred_xstart"], out["log_variance"], noise)
            for key in ("mean", "log_variance"):
                torch.testing.assert_close(dict(out, **step)[key][0], ref[key][k], atol=1e-6, rtol=1e-6)
        else:
            step = diffusion.ddim_step(x, t, out["pred_xstart"], eta=0.0, noise=noise)
        torch.testing.assert_close(out["pred_xstart"][0], ref["pred_xstart"][k], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(step["sample"][0], ref["sample"][k], atol=1e-6, rtol=1e-6)
        x = ref["sample"][k:k + 1]


class ConstantModel:
    """A stand-in network with a fixed 6-channel output."""

    def __init__(self, value):
        self.value = value

    def __call__(self, x, t):
        return self.value.expand(x.shape[0], -1, -1, -1)


def closed_form_setup():
    diffusion = create_sampler(**DDFM_DIFFUSION)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, generator=gen)
    model = ConstantModel(0.3 * torch.randn(1, 6, 8, 8, generator=gen))
    x0 = torch.full_like(x, 0.25)
    return diffusion, x, model, x0


def test_rectified_ddim_step_equals_closed_form():
    diffusion, x, model, x0 = closed_form_setup()
    i = 5
    t = torch.tensor([i])
    seen = []

    def rectify(pred_xstart, t_):
        seen.append(pred_xstart)
        return x0

    out = diffusion.ddim_sample(model, x, t, rectify_fn=rectify, noise=torch.zeros_like(x))
    abar, abar_prev = diffusion.alphas_cumprod[i], diffusion.alphas_cumprod_prev[i]
    eps = (np.sqrt(1 / abar) * x.double() - 0.25) / np.sqrt(1 / abar - 1)
    expected = 0.25 * np.sqrt(abar_prev) + np.sqrt(1 - abar_prev) * eps
    torch.testing.assert_close(out["sample"].double(), expected, atol=1e-5, rtol=1e-5)
    assert out["pred_xstart"] is seen[0] and out["rectified_xstart"] is x0
    assert out["pred_xstart"].abs().max() <= 1  # rectify sees the clipped prediction


def test_rectified_ddpm_step_uses_posterior_mean_of_rectified_x0():
    diffusion, x, model, x0 = closed_form_setup()
    diffusion = create_sampler(**dict(DDFM_DIFFUSION, sampler="ddpm"))
    i = 4
    t = torch.tensor([i])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out = diffusion.sample_step(model, x, t, rectify_fn=lambda p, t_: x0, noise=noise)
    mean = diffusion.posterior_mean_coef1[i] * 0.25 + diffusion.posterior_mean_coef2[i] * x.double()
    expected = mean + torch.exp(0.5 * out["log_variance"].double()) * noise.double()
    torch.testing.assert_close(out["sample"].double(), expected, atol=1e-5, rtol=1e-5)
    # The log-variance is still the model's learned-range interpolation.
    plain = diffusion.p_sample(model, x, t, noise=noise)
    assert torch.equal(out["log_variance"], plain["log_variance"])
    assert not torch.equal(out["sample"], plain["sample"])


def test_no_rectify_means_rectified_equals_pred_xstart():
    diffusion, x, model, _ = closed_form_setup()
    out = diffusion.sample_step(model, x, torch.tensor([3]), generator=torch.Generator().manual_seed(0))
    assert out["rectified_xstart"] is out["pred_xstart"]


@pytest.mark.parametrize("kind,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_one_noise_draw_per_step_from_generator_or_global_rng(kind, eta):
    diffusion = create_sampler(**dict(DDFM_DIFFUSION, sampler=kind, eta=eta))
    _, _, model, _ = closed_form_setup()
    shape = (1, 3, 8, 8)
    # Explicit noise: x_T first, then one draw per step (10 steps), even at t=0 and eta=0.
    gen = torch.Generator().manual_seed(7)
    draws = [torch.randn(shape, generator=gen) for _ in range(12)]
    explicit = diffusion.sample_loop(model, shape, noise=draws[0], step_noise=draws[1:11])
    from_gen = diffusion.sample_loop(model, shape, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    from_global = diffusion.sample_loop(model, shape)
    after = torch.randn(shape)
    assert torch.equal(explicit, from_gen) and torch.equal(explicit, from_global)
    assert torch.equal(after, draws[11])  # the global RNG advanced by exactly 1 + 10 draws


def test_callback_sees_every_step_in_order():
    diffusion, _, model, _ = closed_form_setup()
    seen = []
    x_T = torch.zeros(1, 3, 8, 8)
    diffusion.sample_loop(model, x_T.shape, noise=x_T, generator=torch.Generator().manual_seed(0),
                          callback=seen.append)
    assert [s["i"] for s in seen] == list(range(9, -1, -1))
    assert [s["t_orig"] for s in seen] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert seen[0]["x"] is x_T
    for prev, cur in zip(seen, seen[1:]):
        assert cur["x"] is prev["sample"]
    assert {"sample", "pred_xstart", "rectified_xstart", "model_output", "k"} <= set(seen[0])


def test_sample_step_dispatches_with_configured_flags():
    _, x, model, _ = closed_form_setup()
    t = torch.tensor([6])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    ddim = create_sampler(**dict(DDFM_DIFFUSION, eta=0.5, clip_denoised=False))
    assert torch.equal(ddim.sample_step(model, x, t, noise=noise)["sample"],
                       ddim.ddim_sample(model, x, t, clip_denoised=False, eta=0.5, noise=noise)["sample"])
    ddpm = create_sampler(**dict(DDFM_DIFFUSION, sampler="ddpm"))
    assert torch.equal(ddpm.sample_step(model, x, t, noise=noise)["sample"],
                       ddpm.p_sample(model, x, t, noise=noise)["sample"])


def test_q_sample_and_eps_conversions_are_inverse():
    diffusion = create_sampler(**DDFM_DIFFUSION)
    gen = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    t = torch.tensor([2, 8])
    x_t = diffusion.q_sample(x0, t, noise=eps)
    torch.testing.assert_close(diffusion.predict_xstart_from_eps(x_t, t, eps), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(x_t, t, x0), eps, atol=1e-4, rtol=1e-4)


def test_posterior_of_true_x0_is_the_gaussian_conditional():
    """q(x_{t-1} | x_t, x0) for noiseless x_t = sqrt(abar_t) x0: mean (coef1 + coef2 sqrt(abar_t)) x0."""
    betas = get_named_beta_schedule("linear", 50)
    diffusion = GaussianDiffusion(betas=betas)
    x0 = torch.ones(1, 1, 2, 2)
    t = torch.tensor([10])
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, np.sqrt(diffusion.alphas_cumprod[10]) * x0, t)
    abar, abar_prev, beta = diffusion.alphas_cumprod[10], diffusion.alphas_cumprod_prev[10], betas[10]
    expected = (beta * np.sqrt(abar_prev) + (1 - abar_prev) * np.sqrt(1 - beta) * np.sqrt(abar)) / (1 - abar)
    torch.testing.assert_close(mean, torch.full_like(mean, float(expected)))
    assert abs(var[0, 0, 0, 0].item() - beta * (1 - abar_prev) / (1 - abar)) < 1e-9


@pytest.mark.parametrize("mean_type", ["epsilon", "start_x", "previous_x"])
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned", "learned_range"])
def test_every_parameterisation_samples(mean_type, var_type):
    diffusion = create_sampler(**dict(DDFM_DIFFUSION, sampler="ddpm", model_mean_type=mean_type,
                                      model_var_type=var_type))
    channels = 6 if var_type.startswith("learned") else 3
    model = ConstantModel(0.1 * torch.ones(1, channels, 4, 4))
    out = diffusion.sample_loop(model, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 4, 4) and torch.isfinite(out).all()


def test_cosine_schedule():
    betas = get_named_beta_schedule("cosine", 1000)
    assert betas.dtype == np.float64 and len(betas) == 1000 and betas.max() <= 0.999


def test_dynamic_threshold():
    x = torch.linspace(-3, 3, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    y = dynamic_threshold(x)
    assert y.abs().max() <= 1
    small = 0.5 * torch.tanh(x)
    assert torch.equal(dynamic_threshold(small), small)  # s clamps at 1: nothing to rescale
    diffusion = create_sampler(**dict(DDFM_DIFFUSION, dynamic_threshold=True, clip_denoised=False))
    out = diffusion.split_model_output(torch.zeros(2, 6, 8, 8), 10 * x, torch.tensor([5, 5]), False)
    assert out["pred_xstart"].abs().max() <= 1


def test_create_sampler_rejects_unknown_key_and_bad_values():
    with pytest.raises(TypeError, match="timestep_respace"):
        create_sampler(**DDFM_DIFFUSION, timestep_respace="10")
    with pytest.raises(ValueError, match="sampler"):
        create_sampler(**dict(DDFM_DIFFUSION, sampler="euler"))
    with pytest.raises(ValueError, match="model_var_type"):
        create_sampler(**dict(DDFM_DIFFUSION, model_var_type="learned_rng"))
    with pytest.raises(ValueError, match="eta"):
        create_sampler(**dict(DDFM_DIFFUSION, sampler="ddpm", eta=0.5))


def test_explicit_noise_must_match_shape():
    diffusion, x, model, _ = closed_form_setup()
    with pytest.raises(ValueError, match="noise shape"):
        diffusion.sample_step(model, x, torch.tensor([1]), noise=torch.zeros(3, 8, 8))
