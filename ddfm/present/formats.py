"""A ranked ddfm.present.table.Table as LaTeX (booktabs), Markdown or CSV, with its caption and sources.

LaTeX: a ``table*`` fragment to \\input (needs \\usepackage{booktabs}), or with ``standalone`` a
whole document whose page is the table's size (for a PNG via pdftoppm). Best is \\textbf, second
\\underline; published rows are in italics with a dagger and a footnote naming their source.
Markdown: the same table for a README or an issue (**best**, <ins>second</ins>). CSV: one line per
cell (dataset, metric, method, value as printed, std, rank, pairs, dialect, source).
"""
import csv
import io

from ddfm.present.report import ARROWS, direction
from ddfm.present.table import MISSING

PROTOCOL_NAMES = {"reference": "CDDFuse's Python evaluator", "corrected": "textbook conventions",
                  "tang": "the MATLAB toolkit of Tang et al."}
DAGGER, DDAGGER = "\u2020", "\u2021"
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "\u00b1": r"$\pm$", "\u2191": r"$\uparrow$", "\u2193": r"$\downarrow$", "\u2013": "--",
          DAGGER: r"$^\dagger$", DDAGGER: r"$^\ddagger$", "\u00d7": r"$\times$"}


def latex_text(text):
    """Plain text (with ± ↑ ↓ – † ‡ ×) -> LaTeX text; every special character escaped, straight
    double quotes as TeX's opening and closing quotes (alternating)."""
    out, opening = [], True
    for ch in str(text):
        if ch == '"':
            out.append("``" if opening else "''")
            opening = not opening
        else:
            out.append(_LATEX.get(ch, ch))
    return "".join(out)


def _marks(row):
    return (DAGGER if row.published is not None else "") + (DDAGGER if row.other_dialect else "")


def _ranked_sentence(table):
    if table.ranked_over == "measured":
        return "ranked over the measured rows (published rows do not take part)"
    if table.ranked_over == "all":
        return "ranked over all rows, published ones included"
    return "ranked over the rows " + ", ".join(table.ranked_over)


def caption(table):
    """The caption as plain text: protocol, pairs per dataset, statistic, rounding, ranking."""
    pairs = ", ".join(f"{d} {table.pairs[d]}" for d in table.datasets)
    arrows = f"{ARROWS[True]} higher / {ARROWS[False]} lower is better"
    statistic = "mean \u00b1 sample std" if table.with_std else "mean"
    return (f"Protocol: {table.protocol} ({PROTOCOL_NAMES.get(table.protocol, table.protocol)}); "
            f"pairs per dataset: {pairs}. Dataset {statistic} over the pairs, rounded half away from "
            f"zero to {table.decimals} decimals ({arrows}). Best of each column in bold, second "
            f"best underlined, compared as printed (ties share the mark), {_ranked_sentence(table)}.")


def footnotes(table):
    """One plain-text line per published row: its source, pairs and dialect."""
    notes = []
    for row in table.rows:
        if row.published is None:
            continue
        cites = list(dict.fromkeys(r.source for r in row.published.values()))
        pairs = ", ".join(f"{d} {r.pairs if r.pairs else '? (not stated)'} pairs"
                          for d, r in row.published.items())
        dialects = ", ".join(sorted({r.dialect for r in row.published.values()}))
        text = f"{_marks(row)} {row.name}: published, not measured here; {'; '.join(cites)}. {pairs}; dialect {dialects}"
        if row.other_dialect:
            text += f" (not the table's {table.protocol}: not comparable)"
        notes.append(text + ".")
    return notes + list(table.notes)


def _cell_parts(cell, pm):
    text = cell.text(cell.mean)
    if cell.std is not None and cell.mean is not None:
        text += f" {pm} {cell.text(cell.std)}"
    return text


def _latex_cell(cell):
    text = _cell_parts(cell, r"$\pm$").replace(MISSING, "--")
    return {1: r"\textbf{%s}", 2: r"\underline{%s}"}.get(cell.rank, "%s") % text


def _latex_label(row):
    name = latex_text(row.name)
    return rf"\textit{{{name}}}{latex_text(_marks(row))}" if row.published is not None else name


def _metric_head(metric):
    return latex_text(f"{metric}{ARROWS[direction(metric)]}")


