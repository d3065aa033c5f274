"""CCF's condition guidance (Cao et al., NeurIPS 2024; ccf_official.md §3, §5) as an x0 rectifier.

Each DDIM step moves the clipped x0 by one Adam step on the selected fusion conditions
(ddfm.methods.ccf.conditions), then updates the condition weights by the GradNorm rule:
  1. L = the 8 condition losses of x0; L_0 = L of the first step (kept per image);
  2. top-k of the weights w, largest first; equal weights (all of them at the first step) in
     TIE_ORDER, the order the released run's torch.topk gave on the CPU ([6, 5, 4] = ei, sf,
     high_freq at the first step), by a stable sort: the same on every device;
  3. total = sum over the top-k of (w_k L_k + L_mse), i.e. sum w_k L_k + k L_mse; its gradient
     with respect to x0 only (never through the UNet) feeds Adam (lr 0.03, betas 0.9 / 0.999,
     eps 1e-8), whose moments and step count persist over the diffusion steps of an image;
  4. G_k = ||w_k dL_k/dx0|| for every condition, target_k = mean(G) r_k^alpha with
     r = (L / L_0) / mean(L / L_0); w <- w - d mean|G - target| / dw, then w <- sum * w / sum(w).
All state is per image (rows of the batch), so a batch equals the same images run one by one.
The per-condition gradients come from one backward pass over eight copies of x0
(ConditionBank.losses_and_grads): the same eight gradients as eight autograd.grad calls.
No step copies host data to the device (a host sync on CUDA): the enabled ids are device tensors
built with the state, the filter taps with the condition bank.
"""
import math
from dataclasses import dataclass, field, fields

import torch

from ddfm.common import ConfigError
from ddfm.methods.ccf.conditions import CONDITION_NAMES, MSE_INDEX, ConditionBank

# Equal weights are ranked in this order of condition ids: torch.topk's order for eight equal
# weights on the CPU in the released run (k = 1..8 select 6; 6, 5; 6, 5, 4; ... nested), so the
# first step selects ei, sf, high_freq as released, on any device. Ties among fewer enabled
# conditions keep this order too (torch's own order for them differs with the count).
TIE_ORDER = (6, 5, 4, 7, 2, 1, 0, 3)


