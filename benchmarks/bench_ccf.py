"""CCF's per-step cost outside the UNet on a CPU: ours against an official-like step.

    python benchmarks/bench_ccf.py                      # 480x640, 3 timed steps each
    python benchmarks/bench_ccf.py --size 256x256 --steps 5 --threads 2

Outside the UNet a CCF step is: the 8 conditions, the backward through them, GradNorm, Adam and
the DDIM update. "official" is that step as the released code runs it, rewritten from
reference/ccf_official.md §3-§6 for timing (not a method of this project): float32 RGB, the
source statistics recomputed every step, the full 11x11 SSIM window, the Haar DWT of x, I and V
in each band condition plus the dead first decomposition, total.backward plus 8 separate
autograd.grad calls, torch.optim.Adam, and four writes per step (two x0 PNGs, the progress luma
PNG, the top-k line). "ours" is ddfm.ccf.CCFGuidance + the DDIM update (no record). Both start
from the same x_t, x0 and eps; the ratio is from one run.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import guided_diffusion  # noqa: E402
from ddfm.ccf import CCFGuidance  # noqa: E402
from ddfm.conditions import LAPLACIAN, SOBEL_H, SOBEL_V_RELEASED, gaussian_window  # noqa: E402


def _grey(x):
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _filter(x, kernel):
    weight = torch.tensor(kernel).view(1, 1, 3, 3)
    return (F.conv2d((x + 1) * 127.5, weight, padding=1).clamp(0, 255)) / 127.5 - 1


def _ssim(a, b, window):
    """pytorch_ssim as described: five depthwise 11x11 convolutions per call."""
    blur = lambda t: F.conv2d(t, window, padding=5, groups=3)
    mu1, mu2 = blur(a), blur(b)
    s1, s2, s12 = blur(a * a) - mu1 ** 2, blur(b * b) - mu2 ** 2, blur(a * b) - mu1 * mu2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2))
            / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()


def _dwt(x):
    """pytorch_wavelets' Haar J=1 as two strided two-tap convolutions."""
    c, tap = x.shape[1], 0.7071067811865476
    taps = torch.tensor([[tap, tap], [tap, -tap]])
    lohi = F.conv2d(x, taps.view(2, 1, 1, 2).repeat(c, 1, 1, 1), stride=(1, 2), groups=c)
    y = F.conv2d(lohi, taps.view(2, 1, 2, 1).repeat(2 * c, 1, 1, 1), stride=(2, 1), groups=2 * c)
    y = y.reshape(1, c, 4, *y.shape[-2:])
    return y[:, :, 0], y[:, :, 1:]


def official_losses(x, ir, vis, window):
    vis01, ir01, x01 = (vis + 1) / 2, (ir + 1) / 2, (x + 1) / 2
    g = _grey(x)
    yl_x, yh_x = _dwt(x)
    yl_i, yh_i = _dwt(ir)
    yl_v, yh_v = _dwt(vis)
    ev = _filter(_grey(vis), LAPLACIAN)
    ex = _filter(g, LAPLACIAN)
    gd = g.detach()
    h, v = _filter(gd, SOBEL_H), _filter(gd, SOBEL_V_RELEASED)
    rf = ((g[..., 1:, :] - g[..., :-1, :]) ** 2).mean().sqrt()
    cf = ((g[..., :, 1:] - g[..., :, :-1]) ** 2).mean().sqrt()
    return torch.stack([
        -0.5 * (_ssim(vis01, x01, window) + _ssim(ir01, x01, window)),
        0.5 * (F.mse_loss(x, vis) + F.mse_loss(x, ir)),
        0.5 * (F.mse_loss(ex, ev) + F.mse_loss(ex, _filter(_grey(vis), LAPLACIAN))),
        F.mse_loss(yl_x, 0.5 * yl_i + 0.5 * yl_v),
        F.mse_loss(yh_x, torch.where(yh_i.abs() > yh_v.abs(), yh_i, yh_v)),
        -(rf ** 2 + cf ** 2).sqrt(),
        -(h ** 2 + v ** 2).sqrt().mean(),
        -torch.stack([x[:, c].std() for c in range(3)]).mean(),
    ])


