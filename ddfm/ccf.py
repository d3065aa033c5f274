"""CCF's condition guidance (Cao et al., NeurIPS 2024; ccf_official.md §3, §5) as an x0 rectifier.

Each DDIM step moves the clipped x0 by one Adam step on the selected fusion conditions
(ddfm.conditions), then updates the condition weights by the GradNorm rule:
  1. L = the 8 condition losses of x0; L_0 = L of the first step (kept per image);
  2. top-k of the weights w (torch.topk order; at the first step all w are 1 and torch.topk on
     the CPU returns [6, 5, 4] = ei, sf, high_freq: the released run's tie-break, kept);
  3. total = sum over the top-k of (w_k L_k + L_mse), i.e. sum w_k L_k + k L_mse; its gradient
     with respect to x0 only (never through the UNet) feeds Adam (lr 0.03, betas 0.9 / 0.999,
     eps 1e-8), whose moments and step count persist over the diffusion steps of an image;
  4. G_k = ||w_k dL_k/dx0|| for every condition, target_k = mean(G) r_k^alpha with
     r = (L / L_0) / mean(L / L_0); w <- w - d mean|G - target| / dw, then w <- sum * w / sum(w).
All state is per image (rows of the batch), so a batch equals the same images run one by one.
The per-condition gradients come from one backward pass over eight copies of x0
(ConditionBank.losses_and_grads): the same eight gradients as eight autograd.grad calls.
"""
import math
from dataclasses import dataclass, field, fields

import torch

from ddfm.conditions import CONDITION_NAMES, MSE_INDEX, ConditionBank
from ddfm.messages import ConfigError


@dataclass(frozen=True)
class CCFSettings:
    """CCF's guidance settings; the defaults are the released code's. Validated on creation.

    conditions: the enabled conditions (names of ddfm.conditions.CONDITION_NAMES); the others are
    never selected and take no part in GradNorm. weight_sum: Σw after each update (None: the
    number of enabled conditions, 8 as released). mse_per_slot (released): the always-on MSE is
    added once per selected slot (weight = topk); False adds it once. The other flags are the
    condition bank's quirks (see ddfm.conditions.ConditionBank).
    """

    lr: float = 0.03
    topk: int = 3
    alpha: float = 1.5
    weight_sum: float = None
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    conditions: tuple = CONDITION_NAMES
    mse_per_slot: bool = True
    edge_visible_twice: bool = True
    ei_kernel_typo: bool = True
    ei_detached: bool = True

    def __post_init__(self):
        object.__setattr__(self, "conditions", tuple(self.conditions))
        unknown = [name for name in self.conditions if name not in CONDITION_NAMES]
        if unknown:
            raise ConfigError(f"ccf: unknown condition(s) {', '.join(map(str, unknown))} "
                              f"(choose from {', '.join(CONDITION_NAMES)})")
        if not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ConfigError(f"ccf: conditions={list(self.conditions)} must be distinct and not empty")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) \
                or not 1 <= self.topk <= len(self.conditions):
            raise ConfigError(f"ccf: topk={self.topk!r} must be an integer in 1..{len(self.conditions)} "
                              f"(the number of enabled conditions)")
        for name in ("lr", "alpha", "eps") + (("weight_sum",) if self.weight_sum is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"ccf: {name}={value!r} must be a finite number > 0")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"ccf: betas={self.betas!r} must lie in [0, 1)")

    @property
    def enabled(self):
        """Indices of the enabled conditions in loss-vector order."""
        return [CONDITION_NAMES.index(name) for name in CONDITION_NAMES if name in self.conditions]

    def bank_flags(self):
        return dict(edge_visible_twice=self.edge_visible_twice, ei_kernel_typo=self.ei_kernel_typo,
                    ei_detached=self.ei_detached)


@dataclass
class CCFState:
    """Per-image guidance state, carried across the diffusion steps of one batch.

    w (N, 8) GradNorm weights (0 for disabled conditions); L_0 (N, 8) the first step's losses
    (None before it); exp_avg, exp_avg_sq (N, 3, H, W) Adam's moments; steps Adam's step count.
    """

    w: torch.Tensor
    L_0: torch.Tensor = None
    exp_avg: torch.Tensor = None
    exp_avg_sq: torch.Tensor = None
    steps: int = 0
    enabled: list = field(default_factory=lambda: list(range(len(CONDITION_NAMES))))


def init_state(n, device, settings):
    """Fresh state for n images: w = 1 on the enabled conditions, no L_0, no Adam moments."""
    w = torch.zeros((n, len(CONDITION_NAMES)), dtype=torch.float32, device=device)
    w[:, settings.enabled] = 1.0
    return CCFState(w=w, enabled=settings.enabled)


