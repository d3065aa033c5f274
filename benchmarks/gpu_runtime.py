"""Small device helpers shared by the GPU check's rows and its memory-fit search."""
import gc
import time
import warnings

import torch

from ddfm import memory, methods
from ddfm.common import one_line
from ddfm.memory import is_out_of_memory  # noqa: F401  (gpu_fit imports it from here)
from ddfm.methods.ddfm.sampling import Rectifier


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_reason(err, limit=200):
    """What went wrong, in a few words: 'out of memory', or the error's type and first line."""
    if is_out_of_memory(err):
        return "out of memory"
    return f"{type(err).__name__}: {one_line(err)[:limit]}"


def error_note(err):
    """The note of a row that failed."""
    return f"error: {error_reason(err)}"


@torch.no_grad()
def warm_up(step, diffusion, a, b, x, count):
    """The first `count` steps of the loop through `step` (compiles a compiled step)."""
    rectify = Rectifier("official", a, b)
    for i in list(range(diffusion.num_timesteps))[::-1][:count]:
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x = step(x, t, torch.zeros_like(x), rectify)["sample"]
    return x


@torch.no_grad()
def time_unet(model, x, device, repeats):
    t = torch.full((x.shape[0],), 999, dtype=torch.long, device=device)
    model(x, t)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        model(x, t)
    sync(device)
    return (time.perf_counter() - start) / repeats * 1e3


def fill_timing(bench, row, seconds, warm_s, h, w, batch, compiled=False):
    """The time, memory and throughput columns of a timed run (compile_s for a compiled row)."""
    steps, device = row["steps"], bench.device
    row["s_per_pair"] = seconds / batch
    row["pairs_per_s"] = batch / seconds
    row["ms_per_step"] = seconds / steps * 1e3
    if row.get("unet_ms") is not None:
        row["outside_ms"] = row["ms_per_step"] - row["unet_ms"]
    if compiled:
        row["compile_s"] = max(0.0, warm_s - bench.args.warmup_steps * seconds / steps)
    if device.type == "cuda":
        row["peak_alloc_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    row["tflops"] = bench.flops_for(h, w) * batch * steps / seconds / 1e12
    if bench.peak:
        row["frac_peak"] = row["tflops"] / bench.peak


def timed(device, run):
    """run() between two synchronisations, after freeing memory and resetting the peak-memory
    counter, so the row's time and peak are run()'s alone: (result, seconds)."""
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    result = run()
    sync(device)
    return result, time.perf_counter() - start



# What torch.cuda.set_sync_debug_mode("warn") says for every implicit synchronisation.
SYNC_WARNING = "synchronizing CUDA operation"


def sync_count(run, device):
    """Implicit host-device synchronisations made by run(): the warnings of
    torch.cuda.set_sync_debug_mode("warn") (a .item(), a device->host copy, a pageable copy...);
    0 off CUDA, where there is nothing to wait for."""
    cuda = device.type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    return sum(SYNC_WARNING in str(w.message) for w in caught)


def fill_syncs(row, run_steps, device):
    """syncs_per_step and setup_syncs of a row: run_steps(n) runs the sampling loop's first n
    steps (set-up included); the second step's syncs are the per-step ones."""
    one, two = sync_count(lambda: run_steps(1), device), sync_count(lambda: run_steps(2), device)
    row["syncs_per_step"], row["setup_syncs"] = two - one, 2 * one - two


def fill_predicted_peak(row, model, h, w, batch, method, device):
    """pred_peak_gb: ddfm.memory's plan for this model, size and method (the measured
    peak_alloc_gb beside it shows how well the plan holds on the card)."""
    per_pixel = methods.get(method).sampler_bytes_per_pixel
    row["pred_peak_gb"] = memory.plan_peak(model, h, w, batch, per_pixel, device).total / 2**30
