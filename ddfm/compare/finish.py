"""After the fusion of every cell: score, then table, figures, reports and index (rank 0 only)."""
from pathlib import Path

from ddfm.common import RunError, one_line
from ddfm.compare import outputs
from ddfm.compare.scoring import Cell, ScoreCache, cell_images, cell_results, live_keys, score_cells, scorer_version
from ddfm.metrics.evaluation import EvaluationError, UsageError
from ddfm.present.figure import FigureError
from ddfm.savefolder.layout import Layout

FIGURE_PAIRS = 2


def _sources(cell):
    """The two source folders of a cell, from the sources its run.json names."""
    first = cell.images[0].sources
    return tuple(str(Path(p).parent) for p in first)


def _dataset_results(cells, protocols, cache, stems):
    """One result per protocol holding every cell (method) of a dataset that has scores."""
    merged = [{"protocol": p, "methods": {}} for p in protocols]
    for cell in cells:
        for into, result in zip(merged, cell_results(cell, protocols, cache, stems)):
            entry = result["methods"][cell.method]
            if entry["per_image"]:
                into["methods"][cell.method] = entry
    return merged if merged[0]["methods"] else []


def _grid(root, datasets, methods, cells, reports, problems_by_cell):
    rows = []
    for method in methods:
        row = []
        for dataset in datasets:
            cell = cells.get((method.label, dataset.name))
            link = reports.get((method.label, dataset.name))
            if cell is None:
                why = problems_by_cell.get((method.label, dataset.name), "not run")
                row.append({"ok": False, "text": "failed" if why != "not run" else why, "why": why, "link": None})
                continue
            text = f"{len(cell.images)} image(s)" + (f", {len(cell.errors)} not scored" if cell.errors else "")
            row.append({"ok": not cell.errors, "text": text, "why": "; ".join(cell.errors.values()),
                        "link": Path(link).relative_to(root).as_posix() if link else None})
        rows.append((method.label, row))
    return {"datasets": [d.name for d in datasets], "methods": [m.label for m in methods], "rows": rows}


def finish(args, root, datasets, methods, records, protocols, log, earlier=()):
    """Returns the problem lines it met (each also logged); `earlier`: those of the fusion, shown
    in the index too."""
    problems = []

    def problem(line):
        log(f"error: {line}")
        problems.append(line)

    version, cache = scorer_version(), ScoreCache(root)
    cells = {key: cell_images(Cell(*key, root / key[0] / key[1]), record, version)
             for key, record in records.items()}
    errors = score_cells(list(cells.values()), protocols, cache, args.jobs, log)
    for cell in cells.values():
        for image in cell.images:
            if image.key in errors:
                cell.errors[image.stem] = errors[image.key]
        for stem, why in cell.errors.items():
            problem(f"{cell.method} on {cell.dataset}: '{stem}' not scored: {why}")
    reports, figures = {}, {}
    for dataset in datasets:
        mine = [cells[(m.label, dataset.name)] for m in methods if (m.label, dataset.name) in cells]
        mine = [c for c in mine if c.images]
        stems = sorted({i.stem for c in mine for i in c.images})
        results = _dataset_results(mine, protocols, cache, stems)
        if not results:
            continue
        outputs.write_metrics(root, dataset.name, results)
        for cell in mine:
            keys = [i.key for i in cell.images]
            try:
                reports[(cell.method, cell.dataset)] = outputs.draw_report(
                    Layout(cell.save_dir), cell.method, cell_results(cell, protocols, cache, stems),
                    _sources(cell), records[(cell.method, cell.dataset)], keys)
            except (OSError, RunError, EvaluationError) as err:
                problem(f"{cell.method} on {cell.dataset}: report skipped: {one_line(err)}")
        shown = [s for s in stems if all(s in {i.stem for i in c.images} for c in mine)][:FIGURE_PAIRS]
        try:
            figures[dataset.name] = outputs.draw_figure(
                root, dataset.name, _sources(mine[0]), {c.method: Layout(c.save_dir).recon for c in mine},
                shown or stems[:FIGURE_PAIRS], sorted(i.key for c in mine for i in c.images))
        except (OSError, FigureError, EvaluationError) as err:
            problem(f"figure of {dataset.name} skipped: {one_line(err)}")
    try:
        tables = outputs.build_tables(root, [d.name for d in datasets], [m.label for m in methods], protocols,
                                      [n for n in args.published.split(",") if n.strip()],
                                      args.allow_dialect_mismatch, lambda line: log(f"warning: {line}"))
        for path in outputs.write_tables(root, tables):
            log(f"wrote {path}")
    except (UsageError, EvaluationError) as err:
        problem(f"table: {one_line(err)}")
        tables = {}
    failed = {}
    for line in list(earlier) + problems:
        for m in methods:
            for d in datasets:
                if line.startswith(f"{m.label} on {d.name}: "):
                    failed[(m.label, d.name)] = line.split(": ", 1)[1]
    index = outputs.write_index(root, tables, figures, _grid(root, datasets, methods, cells, reports, failed),
                                list(earlier) + problems)
    log(f"wrote {index}")
    try:
        dropped = cache.compact(live_keys(root, cells.values(), version))
        if dropped:
            log(f"compacted {cache.path}: {dropped} stale line(s) dropped")
    except OSError as err:  # housekeeping: the cache is still whole, only longer than it needs to be
        log(f"warning: {cache.path} not compacted: {one_line(err)}")
    return problems
