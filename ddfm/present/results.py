"""The inputs of a paper table: metrics.json files, or folders of fused images scored on the spot.

Two ways in, which mix:
- ``json_files`` [(dataset, path)]: every method of a file written by ``evaluate.py --json`` or
  ``sample.py evaluate=true`` (layout in ddfm.metrics.evaluation) is one row of that dataset's group;
- ``patterns`` {method: "results/ours/{dataset}"}: for each dataset the path is a metrics.json
  file, a folder holding one, or a folder of fused images (or a sample.py save folder, scored
  through its recon/) evaluated against the dataset's ``sources``. ``discover_layout(root)`` makes
  these patterns for the folder layout ROOT/<method>/<dataset>/, so no cell needs typing.

A file holding several protocols needs ``protocol``; images are scored in ``protocol`` (default:
the protocol of the files read, else reference). Problems are one-line EvaluationErrors (input)
or UsageErrors (bad arguments).
"""
import json
import math
from pathlib import Path

from ddfm.metrics.evaluation import EvaluationError, UsageError, evaluate_protocols, list_images
from ddfm.metrics.reference import canonical_protocol
from ddfm.present.table import TABLE_METRICS, DatasetResult
from ddfm.savefolder.layout import METRICS as METRICS_FILE, RECON as SAVE_FOLDER_IMAGES  # sample.py's save folder

_FORMAT = 'expected evaluate.py --json output: {"protocol", "methods"} or {"protocols": [...]}'


def _is_result(data):
    return (isinstance(data, dict) and isinstance(data.get("protocol"), str)
            and isinstance(data.get("methods"), dict) and bool(data["methods"])
            and all(isinstance(m, dict) and isinstance(m.get("mean"), dict) for m in data["methods"].values()))


def read_results(path):
    """The protocol results of one metrics file, checked against evaluate.py's layout."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"metrics file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not a text file; {_FORMAT}") from None
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); {_FORMAT}") from None
    results = data.get("protocols") if isinstance(data, dict) and "protocols" in data else [data]
    if not isinstance(results, list) or not results or not all(_is_result(r) for r in results):
        raise EvaluationError(f"{path}: {_FORMAT}")
    return results


def pick_protocol(results, path, protocol=None):
    """(protocol, result) of ``protocol`` in a file (the only one when None; several: UsageError)."""
    try:
        have = [canonical_protocol(r["protocol"]) for r in results]
    except ValueError as err:
        raise EvaluationError(f"{path}: {err}") from None
    if protocol is None:
        if len(results) > 1:
            raise UsageError(f"{path} holds the protocols {', '.join(have)}: choose one with --protocol")
        return have[0], results[0]
    if protocol not in have:
        raise EvaluationError(f"{path} has no {protocol} results (it has: {', '.join(have)})")
    return protocol, results[have.index(protocol)]


def _mean_std(data):
    """{metric: (mean, sample std or None)} and the number of pairs of one method's entry."""
    per_image = data.get("per_image") or {}
    cells = {}
    for metric, mean in data["mean"].items():
        values = [row[metric] for row in per_image.values() if metric in row]
        std = None
        if len(values) > 1:
            centre = math.fsum(values) / len(values)
            std = math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1))
        cells[metric] = (mean, std)
    return cells, len(per_image) if "per_image" in data else None


def _methods_of(result, path, dataset, name=None):
    """{method: (cells, pairs)} of a result; ``name`` renames its single method (or picks by name)."""
    methods = result["methods"]
    if name is not None:
        if len(methods) > 1 and name not in methods:
            raise EvaluationError(f"{path} holds the methods {', '.join(methods)}, none named '{name}'")
        methods = {name: methods[name] if name in methods else next(iter(methods.values()))}
    out = {}
    for method, data in methods.items():
        cells, pairs = _mean_std(data)
        if not cells or pairs == 0:
            raise EvaluationError(f"{path}: method '{method}' has no scored pairs for dataset {dataset}")
        out[method] = (cells, pairs)
    return out


