"""DDFM: fuse every pair of two modality folders with a diffusion prior.

    python sample.py                                   # configs/ defaults, input/ir + input/vi
    python sample.py --fusion_config configs/fusion_official.yaml
    python sample.py timestep_respacing=25 seed=0 record=true

Same as `ddfm fuse`; the command lives in ddfm/cli/fuse.py (run with --help for its flags).
"""
import sys

from ddfm.cli.fuse import main

if __name__ == "__main__":
    sys.exit(main())
