"""Paper tables: rows = methods, column groups = datasets, each group the same metrics, ranked.

    table = build_table([DatasetResult, ...], metrics=[...], decimals=2, published=chosen)

Numbers are rounded half away from zero (2.675 -> 2.68, -0.125 -> -0.13) on the shortest decimal
text of the float, i.e. as a reader rounds the number they see, not as binary floating point
would (Python's round(2.675, 2) is 2.67). Ranking compares the values as printed: two methods
that print the same number share the rank. The best value of a column has rank 1 (bold) and the
next distinct value rank 2 (underlined); NaN and missing cells are shown as "–" and never ranked.
Directions (higher or lower is better) come from ddfm.present.report's one table of directions.
Rendering to LaTeX, Markdown and CSV is in ddfm.present.formats.
"""
import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from ddfm.metrics.evaluation import EvaluationError, UsageError
from ddfm.metrics.reference import METRICS
from ddfm.present.report import direction

TABLE_METRICS = METRICS[:8]  # EN SD SF MI SCD VIF Qabf SSIM: the eight columns of the field's tables
MISSING = "\u2013"  # en dash


@dataclass
class DatasetResult:
    """One dataset's evaluation in one protocol: {method: {metric: (mean, std or None)}}."""
    name: str
    protocol: str
    methods: dict
    pairs: dict  # {method: number of pairs its mean is over}
    origin: dict = field(default_factory=dict)  # {method: file or folder}, for messages


@dataclass
class Cell:
    mean: object = None  # Decimal as printed, or None (missing / NaN)
    std: object = None
    decimals: int = 2
    rank: int = 0  # 1 best, 2 second best, 0 otherwise

    def text(self, value):
        return MISSING if value is None else f"{value:.{self.decimals}f}"


@dataclass
class Row:
    name: str
    cells: dict  # {(dataset, metric): Cell}
    published: object = None  # {dataset: PublishedResult} for a published row
    other_dialect: bool = False  # published in another dialect than the table's (allowed explicitly)
    pairs: dict = field(default_factory=dict)  # {dataset: pairs} of a measured row


@dataclass
class Table:
    protocol: str
    datasets: list
    pairs: dict  # {dataset: "3" or "2–3"}
    metrics: list
    rows: list
    decimals: int
    with_std: bool
    ranked_over: object  # "measured", "all" or a list of row names
    notes: list = field(default_factory=list)  # further footnotes (plain text), e.g. why a cell is empty

    @property
    def columns(self):
        return [(d, m) for d in self.datasets for m in self.metrics]


def round_half_away(value, decimals):
    """float -> Decimal rounded half away from zero at ``decimals``; None for None, NaN or inf."""
    if value is None or not math.isfinite(value):
        return None
    rounded = Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    return rounded.copy_abs() if rounded == 0 else rounded  # no "-0.00"


def rank_column(values, higher):
    """{row: Decimal or None} -> {row: 1 | 2} for the best and the next distinct value (dense ranks)."""
    distinct = sorted({v for v in values.values() if v is not None}, reverse=bool(higher))
    if higher is None or not distinct:
        return {}
    places = {v: place for place, v in enumerate(distinct[:2], start=1)}
    return {row: places[v] for row, v in values.items() if v in places}


def _match_names(wanted, known, what):
    """Names as typed (any case) -> names as known, in the order typed; an unknown one is a UsageError."""
    by_lower = {k.lower(): k for k in known}
    unknown = [w for w in wanted if w.lower() not in by_lower]
    if unknown or not wanted:
        raise UsageError(f"unknown {what} {', '.join(unknown) or '(none given)'}; the inputs have: "
                         f"{', '.join(known)}")
    return list(dict.fromkeys(by_lower[w.lower()] for w in wanted))


def _choose_metrics(datasets, metrics):
    available = list(dict.fromkeys(m for d in datasets for cells in d.methods.values() for m in cells))
    if metrics is None:
        return [m for m in TABLE_METRICS if m in available] or available
    return _match_names(metrics, available, "metric(s)")


def _choose_methods(datasets, methods, allow_missing):
    measured = list(dict.fromkeys(m for d in datasets for m in d.methods))
    chosen = measured if methods is None else _match_names(methods, measured, "method(s)")
    for d in datasets:
        absent = [m for m in chosen if m not in d.methods]
        if absent and not allow_missing:
            raise EvaluationError(f"method(s) {', '.join(absent)} have no result for dataset {d.name} "
                                  f"(use --allow-missing to show {MISSING})")
    return chosen


def _pairs_text(dataset, methods):
    counts = [dataset.pairs[m] for m in methods if m in dataset.pairs]
    if not counts:
        return "?"
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}\u2013{high}"


def _measured_row(method, datasets, metrics, decimals, with_std):
    cells = {}
    for d in datasets:
        values = d.methods.get(method, {})
        for metric in metrics:
            mean, std = values.get(metric, (None, None))
            cells[(d.name, metric)] = Cell(round_half_away(mean, decimals),
                                           round_half_away(std, decimals) if with_std else None, decimals)
    return Row(method, cells, pairs={d.name: d.pairs[method] for d in datasets if method in d.pairs})


def _published_row(method, results, datasets, metrics, decimals, other_dialect):
    cells = {}
    for d in datasets:
        result = results.get(d.name)
        for metric in metrics:
            value = result.values.get(metric) if result else None
            shown = min(decimals, result.decimals) if result else decimals  # never more than printed
            cells[(d.name, metric)] = Cell(round_half_away(value, shown), None, shown)
    return Row(method, cells, published=results, other_dialect=other_dialect)


def _rank_rows(rows, ranked_over):
    if ranked_over == "measured":
        return [r for r in rows if r.published is None]
    if ranked_over == "all":
        return list(rows)
    names = [r.name for r in rows]
    chosen = _match_names(list(ranked_over), names, "row(s) to rank")
    return [r for r in rows if r.name in chosen]


def build_table(datasets, metrics=None, methods=None, published=None, other_dialect=(), decimals=2,
                with_std=False, ranked_over="measured", allow_missing=False):
    """The ranked table of ``datasets`` (DatasetResult, one protocol) plus published rows.

    ``published`` is {method: {dataset: PublishedResult}} (ddfm.present.published.select_published);
    ``other_dialect`` names the published methods shown although another dialect (marked);
    ``ranked_over`` is "measured", "all" or a list of row names. Raises UsageError for bad names,
    EvaluationError for a method without a result on a dataset (unless ``allow_missing``).
    """
    protocols = sorted({d.protocol for d in datasets})
    if len(protocols) != 1:
        raise UsageError(f"the inputs mix protocols ({', '.join(protocols)}); choose one with --protocol")
    metrics = _choose_metrics(datasets, metrics)
    methods = _choose_methods(datasets, methods, allow_missing)
    rows = [_measured_row(m, datasets, metrics, decimals, with_std) for m in methods]
    rows += [_published_row(m, results, datasets, metrics, decimals, m in other_dialect)
             for m, results in (published or {}).items()]
    ranked = _rank_rows(rows, ranked_over)
    for dataset, metric in [(d.name, m) for d in datasets for m in metrics]:
        places = rank_column({id(r): r.cells[(dataset, metric)].mean for r in ranked}, direction(metric))
        for row in ranked:
            row.cells[(dataset, metric)].rank = places.get(id(row), 0)
    return Table(protocols[0], [d.name for d in datasets], {d.name: _pairs_text(d, methods) for d in datasets},
                 metrics, rows, decimals, with_std, ranked_over)
