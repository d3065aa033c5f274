"""The GPU check's memory rows: the largest square image whose fast-path step fits a memory cap."""
import torch

from benchmarks import gpu_setup
from benchmarks.gpu_runtime import error_note, error_reason, free_memory, is_out_of_memory, sync, warm_up
from ddfm import memory
from ddfm.methods.ddfm.sampling import per_image_noise, seeded_generators

FIT_LIMITS_GB = (12, 24)
FIT_MODE = "bf16_cl"  # the fast eager path: its step is built once and tried at every size


def fit_trial(bench, step, side, limit_gb):
    """One DDFM step at side x side under the allocator cap; raises (out of memory, a refusing
    kernel) when it does not fit."""
    if bench.device.type != "cuda":
        # Dry run: no allocator to cap on a CPU; an out-of-memory is simulated past a size that
        # grows with the limit, so the search, catch and clean-up paths still run.
        if side > 4 * limit_gb:
            raise torch.OutOfMemoryError(f"simulated: {side}x{side} over {limit_gb} GB (dry run)")
    a, b = gpu_setup.demo_sources(side, side, 1, bench.device)
    x = per_image_noise(seeded_generators(0, 1), (3, side, side), bench.device)
    warm_up(step, bench.diffusion, a, b, x, 1)
    sync(bench.device)


def largest_square(bench, step, limit_gb):
    """The largest square side (multiple of 32) whose step fits in limit_gb, its peak and the sizes
    that failed otherwise. A kernel may refuse a size before memory runs out (cuDNN/GroupNorm with
    over 2**31 elements, e.g. 256 channels at 4096 px): that size counts as not fitting and is
    named in the note instead of losing the search."""
    device = bench.device
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gb * 2**30 / total), device)
    best, peak, low, high, refused = 0, None, 32 if bench.args.dry_run else 256, None, []
    side = low
    try:
        while high is None or high - low > 32:
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                fit_trial(bench, step, side, limit_gb)
                best, low = side, side
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 2**30
            except RuntimeError as err:  # cuDNN/cuBLAS report a failed workspace their own way
                if not is_out_of_memory(err):
                    refused.append(f"{side}px {error_reason(err, limit=70)}")
                high = side
            free_memory(device)
            side = low * 2 if high is None else (low + high) // 64 * 32
            if high is None and side > (256 if bench.args.dry_run else 8192):
                break
    finally:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return best, peak, refused


def planned(model, side, limit_gb, device):
    """What ddfm.memory plans: the largest square under the cap, and the peak at `side`."""
    if model is None:
        return {}
    return {"pred_side": memory.largest_square(model, limit_gb * 2**30, device=device),
            "pred_peak_gb": memory.plan_peak(model, side, side, device=device).total / 2**30}


def run_fit(bench):
    """One row per cap. One model serves every cap: its weights are on the device before a cap
    is set, as they are when a real run starts."""
    model, step = bench.model(FIT_MODE)
    rows = []
    for limit in FIT_LIMITS_GB:
        try:  # each cap on its own: a failed 24 GB search keeps the 12 GB row
            side, peak, refused = largest_square(bench, step, limit)
        except Exception as err:  # noqa: BLE001
            rows.append({"row": f"fit_{limit}gb", "note": error_note(err)})
            free_memory(bench.device)
            continue
        plan = planned(model, side, limit, bench.device)
        rows.append({"row": f"fit_{limit}gb", "size": f"{side}x{side}", "batch": 1, "steps": 1,
                     "peak_alloc_gb": peak, "pred_peak_gb": plan.get("pred_peak_gb"),
                     "note": f"largest square (/32) whose bf16 channels-last DDFM step fits {limit} GB "
                             f"(allocator cap; CUDA context not counted)"
                             + (f"; planned {plan['pred_side']}x{plan['pred_side']}" if plan else "")
                             + (f"; refused (not out of memory): {', '.join(refused)}" if refused else "")})
    return rows