def _image_folder(path):
    inner = path / SAVE_FOLDER_IMAGES
    return inner if inner.is_dir() and not list_images(path) else path


def _locate(pattern, dataset):
    """(kind, path) of one cell: ("json", file), ("images", folder) or (None, path) when absent."""
    path = Path(pattern.replace("{dataset}", dataset))
    if path.is_file() and path.suffix.lower() == ".json":
        return "json", path
    if path.is_dir():
        return ("json", path / METRICS_FILE) if (path / METRICS_FILE).is_file() else ("images", _image_folder(path))
    return None, path


def discover_layout(root):
    """ROOT/<method>/<dataset>/ -> ({method: "ROOT/<method>/{dataset}"}, [dataset names, sorted])."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"results folder not found: {root}")
    methods = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    datasets = sorted({d.name for m in methods for d in m.iterdir() if d.is_dir() and not d.name.startswith(".")})
    if not methods or not datasets:
        raise EvaluationError(f"{root}: expected the layout {root}/<method>/<dataset>/, found no such folders")
    return {m.name: str(m / "{dataset}") for m in methods}, datasets


def collect_inputs(datasets, sources=None, json_files=(), patterns=None, protocol=None, metrics=None,
                   allow_missing=False, warn=None):
    """[DatasetResult] in the order of ``datasets`` (names), from files and folders as the module doc."""
    sources, patterns = sources or {}, patterns or {}
    protocol = None if protocol is None else canonical_protocol(protocol)
    found = {d: {} for d in datasets}  # {dataset: {method: (cells, pairs)}}
    origin = {d: {} for d in datasets}
    protocols = {d: set() for d in datasets}
    to_score = {d: {} for d in datasets}  # {dataset: {method: image folder}}
    for dataset, path in json_files:
        used, result = pick_protocol(read_results(path), path, protocol)
        protocols[dataset].add(used)
        for method, entry in _methods_of(result, path, dataset).items():
            if method in found[dataset]:
                raise UsageError(f"method '{method}' appears twice for dataset {dataset} ({path})")
            found[dataset][method], origin[dataset][method] = entry, path
    for method, pattern in patterns.items():
        for dataset in datasets:
            kind, path = _locate(pattern, dataset)
            if kind == "json":
                used, result = pick_protocol(read_results(path), path, protocol)
                protocols[dataset].add(used)
                found[dataset].update(_methods_of(result, path, dataset, name=method))
                origin[dataset][method] = path
            elif kind == "images":
                if dataset not in sources:
                    raise EvaluationError(f"{path}: no {METRICS_FILE}, and no --dataset {dataset}=A_DIR,B_DIR "
                                          f"to score its images")
                to_score[dataset][method] = path
            elif not allow_missing:
                raise EvaluationError(f"method '{method}' has no result for dataset {dataset}: {path} does not "
                                      f"exist (use --allow-missing to leave the cells empty)")
    seen = sorted(set().union(*protocols.values()))
    score_in = protocol or (seen[0] if len(seen) == 1 else "reference")
    for dataset, folders in to_score.items():
        if folders:
            result = evaluate_protocols(*sources[dataset], folders, protocols=[score_in],
                                        metrics=list(metrics or TABLE_METRICS),
                                        warn=warn, allow_missing=allow_missing)[0]
            protocols[dataset].add(result["protocol"])
            found[dataset].update(_methods_of(result, "evaluation", dataset))
            origin[dataset].update(folders)
    out = []
    for dataset in datasets:
        if not found[dataset]:
            raise EvaluationError(f"no results for dataset {dataset}: give its metrics.json or fused images")
        mixed = sorted(protocols[dataset])
        if len(mixed) > 1:
            raise UsageError(f"dataset {dataset} mixes protocols ({', '.join(mixed)}); choose one with --protocol")
        out.append(DatasetResult(dataset, mixed[0], {m: c for m, (c, _) in found[dataset].items()},
                                 {m: p for m, (_, p) in found[dataset].items() if p}, origin[dataset]))
    return out
