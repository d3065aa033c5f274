"""`python -m ddfm COMMAND ...`: the same as the `ddfm` console command."""
import sys

from ddfm.cli import main

if __name__ == "__main__":
    sys.exit(main())
