"""Fetch throughput with parallel downloads, and the time a rerun takes to decide "all present".

    python -m benchmarks.bench_fetch [--pairs 300] [--size 768x1024] [--jobs 4] [--latency-ms 0]
                                     [--workdir DIR]

Makes a loopback mirror (`<owner>/<repo>/<commit>/<path>`, as GitHub's raw-file address) of N
textured-noise RGB PNG pairs (so they do not compress away), writes a registry for it, and serves
it from a separate process (a plain HTTP server, optionally sleeping --latency-ms per request to
stand in for a remote mirror). Then, with `ddfm.datasets.fetch.fetch_split`:
- the first file alone, --jobs 1 (its throughput includes connecting: what one file costs);
- the whole split with --jobs 1, and with --jobs N, each into an empty root;
- a rerun of `python -m ddfm.datasets fetch` (in process) with every file present.
"""
import argparse
import hashlib
import http.server
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ddfm.datasets.__main__ import main as datasets_main
from ddfm.datasets.fetch import fetch_file, fetch_split, prepare_folder
from ddfm.datasets.registry import load_registry

REPO, COMMIT = "bench/mirror", "b" * 40


def make_mirror(root, pairs, h, w):
    """N pairs of textured RGB PNGs under root/<repo>/<commit>/{ir,vi}/ and their registry."""
    rng = np.random.default_rng(0)
    base = Path(root) / "mirror" / REPO / COMMIT
    lines = []
    y, x = np.mgrid[0:h, 0:w]
    for i in range(pairs):
        for folder in ("ir", "vi"):
            path = base / folder / f"{i:05d}.png"
            if not path.exists():
                wave = 128 + 60 * np.sin(x / rng.uniform(20, 60)) * np.cos(y / rng.uniform(20, 60))
                image = np.clip(wave[..., None] + rng.normal(0, 14, (h, w, 3)), 0, 255).astype(np.uint8)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path, compress_level=1)
            data = path.read_bytes()
            lines.append(f"      - {hashlib.sha256(data).hexdigest()} {len(data)} {folder}/{path.name}")
    registry = Path(root) / "registry.yaml"
    registry.write_text(
        f"version: 1\ndatasets:\n  bench:\n    description: benchmark\n    repository: {REPO}\n"
        f"    commit: {COMMIT}\n    verified: true\n    pairs: {pairs}\n    roles:\n"
        "      - {role: infrared, source: ir, folder: ir}\n      - {role: visible, source: vi, folder: vi}\n"
        "    licence: none\n    citation: none\n    files:\n" + "\n".join(lines) + "\n")
    return registry


def serve(directory, latency):
    """Run in a child process: serve directory on 127.0.0.1, print the port."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(latency)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--size", default="768x1024", help="HxW")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--workdir", help="keep the mirror here between runs (default: a temporary folder)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.latency_ms / 1000)
    h, w = (int(v) for v in args.size.split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_fetch_"))
    (registry, made) = timed(lambda: make_mirror(work, args.pairs, h, w))
    split = load_registry(registry)["bench"]
    mb = split.size / 1e6
    print(f"mirror: {len(split.files)} files, {mb:.1f} MB, made in {made:.1f} s ({work})")
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_fetch", "--serve", str(work / "mirror"),
                               "--latency-ms", str(args.latency_ms)], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        rows = []
        for name in ("first1", "jobs1", f"jobs{args.jobs}"):
            subprocess.run(["rm", "-rf", str(work / name)], check=True)
        first = split.files[0]
        folder = prepare_folder(work / "first1", split)
        _, seconds = timed(lambda: fetch_file(split, first, folder, url, 60, lambda n: None))
        rows.append(("first file alone, --jobs 1", first.size / 1e6, seconds))
        for jobs in (1, args.jobs):
            outcome, seconds = timed(lambda: fetch_split(split, work / f"jobs{jobs}", url, jobs, progress=False,
                                                         log=lambda m: None))
            assert not outcome.failed and outcome.fetched == len(split.files), outcome.failed
            rows.append((f"whole split, --jobs {jobs}", mb, seconds))
        rerun = ["--registry", str(registry), "fetch", "bench", "--root", str(work / f"jobs{args.jobs}"),
                 "--mirror", url, "--jobs", str(args.jobs), "--quiet"]
        code, seconds = timed(lambda: datasets_main(rerun))
        assert code == 0
    finally:
        server.terminate()
        server.wait()
    print(f"\n{args.pairs} pairs {h}x{w}, loopback, latency {args.latency_ms:g} ms per request\n")
    print("| case | MB | s | MB/s |\n|---|---|---|---|")
    for label, size, secs in rows:
        print(f"| {label} | {size:.1f} | {secs:.3f} | {size / secs:.0f} |")
    print(f"| rerun, every file present (`python -m ddfm.datasets fetch`, in process) | {mb:.1f} | {seconds:.2f} | |")
    first_rate, one_rate, many_rate = (size / secs for _, size, secs in rows)
    print(f"\n--jobs {args.jobs} throughput / --jobs 1 first-file throughput: {many_rate / first_rate:.2f}x; "
          f"/ --jobs 1 whole-split throughput: {many_rate / one_rate:.2f}x")


if __name__ == "__main__":
    main()
