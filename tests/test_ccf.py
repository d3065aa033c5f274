"""CCF (ddfm.methods.ccf.conditions, ddfm.methods.ccf.guidance) against the released code's golden trace (golden/ccf/README.md).

Level 0: schedule and x_T; level 1: one teacher-forced guidance step from the stored clipped x0;
level 2: the DDIM update; level 3: a free run from x_T with the tiny UNet. Plus closed forms,
batch = single runs, and the settings' one-line errors.
"""
import numpy as np
import pytest
import torch
import yaml

import guided_diffusion
from ddfm.config import ConfigError
from ddfm.methods.ccf import guidance as ccf
from ddfm.methods.ccf.conditions import CONDITION_NAMES, ConditionBank, condition_losses, haar_dwt
from ddfm.methods.ddfm.sampling import per_image_noise, seeded_generators
from helpers import GOLDEN, TINY_MODEL_CONFIG, TINY_WEIGHTS

STEPS = 10


@pytest.fixture(scope="module")
def trace():
    with np.load(GOLDEN / "ccf" / "ccf_trace_tno01_64_r10.npz") as data:
        return {k: torch.from_numpy(v) for k, v in data.items()}


@pytest.fixture(scope="module")
def tiny_model():
    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text())
    config["model_path"] = str(TINY_WEIGHTS)
    return guided_diffusion.create_model(**config)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recording(steps):
    return lambda info: steps.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in info.items()})


# --- level 0 ------------------------------------------------------------------------------------

def test_level0_schedule_inputs_and_noise(trace):
    diffusion = guided_diffusion.create_sampler(timestep_respacing=STEPS)
    assert diffusion.timestep_map.tolist() == trace["timestep_map"].tolist()
    assert np.array_equal(diffusion.alphas_cumprod, trace["alphas_cumprod"].numpy())
    assert np.array_equal(diffusion.alphas_cumprod_prev, trace["alphas_cumprod_prev"].numpy())
    for u8, key in (("ir_u8", "I_ir"), ("vi_u8", "V_vi")):
        ours = (trace[u8].numpy().astype(np.float32) / 255) * 2 - 1
        assert torch.equal(torch.from_numpy(ours.transpose(2, 0, 1))[None], trace[key])
    x_T = per_image_noise(seeded_generators(3407, 1), (3, 64, 64), "cpu")
    assert torch.equal(x_T, trace["x_T"])


# --- closed forms -------------------------------------------------------------------------------

def test_haar_of_a_constant_and_ssim_of_itself():
    x = torch.full((1, 3, 8, 6), 0.25)
    low, high = haar_dwt(x)
    assert torch.allclose(low, torch.full((1, 3, 4, 3), 0.5)) and high.abs().max() < 1e-7
    y = torch.rand((2, 3, 32, 32)) * 2 - 1
    losses = condition_losses(y, y, y)
    assert torch.allclose(losses[:, 0], torch.full((2,), -1.0), atol=1e-6)  # SSIM(x, x) = 1
    assert torch.all(losses[:, 1:5] == 0)  # MSE, edge, both Haar bands vanish at x = I = V
    assert torch.allclose(-losses[:, 7], y.flatten(2).std(dim=2).mean(dim=1))


# --- level 1 ------------------------------------------------------------------------------------

def test_level1_each_guidance_step_from_the_stored_x0(trace):
    settings = ccf.CCFSettings()
    bank = ConditionBank(trace["I_ir"], trace["V_vi"])
    state = ccf.init_state(1, "cpu", settings)
    for k in range(STEPS):
        assert state.steps == int(trace["adam_step_before"][k])
        state.w = trace["w_before"][k:k + 1].clone()  # teacher-forced weights
        guided, d = ccf.guidance_step(bank, trace["pred_xstart_clipped"][k:k + 1], state, settings)
        assert (d["losses"][0] - trace["losses"][k]).abs().max() < 1e-5, k
        assert torch.equal(state.L_0[0], trace["L_0"]) or (state.L_0[0] - trace["L_0"]).abs().max() < 1e-6
        assert d["topk"][0].tolist() == trace["topk_ids"][k].tolist(), k
        assert (d["total"][0] - trace["total_loss"][k]).abs() < 1e-5, k
        grad_scale = trace["x0_grad"][k].abs().max()
        assert (d["x0_grad"][0] - trace["x0_grad"][k]).abs().max() < 1e-6 * grad_scale, k
        assert (d["G"][0] - trace["GW_t"][k]).abs().max() < 1e-6, k
        assert d["G"][0, CONDITION_NAMES.index("ei")] == 0  # EI detached: zero gradient
        assert (d["w_grad"][0] - trace["w_grad"][k]).abs().max() < 1e-7, k
        assert (d["w_after"][0] - trace["w_after"][k]).abs().max() < 1e-6, k
        # Adam with the moments of the earlier steps (carried in `state`).
        assert (guided[0] - trace["x0_updated"][k]).abs().max() < 1e-5, k


