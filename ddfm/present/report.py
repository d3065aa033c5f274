"""Static HTML report of a comparison or a run: metrics tables, distributions, every pair.

    write_report(out_dir, results, a_dir, b_dir, {name: folder}, run_record=..., gifs=...)

writes out_dir/index.html (Jinja2 template ddfm/present/templates/report.html.j2) beside the files it
shows: full images (copied, so the folder is self-contained and works from file://), small JPEG
thumbnails (made once: an up-to-date one is reused) loaded lazily, and one box/strip plot per
protocol (matplotlib). ``results`` is a list of evaluation results, one per protocol, in the
layout of ddfm.metrics.evaluation ({"protocol", "methods": {name: {"mean", "per_image"}}}); a method may
lack some stems and a metric may have no known direction (it is then shown without a best mark).
"""
import hashlib
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ddfm.files import write_atomic
from ddfm.metrics.evaluation import list_images
from ddfm.metrics.images import decode_rgb8

# The one table of metric directions: True = higher is better, False = lower is better.
HIGHER_IS_BETTER = {
    "EN": True, "SD": True, "SF": True, "MI": True, "SCD": True, "VIF": True, "Qabf": True,
    "SSIM": True, "AG": True, "CC": True, "PSNR": True, "MSE": False,
    # the tang dialect's extras: Nabf is the share of fusion artefacts, MS_SSIM (MEF-SSIM) a similarity
    "Nabf": False, "Nabf_fused_first": False, "MS_SSIM": True,
}
ARROWS = {True: "\u2191", False: "\u2193", None: "?"}
THUMB_SIDE = 192
# Formats a browser shows in an <img>; other images (TIFF, PGM, ...) are converted to PNG.
WEB_FORMATS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
TEMPLATES = Path(__file__).resolve().parent / "templates"


def direction(metric):
    """True (higher is better), False (lower is better) or None (unknown)."""
    return HIGHER_IS_BETTER.get(metric)


def format_value(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "\u2013" if value is None else str(value)
    if not math.isfinite(value):
        return "\u2013"
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4f}"


def _metric_names(result):
    names = []
    for data in result["methods"].values():
        for row in [data.get("mean", {})] + list(data.get("per_image", {}).values()):
            names.extend(m for m in row if m not in names)
    return names


def _best(values, higher):
    """Methods holding the best finite value (all of them on a tie); none for unknown directions."""
    finite = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    if higher is None or not finite:
        return set()
    best = max(finite.values()) if higher else min(finite.values())
    return {m for m, v in finite.items() if v == best}


def summary_table(result):
    """Per method mean +- std (sample std over its images) of each metric, and the best marks."""
    names = _metric_names(result)
    rows = []
    for method, data in result["methods"].items():
        per_image = data.get("per_image", {})
        cells = {}
        for metric in names:
            values = [row[metric] for row in per_image.values() if metric in row]
            mean = data.get("mean", {}).get(metric, float(np.mean(values)) if values else None)
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            cells[metric] = {"mean": mean, "std": std, "n": len(values)}
        rows.append({"method": method, "cells": cells})
    for metric in names:
        best = _best({r["method"]: r["cells"][metric]["mean"] for r in rows}, direction(metric))
        for row in rows:
            row["cells"][metric]["best"] = row["method"] in best
    columns = [{"name": m, "arrow": ARROWS[direction(m)], "higher": direction(m)} for m in names]
    return {"protocol": result["protocol"], "columns": columns, "rows": rows}


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:40]


def _slug(name, folder):
    """A folder name for a method's files: readable, and unique per source folder."""
    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:8]
    return f"{_safe(name)}-{digest}"


def _up_to_date(dest, src):
    return dest.exists() and dest.stat().st_mtime >= src.stat().st_mtime


def _rgb(path):
    with Image.open(path) as img:
        return Image.fromarray(decode_rgb8(img))


