"""Paper figure: the same pairs fused by several methods side by side, with magnified boxes.

Same as `ddfm figure`; the command lives in ddfm/cli/figure.py (run with --help for its flags).
"""
import sys

from ddfm.cli.figure import main

if __name__ == "__main__":
    sys.exit(main())