class OfficialStep:
    """The released per-step work outside the UNet (state: img2, its Adam, w, L_0)."""

    def __init__(self, ir, vis, out_dir):
        self.ir, self.vis, self.out = ir, vis, Path(out_dir)
        self.window = torch.outer(gaussian_window(), gaussian_window()).expand(3, 1, 11, 11).contiguous()
        self.img2 = torch.zeros_like(ir, requires_grad=True)
        self.adam = torch.optim.Adam([self.img2], lr=0.03)
        self.w = torch.ones(8, requires_grad=True)
        self.L0 = None

    def _png(self, name, rgb01):
        Image.fromarray((rgb01 * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(self.out / name)

    @torch.enable_grad()
    def __call__(self, diffusion, x_t, t, x0, k):
        eps = diffusion.predict_eps_from_xstart(x_t, t, x0)
        _dwt(self.ir), _dwt(self.vis), _dwt(x0)  # the dead first decomposition
        self.img2.data = x0
        self.adam.zero_grad()
        losses = official_losses(self.img2, self.ir, self.vis, self.window)
        if self.L0 is None:
            self.L0 = losses.detach()
        ids = torch.topk(self.w, 3).indices
        total = sum(self.w[i] * losses[i] + losses[1] for i in ids)
        total.backward(retain_graph=True)
        self.w.grad = None
        norms = []
        for i in range(8):
            g, = torch.autograd.grad(losses[i], self.img2, retain_graph=True, allow_unused=True)
            g = torch.zeros_like(x0) if g is None else g
            norms.append(torch.norm(self.w[i] * g))
        G = torch.stack(norms)
        ratio = losses.detach() / self.L0
        target = (G.detach().mean() * (ratio / ratio.mean()) ** 1.5).detach()
        w_grad, = torch.autograd.grad(F.l1_loss(G, target), self.w)
        self.adam.step()
        with torch.no_grad():
            self.w -= w_grad
            self.w.copy_(self.w / self.w.sum() * 8)
            abp = diffusion.coef("alphas_cumprod_prev", t, x_t.shape)
            sample = self.img2 * torch.sqrt(abp) + torch.sqrt(1 - abp) * eps
        for name in ("x0", "x0_new"):  # save_image(normalize=True): per-image min-max
            img = self.img2.detach()[0].permute(1, 2, 0).numpy()
            self._png(f"{name}_{k:04d}.png", (img - img.min()) / (img.max() - img.min() + 1e-5))
        luma = _grey(sample)[0, 0].numpy()
        Image.fromarray(((luma - luma.min()) / (luma.max() - luma.min()) * 255).astype(np.uint8)).save(
            self.out / f"progress_{k:04d}.png")
        with open(self.out / "loss.txt", "a") as log:
            log.write(f"{ids.numpy()},")
        return sample


def ours_step(guidance, diffusion, x_t, t, x0):
    guided = guidance(x0, t)
    return diffusion.ddim_step(x_t, t, guided, eps_xstart=x0)["sample"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    gen = torch.Generator().manual_seed(0)
    ir, vis, x_t = (torch.rand(1, 3, h, w, generator=gen) * 2 - 1 for _ in range(3))
    x0s = [(torch.rand(1, 3, h, w, generator=gen) * 2 - 1) for _ in range(args.steps + 1)]
    diffusion = guided_diffusion.create_sampler(sampler="ddim", steps=1000, noise_schedule="linear",
                                                timestep_respacing=200)
    times = {}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        official = OfficialStep(ir, vis, tmp)
        guidance = CCFGuidance(ir, vis)
        for name, run in (("official", lambda t, x0, k: official(diffusion, x_t, t, x0, k)),
                          ("ours", lambda t, x0, k: ours_step(guidance, diffusion, x_t, t, x0))):
            run(torch.tensor([199]), x0s[0], 199)  # warm-up (first-step allocations, L_0)
            start = time.perf_counter()
            for k in range(args.steps):
                run(torch.tensor([198 - k]), x0s[k + 1], 198 - k)
            times[name] = (time.perf_counter() - start) / args.steps
    print(f"CCF step outside the UNet, {h}x{w}, {args.threads} threads, mean of {args.steps} steps")
    print(f"| step | s/step |\n|---|---|\n| official-like | {times['official']:.3f} |\n"
          f"| ours (no record) | {times['ours']:.3f} |")
    print(f"speed-up: {times['official'] / times['ours']:.2f}x")


if __name__ == "__main__":
    main()