def publish_image(src, dest_stem):
    """The full image in the report (copied, or converted to PNG when a browser cannot show it)."""
    src = Path(src)
    if src.suffix.lower() in WEB_FORMATS:
        dest = dest_stem.with_suffix(src.suffix.lower())
        if not _up_to_date(dest, src):
            write_atomic(dest, lambda handle: handle.write(src.read_bytes()))
    else:
        dest = dest_stem.with_suffix(".png")
        if not _up_to_date(dest, src):
            image = _rgb(src)
            write_atomic(dest, lambda handle: image.save(handle, format="PNG"))
    return dest


def make_thumbnail(src, dest, side=THUMB_SIDE):
    """A JPEG of at most side x side pixels; an up-to-date one is kept. Returns its (w, h)."""
    src, dest = Path(src), Path(dest)
    if not _up_to_date(dest, src):
        image = _rgb(src)
        image.thumbnail((side, side), Image.LANCZOS)
        write_atomic(dest, lambda handle: image.save(handle, format="JPEG", quality=88))
    with Image.open(dest) as image:
        return image.size


def _metric_lines(results, method, stem):
    """[(protocol, [(metric, text)])] of one image for the per-pair gallery."""
    lines = []
    for result in results:
        row = result["methods"].get(method, {}).get("per_image", {}).get(stem)
        if row is not None:
            lines.append((result["protocol"], [(m, format_value(v)) for m, v in row.items()]))
    return lines


def gallery(out_dir, a_dir, b_dir, fused_dirs, results, source_names, gifs, timings):
    """One entry per pair: sources, each method (or 'missing'), metrics, GIF, time."""
    a_files, b_files = list_images(a_dir), list_images(b_dir)
    columns = [(source_names[0], a_dir, a_files), (source_names[1], b_dir, b_files)]
    columns += [(name, folder, list_images(folder)) for name, folder in fused_dirs.items()]
    pairs = []
    for stem in sorted(set(a_files) & set(b_files)):  # a source without its partner has no pair
        panels = []
        for k, (name, folder, files) in enumerate(columns):
            panel = {"name": name, "thumb": None,
                     "metrics": _metric_lines(results, name, stem) if k >= 2 else []}
            if stem in files:
                slug = _slug(name, folder)
                full = publish_image(files[stem], out_dir / "images" / slug / stem)
                thumb = out_dir / "thumbs" / slug / f"{stem}.jpg"
                panel["size"] = make_thumbnail(files[stem], thumb)
                panel["full"] = full.relative_to(out_dir).as_posix()
                panel["thumb"] = thumb.relative_to(out_dir).as_posix()
            panels.append(panel)
        gif = None
        if gifs and stem in gifs:
            gif = publish_image(gifs[stem], out_dir / "gifs" / stem).relative_to(out_dir).as_posix()
        pairs.append({"stem": stem, "panels": panels, "gif": gif, "seconds": timings.get(stem)})
    return pairs


def per_image_rows(result):
    """Rows (image, method, values) of the per-image table of one protocol."""
    names = _metric_names(result)
    rows = []
    for method, data in result["methods"].items():
        for stem, values in data.get("per_image", {}).items():
            rows.append({"stem": stem, "method": method,
                         "values": [(values.get(m), format_value(values.get(m))) for m in names]})
    rows.sort(key=lambda r: r["stem"])
    return {"protocol": result["protocol"], "names": names, "rows": rows}


