"""Time for sample.py to decide "nothing to do" in a save folder of already-fused pairs.

    python -m benchmarks.bench_resume [--pairs 1000] [--size 480x640]

Builds, in a temporary folder, an input of N textured grey pairs and a save folder that holds an
image for each, journaled by the real writer (ddfm.savefolder.writer) under the settings key of
a prior-free run, so no fusion is needed to set it up. Then times `sample.main` end to end on it
(lock, journal, content hashes of every source and image, plan, run.json), twice: no hash is
cached, so both resumes read every file (from the page cache).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import sample
from ddfm.config import load_config
from ddfm.fingerprint import output_fingerprint, record_header
from ddfm.io import Pair, encode_png
from ddfm.savefolder.hashes import content_hash
from ddfm.savefolder.journal import append, new_run_id
from ddfm.savefolder.layout import Layout
from ddfm.savefolder.resume import pair_sources
from ddfm.savefolder.writer import RunJournal

ROOT = Path(__file__).resolve().parent.parent


def textured(rng, h, w):
    """A photo-like grey image (smooth shapes plus noise): PNGs of a realistic size."""
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / rng.uniform(20, 60)) * np.cos(y / rng.uniform(20, 60))
    return np.clip(base + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


def build(folder, pairs, h, w):
    rng = np.random.default_rng(0)
    inputs, out = folder / "in", folder / "out"
    for mod in ("ir", "vi"):
        (inputs / mod).mkdir(parents=True)
    args = ["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none"]
    config = load_config(ROOT / "configs" / "model_config_imagenet.yaml", ROOT / "configs" / "diffusion_config.yaml",
                         None, [("input_dir", str(inputs)), ("prior", "none")])
    prior_info = {"prior": "none", "method": "prior-free"}
    header = record_header(config, prior_info, output_fingerprint(config, prior_info), out)
    layout, run_id = Layout(out), new_run_id()
    layout.root.mkdir(parents=True)
    append(layout.journal, {"event": "settings", "run": run_id, "key": header["settings_key"],
                            "fingerprint": header["fingerprint"], "input_dir": header["input_dir"]})
    writer = RunJournal(layout, run_id, header["settings_key"], print)
    total = 0
    for k in range(pairs):
        stem = f"{k:04d}"
        data = [encode_png(textured(rng, h, w)) for _ in range(2)]
        for mod, png in zip(("ir", "vi"), data):
            (inputs / mod / f"{stem}.png").write_bytes(png)
        fused = encode_png(textured(rng, h, w))
        pair = Pair(stem, inputs / "ir" / f"{stem}.png", inputs / "vi" / f"{stem}.png")
        writer.write_image(stem, fused, 0.0, pair_sources(pair), [content_hash(d) for d in data])
        total += sum(map(len, data)) + len(fused)
    return args, total


def timed(args):
    start = time.perf_counter()
    code = sample.main(args)
    return time.perf_counter() - start, code


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--size", default="480x640")
    opts = parser.parse_args()
    h, w = map(int, opts.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        args, total = build(Path(tmp), opts.pairs, h, w)
        print(f"{opts.pairs} pairs of {h}x{w}: {3 * opts.pairs} files, {total / 1e6:.0f} MB")
        os.sync()
        for label in ("first resume", "second resume"):
            seconds, code = timed(args)
            assert code == 0
            print(f"{label}: {seconds:.2f} s to decide nothing is to do")


if __name__ == "__main__":
    main()
