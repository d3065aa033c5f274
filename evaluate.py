"""Score folders of fused images with the field's fusion metrics (CDDFuse's evaluator protocol).

    python evaluate.py --ir DIR --vi DIR --fused DIR [--fused name=DIR ...]
                       [--protocol reference|corrected] [--json OUT] [--csv OUT] [--metrics EN,SD,...]

--a/--b are aliases of --ir/--vi (e.g. --a CT --b MRI). Exit status: 0 ok, 1 evaluation error
(missing folder or files, size mismatch, unreadable image), 2 bad arguments.
"""
import argparse
import sys
from pathlib import Path

from ddfm.evaluation import EvaluationError, evaluate_folders, format_table, write_csv, write_json
from ddfm.metrics import METRICS, PROTOCOLS


def _parse_fused(values):
    """['DIR', 'name=DIR', ...] -> {name: DIR}; an unnamed folder is named after itself."""
    fused = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or "/" in name or "\\" in name:
            name, folder = Path(value).name or value, value
        if name in fused:
            raise EvaluationError(f"method name '{name}' given twice; use --fused name=DIR")
        fused[name] = folder
    return fused


def _parse_metrics(text):
    if text is None:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    by_lower = {m.lower(): m for m in METRICS}
    unknown = [m for m in names if m.lower() not in by_lower]
    if unknown or not names:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {','.join(METRICS)}")
    return [by_lower[m.lower()] for m in names]


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
                        help="folder of fused images; repeat for several methods")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_folder_arguments(parser)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="reference",
                        help="reference: CDDFuse's evaluator exactly (default); corrected: textbook")
    parser.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--json", type=Path, help="write per-image and mean values as JSON")
    parser.add_argument("--csv", type=Path, help="write per-image and mean values as CSV")
    parser.add_argument("--digits", type=_digits, default=4, help="decimals in the printed table (>= 0)")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write a static HTML report DIR/index.html")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def warn(message):
        print(f"warning: {message}", file=sys.stderr)

    try:
        fused = _parse_fused(args.fused)
        result = evaluate_folders(args.a, args.b, fused, protocol=args.protocol,
                                  metrics=_parse_metrics(args.metrics), warn=warn)
        print(format_table(result, digits=args.digits))
        if args.json:
            write_json(result, args.json)
        if args.csv:
            write_csv(result, args.csv)
        if args.report:
            from ddfm.report import write_report
            print(f"report: {write_report(args.report, [result], args.a, args.b, fused)}", file=sys.stderr)
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the output file cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
