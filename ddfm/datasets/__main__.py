"""List and fetch the registry's verified test splits.

    python -m ddfm.datasets list
    python -m ddfm.datasets fetch NAME... [--root data] [--mirror BASE] [--jobs N]

A file's address is BASE/<owner>/<repo>/<commit>/<path>; BASE is GitHub's raw-file address unless
--mirror or DDFM_DATASETS_MIRROR names another copy with the same layout. Exit status: 0 every
file in place and checked, 1 a file could not be fetched or checked (one line each), 2 bad
arguments (unknown split, malformed registry, unusable --root).
"""
import argparse
import os
import sys

from ddfm.datasets.fetch import DEFAULT_MIRROR, MIRROR_ENV, RECORD, FetchError, RootError, fetch_split
from ddfm.datasets.layouts import ROOT_ENV, data_root
from ddfm.datasets.registry import REGISTRY_FILE, RegistryError, load_registry, select


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ddfm.datasets", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(REGISTRY_FILE), help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the splits, their size and where they come from")
    listing.add_argument("--root", default=str(data_root()),
                         help=f"data folder, to mark the splits already fetched (default data, or ${ROOT_ENV})")
    fetch = commands.add_parser("fetch", help="download and check splits into ROOT/NAME/")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--root", default=str(data_root()),
                       help=f"where the splits go (default data, or ${ROOT_ENV})")
    fetch.add_argument("--mirror", default=os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR,
                       help=f"BASE of BASE/<owner>/<repo>/<commit>/<path> (default {DEFAULT_MIRROR}, or ${MIRROR_ENV})")
    fetch.add_argument("--jobs", type=_positive, default=4, help="parallel downloads (default 4)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a file fails")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def list_splits(splits, root):
    print(f"{'name':26} {'pairs':>5} {'MB':>7}  {'status':10} source")
    for split in splits.values():
        status = "unverified" if not split.verified else \
            ("fetched" if os.path.exists(os.path.join(root, split.name, RECORD)) else "")
        commit = split.commit[:7] if split.commit else "?"
        size = f"{split.size / 1e6:7.1f}" if split.verified else f"{'-':>7}"
        print(f"{split.name:26} {split.pairs:5d} {size}  {status:10} {split.repository}@{commit}")


def main(argv=None):
    args = build_parser().parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    try:
        splits = load_registry(args.registry)
        if args.command == "list":
            list_splits(splits, args.root)
            return 0
        chosen = select(splits, args.names)
    except RegistryError as err:
        log(f"error: {err}")
        return 2
    failed = 0
    for split in chosen:
        try:
            outcome = fetch_split(split, args.root, args.mirror, args.jobs, args.timeout,
                                  progress=not args.quiet, log=log)
        except KeyboardInterrupt:
            log("interrupted: files in place are checked, partial ones kept as .part; run the same command "
                "again to resume")
            return 130
        except RootError as err:
            log(f"error: {err}")
            return 2
        except FetchError as err:
            log(f"error: {err}")
            failed += 1
            continue
        for line in outcome.failed:
            log(f"error: {line}")
        failed += len(outcome.failed)
        state = "incomplete" if outcome.failed else "ready"
        log(f"{split.name}: {state} in {outcome.folder} ({outcome.fetched} fetched, {outcome.present} already "
            f"in place, {len(outcome.failed)} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
