"""Time of one paper table from metrics files: 3 datasets x 6 methods, every output format.

    python -m benchmarks.bench_table

Writes synthetic evaluate.py --json files (25 pairs per method) to a temporary folder, then times
`table.py` end to end in this process (reading, ranking, LaTeX + Markdown + CSV) over a few runs.
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import table as table_cli
from ddfm.present.table import TABLE_METRICS

DATASETS, METHODS, PAIRS = ("TNO", "RoadScene", "MSRS"), [f"method{k}" for k in range(6)], 25


def write_inputs(folder):
    rng = np.random.default_rng(0)
    args = []
    for dataset in DATASETS:
        methods = {}
        for method in METHODS:
            per_image = {f"{p:02d}": {m: float(rng.uniform(0.2, 50)) for m in TABLE_METRICS} for p in range(PAIRS)}
            mean = {m: float(np.mean([row[m] for row in per_image.values()])) for m in TABLE_METRICS}
            methods[method] = {"mean": mean, "per_image": per_image, "missing": []}
        path = folder / f"{dataset}.json"
        path.write_text(json.dumps({"protocol": "reference", "methods": methods}))
        args += ["--json", f"{dataset}={path}"]
    return args


def main():
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args = write_inputs(folder) + ["--std", "--published", "CDDFuse,DDFM", "--allow-missing"]
        outs = ["--out", str(folder / "t.tex"), "--out", str(folder / "t.md"), "--out", str(folder / "t.csv")]
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert table_cli.main(args + outs) == 0
            times.append(time.perf_counter() - start)
    print(f"{len(DATASETS)} datasets x {len(METHODS)} methods (+ published rows), LaTeX + Markdown + CSV: "
          f"best {min(times) * 1e3:.1f} ms, median {sorted(times)[2] * 1e3:.1f} ms of 5 runs (goal < 2 s)")


if __name__ == "__main__":
    main()
