"""CCF rows of benchmarks/gpu_check.py: exact fp32 and the bf16 fast path of the UNet.

CCF's guidance (8 conditions, their gradients, GradNorm, Adam) stays float32 in every mode; only
the UNet's precision changes. Each row: a fresh copy of the weights, a short warm-up, the UNet
alone, then one timed ccf_sample over the bench's respaced steps on the demo pair (grey, as 3
equal channels). The bf16 row is compared with the exact CCF row (its `recon` image: the RGB
sample, global min-max), not with DDFM's.
"""
import math
import time

import numpy as np
import torch

from benchmarks import gpu_setup
from benchmarks.gpu_runtime import fill_predicted_peak, fill_syncs, fill_timing, free_memory, sync, time_unet, timed
from ddfm.common import DEFAULT_SEED
from ddfm.methods.ccf import io as ccf_io
from ddfm.methods.ccf.guidance import ccf_sample

EXACT = "ccf_fp32_exact"
# row name -> (dtype key, channels_last, compile key), as gpu_check.Mode
CCF_MODES = {EXACT: ("fp32", False, "none"), "ccf_bf16_cl": ("bf16", True, "none")}
CCF_PLAN = (f"{EXACT}@480x640", "ccf_bf16_cl@480x640")
PLAN_AFTER = "official_like@480x640"  # priority: right after the DDFM rows at 480x640


class _WarmedUp(Exception):
    """Ends a warm-up run after its steps."""


def _warm_up(model, diffusion, ir, vis, steps):
    count = {"done": 0}

    def stop_after(info):
        count["done"] += 1
        if count["done"] >= steps:
            raise _WarmedUp()
    try:
        ccf_sample(model, diffusion, ir, vis, seed=DEFAULT_SEED, callback=stop_after)
    except _WarmedUp:
        pass


def _compare(bench, row, size_key, image):
    """PSNR and max |difference| of the recon image against the exact CCF row of this size."""
    exact = bench.ccf_exact.get(size_key) if hasattr(bench, "ccf_exact") else None
    if row["row"] == EXACT:
        bench.ccf_exact = {**getattr(bench, "ccf_exact", {}), size_key: image}
        return
    if exact is None:
        row["note"] = "no exact CCF row at this size"
        return
    diff = np.abs(image.astype(np.float64) - exact.astype(np.float64))
    mse = float(np.mean(diff ** 2))
    row["psnr_db"] = math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    row["max_abs_diff"] = float(diff.max())


def run_ccf_row(bench, mode, size_key):
    """One CCF row (see the module docstring); returns the row dict gpu_check expects."""
    args, device = bench.args, bench.device
    h, w, batch = bench.sizes[size_key]
    row = {"row": mode, "size": f"{h}x{w}", "batch": batch, "steps": args.steps,
           "note": "conditions, GradNorm and Adam in float32"}
    torch._dynamo.reset()
    free_memory(device)
    model, _ = bench.model(mode)
    a, b = (x.repeat(1, 3, 1, 1) for x in gpu_setup.demo_sources(h, w, batch, device))
    start = time.perf_counter()
    _warm_up(model, bench.diffusion, a, b, args.warmup_steps)
    sync(device)
    warm_s = time.perf_counter() - start
    x = torch.zeros_like(a)
    row["unet_ms"] = time_unet(model, x, device, args.unet_repeats)
    sample, seconds = timed(device, lambda: ccf_sample(model, bench.diffusion, a, b, seed=DEFAULT_SEED))
    fill_timing(bench, row, seconds, warm_s, h, w, batch)
    fill_syncs(row, lambda n: _warm_up(model, bench.diffusion, a, b, n), device)
    fill_predicted_peak(row, model, h, w, batch, "ccf", device)
    if not torch.isfinite(sample).all():
        row["note"] = "non-finite values in the fused output"
    _compare(bench, row, size_key, ccf_io.recon_rgb_uint8(sample[0].float().cpu().numpy().transpose(1, 2, 0)))
    return row


def register(modes, mode_type, extra_rows, plan):
    """Add the CCF modes and rows to gpu_check's tables; returns the plan with the CCF rows."""
    modes.update({name: mode_type(*values) for name, values in CCF_MODES.items()})
    extra_rows.update({name: (lambda bench, size_key, name=name: run_ccf_row(bench, name, size_key))
                       for name in CCF_MODES})
    at = plan.index(PLAN_AFTER) + 1 if PLAN_AFTER in plan else len(plan)
    return tuple(plan[:at]) + CCF_PLAN + tuple(plan[at:])
