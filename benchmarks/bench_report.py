"""Time and peak memory of an HTML report (50 pairs x 4 methods) and a paper figure (3 pairs x
5 methods, two zoom boxes), on synthetic 480x640 images.

    python benchmarks/bench_report.py [--pairs 50] [--methods 4] [--out benchmarks/results/report]

Each case runs in a fresh Python process (imports included, as a user runs it) and reports its
wall time and peak resident memory. The report is written twice: the first run makes every
thumbnail, the second reuses them. The metric values are synthetic (the report's cost, not the
evaluation's, is measured here; bench_metrics.py times the metrics).
"""
import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "AG", "CC", "PSNR", "MSE")


def make_data(root, pairs, methods, shape=(480, 640)):
    """Smooth random sources and 'fused' blends of them, written once as PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(pairs):
        stem = f"{k:03d}"
        ir = 128 + 90 * np.sin(xx / (9 + k % 7)) * np.cos(yy / 13) + rng.normal(0, 12, shape)
        vi = 128 + 90 * np.cos(xx / 17 + k) * np.sin(yy / (7 + k % 5)) + rng.normal(0, 12, shape)
        images = {"ir": ir, "vi": vi}
        for m in range(methods):
            weight = (m + 1) / (methods + 1)
            images[f"method{m}"] = weight * ir + (1 - weight) * vi
        for folder, image in images.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / folder / f"{stem}.png")


def synthetic_results(pairs, methods):
    rng = np.random.default_rng(1)
    result = {"protocol": "reference", "methods": {}}
    for m in range(methods):
        per_image = {f"{k:03d}": {name: float(rng.normal(5 + m, 1)) for name in METRICS}
                     for k in range(pairs)}
        mean = {name: float(np.mean([row[name] for row in per_image.values()])) for name in METRICS}
        result["methods"][f"method{m}"] = {"mean": mean, "per_image": per_image}
    return [result]


def run_case(case, data, out, pairs, methods):
    """One measurement (in this process): returns seconds."""
    start = time.perf_counter()
    fused = {f"method{m}": data / f"method{m}" for m in range(methods)}
    if case == "report":
        from ddfm.present.report import write_report
        write_report(out / "report", synthetic_results(pairs, methods), data / "ir", data / "vi", fused)
    else:
        from ddfm.present.figure import make_figure
        five = {f"method{m % methods}_{m}": data / f"method{m % methods}" for m in range(5)}
        make_figure(data / "ir", data / "vi", five, ["000", "001", "002"], out / f"figure.{case[-3:]}",
                    zooms=[(100, 80, 60, 40), (400, 300, 50, 50)])
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--methods", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.out / "data"
    if args.case:  # child process: one measurement, printed as JSON
        seconds = run_case(args.case, data, args.out, args.pairs, args.methods)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"case": args.case, "seconds": round(seconds, 2), "peak_MB": round(peak_mb)}))
        return
    if not (data / "ir" / f"{args.pairs - 1:03d}.png").exists():
        make_data(data, args.pairs, args.methods)
    shutil.rmtree(args.out / "report", ignore_errors=True)  # the first report makes every thumbnail
    rows = []
    cases = [("report", "report, first (thumbnails made)"), ("report", "report, again (thumbnails reused)"),
             ("figure-png", "figure PNG, page width 300 dpi"), ("figure-pdf", "figure PDF")]
    for case, label in cases:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--pairs", str(args.pairs),
                               "--methods", str(args.methods), "--out", str(args.out)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(label=label, process_seconds=round(time.perf_counter() - start, 2))
        rows.append(row)
    print(f"report: {args.pairs} pairs x {args.methods} methods; figure: 3 pairs x 5 methods, 2 zooms")
    print("| case | seconds (work) | seconds (whole process) | peak RSS MB |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['label']} | {row['seconds']} | {row['process_seconds']} | {row['peak_MB']} |")
    (args.out / "bench_report.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
