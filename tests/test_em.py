"""EM rectification against the official DDFM code (golden/DDFM_TRACES.md §4-§6), and the paper variant.

Golden numbers come from running the official `EM_onestep` / sampling loop (commit 589f5cb) on CPU,
float32, one thread. Tolerances are those of DDFM_TRACES §6. On the development machine the colour
path is bit-exact and the EM is within 2.4e-7 of the golden F: torch's sqrt and FFT go through MKL,
whose code path (and last bit) depends on the CPU.
"""
from pathlib import Path

import pytest
import torch

from ddfm.color import official_luma_in, official_luma_out, rgb_to_luma
from ddfm.methods.ddfm.em import (
    EM_STEPS,
    LUMA_IO,
    em_sources,
    em_step,
    em_step_official,
    em_step_paper,
    init_em_state,
)

GOLDEN = Path(__file__).parent / "golden"
LAMB, RHO = 0.5, 0.001
TV_FACTOR = RHO / (2 * LAMB + RHO)


def _load(name):
    return torch.load(GOLDEN / name, weights_only=True)


@pytest.fixture(scope="module")
def em_golden():
    return _load("em_steps.pt")


@pytest.fixture(scope="module")
def tno():
    return _load("ddfm_trace_tno_r10.pt")


@pytest.fixture(scope="module")
def mrict():
    return _load("ddfm_trace_mrict_r25.pt")


def _max_abs(a, b):
    return (a - b).abs().max().item()


def _max_rel(a, b):
    return ((a - b).abs() / b.abs()).max().item()


def _state_from_trace(trace, k):
    """EM state carried into loop position k (stored state after k-1; the initial one at k = 0)."""
    state = init_em_state(trace["I"].shape)
    if k > 0:
        j = trace["em_F1_steps"].tolist().index(k - 1)
        state.F1 = trace["em_F1"][j:j + 1]
        state.F2 = trace["em_F2"][j:j + 1]
        state.tau_a = trace["em_tau_a"][k - 1].view(1, 1, 1, 1)
        state.tau_b = trace["em_tau_b"][k - 1].view(1, 1, 1, 1)
    return state


# --- official variant: golden em_steps.pt (Level 1) ----------------------------------------------


