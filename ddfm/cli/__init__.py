"""The command lines: `ddfm fuse|evaluate|figure|table|compare|datasets ...`, one module per sub-command.

Each module parses its flags, calls the package and maps errors to exit codes (1 bad input, 2 bad
arguments or settings); `sample.py`, `evaluate.py`, `figure.py` and `table.py` at the project root
are thin wrappers of the same `main`s. This package may import anything in `ddfm`; nothing in
`ddfm` imports it. `main` below is the `ddfm` console script (also `python -m ddfm`).
"""
import importlib
import sys

# sub-command -> (module whose main(argv) runs it, one line for `ddfm --help`)
COMMANDS = {
    "fuse": ("ddfm.cli.fuse", "fuse every pair of two modality folders (python sample.py)"),
    "evaluate": ("ddfm.cli.evaluate", "score folders of fused images with the fusion metrics"),
    "figure": ("ddfm.cli.figure", "comparison figure of several methods with zoom-ins"),
    "table": ("ddfm.cli.table", "paper table (LaTeX, Markdown, CSV) from metrics or fused folders"),
    "compare": ("ddfm.cli.compare", "every method on every dataset: fused, scored, tabled, drawn"),
    "datasets": ("ddfm.datasets.__main__", "list and fetch the verified test splits"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: ddfm COMMAND [flags]   (ddfm COMMAND --help for its flags)\n\ncommands:\n"
            + "\n".join(lines))


def main(argv=None):
    """Run one sub-command; returns its exit code (2 for an unknown command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\nerror: unknown command '{name}' (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    sys.argv[0] = f"ddfm {name}"  # argparse names the command in its usage and errors
    return importlib.import_module(COMMANDS[name][0]).main(rest)
