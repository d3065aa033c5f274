"""The metrics of every cell of a comparison, scored in parallel processes and cached by content.

A cell's run.json lists each fused image with the BLAKE2b hashes of its bytes and of its two
sources, which the run that just ended has checked against the files (ddfm.savefolder hashes every
file each time it resumes). Those three hashes, the protocol and a hash of the metric code make
the key of one cached score: `<save_root>/.scores.jsonl`, one JSON line per (key, protocol),
appended as each image is scored, so a killed call keeps what it scored and a torn last line is
ignored. A second identical call finds every key and scores nothing; an image fused anew, a
changed source or an edited metric module has another key and is scored again.

The file is compacted when a call ends and its stale lines (keys no save folder under the root
lists any more, duplicates, torn lines) outnumber the live entries: rewritten to a temporary file,
fsynced and renamed over it, so a kill at any point leaves either the old file or the new one.
Appends and compaction hold an flock on the file, so a concurrent call's scores are not lost.
"""
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ddfm.common import one_line
from ddfm.files import write_atomic
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


def _parse(text):
    """({(key, protocol): metrics}, the number of non-empty lines) of the cache file's text."""
    scores, lines = {}, 0
    for line in text.splitlines():
        if not line.strip():
            continue
        lines += 1
        try:
            entry = json.loads(line)
            scores[(entry["key"], entry["protocol"])] = entry["metrics"]
        except (ValueError, KeyError, TypeError):  # a torn last line of a killed call
            continue
    return scores, lines


def _torn_end(handle):
    """Whether the file (open a+b) has a last line without its newline (a killed call's)."""
    end = handle.seek(0, os.SEEK_END)
    if not end:
        return False
    handle.seek(end - 1)
    torn = handle.read(1) != b"\n"
    handle.seek(0, os.SEEK_END)
    return torn


def _entry_line(key, protocol, metrics):
    return json.dumps({"key": key, "protocol": protocol, "metrics": metrics}) + "\n"


class ScoreCache:
    """{(key, protocol): {metric: value}} read from and appended to one JSON-lines file."""

    def __init__(self, root):
        self.path = Path(root) / CACHE
        self.added = 0
        try:
            self.scores, _ = _parse(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            self.scores = {}

    def get(self, key, protocol):
        return self.scores.get((key, protocol))

    @contextmanager
    def _locked(self):
        """The cache file open for reading and appending under an exclusive flock: the file now at
        its path (a compaction may have renamed another over the one opened while waiting)."""
        while True:
            with open(self.path, "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    current = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
                except FileNotFoundError:
                    current = False
                if current:
                    yield handle
                    return

    def add(self, key, scores, protocols):
        """Append one image's scores ({protocol: metrics}, or the one line saying why it cannot be
        scored: that too is a property of the bytes) and flush them to disk."""
        lines = []
        for protocol in protocols:
            metrics = scores if isinstance(scores, str) else scores[protocol]
            self.scores[(key, protocol)] = metrics
            lines.append(_entry_line(key, protocol, metrics))
        with self._locked() as handle:
            if _torn_end(handle):
                lines.insert(0, "\n")  # not glued to the torn line
            handle.write("".join(lines).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        self.added += len(protocols)

    def compact(self, live):
        """Rewrite the file with the entries of the `live` keys alone when its other lines outnumber
        them; the old file stays until the new one is complete on disk. Returns the lines dropped."""
        if not self.path.is_file():
            return 0
        with self._locked() as handle:
            handle.seek(0)
            scores, lines = _parse(handle.read().decode("utf-8", errors="replace"))
            kept = {k: metrics for k, metrics in scores.items() if k[0] in live}
            if lines - len(kept) <= len(kept):
                return 0
            for leftover in self.path.parent.glob(f".{self.path.stem}.*{self.path.suffix}.tmp"):
                leftover.unlink(missing_ok=True)  # a compaction killed before its rename

            def save(out):
                out.write("".join(_entry_line(k, p, m) for (k, p), m in kept.items()).encode("utf-8"))
                out.flush()
                os.fsync(out.fileno())
            write_atomic(self.path, save)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself on disk
        finally:
            os.close(directory)
        return lines - len(kept)


def live_keys(root, cells, version):
    """The cache keys some save folder under root lists: this call's cells and every other
    root/<method>/<dataset>/run.json (a call with fewer methods keeps the others' scores)."""
    keys = {image.key for cell in cells for image in cell.images}
    for record_path in Path(root).glob("*/*/run.json"):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            folder = record_path.parent
            keys.update(i.key for i in cell_images(Cell("", "", folder), record, version).images)
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # not a readable run record: it lists nothing
    return keys


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
