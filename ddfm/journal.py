"""The save folder's own account of itself: which settings made each image, one run at a time.

`<save_dir>/journal.jsonl` is append-only, one JSON object per line, each line written with one
write() and fsync'd before the run goes on:

    {"event": "settings", "run": R, "key": K, "fingerprint": {...}, "input_dir": "/abs/in"}
    {"event": "image", "run": R, "stem": S, "file": "S.png", "key": K, "seconds": t, "sources": [a, b]}
    {"event": "skipped", "run": R, "stems": [S, ...]}       {"event": "failed", "run": R, "stem": S, "reason": "..."}

A run writes its settings line before its first image, and each image line just before the image
is renamed into recon/. So whatever kills the process, every image in recon/ is named by a line
that says which settings made it; a line whose rename never happened names a file that is not
there and counts for nothing. A truncated last line (a kill mid-write) is ignored.

`<save_dir>/run.lock` is flock'ed for the whole run and names its holder (pid, host, start).
"""
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ddfm.metrics_io import IMAGE_EXTENSIONS

JOURNAL = "journal.jsonl"
LOCK = "run.lock"


class RunError(ValueError):
    """A problem that stops the whole run (bad folders, bad output location), as one line."""


def settings_key(fingerprint):
    """A short name for a fingerprint: equal settings, equal key."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def new_run_id():
    return f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}"


class FolderLock:
    """An exclusive flock on <save_dir>/run.lock for the whole run; the file names the holder.

    The file stays after the run (only a failed start removes the folder it created): a process
    that opened it just before an unlink would lock a file nobody else sees, and two runs would
    share the folder.
    """

    def __init__(self, save_dir):
        self.path = Path(save_dir) / LOCK
        self.fd = None

    def acquire(self, run_id):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.read(fd, 4096))
            os.close(fd)
            raise RunError(f"{self.path.parent}: another sample.py run is using this folder ({holder}); "
                           f"wait for it to finish or choose another --save_dir") from None
        info = {"run": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        self.fd = fd  # held from here: release() closes it even if the write below fails
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def describe_holder(data):
    try:
        info = json.loads(data)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is just starting"


def lock_holder_run(save_dir):
    """The run id written into the lock file (torchrun ranks check it is their rank 0's)."""
    try:
        return json.loads((Path(save_dir) / LOCK).read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None


def append(save_dir, event):
    """One line, one write(), fsync'd: the line is on disk before the caller goes on."""
    data = (json.dumps(event, default=str) + "\n").encode()
    fd = os.open(Path(save_dir) / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def end_torn_line(save_dir):
    """After a kill mid-write the journal may end inside a line: start the next one cleanly."""
    path = Path(save_dir) / JOURNAL
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


# The fields each kind of line must have, and their types; a line without them is skipped.
REQUIRED_FIELDS = {"settings": {"key": str, "fingerprint": dict},
                   "image": {"stem": str, "file": str, "key": str},
                   "skipped": {"stems": list}, "failed": {"stem": str}}


def _missing_fields(event):
    """The required fields of a journal line that are absent or of the wrong type."""
    wanted = REQUIRED_FIELDS.get(event["event"], {})
    return [name for name, kind in wanted.items() if not isinstance(event.get(name), kind)]


def read_events(save_dir, warn=None):
    """Every complete, well-formed line of the journal. Torn lines (a kill mid-write) are skipped
    silently; a JSON line that lacks a field or has one of the wrong type is skipped with a
    warning naming its line number (an image it names then counts as unknown)."""
    path = Path(save_dir) / JOURNAL
    if not path.is_file():
        return []
    events = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            continue
        missing = _missing_fields(event)
        if missing:
            if warn is not None:
                warn(f"{path}: line {number} ({event['event']}) lacks or mistypes {', '.join(missing)}: skipped")
            continue
        events.append(event)
    return events


class FolderState:
    """What recon/ holds now: each image file's record (its last image line) and the files that
    no line names (put there by hand, or written by a version of sample.py without a journal)."""

    def __init__(self, save_dir, warn=None):
        self.events = read_events(save_dir, warn)
        self.settings = {e["key"]: e for e in self.events if e["event"] == "settings"}
        last = {e["file"]: e for e in self.events if e["event"] == "image"}
        self.records, self.unrecorded = {}, []
        recon = Path(save_dir) / "recon"
        for path in sorted(recon.iterdir()) if recon.is_dir() else []:
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.name in last:
                self.records[path.name] = last[path.name]
            else:
                self.unrecorded.append(path.name)


def remove_leftovers(save_dir):
    """Temporary files of a killed run (files.write_atomic, write_json_atomic): never images."""
    save_dir = Path(save_dir)
    patterns = [(save_dir, ".*.tmp"), (save_dir / "recon", ".*.tmp"), (save_dir / "progress", "**/.*.tmp")]
    removed = 0
    for folder, pattern in patterns:
        for path in folder.glob(pattern) if folder.is_dir() else []:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def delete_outputs(save_dir, names):
    """Delete images of recon/ with their progress frames (before --overwrite fuses anew)."""
    save_dir = Path(save_dir)
    for name in names:
        stem = Path(name).stem
        (save_dir / "recon" / name).unlink(missing_ok=True)
        shutil.rmtree(save_dir / "progress" / stem, ignore_errors=True)
        (save_dir / "progress" / f"{stem}.gif").unlink(missing_ok=True)
        (save_dir / "progress" / f"{stem}.json").unlink(missing_ok=True)  # CCF's step record


def changed_settings(before, after):
    """Names of the settings that differ, one level into the model/diffusion sections."""
    names = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            names += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            names.append(key)
    return names


def pair_sources(pair):
    return [str(Path(pair.a).resolve()), str(Path(pair.b).resolve())]


def _refuse_mixing(save_dir, state, other, moved, fingerprint):
    """One line about the first reason why fusing into this folder would mix images."""
    fix = "use --overwrite to delete and redo them, or choose another --save_dir"
    if other:
        before = state.settings.get(state.records[other[0]]["key"], {}).get("fingerprint", {})
        changed = ", ".join(changed_settings(before, fingerprint)) or "unknown"
        raise RunError(f"{save_dir}: recon/ holds {len(other)} image(s) fused with other settings "
                       f"(different: {changed}; see {JOURNAL}); rerun with those settings to resume, or {fix}")
    if state.unrecorded:
        shown = ", ".join(state.unrecorded[:3]) + (", ..." if len(state.unrecorded) > 3 else "")
        raise RunError(f"{save_dir}/recon: {len(state.unrecorded)} image(s) ({shown}) are not in {JOURNAL} "
                       f"(put there by hand, or written by a sample.py without a journal), so the settings "
                       f"that made them are unknown; {fix}")
    if moved:
        name, sources = moved[0]
        raise RunError(f"{save_dir}/recon/{name} was fused from {state.records[name]['sources'][0]}, not "
                       f"{sources[0]} ({len(moved)} image(s) of other source files share a stem with "
                       f"this input); {fix}")


def plan_resume(save_dir, state, pairs, key, fingerprint, overwrite):
    """Split the pairs into (todo, skipped) stems and list the images to delete first.

    An image is already fused only when its record has this run's settings and source files.
    Without --overwrite, an image of other settings, of unknown origin or of other source files
    under a stem of this input is a RunError: the folder would mix. With --overwrite those and
    the images of every pair to redo are deleted before the first new image is written.
    """
    want = {f"{p.stem}.png": pair_sources(p) for p in pairs}
    other = [n for n, r in state.records.items() if r.get("key") != key]
    moved = [(n, want[n]) for n, r in state.records.items()
             if n in want and r.get("key") == key and r.get("sources") != want[n]]
    if overwrite:
        doomed = set(other) | {n for n, _ in moved} | set(state.unrecorded) | (set(state.records) & set(want))
        return [p.stem for p in pairs], [], sorted(doomed)
    _refuse_mixing(save_dir, state, other, moved, fingerprint)
    done = {p.stem for p in pairs if f"{p.stem}.png" in state.records}
    return [p.stem for p in pairs if p.stem not in done], [p.stem for p in pairs if p.stem in done], []


def build_record(save_dir, header, run_id):
    """run.json from the journal: every image in recon/ with its settings, seconds and sources;
    skipped and failed are this run's (run_id); counts as the end-of-run line prints them."""
    state = FolderState(save_dir)
    fused = {Path(name).stem: {"seconds": e.get("seconds"), "settings": e.get("key"),
                               "sources": e.get("sources"), "run": e.get("run"),
                               "made_with": e.get("made_with")}
             for name, e in state.records.items()}
    now = [e for e in state.events if e.get("run") == run_id]
    keys = {image["settings"] for image in fused.values()} | {header["settings_key"]}
    record = dict(header)
    record["settings"] = {k: state.settings[k]["fingerprint"] for k in sorted(keys) if k in state.settings}
    record["fused"] = dict(sorted(fused.items()))
    if state.unrecorded:
        record["unrecorded"] = state.unrecorded
    record["skipped"] = sorted({s for e in now if e["event"] == "skipped" for s in e.get("stems", [])})
    record["failed"] = {e["stem"]: e.get("reason", "") for e in now if e["event"] == "failed"}
    record["counts"] = {"fused": sum(image["run"] == run_id for image in fused.values()),
                        "skipped": len(record["skipped"]), "failed": len(record["failed"]),
                        "in_folder": len(fused)}
    return record
