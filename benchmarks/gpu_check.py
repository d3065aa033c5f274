"""DDFM speed, memory and accuracy on a CUDA GPU: one prepared command, one table.

    timeout -k 20 540 python benchmarks/gpu_check.py  # CUDA: every row, 100 steps, <= 8 min
    python benchmarks/gpu_check.py --dry-run        # the same code path on the CPU, tiny UNet
    python benchmarks/gpu_check.py --rows bf16_cl@480x640,fit --steps 20 --profile bf16_cl@480x640

Needs only `pip install -r requirements.txt`. Full ADM layout with re-randomised weights (the
checkpoint when model_path exists, said so in the header). Each row: a fresh copy of the weights,
a short warm-up, then one timed DDFM run between torch.cuda.synchronize() calls. The table goes to
stdout and to <out>/gpu_check.csv and .json (gpu_check_dry.* for a dry run). See benchmarks/README.md.
"""
if __name__ == "__main__" and not __package__:
    # Started as `python benchmarks/gpu_check.py`: run it as the module benchmarks.gpu_check, so
    # that every import below is a plain one from the project folder.
    import runpy
    import sys
    from pathlib import Path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    runpy.run_module("benchmarks.gpu_check", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch._dynamo.utils import counters

import guided_diffusion
from benchmarks import gpu_ccf, gpu_setup
from benchmarks.gpu_budget import RowTimeout, Terminated, install_handlers, stopped_by_alarm  # noqa: F401
from benchmarks.gpu_fit import run_fit
from benchmarks.gpu_runtime import (
    error_note,
    fill_predicted_peak,
    fill_syncs,
    fill_timing,
    free_memory,
    sync,
    time_unet,
    timed,
    warm_up,
)
from benchmarks.gpu_table import COLUMNS, format_row, header_lines, write_outputs
from benchmarks.official_like import official_like_sample, original_attention
from benchmarks.profile_step import profile_steps
from ddfm import determinism, io
from ddfm.common import DEFAULT_SEED
from ddfm.methods.ddfm.sampling import StepFunction, ddfm_sample, per_image_noise, seeded_generators
from ddfm.prior import set_tf32, wrap_unet


class Mode(NamedTuple):
    """How one row runs the UNet: the `dtype` key, channels-last, the `compile` key, and the
    `deterministic: true` path (each image of the batch alone, torch's deterministic kernels)."""
    dtype: str
    channels_last: bool
    compile: str
    deterministic: bool = False


# row name -> Mode; "official_like" is the official loop.
MODES = {
    "fp32_exact": Mode("fp32", False, "none"),
    "fp32_tf32": Mode("tf32", False, "none"),
    "fp16_autocast": Mode("fp16-autocast", False, "none"),
    "bf16_autocast": Mode("bf16-autocast", False, "none"),
    "bf16": Mode("bf16", False, "none"),
    "bf16_cl": Mode("bf16", True, "none"),
    "bf16_compile": Mode("bf16", True, "unet"),
    "bf16_step": Mode("bf16", True, "step"),
    "bf16_graph": Mode("bf16", True, "graph"),
    "bf16_cl_deterministic": Mode("bf16", True, "none", deterministic=True),
    "official_like": Mode("tf32", False, "none"),
}
# size key -> (H, W, batch): on a GPU, and the tiny stand-ins of a dry run.
SIZES = {"256": (256, 256, 1), "256b8": (256, 256, 8), "480x640": (480, 640, 1),
         "768x1024": (768, 1024, 1)}
DRY_SIZES = {"256": (32, 32, 1), "256b8": (32, 32, 2), "480x640": (32, 64, 1), "768x1024": (64, 64, 1)}
# In priority order: when the time budget runs out, the later entries are skipped.
PLAN = ("fp32_exact@480x640", "fp32_tf32@480x640", "fp16_autocast@480x640", "bf16_autocast@480x640",
        "bf16@480x640", "bf16_cl@480x640", "official_like@480x640", "fp32_exact@256", "bf16_cl@256",
        "bf16_cl@256b8", "bf16_cl_deterministic@256b8", "bf16@768x1024", "bf16_cl@768x1024", "fit",
        "bf16_compile@480x640", "bf16_step@480x640", "bf16_graph@480x640", "bf16_graph@256b8")
# Rows run by other modules: name -> run(bench, size_key) -> row dict (added to PLAN by the same module).
EXTRA_ROWS = {}
PLAN = gpu_ccf.register(MODES, Mode, EXTRA_ROWS, PLAN)  # CCF's rows (benchmarks/gpu_ccf.py)


class Bench:
    """Shared state of one run: device, weights, sampler, sources, results."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.sizes = DRY_SIZES if args.dry_run else SIZES
        self.backend = "eager" if args.dry_run else "inductor"  # dry run: capture only, no codegen
        config_path = gpu_setup.ROOT / ("tests/golden/tiny_model_config.yaml" if args.dry_run
                                        else "configs/model_config_imagenet.yaml")
        self.config, model_path = gpu_setup.model_config(config_path)
        if args.dry_run:
            model_path = None  # the GPU machine has no checkpoint: exercise the random-weight path
        self.env = gpu_setup.environment(self.device)
        self.env["topk_ties"] = gpu_setup.topk_ties(self.device)
        self.weights, self.env["weights"] = gpu_setup.host_weights(self.config, model_path, self.device)
        self.diffusion = guided_diffusion.create_sampler(
            sampler="ddim", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
            model_var_type="learned_range", timestep_respacing=str(args.steps)).tables_to(self.device)
        self.peak = args.peak_tflops or gpu_setup.card_peak(self.env["name"])
        self.flops, self.fused = {}, {}

    def flops_for(self, h, w):
        if (h, w) not in self.flops:
            self.flops[(h, w)] = gpu_setup.flops_per_forward(self.config, h, w)
        return self.flops[(h, w)]

    def model(self, mode):
        mode_of = MODES[mode]
        dtype, channels_last, compile_mode = mode_of.dtype, mode_of.channels_last, mode_of.compile
        unet = gpu_setup.fresh_unet(self.config, self.weights, self.device)
        model = wrap_unet(unet, self.device, dtype, channels_last, compile_mode, self.backend)
        if mode == "official_like" and self.device.type == "cuda":
            set_tf32(True, matmul=False)  # PyTorch's defaults, as the official code runs today
        return model, StepFunction(model, self.diffusion, compile_mode, backend=self.backend)


def dynamo_counts():
    return counters["stats"].get("unique_graphs", 0), sum(counters["graph_break"].values())


def cudagraph_skips():
    return counters["inductor"].get("cudagraph_skips", 0)


def run_row(bench, mode, size_key):
    """One configuration at one size: warm-up, UNet alone, the timed run; returns the row."""
    args, device = bench.args, bench.device
    h, w, batch = bench.sizes[size_key]
    row = {"row": mode, "size": f"{h}x{w}", "batch": batch, "steps": args.steps, "note": "",
           "_key": (mode, size_key)}
    official = mode == "official_like"
    torch._dynamo.reset()
    counters.clear()
    free_memory(device)
    model, step = bench.model(mode)
    a, b = gpu_setup.demo_sources(h, w, batch, device)
    x_T = per_image_noise(seeded_generators(DEFAULT_SEED, batch), (3, h, w), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with (original_attention() if official else nullcontext()), tempfile.TemporaryDirectory() as png_dir:
        start = time.perf_counter()
        if official:
            official_like_sample(model, bench.diffusion, a, b, x_T, png_dir, max_steps=args.warmup_steps)
        else:
            warm_up(step, bench.diffusion, a, b, x_T, args.warmup_steps)
        sync(device)
        warm_s = time.perf_counter() - start
        if MODES[mode].compile in ("none", "unet"):
            row["unet_ms"] = time_unet(model, x_T, device, args.unet_repeats)
        fused, seconds = timed(device, lambda: (
            official_like_sample(model, bench.diffusion, a, b, x_T, png_dir) if official
            else sample_mode(MODES[mode], model, bench.diffusion, a, b, step)))
        fill_timing(bench, row, seconds, warm_s, h, w, batch, compiled=MODES[mode].compile != "none")
        fill_syncs(row, lambda n: (
            official_like_sample(model, bench.diffusion, a, b, x_T, png_dir, max_steps=n) if official
            else warm_up(step, bench.diffusion, a, b, x_T, n)), device)
    if not official:  # the official loop's materialised attention is outside the plan
        fill_predicted_peak(row, model, h, w, batch, "ddfm", device)
    if MODES[mode].compile != "none":
        row["graphs"], row["graph_breaks"] = dynamo_counts()
    if MODES[mode].compile == "graph" and device.type == "cuda" and cudagraph_skips():
        row["note"] = "CUDA graphs skipped by inductor (its log says why): timed as a compiled step"
    if not torch.isfinite(fused).all():
        row["note"] = "non-finite values in the fused output"
    bench.fused[(mode, size_key)] = [io.luma_to_uint8(f[0], "minmax") for f in fused.cpu().numpy()]
    if args.profile == f"{mode}@{size_key}":
        bench.profile = profile_steps(
            lambda: (warm_up(step, bench.diffusion, a, b, x_T, args.profile_steps), sync(device)),
            device, args.profile_steps)
    return row


def sample_mode(mode, model, diffusion, a, b, step):
    """The timed DDFM run of a row; a deterministic row samples the images of its batch one by
    one under torch's deterministic algorithms, as `deterministic: true` does."""
    if not mode.deterministic:
        return ddfm_sample(model, diffusion, a, b, seed=DEFAULT_SEED, step=step)
    with determinism.run_settings(None, True):
        return torch.cat([ddfm_sample(model, diffusion, a[k:k + 1], b[k:k + 1], seed=DEFAULT_SEED, step=step)
                          for k in range(a.shape[0])])


def compare_to_exact(bench, rows):
    """PSNR (peak 255) and max |difference| in grey levels of the fused uint8 images against the
    fp32_exact row of the same H x W (same pair, same seed); the worst image of a batch."""
    exact = {bench.sizes[k][:2]: images[0].astype(np.float64)
             for (mode, k), images in bench.fused.items() if mode == "fp32_exact"}
    for row in rows:
        key = row.get("_key")
        if key not in bench.fused or row["row"] == "fp32_exact":
            continue
        reference = exact.get(bench.sizes[key[1]][:2])
        if reference is None:
            row["note"] = (row["note"] + "; " if row["note"] else "") + "no exact row at this size"
            continue
        diffs = [np.abs(image.astype(np.float64) - reference) for image in bench.fused[key]]
        mse = max(float(np.mean(d ** 2)) for d in diffs)
        row["psnr_db"] = math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
        row["max_abs_diff"] = max(float(d.max()) for d in diffs)


def borrow_compiled_unet_time(rows):
    """A compiled-step row has no UNet call of its own to time: take the compiled UNet's time
    (bf16_compile, same size and batch), so outside_ms still shows the cost around it."""
    compiled = {(r["size"], r["batch"]): r["unet_ms"] for r in rows
                if r["row"] == "bf16_compile" and r.get("unet_ms") is not None}
    for row in rows:
        unet_ms = compiled.get((row["size"], row.get("batch")))
        if getattr(MODES.get(row["row"]), "compile", "") in ("step", "graph") and unet_ms is not None \
                and row.get("ms_per_step") is not None:
            row["unet_ms"], row["outside_ms"] = unet_ms, row["ms_per_step"] - unet_ms
            row["note"] = (row["note"] + "; " if row["note"] else "") + "unet_ms of bf16_compile"


# --------------------------------------------------------------------------- plan, budget, output
def entry_cost_s(entry, dry_run):
    """Time an entry needs at least to be worth starting (compiling the full ADM takes minutes)."""
    if dry_run:
        return 0
    mode = entry.split("@")[0]
    return 150 if getattr(MODES.get(mode), "compile", "none") != "none" else 40 if entry == "fit" else 25


def clean_up(bench):
    """Between rows. After an interrupted row (e.g. inside a CUDA-graph capture) this may fail;
    that must not lose the table."""
    try:
        torch._dynamo.reset()
        free_memory(bench.device)
    except Exception as err:  # noqa: BLE001
        print(f"gpu_check: clean-up after the row failed: {error_note(err)}", file=sys.stderr)


def run_entry(bench, entry):
    if entry == "fit":
        return run_fit(bench)
    mode, size_key = entry.split("@")
    run = EXTRA_ROWS.get(mode, lambda bench, size_key: run_row(bench, mode, size_key))
    return [run(bench, size_key)]


def run_plan(bench, plan, deadline):
    """Every entry in turn; the CSV/JSON are rewritten after each, so a run killed from outside
    still leaves the rows done so far. SIGTERM/Ctrl-C stop the plan with a note."""
    rows = []
    for k, entry in enumerate(plan):
        left = deadline - time.monotonic()
        if left < entry_cost_s(entry, bench.args.dry_run):
            rows.append(skipped_row(entry, f"skipped: {left:.0f} s of the time budget left"))
            continue
        signal.alarm(max(1, int(left)))
        began = time.monotonic()
        try:
            rows += run_entry(bench, entry)
            rows[-1]["wall_s"] = time.monotonic() - began
        except Terminated:
            signal.alarm(0)
            rows.append(skipped_row(entry, "stopped: terminated (SIGTERM/Ctrl-C) during this row"))
            rows += [skipped_row(e, "skipped: terminated") for e in plan[k + 1:]]
            print(format_row(rows[-1]), flush=True)
            save(bench, rows)
            break
        except Exception as err:  # noqa: BLE001  one broken row must not lose the others
            signal.alarm(0)
            rows.append(skipped_row(entry, "stopped: the time budget ran out during this row"
                                    if stopped_by_alarm(err, deadline) else error_note(err)))
        finally:
            signal.alarm(0)
        clean_up(bench)
        print(format_row(rows[-1]), flush=True)
        save(bench, rows)
    return rows


def finished(bench, rows):
    """Copies of the rows with the cross-row columns (PSNR against the exact row, borrowed UNet
    time) filled in; the rows themselves stay as measured, so this can run after every entry."""
    rows = [dict(row) for row in rows]
    compare_to_exact(bench, rows)
    borrow_compiled_unet_time(rows)
    return rows


def save(bench, rows):
    return write_outputs(bench, finished(bench, rows), Path(bench.args.out))


def skipped_row(entry, note):
    mode, _, size_key = entry.partition("@")
    return {"row": mode, "size": size_key, "note": note}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny UNet, tiny sizes, 2 steps")
    parser.add_argument("--rows", default=",".join(PLAN),
                        help="comma list of MODE@SIZE and 'fit' (default: the whole plan); "
                             f"modes: {', '.join([*MODES, *EXTRA_ROWS])}; sizes: {', '.join(SIZES)}")
    parser.add_argument("--sizes", default=None, help="keep only entries at these size keys")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (100; dry run 2)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="per row (3; dry run 1)")
    parser.add_argument("--unet-repeats", type=int, default=None, help="timed UNet forwards per row")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (420 s; dry run 60)")
    parser.add_argument("--profile", default="bf16_cl@480x640", metavar="MODE@SIZE",
                        help="profile a few steps of this (eager) row: time per operator kind and "
                             "the GroupNorm share; 'none' to skip")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 dense peak")
    parser.add_argument("--out", default=str(gpu_setup.ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.profile = None if args.profile == "none" else args.profile
    defaults = {"steps": 2 if dry else 100, "warmup_steps": 1 if dry else 3,
                "unet_repeats": 1 if dry else 5, "budget_s": 60.0 if dry else 420.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def select_plan(args):
    plan = [e.strip() for e in args.rows.split(",") if e.strip()]
    for entry in plan:
        mode, _, size = entry.partition("@")
        if entry != "fit" and (mode not in MODES and mode not in EXTRA_ROWS or size not in SIZES):
            raise ValueError(f"--rows: unknown entry {entry!r} (MODE@SIZE with MODE in "
                             f"{', '.join([*MODES, *EXTRA_ROWS])}, SIZE in {', '.join(SIZES)}, or 'fit')")
    if args.sizes:
        keep = set(args.sizes.split(","))
        plan = [e for e in plan if e == "fit" or e.partition("@")[2] in keep]
    if args.profile and args.profile not in plan:
        plan.append(args.profile)
    if args.dry_run:  # one row per compiled mode is enough to prove the path on a CPU
        plan = [e for e in plan if e != "bf16_graph@256b8"]
    return plan


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run to check the code path on the CPU")
        return 2
    try:
        if args.steps < 2:
            raise ValueError(f"--steps {args.steps}: at least 2 sampling steps are needed")
        plan = select_plan(args)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    if any(getattr(MODES.get(e.partition("@")[0]), "deterministic", False) for e in plan):
        # cuBLAS reads its workspace setting once, before its first use: set it for the whole run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", determinism.CUBLAS_WORKSPACE)
    bench = Bench(args)
    if bench.device.type == "cuda":
        bench.env["matmul_tflops"] = gpu_setup.measured_matmul_tflops(bench.device)
    for h, w, _ in {bench.sizes[e.partition("@")[2]] for e in plan if e != "fit"}:
        bench.flops_for(h, w)
    install_handlers()
    print("\n".join(header_lines(bench)))
    print(" | ".join(COLUMNS), flush=True)
    save(bench, [])  # the header (card, versions) is on disk even if the first row hangs
    measured = run_plan(bench, plan, start + args.budget_s)
    rows = finished(bench, measured)
    print("\n" + "\n".join(header_lines(bench)))
    print(" | ".join(COLUMNS))
    for row in rows:
        print(format_row(row))
    if getattr(bench, "profile", None):
        print("profile (" + args.profile + "):")
        for kind, share in bench.profile["shares"].items():
            print(f"  {kind:<24} {share:6.1%}")
    csv_path, json_path = save(bench, measured)
    print(f"total {time.monotonic() - start:.0f} s; written: {csv_path}, {json_path}")
    failed = ("error", "stopped: terminated")
    return 1 if any(str(r.get("note", "")).startswith(failed) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
