"""Paper table: rows = methods, column groups = datasets, the best of each column bold, the second underlined.

    python table.py --results results/ [--dataset TNO=IR_DIR,VI_DIR ...] --out table.tex --out table.md
    python table.py --json TNO=tno.json --json RoadScene=rs.json --published CDDFuse --out table.tex
    python table.py --dataset TNO=input/ir,input/vi --fused ours=out/{dataset} --fused mean=bl/{dataset}/mean

--results ROOT reads the layout ROOT/<method>/<dataset>/ (a metrics.json there, or fused images scored
against --dataset's sources); --fused NAME=PATTERN does the same for one method ({dataset} in the
path); --json DATASET=FILE takes every method of an evaluate.py --json file. --out writes .tex, .md or
.csv (repeatable; none: Markdown on stdout). Exit status: 0 ok, 1 input problem (missing or malformed
file, no pairs, a method without a result), 2 bad arguments (unknown metric, method or published
row, a published row of another dialect, several protocols without --protocol).
"""
import argparse
import sys
from pathlib import Path

from ddfm.files import write_atomic
from ddfm.metrics import ALL_PROTOCOLS, PROTOCOL_ALIASES
from ddfm.metrics.evaluation import EvaluationError, UsageError
from ddfm.present.formats import render_csv, render_latex, render_markdown
from ddfm.present.published import dialect_mismatches, load_published, select_published
from ddfm.present.results import collect_inputs, discover_layout
from ddfm.present.table import build_table

FORMATS = (".tex", ".md", ".csv")


def _named(kind):
    def parse(text):
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected NAME={kind}, got {text!r}")
        return name.strip(), value.strip()
    return parse


def _sources(text):
    name, value = _named("A_DIR,B_DIR")(text)
    folders = [f.strip() for f in value.split(",")]
    if len(folders) != 2 or not all(folders):
        raise argparse.ArgumentTypeError(f"expected NAME=A_DIR,B_DIR (two source folders), got {text!r}")
    return name, tuple(folders)


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()]


def _decimals(text):
    if not text.isdigit() or int(text) > 8:
        raise argparse.ArgumentTypeError(f"expected a whole number 0-8, got {text!r}")
    return int(text)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--results", action="append", default=[], metavar="ROOT", help="folder laid out ROOT/<method>/<dataset>/")
    add("--fused", action="append", default=[], type=_named("PATTERN"), metavar="NAME=PATTERN",
        help="one method's results, {dataset} in the path: a metrics.json, a folder holding one, or fused images")
    add("--dataset", action="append", default=[], type=_sources, metavar="NAME=A_DIR,B_DIR",
        help="a dataset's two source folders, to score fused images on the spot")
    add("--json", action="append", default=[], type=_named("FILE"), metavar="DATASET=FILE",
        help="every method of an evaluate.py --json / sample.py metrics.json file")
    add("--datasets", type=_names, help="the datasets to show, in order (default: as given, then found)")
    add("--protocol", choices=ALL_PROTOCOLS + tuple(PROTOCOL_ALIASES),
        help="the protocol to show when a file holds several (and to score images in; default reference)")
    add("--metrics", type=_names, help="comma-separated, in order (default: EN,SD,SF,MI,SCD,VIF,Qabf,SSIM)")
    add("--methods", type=_names, help="comma-separated measured methods, in order (default: as found)")
    add("--decimals", "--digits", type=_decimals, default=2, help="decimals shown (default 2)")
    add("--std", action="store_true", help="show mean ± sample std (default: mean only)")
    add("--transpose", action="store_true", help="datasets and metrics as rows, methods as columns")
    add("--published", type=_names, default=[], metavar="NAME,...",
        help="add published rows (ddfm/present/data/published_results.yaml), e.g. DDFM,CDDFuse")
    add("--allow-dialect-mismatch", action="store_true",
        help="show published rows computed in another dialect than the table's (marked)")
    add("--rank", default="measured", metavar="measured|all|NAME,...",
        help="rows that compete for bold/underline (default: the measured rows)")
    add("--allow-missing", action="store_true", help="a method without a result on a dataset shows \u2013")
    add("--out", action="append", default=[], type=Path, help="output .tex, .md or .csv (repeatable)")
    add("--standalone", action="store_true", help="LaTeX: a whole document with the page cropped to the table")
    add("--label", default="tab:comparison", help="LaTeX \\label (default tab:comparison)")
    return parser


def _datasets(args, patterns):
    names = [n for n, _ in args.json] + [n for n, _ in args.dataset]
    for root in args.results:
        found, datasets = discover_layout(root)
        patterns.update(found)
        names += datasets
    names = args.datasets or list(dict.fromkeys(names))
    if not names:
        raise UsageError("no dataset: give --results, --json DATASET=FILE or --dataset NAME=A_DIR,B_DIR")
    return names


def make_table(args, warn):
    patterns = {}
    names = _datasets(args, patterns)
    patterns.update(dict(args.fused))
    inputs = collect_inputs(names, dict(args.dataset), args.json, patterns, args.protocol, args.metrics,
                            args.allow_missing, warn)
    chosen = select_published(load_published(), args.published, names) if args.published else {}
    protocol = inputs[0].protocol
    mismatched = dialect_mismatches(chosen, protocol)
    if mismatched and not args.allow_dialect_mismatch:
        method, dataset, dialect = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UsageError(f"published {method} on {dataset} was computed in the {dialect} dialect, the table "
                         f"in {protocol}{more}: not comparable; --allow-dialect-mismatch shows it, marked")
    rank = args.rank if args.rank in ("measured", "all") else _names(args.rank)
    return build_table(inputs, args.metrics, args.methods, chosen, {m for m, _, _ in mismatched},
                       args.decimals, args.std, rank, args.allow_missing)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for out in args.out:
        if out.suffix.lower() not in FORMATS:
            parser.error(f"--out {out}: expected a file ending in {', '.join(FORMATS)}")
    if not (args.results or args.fused or args.json):
        parser.error("nothing to tabulate: give --results ROOT, --fused NAME=PATTERN or --json DATASET=FILE")

    def warn(message):
        print(f"warning: {message}", file=sys.stderr)

    try:
        table = make_table(args, warn)
        render = {".tex": lambda: render_latex(table, args.transpose, args.standalone, args.label),
                  ".md": lambda: render_markdown(table, args.transpose), ".csv": lambda: render_csv(table)}
        texts = [(out, render[out.suffix.lower()]()) for out in args.out]  # all made before any is written
        for out, text in texts:
            write_atomic(out, lambda handle, text=text: handle.write(text.encode("utf-8")))
            print(f"wrote {out}", file=sys.stderr)
        if not args.out:
            print(render_markdown(table, args.transpose), end="")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot write {getattr(err, 'filename', '') or 'output'}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0
