"""Paper table: rows = methods, column groups = datasets, the best of each column bold, the second underlined.

Same as `ddfm table`; the command lives in ddfm/cli/table.py (run with --help for its flags).
"""
import sys

from ddfm.cli.table import main

if __name__ == "__main__":
    sys.exit(main())