def distribution_plot(result, path):
    """Box plot with the individual images as points, one panel per metric, methods side by side."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names, methods = _metric_names(result), list(result["methods"])
    if not names:
        return None
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), dpi=80, squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same picture
    try:
        for ax, metric in zip(axes.flat, names):
            data = [[row[metric] for row in result["methods"][m].get("per_image", {}).values()
                     if metric in row and math.isfinite(row[metric])] for m in methods]
            ax.boxplot([d if d else [np.nan] for d in data], showfliers=False, widths=0.5)
            for k, values in enumerate(data, start=1):
                ax.plot(k + rng.uniform(-0.15, 0.15, len(values)), values, "o", ms=2.5, alpha=0.7,
                        color="C0", zorder=3)
            ax.set_title(f"{metric} {ARROWS[direction(metric)]}", fontsize=9)
            ax.set_xticks(range(1, len(methods) + 1), methods, fontsize=7, rotation=30, ha="right")
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(names):]:
            ax.set_axis_off()
        fig.tight_layout()
        write_atomic(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        plt.close(fig)
    return path


def run_settings(record, method_rows=()):
    """(label, text) pairs of a run.json, read defensively: its layout may change. method_rows:
    the rows the method adds (ddfm.methods.Method.report_rows), after its name."""
    if not isinstance(record, dict):
        return []
    configs = record.get("configs") if isinstance(record.get("configs"), dict) else {}
    fusion, diffusion = configs.get("fusion") or {}, configs.get("diffusion") or {}
    prior = record.get("prior")
    prior = prior if isinstance(prior, dict) else {"prior": prior}
    timings = run_timings(record)
    ignored = record.get("ignored") if isinstance(record.get("ignored"), dict) else {}
    prior_used = prior.get("prior") not in ("none", None)  # the prior-free fusion has no steps
    items = [
        ("prior", prior.get("prior")),
        ("why", prior.get("reason")),
        ("method", prior.get("method", fusion.get("method"))),
        *method_rows,
        ("steps", prior.get("steps", diffusion.get("timestep_respacing")) if prior_used else None),
        ("seed", record.get("seed", diffusion.get("seed"))),
        ("device / dtype", " / ".join(str(v) for v in (prior.get("device"), prior.get("dtype")) if v)),
        ("pairs fused", len(timings) or None),
        ("seconds per pair (mean)", f"{np.mean(list(timings.values())):.3f}" if timings else None),
        ("seconds in total", f"{sum(timings.values()):.2f}" if timings else None),
        ("failed pairs", len(record.get("failed") or {}) if "failed" in record else None),
        ("settings without effect", ", ".join(ignored.get("keys") or ())),
        ("versions", ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items()
                               if k != "platform")),
    ]
    return [(label, str(value)) for label, value in items if value not in (None, "", [])]


def run_timings(record):
    """{stem: seconds} from run.json's 'fused' (plain numbers or {'seconds': ...} entries)."""
    fused = record.get("fused") if isinstance(record, dict) else None
    timings = {}
    for stem, value in (fused or {}).items() if isinstance(fused, dict) else ():
        if isinstance(value, dict):
            value = value.get("seconds")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            timings[stem] = float(value)
    return timings


def render_page(context):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["value"] = format_value
    return env.get_template("report.html.j2").render(**context)


def write_report(out_dir, results, a_dir, b_dir, fused_dirs, source_names=("IR", "VIS"),
                 run_record=None, gifs=None, title="Fusion report", conditions=None, method_rows=()):
    """Write out_dir/index.html and its files; returns the path of index.html.

    results: list of evaluation results (one per protocol; may be empty); fused_dirs: {name:
    folder}; run_record: a run.json dict; gifs: {stem: path of the sampling GIF}; conditions:
    {stem: per-step strip} of a method that records one (Method.report_strips); method_rows:
    the (label, value) rows the method adds to the run settings (Method.report_rows).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summary_table(r) for r in results]
    plots = []
    for k, result in enumerate(results):
        path = distribution_plot(result, out_dir / "plots" / f"{k}_{_safe(result['protocol'])}.png")
        plots.append(path.relative_to(out_dir).as_posix() if path else None)
    timings = run_timings(run_record)
    pairs = gallery(out_dir, a_dir, b_dir, fused_dirs, results, source_names, gifs, timings)
    for pair in pairs:
        pair["conditions"] = (conditions or {}).get(pair["stem"])
    context = {
        "title": title, "summaries": summaries, "plots": plots,
        "tables": [per_image_rows(r) for r in results], "pairs": pairs,
        "methods": list(fused_dirs), "sources": {source_names[0]: str(a_dir), source_names[1]: str(b_dir)},
        "folders": {name: str(folder) for name, folder in fused_dirs.items()},
        "settings": run_settings(run_record, method_rows) if run_record is not None else [],
        "arrows": ARROWS,
    }
    html = render_page(context)
    index = out_dir / "index.html"
    write_atomic(index, lambda handle: handle.write(html.encode("utf-8")))
    return index
