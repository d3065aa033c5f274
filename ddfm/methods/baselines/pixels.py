"""Pixel-wise baseline fusions (mean and max of the two sources' luma), for comparisons.

    python -m ddfm.methods.baselines --ir input/ir --vi input/vi --out output/baselines

writes <out>/mean/<stem>.png and <out>/max/<stem>.png: honest, trivially reproducible methods to
put beside a real one in a figure or report (they are not DDFM). `method: mean` or `max` makes
the same images through sample.py (save folder, resume, journal, run.json), with the colour rule
of `color` (PixelFuser).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from ddfm.fusion import Fuser
from ddfm.io import write_image_atomic
from ddfm.metrics.evaluation import EvaluationError, match_sources
from ddfm.metrics.images import read_luma

BASELINES = {
    "mean": lambda a, b: np.floor((a + b) / 2),
    "max": np.maximum,
}


class PixelFuser(Fuser):
    """Fuses each pair's luma pixel by pixel at the source size (no prior, no sampler)."""

    def __init__(self, run, rule):
        super().__init__(run)
        self.rule = BASELINES[rule]

    def _fuse_together(self, pairs, step_callback=None, progress=False):
        return [self._finish(self.rule(a.luma, b.luma).astype(np.uint8), a, b) for a, b in pairs]


def write_baselines(a_dir, b_dir, out_dir):
    """Fuse every source pair with each baseline; returns the number of pairs."""
    sources = match_sources(a_dir, b_dir)
    for stem, (a_path, b_path) in sources.items():
        a, b = read_luma(a_path), read_luma(b_path)
        if a.shape != b.shape:
            raise EvaluationError(f"size mismatch in pair '{stem}': {a_path} vs {b_path}")
        for name, fuse in BASELINES.items():
            write_image_atomic(Path(out_dir) / name / f"{stem}.png", fuse(a, b).astype(np.uint8))
    return len(sources)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ir", "--a", dest="a", required=True)
    parser.add_argument("--vi", "--b", dest="b", required=True)
    parser.add_argument("--out", required=True, help="writes <out>/mean/ and <out>/max/")
    args = parser.parse_args(argv)
    try:
        count = write_baselines(args.a, args.b, args.out)
    except (EvaluationError, OSError) as err:
        sys.exit(f"error: {err}")  # one line on stderr, exit status 1
    print(f"wrote {', '.join(BASELINES)} for {count} pair(s) into {args.out}")


if __name__ == "__main__":
    main()
