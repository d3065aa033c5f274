"""CCF's per-step cost outside the UNet at 480x640 on this CPU: ours vs an official-like step.

    python benchmarks/bench_ccf.py [--repeats 5] [--height 480] [--width 640]

Both sides get the same x_t, eps (a stand-in for the UNet output) and sources and do: x0 and its
clamp, the 8 conditions, the backward to x0, the per-condition gradient norms, GradNorm, Adam and
the DDIM update. "official-like" is written from ccf_official.md §3-§6: its loss modules (2-D
11x11 SSIM window per source, the visible edges computed twice, Haar of I, V and x every step),
total.backward + eight separate autograd.grad calls, torch.optim.Adam on a leaf, and the four
per-step writes (recon_x0 and recon_x0_new RGB PNGs, the progress luma PNG, the top-k line).
Ours is ddfm.methods.ccf.guidance.guidance_step + the DDIM step, without record. Median seconds per step.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import guided_diffusion  # noqa: E402
from ddfm.methods.ccf import guidance as ccf  # noqa: E402
from ddfm.methods.ccf.conditions import GREY_WEIGHTS, LAPLACIAN, SOBEL_H, SOBEL_V_RELEASED, gaussian_window  # noqa: E402

# --- the official-like step (from the reference's descriptions) ---------------------------------

def official_ssim(a, b):
    window = torch.outer(gaussian_window(), gaussian_window()).expand(3, 1, 11, 11).contiguous()
    mu_a, mu_b = F.conv2d(a, window, padding=5, groups=3), F.conv2d(b, window, padding=5, groups=3)
    s_aa = F.conv2d(a * a, window, padding=5, groups=3) - mu_a ** 2
    s_bb = F.conv2d(b * b, window, padding=5, groups=3) - mu_b ** 2
    s_ab = F.conv2d(a * b, window, padding=5, groups=3) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))).mean()


def official_grey(x):
    return GREY_WEIGHTS[0] * x[:, 0:1] + GREY_WEIGHTS[1] * x[:, 1:2] + GREY_WEIGHTS[2] * x[:, 2:3]


def official_filter(g, kernel):
    weight = torch.tensor(kernel).view(1, 1, 3, 3)
    return F.conv2d((g + 1) * 127.5, weight, padding=1).clamp(0, 255) / 127.5 - 1


def official_haar(x):
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, torch.stack([(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], 2)


def official_losses(x, I, V):
    g = official_grey(x)
    yl_x, yh_x = official_haar(x)
    yl_i, yh_i = official_haar(I)
    yl_v, yh_v = official_haar(V)
    edge_x, edge_v = official_filter(g, LAPLACIAN), official_filter(official_grey(V), LAPLACIAN)
    gd = g.detach()
    ei = (official_filter(gd, SOBEL_H) ** 2 + official_filter(gd, SOBEL_V_RELEASED) ** 2).sqrt().mean()
    sf = ((g[..., 1:, :] - g[..., :-1, :]) ** 2).mean().sqrt() ** 2 + ((g[..., 1:] - g[..., :-1]) ** 2).mean().sqrt() ** 2
    return torch.stack([
        -0.5 * (official_ssim((V + 1) / 2, (x + 1) / 2) + official_ssim((I + 1) / 2, (x + 1) / 2)),
        0.5 * (((V - x) ** 2).mean() + ((I - x) ** 2).mean()),
        0.5 * (F.mse_loss(edge_x, edge_v) + F.mse_loss(edge_x, official_filter(official_grey(V), LAPLACIAN))),
        F.mse_loss(yl_x, 0.5 * yl_i + 0.5 * yl_v),
        F.mse_loss(yh_x, torch.where(yh_i.abs() > yh_v.abs(), yh_i, yh_v)),
        -sf.sqrt(), -ei,
        -torch.stack([x[:, c].std() for c in range(3)]).mean()])


def save_png(path, array):
    from PIL import Image
    lo, hi = array.min(), array.max()
    Image.fromarray(((array - lo) / max(hi - lo, 1e-5) * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(path)


class OfficialLikeStep:
    def __init__(self, shape, out_dir):
        self.img = torch.zeros(shape, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.img], lr=0.03)
        self.w = torch.nn.Parameter(torch.ones(8))
        self.L_0, self.out, self.count = None, Path(out_dir), 0

    def __call__(self, x_t, eps, I, V, coefs):
        sr, srm, ab_prev = coefs
        x0 = (sr * x_t - srm * eps).clamp(-1, 1)
        eps_prime = (sr * x_t - x0) / srm
        self.img.data = x0.clone()
        self.optimizer.zero_grad()
        with torch.enable_grad():
            L = official_losses(self.img, I, V)
            if self.L_0 is None:
                self.L_0 = L.detach()
            ids = torch.topk(self.w, 3).indices
            total = sum(self.w[k] * L[k] + L[1] for k in ids)
            total.backward(retain_graph=True)
            self.w.grad = None
            G = torch.stack([torch.norm(self.w[k] * torch.autograd.grad(L[k], self.img, retain_graph=True,
                                                                         allow_unused=True)[0])
                             for k in range(8)])
            ratio = L.detach() / self.L_0
            target = G.mean().detach() * (ratio / ratio.mean()) ** 1.5
            torch.nn.L1Loss()(G, target).backward()
        self.optimizer.step()
        with torch.no_grad():
            self.w.data = 8 * (self.w.data - self.w.grad) / (self.w.data - self.w.grad).sum()
        x0_new = self.img.detach()
        sample = ab_prev.sqrt() * x0_new + (1 - ab_prev).sqrt() * eps_prime
        rgb = x0_new[0].numpy().transpose(1, 2, 0)
        save_png(self.out / f"x0_{self.count}.png", rgb)
        save_png(self.out / f"x0new_{self.count}.png", rgb)
        save_png(self.out / f"progress_{self.count}.png", official_grey(sample)[0, 0].numpy())
        with open(self.out / "loss.txt", "a") as log:
            log.write(f"{ids.tolist()}\n")
        self.count += 1
        return sample


# --- ours ---------------------------------------------------------------------------------------

def our_step(diffusion, guidance, x_t, eps, t):
    out = diffusion.split_model_output(eps.repeat(1, 2, 1, 1), x_t, t, clip_denoised=True, with_posterior=False)
    guided = guidance(out["pred_xstart"], t)
    return diffusion.ddim_step(x_t, t, guided, eps_xstart=out["pred_xstart"], fused=False)["sample"]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    shape = (1, 3, args.height, args.width)
    gen = torch.Generator().manual_seed(0)
    I, V, x_t, eps = (torch.rand(shape, generator=gen) * 2 - 1 for _ in range(4))
    diffusion = guided_diffusion.create_sampler(timestep_respacing=200)
    t = torch.tensor([100])
    coefs = (diffusion.coef("sqrt_recip_alphas_cumprod", t, shape), diffusion.coef("sqrt_recipm1_alphas_cumprod", t, shape),
             diffusion.coef("alphas_cumprod_prev", t, shape))
    guidance = ccf.CCFGuidance(I, V, ccf.CCFSettings())
    with torch.no_grad():
        ours = timed(lambda: our_step(diffusion, guidance, x_t, eps, t), args.repeats)
        with tempfile.TemporaryDirectory() as folder:
            official = OfficialLikeStep(shape, folder)
            theirs = timed(lambda: official(x_t, eps, I, V, coefs), args.repeats)
    print(f"{args.height}x{args.width}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| step outside the UNet | seconds |\n|---|---|")
    print(f"| official-like (8 autograd.grad, 4 writes) | {theirs:.3f} |\n| ours (one backward, no record) | {ours:.3f} |")
    print(f"ratio: {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
