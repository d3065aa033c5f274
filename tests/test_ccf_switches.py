"""CCF's selection tie-break (issue 22 item 3) and its sampler-quirk switches (item 7): eps' from
the unguided x0, no clamp after Adam, Adam's moments across steps, and GradNorm's NaN guard."""
import numpy as np
import pytest
import torch
import yaml

import guided_diffusion
from ddfm.config import ConfigError, load_config
from ddfm.methods.ccf import KEYS as CCF_DEFAULTS, guidance as ccf
from ddfm.methods.ccf.conditions import CONDITION_NAMES, ConditionBank
from helpers import DIFFUSION_CONFIG, GOLDEN, MODEL_CONFIG, ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS

NEW_SWITCHES = ("eps_unguided", "guided_unclamped", "adam_persistent")


@pytest.fixture(scope="module")
def trace():
    with np.load(GOLDEN / "ccf" / "ccf_trace_tno01_64_r10.npz") as data:
        return {k: torch.from_numpy(v) for k, v in data.items()}


def ranked(settings=None, device="cpu"):
    return ccf.init_state(1, device, settings or ccf.CCFSettings()).ranked_ids


# --- item 3: the tie-break is a rule, not a kernel's ------------------------------------------

def test_equal_weights_select_the_released_first_step(trace):
    for n in (1, 3):
        topk = ccf.select_topk(torch.ones((n, 8)), 3, ranked())
        assert topk.tolist() == [trace["topk_ids"][0].tolist()] * n  # [6, 5, 4]: ei, sf, high_freq


def test_ties_keep_the_tie_order_and_values_rank_first():
    w = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0]])
    assert ccf.select_topk(w, 3, ranked()).tolist() == [[4, 2, 1]]  # the 2s, in TIE_ORDER
    assert ccf.select_topk(w, 4, ranked()).tolist() == [[4, 2, 1, 6]]
    # every k selects the k first of TIE_ORDER among eight equal weights (nested selections)
    for k in range(1, 9):
        assert ccf.select_topk(torch.ones((1, 8)), k, ranked()).tolist() == [list(ccf.TIE_ORDER[:k])]


def test_distinct_weights_select_as_torch_topk():
    generator = torch.Generator().manual_seed(22)
    w = torch.rand((16, 8), generator=generator) * 2
    for k in (1, 3, 8):
        assert torch.equal(ccf.select_topk(w, k, ranked()), torch.topk(w, k).indices)


def test_a_subset_ties_in_tie_order_and_a_list_gives_the_same():
    settings = ccf.CCFSettings(conditions=("ssim", "mse", "edge", "sd"))
    w = ccf.init_state(2, "cpu", settings).w
    expected = [k for k in ccf.TIE_ORDER if CONDITION_NAMES[k] in settings.conditions][:3]
    assert ccf.select_topk(w, 3, ranked(settings)).tolist() == [expected] * 2
    assert ccf.select_topk(w, 3, settings.enabled).tolist() == [expected] * 2


# --- item 7: the switches -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text())
    config["model_path"] = str(TINY_WEIGHTS)
    return guided_diffusion.create_model(**config)


def one_step(trace, tiny_model, **switches):
    """The first released step (t = 999) with the given switches: the step's output and guidance."""
    settings = ccf.CCFSettings(**switches)
    diffusion = guided_diffusion.create_sampler(timestep_respacing=10)
    guidance = ccf.CCFGuidance(trace["I_ir"], trace["V_vi"], settings)
    step = ccf.CCFStep(tiny_model, diffusion, settings.eps_unguided)
    x, t = trace["x_T"], torch.tensor([9])
    return step(x, t, torch.zeros_like(x), guidance), diffusion, t


def test_eps_from_the_guided_x0(trace, tiny_model):
    released, diffusion, t = one_step(trace, tiny_model)
    switched, _, _ = one_step(trace, tiny_model, eps_unguided=False)
    assert torch.equal(switched["rectified_xstart"], released["rectified_xstart"])
    x, guided = trace["x_T"], released["rectified_xstart"]
    as_ddfm = diffusion.ddim_step(x, t, guided, fused=False)["sample"]  # eps' re-derived from x0'
    as_released = diffusion.ddim_step(x, t, guided, eps_xstart=released["pred_xstart"], fused=False)["sample"]
    assert torch.equal(switched["sample"], as_ddfm)
    assert torch.equal(released["sample"], as_released)
    assert (switched["sample"] - released["sample"]).abs().min() > 1e-4  # t = 999: sqrt(abar') is small


