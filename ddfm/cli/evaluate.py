"""Score folders of fused images with the field's fusion metrics, in one or more evaluation dialects.

    python evaluate.py --ir DIR --vi DIR --fused DIR [--fused name=DIR ...]
                       [--protocol reference|cddfuse|corrected|tang|all ...] [--metrics EN,SD,...]
                       [--allow-missing] [--json OUT] [--csv OUT] [--digits N]

--a/--b are aliases of --ir/--vi (e.g. --a CT --b MRI); --input_dir DIR or --dataset NAME finds the
two source folders of a known layout instead (ddfm.datasets.layouts). --protocol may be repeated; `all` is every
protocol; one table is printed per protocol. A sample.py save folder (recon/ inside) is scored
through its recon/. Exit status: 0 ok, 1 evaluation error (missing folder or files, size mismatch,
unreadable image, unwritable output), 2 bad arguments (usage, unknown protocol or metric, clashing
method names).
"""
import argparse
import sys
from pathlib import Path

from ddfm.metrics import ALL_PROTOCOLS, PROTOCOL_ALIASES
from ddfm.metrics.evaluation import (
    EvaluationError,
    UsageError,
    evaluate_protocols,
    format_table,
    list_images,
    write_csv,
    write_json,
)
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
    """--ir/--vi (--a/--b) or --input_dir or --dataset, and --fused, shared with figure.py."""
    parser.add_argument("--ir", "--a", dest="a", help="first source folder (IR / CT)")
    parser.add_argument("--vi", "--b", dest="b", help="second source folder (VIS / MRI)")
    parser.add_argument("--input_dir", help="instead of --ir/--vi: the folder holding both, in a known "
                                            "layout (ir/vi, Ir/Vis, infrared/visible, CT|PET|SPECT/MRI, ...)")
    parser.add_argument("--dataset", metavar="NAME", help="instead of --ir/--vi: a fetched test split, "
                                                          "DATA_ROOT/NAME (python -m ddfm.datasets list)")
    parser.add_argument("--data_root", help="where --dataset looks (default data, or $DDFM_DATA_ROOT)")
    parser.add_argument("--fused", action="append", required=True, metavar="[NAME=]DIR",
                        help="folder of fused images (or a sample.py save folder); repeat for "
                             "several methods")


def check_source_arguments(parser, args):
    """Exactly one way of naming the sources: --ir and --vi, or --input_dir, or --dataset."""
    ways = [args.a is not None or args.b is not None, args.input_dir is not None, args.dataset is not None]
    if sum(ways) != 1 or (ways[0] and (args.a is None or args.b is None)):
        parser.error("name the sources with --ir and --vi, or --input_dir, or --dataset (one of them)")


def source_folders(args, note):
    """(first, second) source folders of the arguments; a known layout is found and said in one
    line. Raises EvaluationError (one line) when they cannot be found."""
    if args.a is not None:
        return args.a, args.b
    from ddfm.datasets.layouts import InputFolderError, dataset_folder, find_modality_folders
    try:
        root = Path(args.input_dir) if args.input_dir else dataset_folder(args.dataset, args.data_root)
        a, b = find_modality_folders(root, None, note)
    except InputFolderError as err:
        raise EvaluationError(str(err)) from None
    return root / a, root / b


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
    parser = build_parser()
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)

    def warn(message):
        print(f"warning: {message}", file=sys.stderr)

    def note(message):
        print(f"note: {message}", file=sys.stderr)

    try:
        fused = _parse_fused(args.fused, note)
        args.a, args.b = source_folders(args, note)
        results = evaluate_protocols(args.a, args.b, fused, protocols=args.protocol or ["reference"],
                                     metrics=_parse_metrics(args.metrics), warn=warn,
                                     allow_missing=args.allow_missing)
        print("\n\n".join(format_table(result, digits=args.digits) for result in results))
        if args.json:
            write_json(results, args.json)
        if args.csv:
            write_csv(results, args.csv)
        if args.report:
            from ddfm.present.report import write_report
            print(f"report: {write_report(args.report, results, args.a, args.b, fused)}", file=sys.stderr)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (EvaluationError, OSError) as exc:  # OSError: e.g. the output file cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
