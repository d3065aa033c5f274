"""CCF (Conditional Controllable Fusion, NeurIPS 2024) on our prior: x0 guidance by the condition bank.

Per diffusion step (ccf_official.md §3, §5): x0 (clipped) -> the 8 condition losses -> top-k of the
GradNorm weights w -> total = sum_topk w_k L_k + k * L_mse -> one Adam step on x0 only (never
through the UNet) -> GradNorm update of w -> DDIM with eps' from the pre-guidance x0.

The per-image state (Adam moments and step count, w, L_0) is an explicit ``CCFState``, created
fresh per batch and carried across steps; every image's rows only depend on that image, so a batch
of N equals N runs of batch 1.

Top-k tie-break: torch.topk on each image's 1-D float32 CPU row of w, the call the released code
makes; with all weights equal (step 1) torch 2.x on CPU returns [6, 5, 4] (EI, SF, high_freq), as
the golden trace shows. Computing it on a CPU copy keeps that order on any device.
"""
import math
from dataclasses import dataclass, field, fields

import torch

from ddfm.conditions import CONDITION_NAMES, MSE_INDEX, ConditionBank
from ddfm.config import ConfigError
from ddfm.sampling import start_loop

# Compile modes ccf_sample supports: the guidance runs autograd, so only the UNet is compiled.
CCF_COMPILE_MODES = ("none", "unet")