def test_guided_x0_clamped_when_asked(trace):
    bank = ConditionBank(trace["I_ir"], trace["V_vi"])
    x0 = trace["pred_xstart_clipped"][:1]
    released, _ = ccf.guidance_step(bank, x0, ccf.init_state(1, "cpu", ccf.CCFSettings()), ccf.CCFSettings())
    settings = ccf.CCFSettings(guided_unclamped=False)
    clamped, _ = ccf.guidance_step(bank, x0, ccf.init_state(1, "cpu", settings), settings)
    assert released.abs().max() > 1.02  # the release reaches about 1 + lr
    assert torch.equal(clamped, released.clamp(-1, 1))


def test_fresh_adam_at_every_step(trace):
    bank = ConditionBank(trace["I_ir"], trace["V_vi"])
    x0s = trace["pred_xstart_clipped"][:2]
    results = {}
    for persistent in (True, False):
        settings = ccf.CCFSettings(adam_persistent=persistent)
        state = ccf.init_state(1, "cpu", settings)
        for k in range(2):
            guided, details = ccf.guidance_step(bank, x0s[k:k + 1], state, settings)
        results[persistent] = (guided, details["x0_grad"], state.steps)
    guided, grad, steps = results[False]
    assert steps == 1  # a fresh Adam: its first step, whatever the diffusion step
    fresh = ccf.init_state(1, "cpu", ccf.CCFSettings())
    assert torch.equal(guided, ccf.adam_update(x0s[1:2], grad, fresh, ccf.CCFSettings()))
    assert results[True][2] == 2 and not torch.equal(results[True][0], guided)


def released_w_grad(losses, L_0, grads, w, alpha):
    """The released GradNorm gradient written out: d mean|G - target| / dw_k =
    sign(G_k - target_k) ||g_k|| / 8, with sign(NaN) = 0 as torch's CPU kernels give."""
    norms = grads.flatten(2).norm(dim=2)
    G = w * norms
    ratio = losses / L_0
    target = G.mean(dim=1, keepdim=True) * (ratio / ratio.mean(dim=1, keepdim=True)) ** alpha
    return torch.nan_to_num(torch.sign(G - target), nan=0.0) * w.sign() * norms / G.shape[1], target


def test_gradnorm_nan_guard_holds_the_weight_of_a_loss_that_changed_sign():
    generator = torch.Generator().manual_seed(7)
    grads = torch.randn((1, 8, 3, 4, 4), generator=generator)
    w, ids = torch.ones((1, 8)), list(range(8))
    L_0 = torch.full((1, 8), 0.5)
    losses = L_0 * torch.linspace(0.5, 1.5, 8)
    losses[0, 0] = -0.1  # SSIM-like: the loss changed sign against L_0
    expected, target = released_w_grad(losses, L_0, grads, w, 1.5)
    assert torch.isnan(target[0, 0]) and torch.isfinite(target[0, 1:]).all()  # the hazard
    G, w_grad, objective = ccf.gradnorm(losses, L_0, grads, w, 1.5, ids)
    assert torch.isfinite(objective).all()  # the release's objective is NaN here
    assert torch.isfinite(G).all() and torch.isfinite(w_grad).all()
    assert w_grad[0, 0] == 0  # held for this step, as the release's sign(NaN) = 0 gives
    assert torch.allclose(w_grad, expected, rtol=1e-6, atol=0)


def test_switch_keys_default_to_the_release_and_are_validated():
    for name in NEW_SWITCHES:
        assert CCF_DEFAULTS[f"ccf_{name}"] is True and getattr(ccf.CCFSettings(), name) is True
        text = (ROOT / "configs" / "fusion_config.yaml").read_text()
        assert f"ccf_{name}: true" in text  # documented where the keys are
        config = load_config(MODEL_CONFIG, DIFFUSION_CONFIG, None, ["method=ccf", f"ccf_{name}=false"])
        assert getattr(ccf.settings_from_fusion(config.fusion), name) is False
        with pytest.raises(ConfigError, match=f"ccf_{name} must be true or false"):
            load_config(MODEL_CONFIG, DIFFUSION_CONFIG, None, ["method=ccf", f"ccf_{name}=maybe"])
        with pytest.raises(ConfigError, match=f"{name}=1 must be true or false"):
            ccf.CCFSettings(**{name: 1})
