"""Every method on every dataset: fused into save folders, scored, tabled and drawn in one command.

Same as `ddfm compare`; the command lives in ddfm/cli/compare.py (run with --help for its flags).
"""
import sys

from ddfm.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
