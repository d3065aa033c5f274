"""The table of gpu_check.py: its columns, the printed header and rows, the CSV and JSON files."""
import csv
import json
import math

COLUMNS = ("row", "size", "batch", "steps", "s_per_pair", "pairs_per_s", "ms_per_step", "unet_ms",
           "outside_ms", "compile_s", "peak_alloc_gb", "peak_reserved_gb", "pred_peak_gb", "tflops",
           "frac_peak", "psnr_db", "max_abs_diff", "syncs_per_step", "setup_syncs", "graphs",
           "graph_breaks", "wall_s", "note")


def format_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def format_row(row):
    return " | ".join(format_value(row.get(c)) for c in COLUMNS)


def header_lines(bench):
    env = bench.env
    lines = [f"device: {env['name']} ({env['device']})  torch {env['torch']}"]
    if bench.device.type == "cuda":
        lines.append(f"driver {env['driver']}  CUDA {env['cuda']}  cuDNN {env['cudnn']}  "
                     f"memory {env['memory_gb']} GB  capability {env['capability']}  C compiler {env['c_compiler']}")
    peak = f"{bench.peak:g} TFLOP/s" if bench.peak else "unknown (pass --peak-tflops)"
    lines.append(f"weights: {env['weights']}")
    ties = env.get("topk_ties")
    if ties:
        same = "the same order" if ties["device"] == ties["cpu"] else "a DIFFERENT order"
        lines.append(f"torch.topk of 8 equal weights (k=3): {bench.device.type} {ties['device']}, "
                     f"cpu {ties['cpu']} ({same}; CCF's golden has the CPU's)")
    lines.append(f"bf16 dense peak used for frac_peak: {peak}"
                 + (f"; measured bf16 matmul {env['matmul_tflops']:.0f} TFLOP/s"
                    if env.get("matmul_tflops") else ""))
    lines.append(f"steps {bench.args.steps}, warm-up {bench.args.warmup_steps} steps per row, "
                 f"UNet FLOPs per forward: " + ", ".join(
                     f"{h}x{w} {f / 1e12:.4g} T" for (h, w), f in sorted(bench.flops.items())))
    return lines


def write_outputs(bench, rows, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_dry" if bench.args.dry_run else "gpu_check"
    clean = [{c: row.get(c) for c in COLUMNS} for row in rows]
    with open(out_dir / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: format_value(r[c]) if isinstance(r[c], float) else r[c] for c in COLUMNS}
                         for r in clean)
    record = {"environment": bench.env, "settings": dict(vars(bench.args)),
              "flops_per_forward": {f"{h}x{w}": f for (h, w), f in bench.flops.items()},
              "columns": list(COLUMNS), "rows": clean, "profile": getattr(bench, "profile", None)}
    (out_dir / f"{stem}.json").write_text(json.dumps(jsonable(record), indent=2, default=str))
    return out_dir / f"{stem}.csv", out_dir / f"{stem}.json"


def jsonable(value):
    """Strict JSON: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
