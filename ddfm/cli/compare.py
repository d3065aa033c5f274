"""`ddfm compare` (and `python compare.py`): every method on every dataset, scored, tabled, drawn.

    python compare.py --datasets tno-cddfuse,mri_ct-cddfuse --methods ddfm,ccf,prior-free \
        --save_dir results [--root data] [--protocol reference|tang|all] [--published CDDFuse,DDFM] \
        [--jobs N] [key=value ...]

Each method x dataset is a sample.py save folder SAVE_DIR/<method>/<dataset>/ (resumable, locked,
journalled; under torchrun the fusion is sharded as sample.py shards it). Then every folder is
scored in the chosen protocols in --jobs processes (scores cached by content hash: an unchanged
call scores nothing), and SAVE_DIR gets table.{md,tex,csv}, figures/<dataset>.png, metrics/ and
index.html linking each folder's report. A missing dataset, an unknown method or a cell that
fails is one line; the other cells still run. Exit status: 0 ok, 1 a missing dataset or a failed
cell or pair, 2 bad arguments (unknown method, bad protocol, unusable --save_dir).
"""
import argparse
import os
import signal
import sys
from pathlib import Path

from ddfm import CONFIG_DIR as CONFIGS
from ddfm.compare.plan import PlanError, resolve_dataset, resolve_method, split_list


def _rank0():
    """Whether this process speaks for the call: under torchrun only rank 0 prints a problem."""
    return os.environ.get("RANK", "0") == "0"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose messages (usage, errors, help) only rank 0 prints."""

    def _print_message(self, message, file=None):
        if _rank0():
            super()._print_message(message, file)


def build_parser():
    parser = _Parser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--datasets", action="append", required=True, metavar="NAME|NAME=FOLDER,...",
        help="fetched splits (python -m ddfm.datasets list) or NAME=FOLDER of one's own pairs")
    add("--methods", action="append", required=True, metavar="[LABEL=]METHOD[:key=value...],...",
        help="registered methods, presets of configs/ by name, prior-free; e.g. ddfm25=ddfm:timestep_respacing=25")
    add("--save_dir", default="results", help="the comparison's folder (default results)")
    add("--root", help="where fetched datasets are (default data, or $DDFM_DATA_ROOT)")
    add("--protocol", action="append", metavar="reference|tang|corrected|all",
        help="evaluation dialect(s) (default reference); the first one makes table.*")
    add("--published", default="", metavar="NAME,...", help="published rows for the table, e.g. CDDFuse,DDFM")
    add("--allow-dialect-mismatch", action="store_true", help="show published rows of another dialect (marked)")
    add("--jobs", type=int, default=os.cpu_count() or 1, help="scoring processes (default: the core count)")
    add("--model_config", default=str(CONFIGS / "model_config_imagenet.yaml"))
    add("--diffusion_config", default=str(CONFIGS / "diffusion_config.yaml"))
    add("--quiet", action="store_true", help="no progress bars")
    add("overrides", nargs="*", metavar="key=value", help="config keys for every method, e.g. device=cuda")
    return parser


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _error(line):
    """One problem line; the other ranks of a torchrun call stay silent (the same line otherwise)."""
    if _rank0():
        _log(f"error: {line}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _usable_root(root):
    """One line when the comparison's folder cannot be made or written, else ''."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{root}: cannot make the results folder ({err.strerror or err})"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"{root}: the results folder is not writable"
    return ""


def fuse_cell(args, method, dataset, save_dir):
    """Run one cell through sample.py's driver; returns (run.json record or None, problem line or '')."""
    from ddfm.common import USER_ERRORS, one_line
    from ddfm.config import load_config
    from ddfm.distributed import Rank0Failed
    from ddfm.run import run

    name = f"{method.label} on {dataset.name}"
    overrides = list(args.overrides) + method.overrides + [
        ("input_dir", str(dataset.folder)), ("evaluate", False), ("report", False)]
    try:
        config = load_config(args.model_config, args.diffusion_config, method.fusion_config, overrides)
        outcome = run(config, save_dir=save_dir, log=lambda line: _log(f"[{method.label}/{dataset.name}] {line}"),
                      progress=not args.quiet)
    except Rank0Failed:
        return None, f"{name}: failed (rank 0 says why)"
    except USER_ERRORS as err:
        return None, f"{name}: {one_line(err)}"
    counts = outcome.record["counts"]
    problem = f"{name}: {counts['failed']} pair(s) failed (see above)" if counts["failed"] else ""
    return outcome.record, problem


def _plan(args):
    """(datasets, methods, usage problems, input problems)."""
    usage, missing, methods = [], [], []
    for spec in split_list(args.methods):
        try:
            methods.append(resolve_method(spec))
        except PlanError as err:
            usage.append(str(err))
    labels = [m.label for m in methods]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        usage.append(f"method '{label}' is given twice; name one LABEL=METHOD")
    datasets = []
    for spec in split_list(args.datasets):
        try:
            dataset = resolve_dataset(spec, args.root)
        except PlanError as err:
            usage.append(str(err))
            continue
        if dataset.problem:
            missing.append(dataset.problem)
        else:
            datasets.append(dataset)
    return datasets, methods, usage, missing


def main(argv=None):
    parser = build_parser()
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    from ddfm.metrics.evaluation import UsageError, expand_protocols
    try:
        protocols = expand_protocols(args.protocol or ["reference"])
    except UsageError as err:
        parser.error(str(err))
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected 1 or more")
    datasets, methods, usage, problems = _plan(args)
    root = Path(args.save_dir)
    for line in usage + problems:
        _error(line)
    unusable = _usable_root(root)
    if unusable:
        _error(unusable)
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops a comparison like Ctrl-C
    try:
        return _run(args, root, datasets, methods, protocols, usage, problems)
    except KeyboardInterrupt:
        if _rank0():
            _log(f"interrupted: what was fused and scored so far is kept in {root}; run the same command "
                 f"again to resume")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args, root, datasets, methods, protocols, usage, problems):
    """Fuse every cell (each sharded over the ranks), then rank 0 scores and writes the outputs;
    returns the exit status, rank 0's on every rank: the ranks end together (one that exited
    early with an error would make torchrun stop rank 0 in the middle of its work)."""
    from ddfm.distributed import Rank0Failed, from_rank0
    records, new = {}, []
    for dataset in datasets:
        for method in methods:
            record, problem = fuse_cell(args, method, dataset, root / method.label / dataset.name)
            if problem:
                _error(problem)
                new.append(problem)
            if record is not None:
                records[(method.label, dataset.name)] = record

    def finish_on_rank0():
        from ddfm.compare.finish import finish
        found = finish(args, root, datasets, methods, records, protocols, _log, problems + new)
        return 2 if usage else 1 if problems or new or found else 0
    try:
        return from_rank0(finish_on_rank0)
    except Rank0Failed:  # rank 0 failed while finishing and says why
        return 1
