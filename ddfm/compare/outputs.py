"""What a comparison leaves beside its save folders: the paper table (table.{md,tex,csv}), one
figure per dataset (figures/<dataset>.png) and index.html linking the table, the figures and the
report of every cell. Figures and reports are redrawn only when what they show changed (a stamp
beside each holds the content keys they were drawn from), so an unchanged call rebuilds in seconds.
"""
import hashlib
from pathlib import Path

from ddfm.files import write_atomic
from ddfm.metrics.evaluation import UsageError, write_json
from ddfm.present.formats import caption, footnotes, render_csv, render_latex, render_markdown
from ddfm.present.published import dialect_mismatches, load_published, select_published
from ddfm.present.report import ARROWS, direction
from ddfm.present.results import collect_inputs
from ddfm.present.table import MISSING, build_table

# The CDDFuse test splits are the ones its published rows were scored on (ddfm/datasets/registry.yaml).
PUBLISHED_AS = {"tno-cddfuse": "TNO", "roadscene-cddfuse": "RoadScene", "mri_ct-cddfuse": "MRI_CT",
                "mri_pet-cddfuse": "MRI_PET", "mri_spect-cddfuse": "MRI_SPECT"}
TEMPLATE = "compare_index.html.j2"


def _write_text(path, text):
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def stamp_of(*parts):
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def up_to_date(output, stamp):
    """Whether `output` exists and was drawn from inputs with this stamp (kept in .<name>.stamp)."""
    marker = output.parent / f".{output.name}.stamp"
    return output.exists() and marker.is_file() and marker.read_text() == stamp


def mark_drawn(output, stamp):
    _write_text(output.parent / f".{output.name}.stamp", stamp)


def write_metrics(root, dataset, results):
    """root/metrics/<dataset>.json: every method of the dataset in evaluate.py --json's layout."""
    path = Path(root) / "metrics" / f"{dataset}.json"
    write_json(results, path)
    return path


def _published(names, datasets, protocol, warn):
    """Published rows for the table's datasets (the CDDFuse splits by their published names); a
    name without a result on them is one warning, not the end of the table."""
    by_name = {PUBLISHED_AS.get(d, d): d for d in datasets}
    results, chosen = load_published(), {}
    for name in names:
        try:
            chosen.update(select_published(results, [name], list(by_name)))
        except UsageError as err:
            warn(f"--published: {err}")
    chosen = {m: {by_name[d]: r for d, r in rows.items()} for m, rows in chosen.items()}
    return chosen, dialect_mismatches(chosen, protocol)


def build_tables(root, datasets, methods, protocols, published=(), allow_dialect_mismatch=False, warn=print):
    """{protocol: Table} of the datasets that have results; missing cells show – with a footnote.
    A published row of another dialect is left out with a warning unless allowed (then marked)."""
    json_files = [(d, Path(root) / "metrics" / f"{d}.json") for d in datasets]
    json_files = [(d, path) for d, path in json_files if path.is_file()]
    tables = {}
    for protocol in protocols:
        if not json_files:
            break
        inputs = collect_inputs([d for d, _ in json_files], json_files=json_files, protocol=protocol)
        chosen, mismatched = _published(published, [d.name for d in inputs], protocol, warn)
        if mismatched and not allow_dialect_mismatch:
            dropped = sorted({m for m, _, _ in mismatched})
            warn(f"--published: {', '.join(dropped)} not shown in the {protocol} table: published in another "
                 f"dialect (--allow-dialect-mismatch shows it, marked)")
            chosen = {m: rows for m, rows in chosen.items() if m not in dropped}
            mismatched = []
        absent = [f"{m} on {d.name}" for m in methods for d in inputs if m not in d.methods]
        for m in methods:  # a method without any result is still a row, all –
            if not any(m in d.methods for d in inputs):
                inputs[0].methods[m] = {}
        table = build_table(inputs, methods=list(methods), published=chosen,
                            other_dialect={m for m, _, _ in mismatched}, allow_missing=True)
        if absent:
            table.notes.append(f"{MISSING}: no result for {', '.join(absent)} (see the log of compare.py "
                               f"and index.html).")
        tables[protocol] = table
    return tables


def write_tables(root, tables):
    """table.{md,tex,csv} of the first protocol, table_<protocol>.* of each further one."""
    written = []
    for k, (protocol, table) in enumerate(tables.items()):
        stem = "table" if k == 0 else f"table_{protocol}"
        for suffix, text in ((".md", render_markdown(table)), (".tex", render_latex(table)),
                             (".csv", render_csv(table))):
            path = Path(root) / f"{stem}{suffix}"
            _write_text(path, text)
            written.append(path)
    return written


def html_table(table):
    """The table as rows of (text, rank) for the index page: a header row of datasets (each over
    its metric columns) and one of metrics with their direction arrow, then one row per method."""
    groups = [(d, sum(1 for c in table.columns if c[0] == d)) for d in table.datasets]
    head = ["Method"] + [f"{m}{ARROWS[direction(m)]}" for _, m in table.columns]
    rows = [[(row.name + (" \u2020" if row.published is not None else ""), 0)]
            + [(row.cells[c].text(row.cells[c].mean), row.cells[c].rank) for c in table.columns]
            for row in table.rows]
    return {"protocol": table.protocol, "groups": groups, "head": head, "rows": rows, "caption": caption(table),
            "notes": footnotes(table)}


def write_index(root, tables, figures, cells, problems):
    """root/index.html: the tables, the figures and a methods x datasets grid of run reports."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from ddfm.present.report import TEMPLATES
    root = Path(root)
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    table_files = sorted(p.name for p in root.glob("table*.*") if p.suffix in (".md", ".tex", ".csv"))
    html = env.get_template(TEMPLATE).render(
        tables=[html_table(t) for t in tables.values()], table_files=table_files,
        figures=[(d, p.relative_to(root).as_posix()) for d, p in figures.items()],
        grid=cells, problems=problems)
    index = root / "index.html"
    _write_text(index, html)
    return index


def draw_figure(root, dataset, sources, fused_dirs, stems, keys):
    """figures/<dataset>.png: two pairs, every method, one automatic zoom box each; redrawn only
    when an image it shows changed (keys: the content keys of the panels)."""
    from ddfm.present.figure import WIDTHS, make_figure
    out = Path(root) / "figures" / f"{dataset}.png"
    stamp = stamp_of(sorted(fused_dirs), stems, keys)
    if up_to_date(out, stamp):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    names = tuple(Path(s).name.upper() for s in sources)
    make_figure(*sources, fused_dirs, stems, out, zooms=[(None, "auto")], width_in=WIDTHS["page"], dpi=150,
                source_names=names, allow_missing=True)
    mark_drawn(out, stamp)
    return out


def draw_report(layout, method, results, sources, record, keys):
    """The cell's report in its save folder (report/index.html), under the folder's lock, from the
    cached scores; redrawn only when its images or scores changed."""
    from ddfm.present.report import write_report
    from ddfm.savefolder.journal import new_run_id
    from ddfm.savefolder.lock import FolderLock
    index = layout.report / "index.html"
    stamp = stamp_of(keys, [r["protocol"] for r in results])
    if up_to_date(index, stamp):
        return index
    lock = FolderLock(layout)
    lock.acquire(new_run_id())  # RunError (one line) when a sample.py run holds the folder
    try:
        write_report(layout.report, results, *sources, {method: layout.recon},
                     tuple(Path(s).name for s in sources), run_record=record, gifs=layout.gifs(),
                     title=f"Fusion run: {layout.root}")
        mark_drawn(index, stamp)
    finally:
        lock.release()
    return index
