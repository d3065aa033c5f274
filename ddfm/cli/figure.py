"""Paper figure: the same pairs fused by several methods side by side, with magnified boxes.

    python figure.py --ir DIR --vi DIR --fused name=DIR [--fused name=DIR ...] --stems S1,S2
                     [--zoom x,y,w,h ...|--zoom auto|--zoom STEM:x,y,w,h] --out FILE.png|FILE.pdf

--input_dir DIR or --dataset NAME may stand for --ir/--vi (a known layout, see evaluate.py).
Rows are pairs, columns IR | VIS | methods (--transpose swaps them). Each --zoom box (source pixel
coordinates, up to 3) is outlined on every panel of a pair and magnified (nearest neighbour,
integer factor) into an inset; --zoom auto picks the window where the methods disagree most.
Exit status: 0 ok, 1 input error (missing folder, stem or file, box outside an image, unwritable
output), 2 bad arguments.
"""
import argparse
import sys
from pathlib import Path

from ddfm.cli.evaluate import _parse_fused, add_folder_arguments, check_source_arguments, source_folders
from ddfm.metrics.evaluation import EvaluationError
from ddfm.present.figure import WIDTHS, FigureError, make_figure
from ddfm.present.zoom import MAX_BOXES, PLACEMENTS, ZoomError, boxes_for, parse_box


def _box(text):
    try:
        return parse_box(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _size(text):
    try:
        w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,H in pixels, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected W,H >= 1, got {text!r}")
    return w, h


def _width(text):
    if text in WIDTHS:
        return WIDTHS[text]
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.5 <= value <= 40:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(WIDTHS)} or inches (0.5-40), got {text!r}")
    return value


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
        return value
    return parse


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_folder_arguments(parser)
    parser.add_argument("--stems", required=True, help="comma-separated pairs to show, e.g. 07,24")
    parser.add_argument("--zoom", action="append", type=_box, default=[], metavar="x,y,w,h|auto",
                        help=f"box to magnify, in source pixels, on every pair or (STEM:x,y,w,h) on "
                        f"one; up to {MAX_BOXES} per pair")
    parser.add_argument("--zoom-size", type=_size, metavar="W,H", help="window of --zoom auto "
                        "(default: a fifth of the shorter side)")
    parser.add_argument("--zoom-factor", type=_positive(int), help="inset magnification "
                        "(default: the largest that fits)")
    parser.add_argument("--inset", choices=PLACEMENTS, default="auto",
                        help="inset corner (br, bl, tr, tl), below the panel, or auto (default: the "
                        "first corner that hides no box, else below)")
    parser.add_argument("--transpose", action="store_true", help="pairs as columns, methods as rows")
    parser.add_argument("--width", type=_width, default=WIDTHS["page"],
                        help="figure width: column (3.5 in), page (7.16 in, default) or inches")
    parser.add_argument("--dpi", type=_positive(int), default=300, help="PNG resolution (default 300)")
    parser.add_argument("--scale", type=_positive(float),
                        help="output pixels per source pixel (overrides --width; 1 = unresampled)")
    parser.add_argument("--source-names", default="IR,VIS", help="titles of the two source columns")
    parser.add_argument("--allow-missing", action="store_true",
                        help="show an empty panel marked 'missing' for a stem a method lacks")
    parser.add_argument("--out", type=Path, required=True, help="output .png or .pdf")
    return parser


def _check_args(parser, args):
    if args.out.suffix.lower() not in (".png", ".pdf"):
        parser.error(f"--out {args.out}: expected a .png or .pdf file")
    stems = [s.strip() for s in args.stems.split(",") if s.strip()]
    names = [s.strip() for s in args.source_names.split(",")]
    if not stems:
        parser.error("--stems: no stem given")
    if len(names) != 2 or not all(names):
        parser.error(f"--source-names: expected two titles, got {args.source_names!r}")
    unknown = sorted({stem for stem, _ in args.zoom if stem is not None} - set(stems))
    if unknown:
        parser.error(f"--zoom names stem(s) {', '.join(unknown)} that --stems does not show")
    for stem in stems:
        count = len(boxes_for(args.zoom, stem))
        if count > MAX_BOXES:
            parser.error(f"--zoom: {count} boxes for pair '{stem}'; at most {MAX_BOXES} boxes")
    return stems, tuple(names)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    stems, names = _check_args(parser, args)
    try:
        fused = _parse_fused(args.fused)
        args.a, args.b = source_folders(args, lambda message: print(f"note: {message}", file=sys.stderr))
        _, _, drawn = make_figure(args.a, args.b, fused, stems, args.out, zooms=args.zoom,
                                   placement=args.inset, factor=args.zoom_factor,
                                   auto_size=args.zoom_size, transpose=args.transpose, dpi=args.dpi,
                                   width_in=args.width, scale=args.scale, source_names=names,
                                   allow_missing=args.allow_missing)
    except (FigureError, ZoomError, EvaluationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. the output cannot be written
        print(f"error: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({drawn.size[0]}x{drawn.size[1]} px)")
    return 0
