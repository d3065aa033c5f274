"""Dataset evaluation: score folders of fused images against their source pairs.

Pairs are matched by file stem across the two source folders (a, b) and each fused folder; any of
the extensions in ``IMAGE_EXTENSIONS`` is accepted. Every image is decoded once (``decode_rgb8``)
and converted to the grey image each protocol's evaluator sees: the rounded BT.601 luma for
reference/corrected (as ``read_luma``), MATLAB's ``rgb2gray`` for tang; grey files are taken as
they are. A fused image smaller than its sources (DDFM crops its inputs top-left to a multiple of
32) is scored against the sources cropped top-left to its size, with a warning. The dataset score
is the arithmetic mean over the pairs a method has (all of them unless ``allow_missing``).

Result layout, one per protocol (also the JSON file of one protocol; several are written as
{"protocols": [result, ...]}): {"protocol": str, "methods": {name: {"mean": {metric: value},
"per_image": {stem: {metric: value}}, "missing": [stem, ...]}}}.
"""
import csv
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image
from scipy import fft

from ddfm.common import one_line
from ddfm.metrics.images import IMAGE_EXTENSIONS, decode_rgb8, luma_from_rgb8
from ddfm.metrics.reference import ALL_PROTOCOLS, canonical_protocol, compute_metrics, protocol_metrics
from ddfm.metrics.tang import matlab_grey_from_rgb8

Folder = str | Path  # a folder as typed or as a Path


class EvaluationError(Exception):
    """A problem with the input folders or files; the message is one line naming the culprit."""


class UsageError(EvaluationError):
    """A bad argument (unknown protocol or metric, clashing method names): exit status 2."""


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


def read_pixels(path):
    """An image file's 8-bit pixels (HxWx3 RGB or HxW grey, ``decode_rgb8``), read once for every
    protocol; EvaluationError naming the file when it cannot be read."""
    try:
        with Image.open(Path(path)) as img:
            return decode_rgb8(img)
    except Exception as exc:  # PIL raises several types; the user needs the file name either way
        raise EvaluationError(f"cannot read image {path}: {one_line(exc)}") from None


def _grey_converter(protocol):
    """How a protocol's evaluator sees colour: rounded BT.601 luma, or MATLAB's rgb2gray."""
    return matlab_grey_from_rgb8 if protocol == "tang" else luma_from_rgb8


def _fit_sources(stem, a, b, fused):
    """Sources cropped top-left to the fused size; None when no crop was needed."""
    if a.shape[:2] != b.shape[:2]:
        raise EvaluationError(f"size mismatch in pair '{stem}': a {_shape(a)} vs b {_shape(b)}")
    if fused.shape[:2] == a.shape[:2]:
        return None
    if fused.shape[0] > a.shape[0] or fused.shape[1] > a.shape[1]:
        raise EvaluationError(f"size mismatch in pair '{stem}': sources {_shape(a)}, "
                              f"fused {_shape(fused)} is larger")
    h, w = fused.shape[:2]
    return a[:h, :w], b[:h, :w]


def score_pixels(stem, a, b, fused, names, method=""):
    """One triple's metrics in each protocol: ({protocol: {metric: value}}, crop note or "").

    ``names`` is {protocol: [metric names]} (select_metrics); a fused image smaller than its
    sources is scored against their top-left crop, and the note says so.
    """
    fitted = _fit_sources(stem, a, b, fused)
    crop = f"{stem} {_shape(a)}->{_shape(fused)}" if fitted is not None else ""
    sa, sb = fitted or (a, b)
    greys, scores = {}, {}  # greys by converter: reference and corrected share the BT.601 luma
    for p, wanted in names.items():
        convert = _grey_converter(p)
        if convert not in greys:
            greys[convert] = [convert(x) for x in (sa, sb, fused)]
        try:
            scores[p] = compute_metrics(*greys[convert], protocol=p, metrics=wanted)
        except ValueError as exc:  # e.g. an image too small for VIF's 4 scales
            sizes = (f"fused image {_shape(fused)} is smaller than its sources {_shape(a)}, "
                     f"which are cropped to it: " if fitted is not None else "")
            who = f" (method '{method}')" if method else ""
            raise EvaluationError(f"pair '{stem}'{who}: {sizes}{exc}") from None
    return scores, crop


