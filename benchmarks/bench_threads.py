"""What `threads: auto` should be: a tiny-UNet sample.py run timed at each thread count, with and
without one extra process keeping a core busy.

    python -m benchmarks.bench_threads [--pairs 4] [--size 64] [--steps 25] [--burn]

Each run is `sample.py` in a child process (fresh thread pool), wall clock from start to exit,
on 4 pairs of 64x64 with the 1 M-parameter test UNet (tests/golden). --burn starts one
busy-looping process for the timed runs, as another job on the machine would.
"""
import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def burn():
    while True:
        pass


def timed_run(inputs, out, threads, steps):
    cmd = [sys.executable, str(ROOT / "sample.py"), "--input_dir", str(inputs), "--save_dir", str(out),
           "--quiet", "--model_config", str(GOLDEN / "tiny_model_config.yaml"),
           f"model_path={GOLDEN / 'tiny_unet_state_dict.pt'}", "prior=adm", f"timestep_respacing={steps}",
           "device=cpu", f"threads={threads}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--burn", action="store_true", help="keep one core busy during the runs")
    opts = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        for mod in ("ir", "vi"):
            (inputs / mod).mkdir(parents=True)
            for k in range(opts.pairs):
                image = rng.integers(0, 256, (opts.size, opts.size), dtype=np.uint8)
                Image.fromarray(image).save(inputs / mod / f"p{k}.png")
        burner = multiprocessing.Process(target=burn, daemon=True) if opts.burn else None
        try:
            if burner is not None:
                burner.start()
            print(f"{cpus} CPUs in the affinity, load {os.getloadavg()[0]:.1f}, "
                  f"{'one core busy' if opts.burn else 'no extra load'}")
            for threads in range(1, cpus + 1):
                seconds = timed_run(inputs, Path(tmp) / f"out{threads}", threads, opts.steps)
                print(f"threads={threads}: {seconds:.1f} s")
        finally:
            if burner is not None:
                burner.kill()
                burner.join()


if __name__ == "__main__":
    main()
