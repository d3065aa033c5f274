"""Score folders of fused images with the field's fusion metrics, in one or more evaluation dialects.

Same as `ddfm evaluate`; the command lives in ddfm/cli/evaluate.py (run with --help for its flags).
"""
import sys

from ddfm.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