def _mean(rows, names):
    return {m: math.fsum(row[m] for row in rows) / len(rows) for m in names}


def expand_protocols(names):
    """Protocol names as typed (aliases, "all", repeats) -> canonical names, each once, in order."""
    out = []
    for name in names:
        try:
            expanded = ALL_PROTOCOLS if name == "all" else (canonical_protocol(name),)
        except ValueError:
            raise UsageError(f"unknown protocol '{name}'; choose from "
                             f"{', '.join(ALL_PROTOCOLS)}, cddfuse (= reference), all") from None
        out += [p for p in expanded if p not in out]
    if not out:
        raise UsageError("no protocol given")
    return out


def select_metrics(protocols, metrics=None):
    """{protocol: [metric names]}: each protocol's own list, or the requested names it knows.

    Names are matched case-insensitively; a name no chosen protocol computes, or a protocol left
    with none of the requested names, is a UsageError.
    """
    if metrics is None:
        return {p: list(protocol_metrics(p)) for p in protocols}
    known = {p: protocol_metrics(p, extras=True) for p in protocols}
    by_lower = {m.lower(): m for p in protocols for m in known[p]}
    wanted = [str(m).strip() for m in metrics if str(m).strip()]
    unknown = [m for m in wanted if m.lower() not in by_lower]
    if unknown or not wanted:
        raise UsageError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{','.join(dict.fromkeys(m for p in protocols for m in known[p]))}")
    wanted = {by_lower[m.lower()] for m in wanted}
    chosen = {p: [m for m in known[p] if m in wanted] for p in protocols}
    for p, names in chosen.items():
        if not names:
            raise UsageError(f"protocol {p} computes none of {', '.join(sorted(wanted))}")
    return chosen


def _fused_files(fused_dirs, sources, allow_missing, warn):
    """{method: {stem: path}} of the fused images that have a source pair; {method: [missing]}."""
    fused_files, missing = {}, {}
    for method, folder in fused_dirs.items():
        files = list_images(folder)
        if not files:
            subfolders = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
            raise EvaluationError(f"method '{method}': no images in {folder}" + (
                f"; it has the sub-folder(s) {_preview(subfolders, 5)}: point at the one holding "
                f"the fused images" if subfolders else ""))
        absent = [stem for stem in sources if stem not in files]
        count = f"{len(absent)} of {len(sources)} fused images missing in {folder}"
        if absent and (not allow_missing or len(absent) == len(sources)):
            hint = "" if allow_missing else " (use --allow-missing to score the others)"
            raise EvaluationError(f"method '{method}': {count}: {_preview(absent)}{hint}")
        if absent:
            warn(f"method '{method}': {count}, scored the other {len(sources) - len(absent)}: "
                 f"{_preview(absent)}")
        extra = [stem for stem in files if stem not in sources]
        if extra:
            warn(f"method '{method}': ignoring {len(extra)} fused image(s) without a source pair: "
                 f"{_preview(extra)}")
        fused_files[method] = {stem: path for stem, path in files.items() if stem in sources}
        missing[method] = absent
    return fused_files, missing


def evaluate_protocols(a_dir: Folder, b_dir: Folder, fused_dirs: Folder | Mapping[str, Folder],
                       protocols: str | Sequence[str] = ("reference",), metrics: Sequence[str] | None = None,
                       warn: Callable[[str], object] | None = None, allow_missing: bool = False) -> list[dict]:
    """Score each fused folder against the (a, b) source folders -> one result dict per protocol.

    ``fused_dirs`` is {method name: folder} (a single folder is named after itself); ``protocols``
    names as expand_protocols takes them; ``metrics`` a subset of names (default: each protocol's
    own list); ``warn`` receives one-line warnings (default ``warnings.warn``); with
    ``allow_missing`` a method is scored on the images it has and the others are listed under
    "missing". Every image is read once and converted to each protocol's grey. Raises
    EvaluationError (UsageError for bad arguments) with a one-line message.
    """
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    if isinstance(fused_dirs, (str, Path)):
        fused_dirs = {Path(fused_dirs).name: fused_dirs}
    protocols = expand_protocols([protocols] if isinstance(protocols, str) else protocols)
    names = select_metrics(protocols, metrics)
    sources = match_sources(a_dir, b_dir)
    fused_files, missing = _fused_files(fused_dirs, sources, allow_missing, warn)

    per_image = {p: {method: {} for method in fused_dirs} for p in protocols}
    cropped = {method: [] for method in fused_dirs}
    with fft.set_workers(-1):  # the FFT filtering in VIF/SSIM may use every core
        for stem, (a_path, b_path) in sources.items():
            a, b = read_pixels(a_path), read_pixels(b_path)  # read once, shared by every method
            for method, files in fused_files.items():
                if stem not in files:
                    continue
                scores, crop = score_pixels(stem, a, b, read_pixels(files[stem]), names, method)
                if crop:
                    cropped[method].append(crop)
                for p in protocols:
                    per_image[p][method][stem] = scores[p]

    for method, crops in cropped.items():
        if crops:
            warn(f"method '{method}': {len(crops)} fused image(s) smaller than their sources; "
                 f"sources cropped top-left to match: {_preview(crops, 5)}")
    return [{"protocol": p, "methods": {
        method: {"mean": _mean(list(rows.values()), names[p]), "per_image": rows,
                 "missing": missing[method]}
        for method, rows in per_image[p].items()}} for p in protocols]


