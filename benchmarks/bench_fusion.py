"""Speed of fusion on a CPU: prior-free, per-step work outside the UNet, tiny UNet.

    python benchmarks/bench_fusion.py                 # all cases
    python benchmarks/bench_fusion.py --cases overhead,prior_free --threads 2

Prints a table and writes it to benchmarks/results/bench_fusion.csv. The full ADM on a GPU is
measured by benchmarks/gpu_check.py.
"""
import argparse
import csv
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from official_like import OfficialEM, official_em_step  # noqa: E402

import guided_diffusion  # noqa: E402
from ddfm.methods.ddfm import em  # noqa: E402
from ddfm.methods.ddfm.sampling import Rectifier, ddfm_sample  # noqa: E402
from ddfm.methods.priorfree.bayesfusion import bayes_fuse  # noqa: E402

SIZES = {"256x256": (256, 256), "480x640": (480, 640), "768x1024": (768, 1024)}
ROOT = Path(__file__).resolve().parent.parent


def diffusion_for(steps):
    return guided_diffusion.create_sampler(
        sampler="ddim", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
        model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
        rescale_timesteps=False, timestep_respacing=str(steps))


def median_time(fn, repeats):
    fn()  # warm-up (allocator, FFT plans)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sources(h, w, n=1, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, 1, h, w, generator=gen) * 2 - 1
    b = torch.rand(n, 1, h, w, generator=gen) * 2 - 1
    return a.to(device), b.to(device)


def row(case, size, seconds_per_pair, ms_per_step=None, peak_mb=None, note=""):
    return {"case": case, "size": size, "s_per_pair": round(seconds_per_pair, 4),
            "ms_per_step": None if ms_per_step is None else round(ms_per_step, 3),
            "peak_mb": None if peak_mb is None else round(peak_mb, 1),
            "pairs_per_s": round(1.0 / seconds_per_pair, 3), "note": note}


def bench_prior_free(repeats):
    rows = []
    for name, (h, w) in SIZES.items():
        rng = np.random.default_rng(0)
        ir, vi = rng.random((h, w)), rng.random((h, w))
        seconds = median_time(lambda: bayes_fuse(ir, vi), repeats)
        rows.append(row("prior_free (CPU)", name, seconds, peak_mb=peak_rss_mb(), note="15 EM x 2 HQS"))
    return rows


class ConstantModel(torch.nn.Module):
    """A UNet stand-in that costs nothing: isolates the per-step work around the network."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        return self.out


def bench_overhead(repeats, size="480x640"):
    """EM step alone, and everything a sampling step does besides the UNet, ours vs official-style."""
    h, w = SIZES[size]
    a, b = sources(h, w)
    state = em.init_em_state(a.shape)
    f = torch.rand(1, 1, h, w) * 1.7 - 0.8
    carried = {"state": state}

    def em_call():  # carries the state across calls, as the sampling loop does
        _, carried["state"] = em.em_step_official(f, b, a, carried["state"])

    ours_em = median_time(em_call, repeats)

    x0 = torch.rand(1, 3, h, w) * 2 - 1
    official_em = OfficialEM(a.shape, a.device)
    official = median_time(lambda: official_em_step(x0, official_em, b, a), repeats)

    steps = 100  # as DDFM: the per-image set-up (x_T draw, OTFs) is amortised the same way
    model = ConstantModel(torch.randn(1, 6, h, w) * 0.1)
    diffusion = diffusion_for(steps)
    loop = median_time(lambda: ddfm_sample(model, diffusion, a, b), max(1, repeats // 5))
    rect = Rectifier("official", a, b)
    rectify = median_time(lambda: rect(x0, None), repeats)
    return [
        row("EM step, ours (CPU)", size, ours_em, ours_em * 1e3),
        row("EM + colour, official-style (CPU)", size, official, official * 1e3,
            note="NumPy float64 colour round trip, 3 complex FFT2"),
        row("EM + colour, ours (CPU)", size, rectify, rectify * 1e3),
        row("all per-step work outside UNet (CPU)", size, loop, loop / steps * 1e3,
            note=f"constant-output model, {steps} steps"),
    ]


def tiny_model():
    import yaml
    config = yaml.safe_load((ROOT / "tests/golden/tiny_model_config.yaml").read_text())
    config["model_path"] = str(ROOT / "tests/golden/tiny_unet_state_dict.pt")
    return guided_diffusion.create_model(**config)


def bench_tiny(repeats, steps=10):
    """The tiny golden UNet at 256x256 only: its attention sits at 1/2 and 1/4 resolution (the
    real model's at 1/8-1/32), so at 480x640 it would attend over 76,800 tokens per layer."""
    model, diffusion = tiny_model(), diffusion_for(steps)
    rows = []
    for name in ("256x256",):
        h, w = SIZES[name]
        a, b = sources(h, w)
        seconds = median_time(lambda: ddfm_sample(model, diffusion, a, b), max(1, repeats // 5))
        rows.append(row("tiny UNet DDFM (CPU)", name, seconds, seconds / steps * 1e3, peak_rss_mb(),
                        note=f"{steps} steps, 1M-param UNet"))
    return rows


CASES = {"prior_free": bench_prior_free, "overhead": bench_overhead, "tiny": bench_tiny}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="prior_free,overhead,tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--csv", default=str(ROOT / "benchmarks/results/bench_fusion.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases.split(","):
        if case == "adm":  # the former GPU case: it misled (see benchmarks/README.md)
            print("the full-ADM GPU case moved to: python benchmarks/gpu_check.py")
            continue
        rows += CASES[case](args.repeats)
    header = list(rows[0]) if rows else []
    print(" | ".join(header))
    for r in rows:
        print(" | ".join("" if r[k] is None else str(r[k]) for k in header))
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {args.csv}")


if __name__ == "__main__":
    main()
