"""Published fusion results with their provenance, read from ddfm/present/data/published_results.yaml.

Every result names its source (paper and table, or repository file), its dataset, the number of
pairs it averages (None when the source does not say) and the dialect of the evaluator behind it:
``reference`` (CDDFuse's Python evaluator, our ``reference`` protocol), ``tang`` (the MATLAB
toolkit, our ``tang`` protocol) or ``unknown``. A metric the source does not print is None.
"""
from dataclasses import dataclass
from pathlib import Path

import yaml

from ddfm.metrics.evaluation import EvaluationError, UsageError

PUBLISHED_FILE = Path(__file__).resolve().parent / "data" / "published_results.yaml"
DIALECTS = ("reference", "tang", "unknown")
_FIELDS = ("method", "dataset", "pairs", "dialect", "decimals", "source", "values")


@dataclass(frozen=True)
class PublishedResult:
    method: str
    dataset: str
    pairs: object  # int, or None when the source does not state it
    dialect: str
    decimals: int  # the precision the source prints
    source: str  # the citation, resolved from the file's `sources`
    values: dict  # {metric: float or None}


def _number(value, where):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EvaluationError(f"{where}: expected a number or null, got {value!r}")
    return float(value)


def _result(entry, sources, where):
    if not isinstance(entry, dict) or set(entry) != set(_FIELDS):
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise EvaluationError(f"{where}: expected the fields {', '.join(_FIELDS)}, got {keys}")
    if entry["dialect"] not in DIALECTS:
        raise EvaluationError(f"{where}: dialect {entry['dialect']!r} is not one of {', '.join(DIALECTS)}")
    if entry["source"] not in sources:
        raise EvaluationError(f"{where}: source {entry['source']!r} is not listed under `sources`")
    pairs, decimals = entry["pairs"], entry["decimals"]
    if pairs is not None and (not isinstance(pairs, int) or isinstance(pairs, bool) or pairs < 1):
        raise EvaluationError(f"{where}: pairs must be a whole number >= 1 or null, got {pairs!r}")
    if not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0:
        raise EvaluationError(f"{where}: decimals must be a whole number >= 0, got {decimals!r}")
    if not isinstance(entry["values"], dict) or not entry["values"]:
        raise EvaluationError(f"{where}: values must be a non-empty mapping of metric to number")
    values = {str(m): _number(v, f"{where}, {m}") for m, v in entry["values"].items()}
    return PublishedResult(str(entry["method"]), str(entry["dataset"]), pairs, entry["dialect"],
                           decimals, " ".join(str(sources[entry["source"]]["cite"]).split()), values)


def load_published(path=PUBLISHED_FILE):
    """All results of the data file, checked field by field; a bad file is one EvaluationError line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EvaluationError(f"cannot read published results {path}: {reason}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) \
            or not isinstance(data.get("sources"), dict):
        raise EvaluationError(f"{path}: expected a mapping with `version`, `sources` and `results`")
    for key, source in data["sources"].items():
        if not isinstance(source, dict) or not source.get("cite"):
            raise EvaluationError(f"{path}: source {key!r} has no `cite`")
    results = [_result(entry, data["sources"], f"{path}, result {i + 1}")
               for i, entry in enumerate(data["results"])]
    seen = set()
    for r in results:
        if (r.method, r.dataset) in seen:
            raise EvaluationError(f"{path}: {r.method} on {r.dataset} is listed twice")
        seen.add((r.method, r.dataset))
    return results


def select_published(results, methods, datasets):
    """{method: {dataset: PublishedResult}} of the requested methods on the table's datasets.

    An unknown method, or one with a result on none of ``datasets``, is a UsageError.
    """
    known = list(dict.fromkeys(r.method for r in results))
    chosen = {}
    for method in methods:
        if method not in known:
            raise UsageError(f"no published results for '{method}'; the data file has: {', '.join(known)}")
        rows = {r.dataset: r for r in results if r.method == method and r.dataset in datasets}
        if not rows:
            has = ", ".join(r.dataset for r in results if r.method == method)
            raise UsageError(f"published '{method}' has no result on {', '.join(datasets)} (it has: {has})")
        chosen[method] = rows
    return chosen


def dialect_mismatches(chosen, protocol):
    """[(method, dataset, dialect)] of the chosen results not computed in the table's protocol."""
    return [(method, dataset, r.dialect) for method, rows in chosen.items()
            for dataset, r in rows.items() if r.dialect != protocol]