# --- the pieces of one guidance step (each replayable against the golden trace) ------------------

def select_topk(w, k, enabled):
    """Ids (N, k) of the k largest enabled weights per image, in torch.topk order (by value).

    Each row is ranked on its own 1-D tensor of the enabled weights, as the released code ranks
    its (8,) weight vector, so the tie-break cannot depend on the batch.
    """
    ids = torch.tensor(enabled, device=w.device)
    rows = [ids[torch.topk(w[n, ids], k).indices] for n in range(w.shape[0])]
    return torch.stack(rows)


def total_loss(losses, w, topk, mse_per_slot=True):
    """Σ_{k in top-k} (w_k L_k + L_mse) per image (mse_per_slot False: Σ w_k L_k + L_mse): (N,)."""
    picked_w, picked_l = w.gather(1, topk), losses.gather(1, topk)
    mse = losses[:, MSE_INDEX:MSE_INDEX + 1]
    if mse_per_slot:
        return (picked_w * picked_l + mse).sum(dim=1)
    return (picked_w * picked_l).sum(dim=1) + mse[:, 0]


def guidance_gradient(grads, w, topk, mse_per_slot=True):
    """d total / d x0 from the per-condition gradients grads (N, 8, 3, H, W): (N, 3, H, W)."""
    picked_w = w.gather(1, topk)
    picked_g = grads.gather(1, topk.view(*topk.shape, 1, 1, 1).expand(-1, -1, *grads.shape[2:]))
    mse_weight = topk.shape[1] if mse_per_slot else 1
    return (picked_w.view(*picked_w.shape, 1, 1, 1) * picked_g).sum(dim=1) + mse_weight * grads[:, MSE_INDEX]


def gradnorm(losses, L_0, grads, w, alpha, enabled):
    """GradNorm on the enabled conditions: G (N, 8) = ||w_k g_k|| and w_grad (N, 8), the gradient
    of mean_k |G_k - mean(G) r_k^alpha| with respect to w (by autograd, as released; 0 where
    disabled). grads: (N, 8, 3, H, W)."""
    ids = torch.tensor(enabled, device=w.device)
    with torch.enable_grad():
        w_leaf = w[:, ids].detach().requires_grad_(True)
        G = (w_leaf.view(*w_leaf.shape, 1, 1, 1) * grads[:, ids]).flatten(2).norm(dim=2)
        G_mean = G.mean(dim=1, keepdim=True).detach()
        ratio = losses[:, ids] / L_0[:, ids]
        r = ratio / ratio.mean(dim=1, keepdim=True)
        target = G_mean * r ** alpha
        objective = (G - target).abs().mean(dim=1).sum()
        (w_grad,) = torch.autograd.grad(objective, w_leaf)
    full_G, full_grad = torch.zeros_like(w), torch.zeros_like(w)
    full_G[:, ids], full_grad[:, ids] = G.detach(), w_grad
    return full_G, full_grad


def renormalise(w, w_grad, weight_sum):
    """w <- w - w_grad, then rescaled to Σw = weight_sum per image."""
    w = w - w_grad
    return weight_sum * w / w.sum(dim=1, keepdim=True)


def adam_update(param, grad, state, settings):
    """One step of torch.optim.Adam (single-tensor path, no weight decay / amsgrad) on param with
    the moments and step count in `state`, written out so the state is explicit and per image.
    Returns the new param; updates state in place."""
    b1, b2 = settings.betas
    if state.exp_avg is None:
        state.exp_avg, state.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    state.steps += 1
    state.exp_avg = state.exp_avg.lerp(grad, 1 - b1)
    state.exp_avg_sq = state.exp_avg_sq.mul(b2).addcmul(grad, grad, value=1 - b2)
    step_size = settings.lr / (1 - b1 ** state.steps)
    denom = (state.exp_avg_sq.sqrt() / (1 - b2 ** state.steps) ** 0.5).add(settings.eps)
    return param.addcdiv(state.exp_avg, denom, value=-step_size)


def guidance_step(bank, x0, state, settings):
    """One CCF condition step on the clipped x0 (N, 3, H, W) -> (x0', details); updates state.

    details: losses, topk, total, G, w_grad, w_before, w_after, x0_grad (all detached).
    """
    x0 = x0.detach().float()
    losses, grads = bank.losses_and_grads(x0)
    if state.L_0 is None:
        state.L_0 = losses.clone()
    w_before = state.w
    topk = select_topk(w_before, settings.topk, state.enabled)
    x0_grad = guidance_gradient(grads, w_before, topk, settings.mse_per_slot)
    G, w_grad = gradnorm(losses, state.L_0, grads, w_before, settings.alpha, state.enabled)
    guided = adam_update(x0, x0_grad, state, settings)  # Adam before the weight update, as released
    weight_sum = len(state.enabled) if settings.weight_sum is None else settings.weight_sum
    state.w = renormalise(w_before, w_grad, weight_sum)
    details = dict(losses=losses, topk=topk, total=total_loss(losses, w_before, topk, settings.mse_per_slot),
                   G=G, w_grad=w_grad, w_before=w_before, w_after=state.w, x0_grad=x0_grad)
    return guided, details