def latex_tabular(table, transpose=False):
    """The tabular environment alone (booktabs rules, \\multicolumn dataset groups)."""
    lines = []
    if transpose:
        lines.append(r"\begin{tabular}{ll" + "c" * len(table.rows) + "}")
        lines += [r"\toprule", " & ".join(["Dataset", "Metric"] + [_latex_label(r) for r in table.rows]) + r" \\"]
        for i, dataset in enumerate(table.datasets):
            lines.append(r"\midrule")
            for j, metric in enumerate(table.metrics):
                first = latex_text(dataset) if j == 0 else ""
                cells = [_latex_cell(r.cells[(dataset, metric)]) for r in table.rows]
                lines.append(" & ".join([first, _metric_head(metric)] + cells) + r" \\")
    else:
        n = len(table.metrics)
        lines.append(r"\begin{tabular}{l" + (r"@{\hspace{8pt}}" + "c" * n) * len(table.datasets) + "}")
        groups = [rf"\multicolumn{{{n}}}{{c}}{{{latex_text(d)}}}" for d in table.datasets]
        rules = [rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(table.datasets))]
        lines += [r"\toprule", " & ".join([""] + groups) + r" \\", " ".join(rules)]
        lines.append(" & ".join(["Method"] + [_metric_head(m) for _, m in table.columns]) + r" \\")
        lines.append(r"\midrule")
        for k, row in enumerate(table.rows):
            if k > 0 and row.published is not None and table.rows[k - 1].published is None:
                lines.append(r"\midrule")
            lines.append(" & ".join([_latex_label(row)] + [_latex_cell(row.cells[c]) for c in table.columns]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _latex_notes(table):
    return "\n".join(r"{\footnotesize " + latex_text(note) + r"\par}" for note in footnotes(table))


def render_latex(table, transpose=False, standalone=False, label="tab:comparison"):
    """LaTeX source: a table* float to \\input, or (standalone) a document cropped to the table."""
    tabular, notes = latex_tabular(table, transpose), _latex_notes(table)
    if not standalone:
        return "\n".join([
            r"% Made by table.py (DDFM project). Needs \usepackage{booktabs}.",
            r"\begin{table*}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",
            rf"\caption{{{latex_text(caption(table))}}}", rf"\label{{{label}}}",
            tabular, r"\par\smallskip", notes, r"\end{table*}", ""])
    # The page is made the size of the box holding caption, tabular and notes (no cropping needed).
    return "\n".join([
        r"\documentclass{article}", r"\usepackage{booktabs}", r"\pagestyle{empty}",
        r"\setlength{\tabcolsep}{3pt}", r"\newsavebox{\tablebox}", r"\newsavebox{\pagebox}",
        r"\begin{document}", r"\sbox{\tablebox}{" + tabular + "}",
        r"\sbox{\pagebox}{\parbox{\wd\tablebox}{\small\textbf{Table.} " + latex_text(caption(table))
        + r"\par\medskip\noindent\usebox{\tablebox}\par\smallskip " + notes + "}}",
        r"\pdfpagewidth=\dimexpr\wd\pagebox+24pt\relax",
        r"\pdfpageheight=\dimexpr\ht\pagebox+\dp\pagebox+24pt\relax",
        r"\hoffset=-1in \voffset=-1in \oddsidemargin=12pt \topmargin=12pt \headheight=0pt \headsep=0pt",
        r"\topskip=0pt \parindent=0pt", r"\noindent\usebox{\pagebox}", r"\end{document}", ""])


def _md(text):
    return str(text).replace("|", r"\|").replace("*", r"\*")


def _md_cell(cell):
    text = _cell_parts(cell, "\u00b1")
    return {1: "**%s**", 2: "<ins>%s</ins>"}.get(cell.rank, "%s") % text


def _md_label(row):
    return f"*{_md(row.name)}*{_marks(row)}" if row.published is not None else _md(row.name)


def render_markdown(table, transpose=False):
    """A GitHub-flavoured Markdown table, the caption below it and one line per published source."""
    if transpose:
        head = ["Dataset", "Metric"] + [_md_label(r) for r in table.rows]
        body = [[_md(d) if j == 0 else "", f"{m}{ARROWS[direction(m)]}"]
                + [_md_cell(r.cells[(d, m)]) for r in table.rows]
                for d in table.datasets for j, m in enumerate(table.metrics)]
    else:
        head = ["Method"] + [f"{_md(d)}<br>{m}{ARROWS[direction(m)]}" for d, m in table.columns]
        body = [[_md_label(r)] + [_md_cell(r.cells[c]) for c in table.columns] for r in table.rows]
    align = ["---"] * (2 if transpose else 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align + [":---:"] * (len(head) - len(align))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", _md(caption(table))] + [f"\n{_md(note)}" for note in footnotes(table)]
    return "\n".join(lines) + "\n"


def render_csv(table):
    """One line per (dataset, metric, row): the values as printed (empty when missing) and sources."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["protocol", "dataset", "metric", "higher_is_better", "method", "published", "value",
                     "std", "rank", "pairs", "dialect", "source"])
    for dataset, metric in table.columns:
        for row in table.rows:
            cell, result = row.cells[(dataset, metric)], (row.published or {}).get(dataset)
            value = "" if cell.mean is None else cell.text(cell.mean)
            std = "" if cell.std is None else cell.text(cell.std)
            pairs = result.pairs if result else row.pairs.get(dataset)
            writer.writerow([table.protocol, dataset, metric, direction(metric), row.name,
                             row.published is not None, value, std, cell.rank or "", pairs or "",
                             result.dialect if result else (table.protocol if row.published is None else ""),
                             result.source if result else ""])
    return out.getvalue()