def test_otfs_match_official_psf2otf(em_golden):
    state = init_em_state(em_golden["I"].shape)
    assert state.fft_k1.dtype == torch.complex64
    assert _max_abs(state.fft_k1, em_golden["fft_k1"]) < 1e-6
    assert _max_abs(state.fft_k2, em_golden["fft_k2"]) < 1e-6
    assert _max_abs(torch.conj(state.fft_k1) * state.fft_k1, em_golden["fft_k1sq"]) < 1e-6
    assert _max_abs(torch.conj(state.fft_k2) * state.fft_k2, em_golden["fft_k2sq"]) < 1e-6
    # The solve keeps the real rfft2 half-spectrum of 1 + |K1|^2 + |K2|^2.
    full = 1 + em_golden["fft_k1sq"] + em_golden["fft_k2sq"]
    expected = full.real[:, : full.shape[-1] // 2 + 1]
    assert _max_abs(full.imag, torch.zeros_like(full.imag)) == 0
    assert _max_rel(state.denom, expected) < 1e-6  # values up to 9: one float32 ulp is ~1e-6


def test_otf_acts_as_circular_forward_difference():
    h = torch.randn(1, 1, 6, 7, generator=torch.Generator().manual_seed(0))
    state = init_em_state(h.shape)
    k1h = torch.real(torch.fft.ifft2(state.fft_k1 * torch.fft.fft2(h)))
    k2h = torch.real(torch.fft.ifft2(state.fft_k2 * torch.fft.fft2(h)))
    assert _max_abs(k1h, torch.roll(h, -1, dims=-1) - h) < 1e-5
    assert _max_abs(k2h, torch.roll(h, -1, dims=-2) - h) < 1e-5


def test_official_em_matches_em_steps_golden(em_golden):
    g = em_golden
    state = init_em_state(g["I"].shape)
    for k in range(5):
        F, state, diag = em_step_official(g["f_tilde"][k:k + 1], g["I"], g["V"], state,
                                          LAMB, RHO, diagnostics=True)
        s = slice(k, k + 1)
        assert _max_abs(F, g["F"][s]) < 1e-5
        assert _max_abs(diag.H, g["H"][s]) < 1e-5
        assert _max_abs(state.F1, g["F1"][s]) < 1e-8
        assert _max_abs(state.F2, g["F2"][s]) < 1e-8
        assert _max_rel(diag.D, g["D"][s]) < 1e-5
        assert _max_rel(diag.C, g["C"][s]) < 1e-3
        assert _max_rel(state.tau_a.flatten(), g["tau_a"][k]) < 1e-6
        assert _max_rel(state.tau_b.flatten(), g["tau_b"][k]) < 1e-6
        assert (diag.clip_mask != g["clip_mask"][s]).sum() <= 2
        assert abs(diag.num_clipped.item() - g["num_clipped"][k].item()) <= 2
        # The stored D is after the clip: D = min(D_preclip, 2C).
        assert torch.equal(diag.D, torch.minimum(diag.D_preclip, 2 * diag.C))


def test_wrong_conventions_are_caught_by_em_steps_golden(em_golden):
    """Negative checks (DDFM_TRACES §6): eps after squaring in C, or no clip, moves F far past 1e-5."""
    g = em_golden
    I, V, f = g["I"], g["V"], g["f_tilde"][0:1]
    F, _, diag = em_step_official(f, I, V, init_em_state(I.shape), LAMB, RHO, diagnostics=True)
    Y, X = I - V, f - V

    def output(C, D):  # the official x-update and F = I - X, with the H of the call
        return I - (2 * C * Y + RHO * (Y - diag.H)) / (2 * C + 2 * D + RHO)

    assert _max_abs(output(diag.C, diag.D), F) < 1e-6
    no_clip = output(diag.C, diag.D_preclip)
    assert _max_abs(no_clip, g["F"][0:1]) > 0.1
    C_eps_after = torch.sqrt(2 / ((Y - X) ** 2 + 1e-6))
    eps_after = output(C_eps_after, torch.minimum(diag.D_preclip, 2 * C_eps_after))
    assert _max_abs(eps_after, g["F"][0:1]) > 1e-4
    # The paper's output form x + v applied to the code's X (instead of F = I - X), issue #18.
    x_plus_v = (2 * diag.C * Y + RHO * (Y - diag.H)) / (2 * diag.C + 2 * diag.D + RHO) + V
    assert _max_abs(x_plus_v, g["F"][0:1]) > 0.5


def test_official_state_is_carried_and_reset_per_image(em_golden):
    g = em_golden
    first = init_em_state(g["I"].shape)
    F0, carried = em_step_official(g["f_tilde"][0:1], g["I"], g["V"], first, LAMB, RHO)
    F1_warm, _ = em_step_official(g["f_tilde"][1:2], g["I"], g["V"], carried, LAMB, RHO)
    F1_cold, _ = em_step_official(g["f_tilde"][1:2], g["I"], g["V"], first, LAMB, RHO)
    assert _max_abs(F1_warm, g["F"][1:2]) < 1e-5
    assert _max_abs(F1_warm, F1_cold) > 1e-3      # tau carried across steps matters
    assert torch.equal(first.tau_a, torch.ones(1, 1, 1, 1))  # the step does not mutate its input
    assert torch.equal(first.F1, torch.zeros_like(first.F1))


# --- official variant inside the sampling traces ---------------------------------------------------


@pytest.mark.parametrize("name,k", [("tno", k) for k in range(10)] + [("mrict", 24)])
def test_official_em_matches_trace_level1(name, k, tno, mrict):
    trace = tno if name == "tno" else mrict
    j = trace["f_tilde_steps"].tolist().index(k)
    F, state = em_step_official(trace["f_tilde"][j:j + 1], trace["I"], trace["V"],
                                _state_from_trace(trace, k), trace["lamb"], trace["rho"])
    assert _max_abs(F, trace["em_F"][k:k + 1]) < 1e-5
    assert _max_rel(state.tau_a.flatten(), trace["em_tau_a"][k]) < 1e-6
    assert _max_rel(state.tau_b.flatten(), trace["em_tau_b"][k]) < 1e-6
    q = trace["em_F1_steps"].tolist().index(k)
    assert _max_abs(state.F1, trace["em_F1"][q:q + 1]) < 1e-8
    assert _max_abs(state.F2, trace["em_F2"][q:q + 1]) < 1e-8


@pytest.mark.parametrize("name,k", [("tno", k) for k in range(10)] + [("mrict", 24)])
def test_official_luma_roundtrip_matches_trace_level2(name, k, tno, mrict):
    """pred_xstart -> f~ and (stored F) -> x0_rect, then the DDIM (eta = 0) step -> next x_t."""
    trace = tno if name == "tno" else mrict
    j = trace["pred_xstart_steps"].tolist().index(k)
    x0 = trace["pred_xstart"][j:j + 1]
    f_tilde, ycc = official_luma_in(x0)
    assert _max_abs(f_tilde, trace["f_tilde"][j:j + 1]) < 1e-5
    x0_rect = official_luma_out(x0, ycc, trace["em_F"][k:k + 1])
    assert _max_abs(x0_rect, trace["x0_rect"][j:j + 1]) < 5e-5
    # DDIM eta = 0 with eps re-derived from the rectified x0 (DDFM_TRACES §5 item 9).
    i = trace["num_steps"] - 1 - k
    abar = trace["alphas_cumprod"][i]
    abar_prev = trace["alphas_cumprod_prev"][i].to(torch.float32)
    x_t = trace["x_t"][j:j + 1]
    recip = torch.sqrt(1.0 / abar).to(torch.float32)
    recipm1 = torch.sqrt(1.0 / abar - 1).to(torch.float32)
    eps = (recip * x_t - x0_rect) / recipm1
    x_prev = torch.sqrt(abar_prev) * x0_rect + torch.sqrt(1 - abar_prev) * eps
    if k + 1 < trace["num_steps"] and k + 1 in trace["x_t_steps"].tolist():
        nxt = trace["x_t_steps"].tolist().index(k + 1)
        assert _max_abs(x_prev, trace["x_t"][nxt:nxt + 1]) < 5e-5
    elif k == trace["num_steps"] - 1:
        assert _max_abs(x_prev, x0_rect) < 1e-6  # at i = 0 the sample is the rectified x0


# --- batches --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_batch_equals_per_image(variant, em_golden):
    g = em_golden
    gen = torch.Generator().manual_seed(1)
    shape = g["I"].shape
    a = torch.cat([g["I"], torch.rand(shape, generator=gen) * 2 - 1])
    b = torch.cat([g["V"], torch.rand(shape, generator=gen) * 2 - 1])
    fs = [torch.cat([g["f_tilde"][k:k + 1], torch.rand(shape, generator=gen) * 1.72 - 0.8]) for k in range(3)]
    batch_state = init_em_state(a.shape)
    single_states = [init_em_state(shape) for _ in range(2)]
    for f in fs:
        F_batch, batch_state = em_step(variant, f, a, b, batch_state, LAMB, RHO)
        for n in range(2):
            F_n, single_states[n] = em_step(variant, f[n:n + 1], a[n:n + 1], b[n:n + 1],
                                            single_states[n], LAMB, RHO)
            assert _max_abs(F_batch[n:n + 1], F_n) < 1e-6
            assert _max_rel(batch_state.tau_a[n], single_states[n].tau_a[0]) < 1e-6
            assert _max_rel(batch_state.tau_b[n], single_states[n].tau_b[0]) < 1e-6
            assert _max_abs(batch_state.F1[n:n + 1], single_states[n].F1) < 1e-9
            assert _max_abs(batch_state.F2[n:n + 1], single_states[n].F2) < 1e-9
    # The two images really have different scales (per-image tau, not one batch mean).
    assert _max_rel(batch_state.tau_a[0], batch_state.tau_a[1]) > 1e-3


# --- paper variant -----------------------------------------------------------------------------------


def _paper_inputs():
    gen = torch.Generator().manual_seed(3)
    shape = (2, 1, 24, 30)
    ir = torch.rand(shape, generator=gen) * 2 - 1
    vis = torch.rand(shape, generator=gen) * 2 - 1
    f = torch.rand(shape, generator=gen) * 2 - 1
    return f, ir, vis


def test_paper_e_step_and_scale_update_follow_equations():
    f, i, v = _paper_inputs()
    state = init_em_state(f.shape)
    state.tau_a = torch.tensor([0.7, 1.3]).view(2, 1, 1, 1)
    state.tau_b = torch.tensor([1.1, 0.9]).view(2, 1, 1, 1)
    _, new, diag = em_step_paper(f, i, v, state, LAMB, RHO, diagnostics=True)
    y, x = i - v, f - v
    m_bar = torch.sqrt(2 / (state.tau_a * ((y - x) ** 2 + 1e-6)))  # E[1/m]
    n_bar = torch.sqrt(2 / (state.tau_b * (x ** 2 + 1e-6)))        # E[1/n]
    assert _max_rel(diag.C, m_bar) < 1e-6 and _max_rel(diag.D, n_bar) < 1e-6
    for n in range(2):  # Eq. 31 per image: mean of E[m] = 1/E[1/m] + scale/2
        assert _max_rel(new.tau_a[n], (1 / m_bar[n] + state.tau_a[n] / 2).mean()) < 1e-6
        assert _max_rel(new.tau_b[n], (1 / n_bar[n] + state.tau_b[n] / 2).mean()) < 1e-6


def test_paper_m_step_closed_form_without_tv():
    """eta = 0 switches the TV/HQS term off: x = 2 m y / (2 m + 2 n) and f^ = x + v (Eq. 29-30)."""
    f, i, v = _paper_inputs()
    f_hat, new, diag = em_step_paper(f, i, v, init_em_state(f.shape), LAMB, 0.0, diagnostics=True)
    y = i - v
    x = 2 * diag.C * y / (2 * diag.C + 2 * diag.D)
    assert _max_abs(f_hat, x + v) < 1e-6
    assert torch.count_nonzero(new.F1) == 0 and torch.count_nonzero(new.F2) == 0


def test_paper_has_no_clip_and_consistent_tv_differences():
    f, i, v = _paper_inputs()
    state = init_em_state(f.shape)
    f_hat, new, diag = em_step_paper(f, i, v, state, LAMB, RHO, diagnostics=True)
    assert (diag.D > 2 * diag.C).any()          # the official clip would be active here
    assert not diag.clip_mask.any() and diag.num_clipped.sum() == 0
    y = i - v
    x = (2 * diag.C * y + RHO * diag.H) / (2 * diag.C + 2 * diag.D + RHO)  # Eq. 29 with the unclipped D
    assert _max_abs(f_hat, x + v) < 1e-6
    # Eq. 25 with u = 0 at the start: k solves (1 + D1'D1 + D2'D2) k = x~0, D the circular differences.
    k = diag.H

    def dtd(h, dim):  # D'D h for the forward difference D h = h[+1] - h
        d = torch.roll(h, -1, dims=dim) - h
        return torch.roll(d, 1, dims=dim) - d

    assert _max_abs(k + dtd(k, -1) + dtd(k, -2), f - v) < 1e-5
    # Eq. 27: u = eta/(2 psi + eta) * grad k, grad the circular forward difference of the OTFs.
    assert _max_abs(new.F1, TV_FACTOR * (torch.roll(diag.H, -1, dims=-1) - diag.H)) < 1e-9
    assert _max_abs(new.F2, TV_FACTOR * (torch.roll(diag.H, -1, dims=-2) - diag.H)) < 1e-9


def test_paper_roles_follow_the_estimate_official_reflects_it():
    """Paper: f~ = v gives f^ = v and f~ = i gives f^ = i. Official (I = vis, V = ir), f~ = V: F = 2/3 I + 1/3 V."""
    f, ir, vis = _paper_inputs()
    i, v = em_sources("paper", ir, vis)
    assert i is ir and v is vis
    # Exact equality is off by ~|y| sqrt(eps/2) because of the eps guard on the zero residual.
    f_hat, _ = em_step("paper", vis, i, v, init_em_state(f.shape), LAMB, RHO)
    assert _max_abs(f_hat, vis) < 3e-3
    f_hat, _ = em_step("paper", ir, i, v, init_em_state(f.shape), LAMB, RHO)
    assert _max_abs(f_hat, ir) < 3e-3
    I, V = em_sources("official", ir, vis)
    assert I is vis and V is ir
    F, _ = em_step("official", V, I, V, init_em_state(f.shape), LAMB, RHO)
    assert _max_abs(F, 2 / 3 * I + 1 / 3 * V) < 1e-3


# --- selection by name -----------------------------------------------------------------------------


def test_dispatch_by_name(em_golden):
    g = em_golden
    assert set(EM_STEPS) == set(LUMA_IO) == {"official", "paper"}
    F_direct, _ = em_step_official(g["f_tilde"][0:1], g["I"], g["V"], init_em_state(g["I"].shape))
    F_named, _ = em_step("official", g["f_tilde"][0:1], g["I"], g["V"], init_em_state(g["I"].shape))
    assert torch.equal(F_direct, F_named)
    with pytest.raises(ValueError, match="unknown EM variant"):
        em_step("dps", g["f_tilde"][0:1], g["I"], g["V"], init_em_state(g["I"].shape))
    with pytest.raises(ValueError, match="unknown EM variant"):
        em_sources("dps", g["I"], g["V"])


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_luma_io_pair_round_trip(variant):
    """luma_out(x0, aux, luma_in(x0)[0]) leaves x0 unchanged; a new F sets the (studio or plain) luma."""
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    luma_in, luma_out = LUMA_IO[variant]
    f, aux = luma_in(x0)
    assert f.shape == (2, 1, 8, 8)
    assert _max_abs(luma_out(x0, aux, f), x0) < 2e-6
    F = torch.zeros_like(f)
    target = (255 * F - 16) / 219 if variant == "official" else F
    assert _max_abs(rgb_to_luma(luma_out(x0, aux, F)), target) < 1e-6


@pytest.mark.parametrize("step", [em_step_official, em_step_paper])
def test_tau_updates_ignore_padding(step):
    """With valid_hw, a padded image gets the tau of the unpadded one (the means skip the padding)."""
    gen = torch.Generator().manual_seed(21)
    I, V, f = (torch.rand(1, 1, 24, 40, generator=gen) * 2 - 1 for _ in range(3))
    pad = lambda x: torch.nn.functional.pad(x, (0, 8, 0, 8), mode="reflect")  # noqa: E731
    _, plain = step(f, I, V, init_em_state(I.shape))
    _, masked = step(pad(f), pad(I), pad(V), init_em_state((1, 1, 32, 48), valid_hw=[(24, 40)]))
    _, unmasked = step(pad(f), pad(I), pad(V), init_em_state((1, 1, 32, 48)))
    assert torch.allclose(masked.tau_a, plain.tau_a, rtol=1e-5)
    assert torch.allclose(masked.tau_b, plain.tau_b, rtol=1e-5)
    assert not torch.allclose(unmasked.tau_a, plain.tau_a, rtol=1e-5)
