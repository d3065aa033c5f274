"""Score folders of fused images with the field's fusion metrics, in one or more evaluation dialects.

    python evaluate.py --ir DIR --vi DIR --fused DIR [--fused name=DIR ...]
                       [--protocol reference|cddfuse|corrected|tang|all ...] [--metrics EN,SD,...]
                       [--allow-missing] [--json OUT] [--csv OUT] [--digits N]

--a/--b are aliases of --ir/--vi (e.g. --a CT --b MRI). --protocol may be repeated; `all` is every
protocol; one table is printed per protocol. A sample.py save folder (recon/ inside) is scored
through its recon/. Exit status: 0 ok, 1 evaluation error (missing folder or files, size mismatch,
unreadable image, unwritable output), 2 bad arguments (usage, unknown protocol or metric, clashing
method names).
"""
import argparse
import sys
from pathlib import Path

from ddfm.evaluation import (EvaluationError, UsageError, evaluate_protocols, format_table, list_images,
                             write_csv, write_json)
from ddfm.metrics import ALL_PROTOCOLS, PROTOCOL_ALIASES
from ddfm.savefolder.layout import RECON as SAVE_FOLDER_IMAGES  # sample.py's fused images inside --save_dir


def _resolve_folder(folder, note):
    """A folder without images but with a recon/ inside (a sample.py save folder) -> its recon/."""
    path = Path(folder)
    inner = path / SAVE_FOLDER_IMAGES
    if path.is_dir() and inner.is_dir() and not list_images(path):
        note(f"{folder} is a sample.py save folder: scoring its {SAVE_FOLDER_IMAGES}/")
        return inner
    return path


def _auto_name(path):
    """A method named after its folder; 'recon' says nothing, so out/a/recon is named 'a'."""
    path = Path(path)
    if path.name == SAVE_FOLDER_IMAGES and path.parent.name not in ("", ".", ".."):
        return path.parent.name
    return path.name or str(path)


def _parse_fused(values, note=lambda message: None):
    """['DIR', 'name=DIR', ...] -> {name: folder}; unnamed folders are named after themselves.

    Auto names that clash (two folders named alike) fall back to the folder as typed; a clash
    that remains is a UsageError.
    """
    entries = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or "/" in name or "\\" in name:
            name, folder = None, value
        entries.append((name, _resolve_folder(folder, note), value))
    autos = [_auto_name(path) for name, path, _ in entries if name is None]
    fused = {}
    for name, path, typed in entries:
        if name is None:
            name = _auto_name(path)
            if autos.count(name) > 1:
                name = str(Path(typed.rstrip("/\\"))) or typed
        if name in fused:
            raise UsageError(f"method name '{name}' given twice; use --fused name=DIR")
        fused[name] = path
    return fused


def _parse_metrics(text):
    if text is None:
        return None
    return [m.strip() for m in text.split(",")]  # checked per protocol by select_metrics


def _digits(text):
    """argparse type for --digits: a whole number >= 0 (a format precision cannot be negative)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def add_folder_arguments(parser):
    """--ir/--vi (--a/--b) and --fused, shared with figure.py."""
    parser.add_argument("--ir", "--a", dest="a", required=True, help="first source folder (IR / CT)")
    parser.add_argument("--vi", "--b", dest="b", required=True, help="second source folder (VIS / MRI)")
    parser.add_argument("--fused", action="append", required=True, metavar="[NAME=]DIR",
                        help="folder of fused images (or a sample.py save folder); repeat for "
                             "several methods")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_folder_arguments(parser)
    parser.add_argument("--protocol", action="append",
                        choices=ALL_PROTOCOLS + tuple(PROTOCOL_ALIASES) + ("all",),
                        help="reference (= cddfuse): CDDFuse's evaluator exactly (default); corrected: "
                             "textbook; tang: the MATLAB toolkit; all: every one. Repeatable")
    parser.add_argument("--metrics", help="comma-separated subset, e.g. EN,MI,SSIM (tang adds Nabf, "
                                          "MS_SSIM, Nabf_fused_first)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the fused images that exist and list the missing ones")
    parser.add_argument("--json", type=Path, help="write per-image and mean values as JSON")
    parser.add_argument("--csv", type=Path, help="write per-image and mean values as CSV")
    parser.add_argument("--digits", type=_digits, default=4, help="decimals in the printed table (>= 0)")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write a static HTML report DIR/index.html")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def warn(message):
        print(f"warning: {message}", file=sys.stderr)

    def note(message):
        print(f"note: {message}", file=sys.stderr)

    try:
        fused = _parse_fused(args.fused, note)
        results = evaluate_protocols(args.a, args.b, fused, protocols=args.protocol or ["reference"],
                                     metrics=_parse_metrics(args.metrics), warn=warn,
                                     allow_missing=args.allow_missing)
        print("\n\n".join(format_table(result, digits=args.digits) for result in results))
        if args.json:
            write_json(results, args.json)
        if args.csv:
            write_csv(results, args.csv)
        if args.report:
            from ddfm.report import write_report
            print(f"report: {write_report(args.report, results, args.a, args.b, fused)}", file=sys.stderr)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (EvaluationError, OSError) as exc:  # OSError: e.g. the output file cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