def test_level1_adam_replay_is_bit_exact_and_equals_torch_adam(trace):
    settings = ccf.CCFSettings()
    state = ccf.init_state(1, "cpu", settings)
    param = torch.zeros((1, 3, 64, 64), requires_grad=True)
    reference = torch.optim.Adam([param], lr=0.03)
    for k in range(STEPS):
        x0, grad = trace["pred_xstart_clipped"][k:k + 1], trace["x0_grad"][k:k + 1]
        ours = ccf.adam_update(x0, grad, state, settings)
        assert torch.equal(ours[0], trace["x0_updated"][k]), k
        param.data.copy_(x0)
        param.grad = grad.clone()
        reference.step()
        assert torch.equal(ours, param.detach()), k


# --- level 2 ------------------------------------------------------------------------------------

def test_level2_ddim_update_with_eps_from_the_unguided_x0_is_exact(trace):
    diffusion = guided_diffusion.create_sampler(timestep_respacing=STEPS)
    for k in range(STEPS):
        t = torch.tensor([STEPS - 1 - k])
        out = diffusion.ddim_step(trace["x_t"][k:k + 1], t, trace["x0_updated"][k:k + 1],
                                  eps_xstart=trace["pred_xstart_clipped"][k:k + 1], fused=False)
        assert torch.equal(out["sample"][0], trace["sample"][k]), k


# --- level 3 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def free_run(trace, tiny_model, one_thread):
    diffusion = guided_diffusion.create_sampler(timestep_respacing=STEPS)
    steps = []
    final = ccf.ccf_sample(tiny_model, diffusion, trace["I_ir"], trace["V_vi"], seed=3407,
                           callback=recording(steps))
    return steps, final


def test_level3_free_run_matches_every_step(trace, free_run):
    steps, final = free_run
    assert [s["t"] for s in steps] == trace["orig_t"].tolist()
    for k, s in enumerate(steps):
        # x0 at t = 999 is the UNet's eps times sqrt(1/abar - 1) = 156: our UNet's 2e-6 in eps
        # (another summation order than the released code's) becomes ~2e-4 there.
        x0_tol = 3e-4 if k == 0 else 1e-4
        assert (s["pred_xstart"][0] - trace["pred_xstart_clipped"][k]).abs().max() < x0_tol, k
        assert (s["guided"][0] - trace["x0_updated"][k]).abs().max() < x0_tol, k
        assert (s["x"][0] - trace["sample"][k]).abs().max() < 1e-4, k
        assert s["topk"][0].tolist() == trace["topk_ids"][k].tolist(), k
        for ours, key in (("losses", "losses"), ("w_before", "w_before"), ("w_after", "w_after"),
                          ("G", "GW_t"), ("w_grad", "w_grad"), ("total", "total_loss")):
            assert (s[ours][0] - trace[key][k]).abs().max() < 1e-4, (k, key)
    assert torch.equal(final, steps[-1]["guided"])  # alpha_bar_prev = 1 at the last step
    assert (final - trace["final_sample"]).abs().max() < 1e-4