class CCFGuidance:
    """The rectify_fn(x0, t) hook of the sampler: one guidance step per call, state per image.

    ir, vis: (N, 3, H, W) sources on [-1, 1] (I = infrared role, V = visible role); valid_hw as
    ConditionBank. After each call `details` holds that step's guidance_step details.
    """

    def __init__(self, ir, vis, settings, valid_hw=None):
        self.settings = settings
        self.bank = ConditionBank(ir, vis, valid_hw, **settings.bank_flags())
        self.state = init_state(ir.shape[0], ir.device, settings)
        self.details = None

    def __call__(self, x0, t):
        guided, self.details = guidance_step(self.bank, x0, self.state, self.settings)
        return guided


# --- the sampling loop ---------------------------------------------------------------------------

class CCFStep:
    """One CCF sampling step: UNet -> clipped x0 -> guidance -> DDIM (eta 0) with eps' from the
    pre-guidance x0. The model may be any ddfm.prior model (its output is float32); the guidance
    stays float32. Called as step(x, t, noise, rectify), like ddfm.sampling.StepFunction."""

    def __init__(self, model, diffusion):
        self.model, self.diffusion = model, diffusion

    @torch.no_grad()  # the guidance enables gradients locally, on a detached copy of x0
    def __call__(self, x, t, noise, rectify):
        return self.diffusion.ddim_sample(self.model, x, t, clip_denoised=True, rectify_fn=rectify,
                                          eta=0.0, noise=noise, eps_from_rectified=False,
                                          fused=False)  # the released update, bit for bit


@torch.no_grad()
def ccf_sample(model, diffusion, ir, vis, *, settings=None, seed=3407, generators=None, x_T=None,
               valid_hw=None, callback=None, progress=False, step=None):
    """Fuse a batch with CCF: returns the final sample (N, 3, H, W), about [-1, 1] (not clamped:
    the last step's guided x0).

    ir, vis: (N, 3, H, W) float32 in [-1, 1], H and W divisible by 32 for the ADM UNet. x_T from
    per-image CPU generators (ddfm.sampling) unless given. DDIM eta 0 over all respaced steps of
    `diffusion`. callback(dict) gets i, t (original timestep), x (the new latent), pred_xstart
    (clipped), guided (x0'), losses (N, 8), topk (N, k), w_before, w_after, G, w_grad, total.
    step: a CCFStep-like callable (default: CCFStep(model, diffusion)).
    """
    from ddfm.sampling import per_image_noise, seeded_generators

    settings = CCFSettings() if settings is None else settings
    n, _, h, w = ir.shape
    device = ir.device
    if generators is None:
        generators = seeded_generators(seed, n)
    x = per_image_noise(generators, (3, h, w), device) if x_T is None else x_T.to(device)
    guidance = CCFGuidance(ir, vis, settings, valid_hw)
    step = CCFStep(model, diffusion) if step is None else step
    diffusion.tables_to(device)
    indices = list(range(diffusion.num_timesteps))[::-1]
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="steps", leave=False)
    unused = torch.zeros_like(x)  # eta 0 multiplies the noise by zero: nothing is drawn
    for i in indices:
        t = torch.full((n,), i, dtype=torch.long, device=device)
        out = step(x, t, unused, guidance)
        x = out["sample"]
        if callback is not None:
            d = guidance.details
            callback({"i": i, "t": int(diffusion.timestep_map[i]), "x": x,
                      "pred_xstart": out["pred_xstart"], "guided": out["rectified_xstart"],
                      "losses": d["losses"], "topk": d["topk"], "w_before": d["w_before"],
                      "w_after": d["w_after"], "G": d["G"], "w_grad": d["w_grad"], "total": d["total"]})
    return x


def settings_from_fusion(fusion):
    """CCFSettings from a fusion config's ccf_<field> keys (the others, e.g. ccf_io's resize
    switch, are not the sampler's); a bad value is the settings' one-line ConfigError."""
    values = {f.name: fusion[f"ccf_{f.name}"] for f in fields(CCFSettings) if f"ccf_{f.name}" in fusion}
    if isinstance(values.get("conditions"), str):  # "ssim,mse" from the command line
        values["conditions"] = [name.strip() for name in values["conditions"].strip("[]").split(",")]
    return CCFSettings(**values)

