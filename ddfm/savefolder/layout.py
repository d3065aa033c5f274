"""The layout of a save folder: the one module that names its files.

    <save_dir>/recon/<stem>.png         the fused images
    <save_dir>/recon/.replaced/<run>/   images an --overwrite run set aside until their new image is in place
    <save_dir>/progress/<stem>/, .gif, .json   the sampling frames, their GIF, CCF's step record
    <save_dir>/journal.jsonl            the folder's own record (ddfm.savefolder.journal)
    <save_dir>/run.json                 rebuilt from the journal at the end of every run
    <save_dir>/metrics.json, report/    the post-run evaluation and report
    <save_dir>/run.lock                 held for the whole run (ddfm.savefolder.lock)

Kept free of heavy imports: evaluate.py and table.py read the names from here.
"""
import json
import os
import shutil
from pathlib import Path

from ddfm.files import write_atomic

RECON, PROGRESS, REPLACED = "recon", "progress", ".replaced"
JOURNAL, RECORD, METRICS, REPORT = "journal.jsonl", "run.json", "metrics.json", "report"
LOCK, OLD_HASH_CACHE = "run.lock", ".hashes.json"  # the hash cache of earlier versions


class Layout:
    """The paths of one save folder."""

    def __init__(self, save_dir):
        self.root = Path(save_dir)
        self.recon, self.progress, self.report = self.root / RECON, self.root / PROGRESS, self.root / REPORT
        self.journal, self.record, self.metrics = self.root / JOURNAL, self.root / RECORD, self.root / METRICS
        self.lock, self.old_hash_cache = self.root / LOCK, self.root / OLD_HASH_CACHE
        self.replaced = self.recon / REPLACED

    def image(self, stem):
        return self.recon / f"{stem}.png"

    def frames(self, stem):
        return self.progress / stem

    def gifs(self):
        """{stem: path} of the sampling GIFs."""
        return {path.stem: path for path in sorted(self.progress.glob("*.gif"))}

    def aside(self, run_id):
        """Where run `run_id` keeps the images it replaces (run ids hold ':')."""
        return self.replaced / run_id.replace(":", "_").replace("/", "_")

    def aside_images(self):
        """Every image set aside by an --overwrite run, oldest run first."""
        if not self.replaced.is_dir():
            return []
        return [path for folder in sorted(self.replaced.iterdir()) if folder.is_dir()
                for path in sorted(folder.iterdir()) if path.is_file()]

    def _progress_items(self, folder, stem):
        """An image's progress files: its frames, its GIF and CCF's step record."""
        return [folder / stem, folder / f"{stem}.gif", folder / f"{stem}.json"]


def remove_leftovers(layout):
    """Temporary files of a killed run (files.write_atomic): never images."""
    patterns = [(layout.root, ".*.tmp"), (layout.recon, ".*.tmp"), (layout.progress, "**/.*.tmp"),
                (layout.report, "**/.*.tmp")]
    removed = 0
    for folder, pattern in patterns:
        for path in folder.glob(pattern) if folder.is_dir() else []:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _move(source, dest):
    if source.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def set_aside(layout, run_id, name):
    """Move an image of recon/ and its progress files into recon/.replaced/<run>/: the image goes
    last, so a kill leaves it either in recon/ or aside, never in neither."""
    stem, aside = Path(name).stem, layout.aside(run_id)
    for source, dest in zip(layout._progress_items(layout.progress, stem),
                            layout._progress_items(aside / PROGRESS, stem)):
        _move(source, dest)
    _move(layout.recon / name, aside / name)


def drop(layout, path):
    """Remove a set-aside image with its progress files, and its run's folder once empty."""
    folder, stem = path.parent, path.stem
    for item in layout._progress_items(folder / PROGRESS, stem):
        _remove(item)
    path.unlink(missing_ok=True)
    for empty in (folder / PROGRESS, folder, layout.replaced):
        try:
            empty.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: other images are still aside
            break


def write_json_atomic(path, data):
    write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=2, default=str).encode()))


def read_json(path):
    """A JSON file, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        return None


def read_record(save_dir):
    """run.json of a save folder (None when absent or unreadable)."""
    return read_json(Layout(save_dir).record)


def read_metrics(save_dir):
    """The evaluation results in metrics.json: a list with one result per protocol."""
    saved = read_json(Layout(save_dir).metrics)
    if not isinstance(saved, dict):  # one protocol's result, or {"protocols": [...]} for several
        return []
    results = saved.get("protocols", [saved] if "methods" in saved else [])
    return results if isinstance(results, list) else []