def test_level3_recon_png_within_one_grey_level(trace, free_run):
    _, final = free_run
    rgb = final[0].numpy().transpose(1, 2, 0)
    ours = ((rgb - rgb.min()) / (rgb.max() - rgb.min()) * 255).astype(np.uint8)  # global, truncated
    diff = np.abs(ours.astype(int) - trace["recon_png"].numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001


# --- batches ------------------------------------------------------------------------------------

def test_batch_of_two_equals_two_single_runs(trace, tiny_model, one_thread):
    diffusion = guided_diffusion.create_sampler(timestep_respacing=3)
    ir = torch.cat([trace["I_ir"], trace["V_vi"].flip(-1)])  # two different pairs
    vis = torch.cat([trace["V_vi"], trace["I_ir"].flip(-2)])
    batch_steps, single_steps = [], [[], []]
    batch = ccf.ccf_sample(tiny_model, diffusion, ir, vis, callback=recording(batch_steps))
    for n in range(2):  # each single run starts from fresh per-image state
        single = ccf.ccf_sample(tiny_model, diffusion, ir[n:n + 1], vis[n:n + 1],
                                callback=recording(single_steps[n]))
        # The UNet's batched convolutions round differently from single ones (~1e-6 in eps, x156
        # in x0 at t = 999, then Adam's sign-like step): close, not equal. The guidance alone is
        # batch-exact (test_guidance_state_is_per_image).
        assert (batch[n] - single[0]).abs().max() < 1e-3
        for b, s in zip(batch_steps, single_steps[n]):
            assert b["topk"][n].tolist() == s["topk"][0].tolist()
            assert (b["w_after"][n] - s["w_after"][0]).abs().max() < 1e-5
    assert batch_steps[0]["topk"][0].tolist() == [6, 5, 4]
    assert [s["topk"][1].tolist() for s in batch_steps] != [s["topk"][0].tolist() for s in batch_steps] \
        or not torch.equal(batch_steps[-1]["w_after"][0], batch_steps[-1]["w_after"][1])


def test_guidance_state_is_per_image(trace):
    """Teacher-forced guidance on a batch of two different pairs equals each pair alone, and a
    fresh CCFGuidance starts from w = 1, no L_0 and no Adam moments."""
    ir = torch.cat([trace["I_ir"], trace["V_vi"].flip(-1)])
    vis = torch.cat([trace["V_vi"], trace["I_ir"].flip(-2)])
    x0s = trace["pred_xstart_clipped"]
    batch = ccf.CCFGuidance(ir, vis, ccf.CCFSettings())
    singles = [ccf.CCFGuidance(ir[n:n + 1], vis[n:n + 1], ccf.CCFSettings()) for n in range(2)]
    for k in range(4):
        x0 = torch.cat([x0s[k:k + 1], x0s[k:k + 1].flip(-1)])
        guided = batch(x0, None)
        for n, single in enumerate(singles):
            assert (guided[n] - single(x0[n:n + 1], None)[0]).abs().max() < 1e-6
            assert torch.equal(batch.details["topk"][n], single.details["topk"][0])
            assert (batch.state.w[n] - single.state.w[0]).abs().max() < 1e-6
    assert not torch.equal(batch.state.w[0], batch.state.w[1])
    fresh = ccf.CCFGuidance(ir, vis, ccf.CCFSettings())
    assert torch.equal(fresh.state.w, torch.ones(2, 8)) and fresh.state.L_0 is None
    assert fresh.state.exp_avg is None and fresh.state.steps == 0


def test_valid_hw_sees_only_the_image_pixels(trace):
    ir, vis = trace["I_ir"], trace["V_vi"]
    x = trace["pred_xstart_clipped"][3:4]
    padded = [torch.nn.functional.pad(t[..., :48, :40], (0, 24, 0, 16), mode="reflect") for t in (ir, vis, x)]
    bank = ConditionBank(torch.cat([ir, padded[0]]), torch.cat([vis, padded[1]]),
                         valid_hw=[(64, 64), (48, 40)])
    losses, grads = bank.losses_and_grads(torch.cat([x, padded[2]]))
    alone = ConditionBank(ir[..., :48, :40], vis[..., :48, :40]).losses(x[..., :48, :40])
    assert (losses[1] - alone[0]).abs().max() < 1e-6
    assert (losses[0] - ConditionBank(ir, vis).losses(x)[0]).abs().max() < 1e-6
    assert grads[1, :, :, 48:].abs().max() == 0 and grads[1, :, :, :, 40:].abs().max() == 0


# --- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(conditions=("ssim", "colour")), "unknown condition"),
    (dict(topk=0), "topk=0"),
    (dict(topk=9), "topk=9"),
    (dict(topk=3, conditions=("ssim", "mse")), "topk=3"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(lr=-1), "lr=-1"),
    (dict(lr=float("nan")), "lr=nan"),
    (dict(alpha=float("inf")), "alpha=inf"),
])
def test_bad_settings_are_one_line(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        ccf.CCFSettings(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_subset_of_conditions_is_never_selected_outside_it(trace, tiny_model, one_thread):
    settings = ccf.CCFSettings(conditions=("ssim", "mse", "low_freq"), topk=2)
    diffusion = guided_diffusion.create_sampler(timestep_respacing=2)
    steps = []
    ccf.ccf_sample(tiny_model, diffusion, trace["I_ir"], trace["V_vi"], settings=settings,
                   callback=recording(steps))
    for s in steps:
        assert set(s["topk"][0].tolist()) <= {0, 1, 3}
        assert s["w_after"][0, [2, 4, 5, 6, 7]].abs().max() == 0
        assert s["w_after"][0].sum().item() == pytest.approx(3.0, abs=1e-5)


def test_a_bf16_prior_model_runs_with_float32_guidance(trace, tiny_model, one_thread):
    import copy

    from ddfm.prior import wrap_unet
    model = wrap_unet(copy.deepcopy(tiny_model), torch.device("cpu"), dtype="bf16")
    diffusion = guided_diffusion.create_sampler(timestep_respacing=2)
    steps = []
    out = ccf.ccf_sample(model, diffusion, trace["I_ir"], trace["V_vi"], callback=recording(steps))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert steps[-1]["losses"].dtype == torch.float32
    assert steps[0]["topk"][0].tolist() == [6, 5, 4]