@dataclass(frozen=True)
class CCFSettings:
    """CCF's hyper-parameters and the released code's quirks (each flag True = as released).

    conditions: the selectable subset of CONDITION_NAMES (the GradNorm weights of all 8 still
    evolve; a condition left out is never selected; leaving out "mse" also drops its always-on term).
    """

    lr: float = 0.03
    topk: int = 3
    alpha: float = 1.5
    weight_sum: float = 8.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    conditions: tuple = CONDITION_NAMES
    edge_visible_twice: bool = True    # edge condition compares with V's edges twice, never I's
    ei_kernel_typo: bool = True        # EI's Sobel-v first row [-1, 0, -1]
    ei_detached: bool = True           # EI contributes no gradient (its value still steers w)
    mse_per_slot: bool = True          # L_mse added once per selected slot (weight k), else once
    eps_from_unguided: bool = True     # DDIM's eps' from the clipped x0 before guidance
    clamp_guided: bool = False         # the released code does not clamp x0' after the Adam step
    adam_across_steps: bool = True     # Adam moments and step count persist over diffusion steps

    def __post_init__(self):
        validate_settings(self)

    @classmethod
    def from_mapping(cls, mapping):
        """Settings from a dict of field names (unknown names -> ConfigError naming them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(f"ccf: unknown setting(s) {', '.join(unknown)} "
                              f"(expected some of {', '.join(sorted(known))})")
        values = dict(mapping)
        for key in ("conditions", "betas"):
            if key in values and isinstance(values[key], (list, str)):
                raw = values[key]
                values[key] = tuple(p.strip() for p in raw.split(",")) if isinstance(raw, str) else tuple(raw)
        return cls(**values)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_settings(s):
    """One ConfigError line for the first bad setting."""
    if not _is_number(s.lr) or s.lr <= 0:
        raise ConfigError(f"ccf lr={s.lr!r}: must be a finite number > 0")
    names = tuple(s.conditions)
    unknown = [n for n in names if n not in CONDITION_NAMES]
    if unknown:
        raise ConfigError(f"ccf conditions: unknown condition {unknown[0]!r} "
                          f"(expected some of {', '.join(CONDITION_NAMES)})")
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"ccf conditions={list(names)}: need at least one, each once")
    if not isinstance(s.topk, int) or isinstance(s.topk, bool) or not 1 <= s.topk <= len(CONDITION_NAMES):
        raise ConfigError(f"ccf topk={s.topk!r}: must be an integer in 1..{len(CONDITION_NAMES)}")
    if s.topk > len(names):
        raise ConfigError(f"ccf topk={s.topk} exceeds the {len(names)} enabled condition(s)")
    if not _is_number(s.alpha):
        raise ConfigError(f"ccf alpha={s.alpha!r}: must be a finite number")
    if not _is_number(s.weight_sum) or s.weight_sum <= 0:
        raise ConfigError(f"ccf weight_sum={s.weight_sum!r}: must be a finite number > 0")
    betas = tuple(s.betas)
    if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"ccf betas={s.betas!r}: need two numbers in [0, 1)")
    if not _is_number(s.eps) or s.eps <= 0:
        raise ConfigError(f"ccf eps={s.eps!r}: must be a finite number > 0")


@dataclass
class CCFState:
    """Per-image state of one batch, carried across diffusion steps."""

    w: torch.Tensor               # (N, 8) GradNorm weights, init 1
    exp_avg: torch.Tensor         # (N, 3, H, W) Adam first moment
    exp_avg_sq: torch.Tensor      # (N, 3, H, W) Adam second moment
    adam_steps: list = field(default_factory=list)  # Adam step count per image
    L0: torch.Tensor = None       # (N, 8) losses of the first step (GradNorm reference)


def init_ccf_state(shape, device=None):
    """Fresh state for a batch of shape (N, 3, H, W): w = 1, zero moments, no L_0."""
    n = shape[0]
    zeros = torch.zeros(shape, device=device, dtype=torch.float32)
    return CCFState(w=torch.ones((n, len(CONDITION_NAMES)), device=device),
                    exp_avg=zeros, exp_avg_sq=zeros.clone(), adam_steps=[0] * n)


def select_topk(w, k, enabled):
    """(N, k) ids of the k largest weights among `enabled` ids, per image with torch.topk on its
    1-D CPU row (the released call; see the module docstring for its tie-break)."""
    rows = w.detach().float().cpu()
    enabled = list(enabled)
    ids = []
    for row in rows:
        picked = torch.topk(row if len(enabled) == row.numel() else row[enabled], k).indices
        ids.append(picked if len(enabled) == row.numel() else torch.tensor(enabled)[picked])
    return torch.stack(ids).to(w.device)


def gradnorm_weight_grad(w, grads, losses, L0, alpha):
    """GradNorm's dgrad_loss/dw (ccf_official.md §5): G_k = ||w_k dL_k/dx||, target
    mean(G) (r_k)^alpha with r = (L/L_0) / mean(L/L_0), grad_loss = mean_k |G_k - target_k|.

    w, losses, L0: (N, 8); grads: (N, 8, 3, H, W). Returns (G, w_grad), each (N, 8).
    """
    with torch.enable_grad():
        leaf = w.detach().requires_grad_(True)
        G = torch.linalg.vector_norm(leaf[:, :, None, None, None] * grads, dim=(2, 3, 4))
        ratio = losses / L0
        rel = ratio / ratio.mean(dim=1, keepdim=True)
        target = G.detach().mean(dim=1, keepdim=True) * rel ** alpha
        grad_loss = (G - target).abs().mean(dim=1).sum()
        w_grad, = torch.autograd.grad(grad_loss, leaf)
    return G.detach(), w_grad


def adam_step(param, grad, state, settings):
    """torch.optim.Adam's single-tensor update (no weight decay, amsgrad, maximize), bit for bit,
    per image: images with the same step count share one call (their scalars are equal)."""
    beta1, beta2 = settings.betas
    state.adam_steps = [s + 1 for s in state.adam_steps]
    state.exp_avg.lerp_(grad, 1 - beta1)
    state.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    for step in sorted(set(state.adam_steps)):
        rows = [k for k, s in enumerate(state.adam_steps) if s == step]
        index = slice(rows[0], rows[-1] + 1) if rows == list(range(rows[0], rows[-1] + 1)) else rows
        step_size = settings.lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (state.exp_avg_sq[index].sqrt() / bias_correction2_sqrt).add_(settings.eps)
        param[index] = param[index].addcdiv(state.exp_avg[index], denom, value=-step_size)
    return param


class CCFGuidance:
    """The rectify_fn(x0, t) hook: one CCF condition step on the clipped x0 (N, 3, H, W).

    ir, vis: (N, 3, H, W) float32 sources on [-1, 1] (I = infrared, V = visible). After each call
    `last` holds that step's losses, topk, w_before, w_after, G, w_grad, x0_grad and total.
    """

    def __init__(self, ir, vis, settings=None, valid_hw=None):
        self.settings = CCFSettings() if settings is None else settings
        s = self.settings
        self.bank = ConditionBank(ir, vis, valid_hw, edge_visible_twice=s.edge_visible_twice,
                                  ei_kernel_typo=s.ei_kernel_typo, ei_detached=s.ei_detached)
        self.enabled = [CONDITION_NAMES.index(n) for n in CONDITION_NAMES if n in s.conditions]
        self.state = init_ccf_state(ir.shape, device=ir.device)
        self.last = None

    def coefficients(self, w, topk):
        """(N, 8) weight of each condition's gradient in the total: w_k on the selected slots plus
        the always-on MSE (k times as released, or once)."""
        s = self.settings
        coef = torch.zeros_like(w).scatter_(1, topk, w.gather(1, topk))
        if "mse" in s.conditions:
            coef[:, MSE_INDEX] += s.topk if s.mse_per_slot else 1
        return coef

    def __call__(self, x0, t=None):
        s, state = self.settings, self.state
        x0 = x0.detach().float()
        losses, grads = self.bank.losses_and_grads(x0)
        if state.L0 is None:
            state.L0 = losses.clone()
        w_before = state.w.clone()
        topk = select_topk(w_before, s.topk, self.enabled)
        coef = self.coefficients(w_before, topk)
        x0_grad = (coef[:, :, None, None, None] * grads).sum(dim=1)
        total = (coef * losses).sum(dim=1)
        G, w_grad = gradnorm_weight_grad(w_before, grads, losses, state.L0, s.alpha)
        if not s.adam_across_steps:
            state.exp_avg.zero_(), state.exp_avg_sq.zero_()
            state.adam_steps = [0] * len(state.adam_steps)
        guided = adam_step(x0.clone(), x0_grad, state, s)
        w_new = w_before - w_grad
        state.w = w_new / w_new.sum(dim=1, keepdim=True) * s.weight_sum
        if s.clamp_guided:
            guided = guided.clamp(-1, 1)
        self.last = dict(losses=losses, topk=topk, w_before=w_before, w_after=state.w.clone(),
                         G=G, w_grad=w_grad, x0_grad=x0_grad, total=total)
        return guided


class CCFStep:
    """One sampling step: UNet -> clipped x0 -> CCF guidance -> sampler update (eager)."""

    def __init__(self, model, diffusion):
        self.model, self.diffusion = model, diffusion

    @torch.no_grad()
    def __call__(self, x, t, noise, guidance):
        return self.diffusion.sample_step(
            self.model, x, t, rectify_fn=guidance, noise=noise,
            eps_from_rectified=not guidance.settings.eps_from_unguided)


@torch.no_grad()
def ccf_sample(model, diffusion, ir, vis, *, settings=None, seed=3407, generators=None, x_T=None,
               valid_hw=None, callback=None, progress=False, step=None):
    """Fuse a batch with CCF: returns the final sample (N, 3, H, W), ~[-1, 1], unclamped
    (with DDIM eta 0 it equals the last step's guided x0').

    ir, vis: (N, 3, H, W) float32 on [-1, 1]. x_T from per-image CPU generators (seeded like
    ddfm_sample). callback(dict) per step: i, t (original timestep), x (new latent), pred_xstart
    (clipped, before guidance), guided (x0'), losses (N, 8), topk (N, k), w_before, w_after,
    G, w_grad, total. step: callable(x, t, noise, guidance) -> the sampler's dict (a CCFStep).
    """
    n = ir.shape[0]
    device = ir.device
    x, indices, noises = start_loop(diffusion, ir.shape, device, seed=seed, generators=generators,
                                    x_T=x_T, progress=progress)
    x = x.float()
    guidance = CCFGuidance(ir, vis, settings, valid_hw)
    step = CCFStep(model, diffusion) if step is None else step
    unused = torch.zeros_like(x)  # DDIM with eta 0 multiplies its noise by zero
    for i in indices:
        t = torch.full((n,), i, dtype=torch.long, device=device)
        out = step(x, t, unused if noises is None else noises.take(), guidance)
        if noises is not None:
            noises.prefetch()
        x = out["sample"]
        if callback is not None:
            last = guidance.last
            callback({"i": i, "t": int(diffusion.timestep_map[i]), "x": x,
                      "pred_xstart": out["pred_xstart"], "guided": out["rectified_xstart"],
                      "model_output": out["model_output"], **{k: last[k] for k in (
                          "losses", "topk", "w_before", "w_after", "G", "w_grad", "total")}})
    return x
