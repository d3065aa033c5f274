"""The DDFM sampling loop: x_T -> [UNet -> x0 -> EM rectification -> next x] -> fused luma.

The loop only does maths on tensors: it never reads or writes files. Whoever wants the
per-step images (the CLI's `record`) passes a `callback`.
"""
from dataclasses import replace

import torch

from ddfm import color
from ddfm.common import DEFAULT_SEED
from ddfm.methods.ddfm import em


def seeded_generators(seed, count):
    """One CPU generator per image, each seeded alike (the official code re-seeds per image).

    Drawing per image on the CPU makes a batch equal to single runs and a GPU run start from
    the same x_T as a CPU run.
    """
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in range(count)]


def per_image_noise(generators, shape, device):
    """Standard normal noise (N, *shape): row k from generators[k]."""
    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


class StepNoise:
    """Each step's noise from the per-image CPU generators (so results stay device-independent),
    drawn one step ahead: on CUDA into pinned memory with a non-blocking copy, so the draw and the
    copy overlap the step running on the GPU instead of stalling it.

    Loop use: noise = take(); launch the step; prefetch(). The draws are those of
    ``per_image_noise`` once per step, in order.
    """

    def __init__(self, generators, shape, device, steps):
        self.generators, self.shape, self.device = generators, tuple(shape), torch.device(device)
        self.left = steps
        self.pending = None
        self.prefetch()

    def _draw(self):
        pinned = self.device.type == "cuda"
        buffer = torch.empty((len(self.generators), *self.shape), pin_memory=pinned)
        for k, generator in enumerate(self.generators):
            torch.randn(self.shape, generator=generator, out=buffer[k])
        return buffer.to(self.device, non_blocking=pinned)

    def prefetch(self):
        if self.pending is None and self.left > 0:
            self.pending = self._draw()
            self.left -= 1

    def take(self):
        self.prefetch()
        noise, self.pending = self.pending, None
        return noise


class StepFunction:
    """One sampling step: UNet -> x0 -> EM rectification -> sampler update, eager or compiled.

    compile_mode "step" compiles the whole step as one graph (static shapes: one graph per image
    size and batch); "graph" also replays it as a CUDA graph (torch.compile's reduce-overhead mode;
    on a CPU it is the same as "step"). "none" and "unet" run the step eagerly.
    """

    def __init__(self, model, diffusion, compile_mode="none", backend="inductor"):
        self.model, self.diffusion = model, diffusion
        self.graphs = compile_mode == "graph"
        self.run = self._step
        if compile_mode in ("step", "graph"):
            mode = "reduce-overhead" if self.graphs else None
            self.run = torch.compile(self._step, dynamic=False, mode=mode, backend=backend)

    def _step(self, x, t, noise, rectify):
        return self.diffusion.sample_step(self.model, x, t, rectify_fn=rectify, noise=noise)

    @torch.no_grad()  # sampling never needs gradients; a compiled step also guards on this mode
    def __call__(self, x, t, noise, rectify):
        if not self.graphs:
            return self.run(x, t, noise, rectify)
        # A CUDA graph's outputs live in buffers the next replay overwrites: mark the new step and
        # copy out what the loop carries (the latent, the EM state).
        torch.compiler.cudagraph_mark_step_begin()
        out = dict(self.run(x, t, noise, rectify))
        out["sample"] = out["sample"].clone()
        state = rectify.state
        rectify.state = replace(state, F1=state.F1.clone(), F2=state.F2.clone(),
                                tau_a=state.tau_a.clone(), tau_b=state.tau_b.clone())
        rectify.fused = rectify.fused.clone()
        return out


def needs_noise(diffusion):
    """DDIM with eta 0 multiplies its noise by zero: skip drawing it."""
    return not (getattr(diffusion, "sampler", "ddim") == "ddim" and float(getattr(diffusion, "eta", 0.0)) == 0.0)


class Rectifier:
    """The rectify_fn(x0, t) hook: one EM step on the luma of x0, state carried across steps.

    a, b: (N,1,H,W) sources on the [-1,1] scale; a plays the infrared role, b the visible role.
    After each call `state` holds the EM state and `fused` the EM output F (N,1,H,W).
    """

    def __init__(self, variant, a, b, lamb=0.5, rho=0.001, valid_hw=None):
        self.src_i, self.src_v = em.em_sources(variant, ir=a, vis=b)
        self.step = em.EM_STEPS[variant]
        self.luma_in, self.luma_out = em.LUMA_IO[variant]
        self.lamb, self.rho = lamb, rho
        self.state = em.init_em_state(a.shape, device=a.device, dtype=torch.float32, valid_hw=valid_hw)
        self.fused = None

    def __call__(self, x0, t):
        x0 = x0.float()
        f_tilde, aux = self.luma_in(x0)
        self.fused, self.state = self.step(f_tilde, self.src_i, self.src_v, self.state,
                                           lamb=self.lamb, rho=self.rho)
        return self.luma_out(x0, aux, self.fused)


@torch.no_grad()
def ddfm_sample(model, diffusion, a, b, *, variant="official", lamb=0.5, rho=0.001, seed=DEFAULT_SEED,
                generators=None, x_T=None, valid_hw=None, callback=None, progress=False,
                step=None):
    """Fuse a batch: returns the final sample's BT.601 luma (N,1,H,W), on the [-1,1] scale.

    a, b: (N,1,H,W) float32 sources in [-1,1], H and W divisible by 32 for the ADM UNet;
    valid_hw: [(h, w)] of each image before bottom/right padding (the EM's means skip the padding).
    The sampler (DDIM eta / DDPM) comes from `diffusion`; EM runs at every step, the last included.
    callback(dict) receives i, t (original timestep), x (the new latent), model_output, pred_xstart,
    rectified, em_F and em_state. step: a StepFunction (built once by the caller, e.g. compiled);
    by default an eager one around `model`.
    """
    n, _, h, w = a.shape
    device = a.device
    if generators is None:
        generators = seeded_generators(seed, n)
    x = per_image_noise(generators, (3, h, w), device) if x_T is None else x_T.to(device)
    rectify = Rectifier(variant, a, b, lamb, rho, valid_hw)
    step = StepFunction(model, diffusion) if step is None else step
    diffusion.tables_to(device)
    indices = list(range(diffusion.num_timesteps))[::-1]
    noises = StepNoise(generators, (3, h, w), device, len(indices)) if needs_noise(diffusion) else None
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="steps", leave=False)
    unused = torch.zeros_like(x)  # DDIM with eta 0 multiplies its noise by zero
    for i in indices:
        t = torch.full((n,), i, dtype=torch.long, device=device)
        noise = unused if noises is None else noises.take()
        out = step(x, t, noise, rectify)
        if noises is not None:
            noises.prefetch()  # the next step's draw overlaps this one on a GPU
        x = out["sample"]
        if callback is not None:
            callback({"i": i, "t": int(diffusion.timestep_map[i]), "x": x,
                      "pred_xstart": out["pred_xstart"], "rectified": out["rectified_xstart"],
                      "model_output": out["model_output"], "em_F": rectify.fused,
                      "em_state": rectify.state})
    return color.rgb_to_luma(x)
