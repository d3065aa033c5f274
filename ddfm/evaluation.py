"""Dataset evaluation: score folders of fused images against their source pairs.

Pairs are matched by file stem across the two source folders (a, b) and each fused folder; any of
the extensions in ``IMAGE_EXTENSIONS`` is accepted. Every image is read with ``read_luma`` (rounded
BT.601 luma of 8-bit RGB), so colour fused images are scored on their luma. A fused image smaller
than its sources (DDFM crops its inputs top-left to a multiple of 32) is scored against the sources
cropped top-left to its size, with a warning. The dataset score is the arithmetic mean over pairs.

Result layout (also the JSON file): {"protocol": str, "methods": {name: {"mean": {metric: value},
"per_image": {stem: {metric: value}}}}}.
"""
import csv
import json
import math
import warnings
from pathlib import Path

from scipy import fft

from ddfm.metrics import METRICS, PROTOCOLS, compute_metrics
from ddfm.metrics_io import IMAGE_EXTENSIONS, read_luma


class EvaluationError(Exception):
    """A problem with the input folders or files; the message is one line naming the culprit."""


def _shape(img):
    return f"{img.shape[0]}x{img.shape[1]}"


def _preview(stems, limit=20):
    shown = ", ".join(stems[:limit])
    return shown + (f", ... ({len(stems) - limit} more)" if len(stems) > limit else "")


def list_images(folder):
    """{stem: path} of the image files directly inside ``folder`` (sorted by stem)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"folder not found: {folder}")
    found = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if path.stem in found:
            raise EvaluationError(f"two images with stem '{path.stem}' in {folder}: "
                                  f"{found[path.stem].name}, {path.name}")
        found[path.stem] = path
    return dict(sorted(found.items()))


def match_sources(a_dir, b_dir):
    """{stem: (a_path, b_path)} for the stems present in both source folders (they must agree)."""
    a_files, b_files = list_images(a_dir), list_images(b_dir)
    only_a = sorted(set(a_files) - set(b_files))
    only_b = sorted(set(b_files) - set(a_files))
    if only_a or only_b:
        raise EvaluationError(f"source folders do not pair up: only in {a_dir}: [{_preview(only_a)}]; "
                              f"only in {b_dir}: [{_preview(only_b)}]")
    if not a_files:
        raise EvaluationError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {a_dir}")
    return {stem: (a_files[stem], b_files[stem]) for stem in a_files}


def _read(path):
    try:
        return read_luma(path)
    except Exception as exc:  # PIL raises several types; the user needs the file name either way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EvaluationError(f"cannot read image {path}: {reason}") from None


def _fit_sources(stem, a, b, fused):
    """Sources cropped top-left to the fused size; None when no crop was needed."""
    if a.shape != b.shape:
        raise EvaluationError(f"size mismatch in pair '{stem}': a {_shape(a)} vs b {_shape(b)}")
    if fused.shape == a.shape:
        return None
    if fused.shape[0] > a.shape[0] or fused.shape[1] > a.shape[1]:
        raise EvaluationError(f"size mismatch in pair '{stem}': sources {_shape(a)}, "
                              f"fused {_shape(fused)} is larger")
    h, w = fused.shape
    return a[:h, :w], b[:h, :w]


def _mean(rows, names):
    return {m: math.fsum(row[m] for row in rows) / len(rows) for m in names}


def evaluate_folders(a_dir, b_dir, fused_dirs, protocol="reference", metrics=None, warn=None):
    """Score each fused folder against the (a, b) source folders -> result dict (see module doc).

    ``fused_dirs`` is {method name: folder} (a single folder is named after itself); ``metrics``
    a subset of METRICS (default all); ``warn`` receives one-line warnings (default:
    ``warnings.warn``). Raises EvaluationError with a one-line message on bad input.
    """
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    if isinstance(fused_dirs, (str, Path)):
        fused_dirs = {Path(fused_dirs).name: fused_dirs}
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
    names = list(METRICS if metrics is None else metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(METRICS)}")
    names = [m for m in METRICS if m in names]
    sources = match_sources(a_dir, b_dir)

    fused_files = {}
    for method, folder in fused_dirs.items():
        files = list_images(folder)
        missing = [stem for stem in sources if stem not in files]
        if missing:
            raise EvaluationError(f"method '{method}': {len(missing)} of {len(sources)} fused images "
                                  f"missing in {folder}: {_preview(missing)}")
        extra = [stem for stem in files if stem not in sources]
        if extra:
            warn(f"method '{method}': ignoring {len(extra)} fused image(s) without a source pair: "
                 f"{_preview(extra)}")
        fused_files[method] = files

    per_image = {method: {} for method in fused_dirs}
    cropped = {method: [] for method in fused_dirs}
    with fft.set_workers(-1):  # the FFT filtering in VIF/SSIM may use every core
        for stem, (a_path, b_path) in sources.items():
            a, b = _read(a_path), _read(b_path)  # read once, shared by every method
            for method, files in fused_files.items():
                fused = _read(files[stem])
                fitted = _fit_sources(stem, a, b, fused)
                if fitted is not None:
                    cropped[method].append(f"{stem} {_shape(a)}->{_shape(fused)}")
                sa, sb = fitted or (a, b)
                try:
                    per_image[method][stem] = compute_metrics(sa, sb, fused, protocol=protocol,
                                                              metrics=names)
                except ValueError as exc:  # e.g. an image too small for VIF's 4 scales
                    raise EvaluationError(f"pair '{stem}' (method '{method}'): {exc}") from None

    for method, crops in cropped.items():
        if crops:
            warn(f"method '{method}': {len(crops)} fused image(s) smaller than their sources; "
                 f"sources cropped top-left to match: {_preview(crops, 5)}")
    return {
        "protocol": protocol,
        "methods": {
            method: {"mean": _mean(list(rows.values()), names), "per_image": rows}
            for method, rows in per_image.items()
        },
    }


def _metric_names(result):
    first = next(iter(result["methods"].values()))
    return list(first["mean"])


def format_table(result, digits=4):
    """Plain-text table: one row per method, one column per metric (dataset means), with protocol."""
    names = _metric_names(result)
    methods = list(result["methods"])
    pairs = len(result["methods"][methods[0]]["per_image"])
    cells = [[f"{result['methods'][m]['mean'][n]:.{digits}f}" for n in names] for m in methods]
    name_w = max(len("method"), *(len(m) for m in methods))
    col_w = [max(len(n), *(len(row[i]) for row in cells)) for i, n in enumerate(names)]
    lines = [f"protocol: {result['protocol']}  (dataset mean over {pairs} pairs)"]
    lines.append("  ".join(["method".ljust(name_w)] + [n.rjust(w) for n, w in zip(names, col_w)]))
    for method, row in zip(methods, cells):
        lines.append("  ".join([method.ljust(name_w)] + [c.rjust(w) for c, w in zip(row, col_w)]))
    return "\n".join(lines)


def write_json(result, path):
    """Write the result dict as JSON (the layout of the module doc)."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def write_csv(result, path):
    """CSV: protocol, method, image, metrics...; one row per (method, image) and a 'mean' row each."""
    names = _metric_names(result)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["protocol", "method", "image"] + names)
        for method, data in result["methods"].items():
            for stem, row in data["per_image"].items():
                writer.writerow([result["protocol"], method, stem] + [repr(row[n]) for n in names])
            writer.writerow([result["protocol"], method, "mean"] + [repr(data["mean"][n]) for n in names])
