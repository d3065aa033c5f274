"""Time all fusion metrics (ddfm.metrics.compute_metrics) of every protocol on one 768x576 triple.

    python benchmarks/bench_metrics.py [--threads 2] [--runs 15] [--out benchmarks/bench_metrics.json]

Uses the golden TNO pair 01 and CDDFuse's fused image (576x768) when present, else a synthetic
triple of that size. Prints the median wall time per protocol; targets on 2 cores: <= 0.3 s for
reference/corrected (the reference evaluator takes about 1.3 s), <= 1 s for all 14 tang metrics
(the MATLAB toolkit loops per pixel; under Octave a triple takes ~40 s).

Measured on the project's 2-core CPU machine (shared, other jobs running), 21 runs, 2 threads:
reference 0.25 s median (0.23 s min), corrected 0.31 s median (0.26 s min); tang (all 14 metrics)
0.70 s median (0.60 s min); see bench_metrics.json and README.md.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _triple():
    import numpy as np

    from ddfm.metrics import read_luma

    golden = ROOT / "tests" / "golden" / "metrics"
    paths = [golden / "sources" / "TNO" / "ir" / "01.png", golden / "sources" / "TNO" / "vi" / "01.png",
             golden / "fused" / "CDDFuse" / "TNO" / "01.png"]
    if all(p.is_file() for p in paths):
        return [read_luma(p) for p in paths], "golden TNO/01 (CDDFuse fused)"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:576, :768]
    imgs = [np.clip(np.round(120 + 80 * np.sin(xx / (9 + k)) * np.cos(yy / 13) + rng.normal(0, 6, xx.shape)),
                    0, 255) for k in range(3)]
    return imgs, "synthetic"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy loads its BLAS

    import numpy as np
    from scipy import fft

    from ddfm.metrics import ALL_PROTOCOLS, compute_metrics

    (a, b, f), source = _triple()
    report = {"image": f"{f.shape[1]}x{f.shape[0]}", "triple": source, "threads": args.threads,
              "runs": args.runs, "cpu_count": os.cpu_count(), "median_s": {}, "min_s": {}}
    with fft.set_workers(args.threads):
        for protocol in ALL_PROTOCOLS:
            compute_metrics(a, b, f, protocol=protocol)  # warm-up
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                compute_metrics(a, b, f, protocol=protocol)
                times.append(time.perf_counter() - start)
            report["median_s"][protocol] = float(np.median(times))
            report["min_s"][protocol] = float(np.min(times))
            count = len(compute_metrics(a, b, f, protocol=protocol))
            print(f"{protocol:9s}: median {np.median(times):.3f} s, min {np.min(times):.3f} s "
                  f"({args.runs} runs, {args.threads} threads, {report['image']}, all {count} metrics)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