@dataclass(frozen=True)
class CCFSettings:
    """CCF's guidance settings; the defaults are the released code's. Validated on creation.

    conditions: the enabled conditions (names of ddfm.methods.ccf.conditions.CONDITION_NAMES); the others are
    never selected and take no part in GradNorm. weight_sum: Σw after each update (None: the
    number of enabled conditions, 8 as released). mse_per_slot (released): the always-on MSE is
    added once per selected slot (weight = topk); False adds it once. The other flags are the
    condition bank's quirks (see ddfm.methods.ccf.conditions.ConditionBank). Released sampler quirks:
    eps_unguided: DDIM's eps' from the x0 before guidance (False: from the guided x0, as DDFM);
    guided_unclamped: the guided x0 is not clamped (False: clamped to [-1, 1]);
    adam_persistent: Adam's moments and step count carry over the diffusion steps (False: a fresh
    Adam at every step).
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
    eps_unguided: bool = True
    guided_unclamped: bool = True
    adam_persistent: bool = True

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
        for name in SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ccf: {name}={getattr(self, name)!r} must be true or false")

    @property
    def enabled(self):
        """Indices of the enabled conditions in loss-vector order."""
        return [CONDITION_NAMES.index(name) for name in CONDITION_NAMES if name in self.conditions]

    def bank_flags(self):
        return dict(edge_visible_twice=self.edge_visible_twice, ei_kernel_typo=self.ei_kernel_typo,
                    ei_detached=self.ei_detached)


SWITCHES = ("mse_per_slot", "edge_visible_twice", "ei_kernel_typo", "ei_detached", "eps_unguided",
            "guided_unclamped", "adam_persistent")


@dataclass
class CCFState:
    """Per-image guidance state, carried across the diffusion steps of one batch.

    w (N, 8) GradNorm weights (0 for disabled conditions); L_0 (N, 8) the first step's losses
    (None before it); exp_avg, exp_avg_sq (N, 3, H, W) Adam's moments; steps Adam's step count.
    enabled_ids: the enabled ids (long, on w's device), ranked_ids: the same in TIE_ORDER.
    """

    w: torch.Tensor
    L_0: torch.Tensor = None
    exp_avg: torch.Tensor = None
    exp_avg_sq: torch.Tensor = None
    steps: int = 0
    enabled: list = field(default_factory=lambda: list(range(len(CONDITION_NAMES))))
    enabled_ids: torch.Tensor = None
    ranked_ids: torch.Tensor = None


def id_tensor(ids, device):
    """Condition ids as a long tensor on `device` (a tensor there is used as it is)."""
    if torch.is_tensor(ids) and ids.device == torch.device(device):
        return ids
    return torch.as_tensor(ids, dtype=torch.long).to(device)


def init_state(n, device, settings):
    """Fresh state for n images: w = 1 on the enabled conditions, no L_0, no Adam moments; the
    enabled ids cross to the device here, once."""
    enabled_ids = id_tensor(settings.enabled, device)
    ranked_ids = id_tensor([k for k in TIE_ORDER if k in settings.enabled], device)
    w = torch.zeros((n, len(CONDITION_NAMES)), dtype=torch.float32, device=device)
    w.index_fill_(1, enabled_ids, 1.0)
    return CCFState(w=w, enabled=settings.enabled, enabled_ids=enabled_ids, ranked_ids=ranked_ids)


# --- the pieces of one guidance step (each replayable against the golden trace) ------------------

def select_topk(w, k, ranked_ids):
    """Ids (N, k) of the k largest enabled weights per image, largest first.

    ranked_ids: the enabled ids in TIE_ORDER (CCFState.ranked_ids; a list is put in that order
    and copied to w's device). A stable descending sort keeps equal weights in that order, so
    the selection is defined by the weights alone, never by a kernel's tie-break, and each row
    is ranked on its own (a batch equals single runs).
    """
    if not torch.is_tensor(ranked_ids):
        ranked_ids = [i for i in TIE_ORDER if i in ranked_ids]
    ranked_ids = id_tensor(ranked_ids, w.device)
    order = torch.sort(w[:, ranked_ids], dim=1, descending=True, stable=True).indices
    return ranked_ids[order[:, :k]]


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
    """GradNorm on the enabled conditions: G (N, 8) = ||w_k g_k||, w_grad (N, 8), the gradient of
    mean_k |G_k - mean(G) r_k^alpha| with respect to w (by autograd, as released; 0 where
    disabled), and that objective per image (N,). grads: (N, 8, 3, H, W); enabled: ids (CCFState.enabled_ids, or a list).

    NaN guard: r_k < 0 (a loss that changed sign against L_0, e.g. SSIM's near 0) makes r_k^alpha
    NaN. The released L1 gradient is then 0 for that weight (sign(NaN) = 0 in torch's CPU
    kernels): it holds for the step. The guard gives that weight the same zero gradient by rule
    (target = G_k), so no NaN reaches the objective and no kernel's NaN handling decides."""
    ids = id_tensor(enabled, w.device)
    with torch.enable_grad():
        w_leaf = w[:, ids].detach().requires_grad_(True)
        G = (w_leaf.view(*w_leaf.shape, 1, 1, 1) * grads[:, ids]).flatten(2).norm(dim=2)
        G_mean = G.mean(dim=1, keepdim=True).detach()
        ratio = losses[:, ids] / L_0[:, ids]
        r = ratio / ratio.mean(dim=1, keepdim=True)
        target = G_mean * r ** alpha
        target = torch.where(torch.isnan(target), G.detach(), target)  # NaN guard (see above)
        objective = (G - target).abs().mean(dim=1)
        (w_grad,) = torch.autograd.grad(objective.sum(), w_leaf)
    full_G, full_grad = torch.zeros_like(w), torch.zeros_like(w)
    full_G[:, ids], full_grad[:, ids] = G.detach(), w_grad
    return full_G, full_grad, objective.detach()


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

    details: losses, topk, total, G, w_grad, gradnorm_loss, w_before, w_after, x0_grad (detached).
    """
    x0 = x0.detach().float()
    losses, grads = bank.losses_and_grads(x0)
    if state.L_0 is None:
        state.L_0 = losses.clone()
    w_before = state.w
    topk = select_topk(w_before, settings.topk, state.ranked_ids)
    x0_grad = guidance_gradient(grads, w_before, topk, settings.mse_per_slot)
    G, w_grad, gradnorm_loss = gradnorm(losses, state.L_0, grads, w_before, settings.alpha,
                                        state.enabled_ids)
    if not settings.adam_persistent:  # a fresh Adam at every diffusion step
        state.exp_avg = state.exp_avg_sq = None
        state.steps = 0
    guided = adam_update(x0, x0_grad, state, settings)  # Adam before the weight update, as released
    if not settings.guided_unclamped:
        guided = guided.clamp(-1, 1)
    weight_sum = len(state.enabled) if settings.weight_sum is None else settings.weight_sum
    state.w = renormalise(w_before, w_grad, weight_sum)
    details = dict(losses=losses, topk=topk, total=total_loss(losses, w_before, topk, settings.mse_per_slot),
                   G=G, w_grad=w_grad, gradnorm_loss=gradnorm_loss, w_before=w_before,
                   w_after=state.w, x0_grad=x0_grad)
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
    pre-guidance x0 (eps_unguided, released; False: from the guided x0). The model may be any
    ddfm.prior model (its output is float32); the guidance stays float32. Called as
    step(x, t, noise, rectify), like ddfm.methods.ddfm.sampling.StepFunction."""

    def __init__(self, model, diffusion, eps_unguided=True):
        self.model, self.diffusion = model, diffusion
        self.eps_unguided = eps_unguided

    @torch.no_grad()  # the guidance enables gradients locally, on a detached copy of x0
    def __call__(self, x, t, noise, rectify):
        return self.diffusion.ddim_sample(self.model, x, t, clip_denoised=True, rectify_fn=rectify,
                                          eta=0.0, noise=noise, eps_from_rectified=not self.eps_unguided,
                                          fused=False)  # the released update, bit for bit


@torch.no_grad()
def ccf_sample(model, diffusion, ir, vis, *, settings=None, seed=3407, generators=None, x_T=None,
               valid_hw=None, callback=None, progress=False, step=None):
    """Fuse a batch with CCF: returns the final sample (N, 3, H, W), about [-1, 1] (not clamped:
    the last step's guided x0).

    ir, vis: (N, 3, H, W) float32 in [-1, 1], H and W divisible by 32 for the ADM UNet. x_T from
    per-image CPU generators (ddfm.methods.ddfm.sampling) unless given. DDIM eta 0 over all respaced steps of
    `diffusion`. callback(dict) gets i, t (original timestep), x (the new latent), pred_xstart
    (clipped), guided (x0'), losses (N, 8), topk (N, k), w_before, w_after, G, w_grad, total.
    step: a CCFStep-like callable (default: CCFStep(model, diffusion, settings.eps_unguided)).
    """
    from ddfm.methods.ddfm.sampling import per_image_noise, seeded_generators

    settings = CCFSettings() if settings is None else settings
    n, _, h, w = ir.shape
    device = ir.device
    if generators is None:
        generators = seeded_generators(seed, n)
    x = per_image_noise(generators, (3, h, w), device) if x_T is None else x_T.to(device)
    guidance = CCFGuidance(ir, vis, settings, valid_hw)
    step = CCFStep(model, diffusion, settings.eps_unguided) if step is None else step
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

