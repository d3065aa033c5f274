"""compare.py's two speed targets (issue 24), measured, never asserted:

    python -m benchmarks.bench_compare scoring [--pairs 300] [--size 768x1024] [--protocols reference,tang]
    python -m benchmarks.bench_compare rerun [--pairs 20] [--size 256x256]

scoring: N textured pairs and a fused image each (their mean), scored by ddfm.compare.scoring in
both dialects with --jobs 1 and then --jobs 2 (a fresh score cache each time), as compare.py scores
a cell. Target: jobs 2 >= 1.8x faster than jobs 1 on 2 cores.

rerun: compare.py with 5 methods (prior-free, DDFM on the tiny test UNet with two seeds, the
`official` preset and CCF on it) x 3 datasets of N pairs: a first call fuses and scores, then an
unchanged second call is timed end to end in a child process (start-up and imports included).
Target: < 10 s.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_resume import textured
from ddfm.compare.scoring import Cell, Image, ScoreCache, score_cells, scorer_version
from ddfm.io import encode_png
from ddfm.savefolder.hashes import content_hash

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "golden"


def make_pairs(folder, pairs, h, w, mods=("ir", "vi"), fused=False, seed=0):
    """Write N textured pairs (and, with fused, their mean as the fused image); returns the Cell."""
    rng = np.random.default_rng(seed)
    cell, version = Cell("mean", folder.name, folder), scorer_version()
    for mod in (*mods, "fused") if fused else mods:
        (folder / mod).mkdir(parents=True, exist_ok=True)
    for k in range(pairs):
        stem = f"{k:04d}"
        images = [textured(rng, h, w) for _ in mods]
        paths = [folder / mod / f"{stem}.png" for mod in mods]
        data = [encode_png(image) for image in images]
        for path, png in zip(paths, data):
            path.write_bytes(png)
        if fused:
            mean = encode_png(((images[0].astype(np.uint16) + images[1]) // 2).astype(np.uint8))
            (folder / "fused" / f"{stem}.png").write_bytes(mean)
            key = ":".join([version, content_hash(mean)] + [content_hash(d) for d in data])
            cell.images.append(Image(stem, folder / "fused" / f"{stem}.png", tuple(map(str, paths)), key))
    return cell


def _cpu_seconds():
    """CPU time of this process and of its finished children (the scoring processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_scoring(args, h, w):
    protocols = args.protocols.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        cell = make_pairs(Path(tmp) / "data", args.pairs, h, w, fused=True)
        seconds = {}
        for jobs in (1, 2):
            cache_dir = Path(tmp) / f"cache{jobs}"
            cache_dir.mkdir()
            start, cpu = time.perf_counter(), _cpu_seconds()
            errors = score_cells([cell], protocols, ScoreCache(cache_dir), jobs, log=lambda line: None)
            seconds[jobs], cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            assert not errors, errors
            print(f"jobs {jobs}: {seconds[jobs]:.1f} s for {args.pairs} pairs {w}x{h} in {', '.join(protocols)} "
                  f"({seconds[jobs] / args.pairs:.2f} s/pair; CPU {cpu:.1f} s, {cpu / seconds[jobs]:.2f} cores "
                  f"busy on average)", flush=True)
        print(f"speed-up jobs 2 / jobs 1: {seconds[1] / seconds[2]:.2f}x (target >= 1.8x); "
              f"load average {os.getloadavg()[0]:.1f}")


def bench_rerun(args, h, w):
    tiny = f"model_path={TINY / 'tiny_unet_state_dict.pt'}:timestep_respacing=2"
    methods = (f"prior-free,ddfm={'ddfm:' + tiny},ddfm7=ddfm:{tiny}:seed=7,official:{tiny},"
               f"ccf=ccf:{tiny}:size=pad")
    with tempfile.TemporaryDirectory() as tmp:
        datasets = []
        for k, mods in enumerate((("ir", "vi"), ("ct", "mri"), ("Ir", "Vis"))):
            make_pairs(Path(tmp) / f"set{k}", args.pairs, h, w, mods, seed=k)
            datasets.append(f"set{k}={Path(tmp) / f'set{k}'}")
        command = [sys.executable, str(ROOT / "compare.py"), "--datasets", ",".join(datasets), "--methods", methods,
                   "--save_dir", str(Path(tmp) / "res"), "--model_config", str(TINY / "tiny_model_config.yaml"),
                   "--quiet", "device=cpu"]
        for name in ("first call (fuses and scores)", "unchanged rerun", "unchanged rerun again"):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            print(f"{name}: {time.perf_counter() - start:.1f} s (exit {done.returncode}); 5 methods x 3 datasets "
                  f"x {args.pairs} pairs {w}x{h}; load average {os.getloadavg()[0]:.1f}", flush=True)
            if done.returncode:
                print(done.stderr[-2000:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("scoring", "rerun"))
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--size", help="HxW")
    parser.add_argument("--protocols", default="reference,tang")
    args = parser.parse_args()
    args.pairs = args.pairs or (300 if args.what == "scoring" else 20)
    h, w = map(int, (args.size or ("768x1024" if args.what == "scoring" else "256x256")).split("x"))
    (bench_scoring if args.what == "scoring" else bench_rerun)(args, h, w)


if __name__ == "__main__":
    main()
