"""The metrics of every cell of a comparison, scored in parallel processes and cached by content.

A cell's run.json lists each fused image with the BLAKE2b hashes of its bytes and of its two
sources, which the run that just ended has checked against the files (ddfm.savefolder hashes every
file each time it resumes). Those three hashes, the protocol and a hash of the metric code make
the key of one cached score: `<save_root>/.scores.jsonl`, one JSON line per (key, protocol),
appended as each image is scored, so a killed call keeps what it scored and a torn last line is
ignored. A second identical call finds every key and scores nothing; an image fused anew, a
changed source or an edited metric module has another key and is scored again.
"""
import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ddfm.common import one_line
from ddfm.savefolder.layout import Layout

CACHE = ".scores.jsonl"
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_METRIC_CODE = ("reference.py", "tang.py", "common.py", "images.py", "evaluation.py")


def scorer_version():
    """A hash of the metric code: a cached score is reused only by the code that computed it."""
    folder = Path(__file__).resolve().parent.parent / "metrics"
    digest = hashlib.blake2b(digest_size=8)
    for name in _METRIC_CODE:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


@dataclass
class Image:
    """One fused image of a cell, with what decides its scores."""
    stem: str
    fused: Path
    sources: tuple  # (a path, b path)
    key: str  # scorer version, image hash, source hashes


@dataclass
class Cell:
    """The fused images of one method on one dataset, as its run.json lists them."""
    method: str
    dataset: str
    save_dir: Path
    images: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)  # {stem: why it could not be scored}


def cell_images(cell, record, version):
    """Fill cell.images from a run.json record (the images whose hashes it holds)."""
    layout = Layout(cell.save_dir)
    for stem, entry in sorted((record.get("fused") or {}).items()):
        hashes = [entry.get("hash")] + list(entry.get("source_hashes") or [])
        sources = entry.get("sources") or []
        if len(hashes) != 3 or not all(hashes) or len(sources) != 2:
            cell.errors[stem] = "run.json lacks its content hashes (fused by an older version?)"
            continue
        cell.images.append(Image(stem, layout.image(stem), tuple(sources), ":".join([version] + hashes)))
    return cell


class ScoreCache:
    """{(key, protocol): {metric: value}} read from and appended to one JSON-lines file."""

    def __init__(self, root):
        self.path = Path(root) / CACHE
        self.scores = {}
        self.added = 0
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
                self.scores[(entry["key"], entry["protocol"])] = entry["metrics"]
            except (ValueError, KeyError, TypeError):  # a torn last line of a killed call
                continue

    def get(self, key, protocol):
        return self.scores.get((key, protocol))

    def add(self, key, scores, protocols):
        """Append one image's scores ({protocol: metrics}, or the one line saying why it cannot be
        scored: that too is a property of the bytes) and flush them to disk."""
        lines = []
        for protocol in protocols:
            metrics = scores if isinstance(scores, str) else scores[protocol]
            self.scores[(key, protocol)] = metrics
            lines.append(json.dumps({"key": key, "protocol": protocol, "metrics": metrics}) + "\n")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        self.added += len(lines)


def _end_with_parent(parent):
    """In a scoring process: exit when the call that started it is gone (killed), instead of
    waiting forever on a queue nobody writes to."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def score_group(sources, fused_images, protocols, workers=-1):
    """Score several fused images of one source pair: [(key, {protocol: metrics} or error text)].
    Runs in a worker process; the sources are read once for all of them."""
    from scipy import fft

    from ddfm.metrics.evaluation import EvaluationError, read_pixels, score_pixels, select_metrics
    names = select_metrics(protocols)
    out = []
    with fft.set_workers(workers):
        try:
            a, b = read_pixels(sources[0]), read_pixels(sources[1])
        except EvaluationError as err:
            return [(key, one_line(err)) for key, _, _ in fused_images]
        for key, stem, path in fused_images:
            try:
                scores, _ = score_pixels(stem, a, b, read_pixels(path), names)
                out.append((key, {p: {m: float(v) for m, v in s.items()} for p, s in scores.items()}))
            except EvaluationError as err:
                out.append((key, one_line(err)))
    return out


def _todo(cells, protocols, cache):
    """The images without a cached score, grouped by source pair: {sources: {key: (stem, path)}}."""
    groups = {}
    for cell in cells:
        for image in cell.images:
            if any(cache.get(image.key, p) is None for p in protocols):
                groups.setdefault(image.sources, {})[image.key] = (image.stem, image.fused)
    return groups


def unscorable(cells, protocols, cache):
    """{key: why} of the images whose cached score is the reason they cannot be scored."""
    return {i.key: cache.get(i.key, p) for c in cells for i in c.images for p in protocols
            if isinstance(cache.get(i.key, p), str)}


def score_cells(cells, protocols, cache, jobs=1, log=print):
    """Score every image of every cell not in the cache (jobs > 1: in that many processes).
    Returns {key: error text} of the images that cannot be scored."""
    groups = _todo(cells, protocols, cache)
    count = sum(len(g) for g in groups.values())
    if count:
        log(f"scoring {count} image(s) in {', '.join(protocols)} ({jobs} process{'es' if jobs > 1 else ''})")
    _score(groups, protocols, cache, jobs)
    return unscorable(cells, protocols, cache)


def _score(groups, protocols, cache, jobs):

    def take(results):
        for key, scores in results:
            cache.add(key, scores, protocols)

    tasks = [(sources, [(k, stem, str(path)) for k, (stem, path) in images.items()])
             for sources, images in groups.items()]
    if jobs <= 1 or len(tasks) <= 1:
        for sources, images in tasks:
            take(score_group(sources, images, protocols))
        return
    # spawn: the parent may hold torch's threads, which a fork would copy half-way. One thread
    # per process (BLAS through the environment the children start with, FFT by argument): the
    # processes share the cores.
    context = multiprocessing.get_context("spawn")
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context,
                                 initializer=_end_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(score_group, sources, images, protocols, 1) for sources, images in tasks]
            for future in as_completed(futures):
                take(future.result())
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cell_results(cell, protocols, cache, stems):
    """The cell's evaluation results, one per protocol, in evaluate.py's layout (a single method
    named after the cell); stems: the dataset's pairs (those without a score are 'missing')."""
    results = []
    for protocol in protocols:
        rows = {i.stem: cache.get(i.key, protocol) for i in cell.images}
        rows = {stem: row for stem, row in rows.items() if isinstance(row, dict)}
        names = list(next(iter(rows.values()))) if rows else []
        mean = {m: math.fsum(row[m] for row in rows.values()) / len(rows) for m in names}
        missing = [s for s in stems if s not in rows]
        results.append({"protocol": protocol, "methods": {cell.method: {"mean": mean, "per_image": rows,
                                                                         "missing": missing}}})
    return results