def evaluate_folders(a_dir: Folder, b_dir: Folder, fused_dirs: Folder | Mapping[str, Folder],
                     protocol: str = "reference", metrics: Sequence[str] | None = None,
                     warn: Callable[[str], object] | None = None, allow_missing: bool = False) -> dict:
    """One protocol's result dict (see the module doc); arguments as evaluate_protocols."""
    return evaluate_protocols(a_dir, b_dir, fused_dirs, [protocol], metrics, warn, allow_missing)[0]


def _as_list(results):
    return [results] if isinstance(results, dict) else list(results)


def _metric_columns(results):
    """The metric columns of a table or CSV: each protocol's metric names (as its first method's
    means hold them), in order of first appearance over the results."""
    names = {}
    for result in _as_list(results):
        names.update(dict.fromkeys(next(iter(result["methods"].values()))["mean"]))
    return list(names)


def _plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def format_table(result, digits=4):
    """Plain-text table: one row per method, one column per metric (dataset means), with protocol.

    When a method lacks images (allow_missing), its means are over the pairs it has: column n.
    """
    names = _metric_columns(result)
    methods = list(result["methods"])
    counts = [len(result["methods"][m]["per_image"]) for m in methods]
    partial = any(result["methods"][m].get("missing") for m in methods)
    cells = [[f"{result['methods'][m]['mean'][n]:.{digits}f}" for n in names] for m in methods]
    if partial:
        names = ["n"] + names
        cells = [[str(c)] + row for c, row in zip(counts, cells)]
        over = "over the pairs each method has: n"
    else:
        over = f"over {_plural(counts[0], 'pair')}"
    name_w = max(len("method"), *(len(m) for m in methods))
    col_w = [max(len(n), *(len(row[i]) for row in cells)) for i, n in enumerate(names)]
    lines = [f"protocol: {result['protocol']}  (dataset mean {over})"]
    lines.append("  ".join(["method".ljust(name_w)] + [n.rjust(w) for n, w in zip(names, col_w)]))
    for method, row in zip(methods, cells):
        lines.append("  ".join([method.ljust(name_w)] + [c.rjust(w) for c, w in zip(row, col_w)]))
    return "\n".join(lines)


def _plain(value):
    """Every number written as a plain float (never a NumPy scalar's repr)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    return float(value)


def write_json(results, path):
    """One result as the module doc's layout; several as {"protocols": [result, ...]}."""
    results = _as_list(results)
    data = results[0] if len(results) == 1 else {"protocols": results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # --json out/tables/x.json: make the folder
    Path(path).write_text(json.dumps(_plain(data), indent=2) + "\n")


def write_csv(results, path):
    """CSV: protocol, method, image, metrics...; one row per (protocol, method, image) and a 'mean'
    row per method. A metric a protocol does not compute is left empty."""
    names = _metric_columns(results)

    def cells(row):
        return [repr(float(row[n])) if n in row else "" for n in names]

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["protocol", "method", "image"] + names)
        for result in _as_list(results):
            for method, data in result["methods"].items():
                for stem, row in data["per_image"].items():
                    writer.writerow([result["protocol"], method, stem] + cells(row))
                writer.writerow([result["protocol"], method, "mean"] + cells(data["mean"]))
