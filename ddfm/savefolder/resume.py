"""The resume policy: what a save folder holds, what a run may skip, what it must refuse.

A pair counts as already fused only when the journal says its image in recon/ was made with this
run's settings from these source files, and the sources and the image still have the content
hashes journaled for them; a pair whose source or image changed is fused again, said in one line.
An image of other settings, of unknown origin or of other source files under a stem of this input
is refused (the folder would mix) unless --overwrite is given: then it is set aside in
recon/.replaced/<run>/ and removed only once the new image of its stem is in place (by this run or
a later one), so a killed --overwrite leaves each stem either its old image or its new one.
"""
from pathlib import Path

from ddfm.common import RunError
from ddfm.metrics.images import IMAGE_EXTENSIONS
from ddfm.savefolder import journal, layout as folder
from ddfm.savefolder.hashes import file_hash


class FolderState:
    """What recon/ holds now.

    records: {file: its image line}, the latest line whose hash is the file's (a line whose rename
    never happened names other bytes); a line of an earlier version without a hash is trusted by
    name. changed: {file: why} for images whose bytes no line names (edited after they were
    written). unrecorded: files that no line names (put there by hand, or by a sample.py without a
    journal). aside: images set aside by --overwrite runs, with the run that set each aside.
    """

    def __init__(self, layout, warn=None):
        self.events = journal.read_events(layout.journal, warn)
        self.settings = {e["key"]: e for e in self.events if e["event"] == "settings"}
        lines = {}
        for event in self.events:
            if event["event"] == "image":
                lines.setdefault(event["file"], []).append(event)
        self.records, self.changed, self.unrecorded = {}, {}, []
        for path in sorted(layout.recon.iterdir()) if layout.recon.is_dir() else []:
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.name not in lines:
                self.unrecorded.append(path.name)
                continue
            record = _matching_line(lines[path.name], lambda: file_hash(path))
            if record is None:
                self.changed[path.name] = f"{path} changed since it was written"
            else:
                self.records[path.name] = record
        set_aside_at = {(layout.aside(e["run"]), e["file"]): e["line"]
                        for e in self.events if e["event"] == "set_aside" and isinstance(e.get("run"), str)}
        self.aside = [(path, set_aside_at.get((path.parent, path.name))) for path in layout.aside_images()]


def _matching_line(lines, hash_now):
    digest = None
    for line in reversed(lines):
        if "hash" not in line:
            return line
        digest = hash_now() if digest is None else digest
        if line["hash"] == digest:
            return line
    return None


def pair_sources(pair):
    return [str(Path(pair.a).resolve()), str(Path(pair.b).resolve())]


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


def _shown(names):
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _refuse_mixing(layout, state, other, unknown, moved, fingerprint):
    """One line about the first reason why fusing into this folder would mix images."""
    fix = ("use --overwrite to replace them (each is kept aside until its new image is in place), "
           "or choose another --save_dir")
    if other:
        before = state.settings.get(state.records[other[0]]["key"], {}).get("fingerprint", {})
        changed = ", ".join(changed_settings(before, fingerprint)) or "unknown"
        raise RunError(f"{layout.root}: {folder.RECON}/ holds {len(other)} image(s) fused with other "
                       f"settings (different: {changed}; see {layout.journal.name}); rerun with those "
                       f"settings to resume, or {fix}")
    if unknown:
        raise RunError(f"{layout.recon}: {len(unknown)} image(s) ({_shown(unknown)}) are not in "
                       f"{layout.journal.name} or changed since it named them (put there by hand, or "
                       f"written by a sample.py without a journal), so the settings that made them are "
                       f"unknown; {fix}")
    if moved:
        name, sources = moved[0]
        raise RunError(f"{layout.recon / name} was fused from {state.records[name]['sources'][0]}, not "
                       f"{sources[0]} ({len(moved)} image(s) of other source files share a stem with "
                       f"this input); {fix}")


def changed_since_fused(record, pair):
    """Why an image journaled with this run's settings and sources is not fused any more (None
    when its sources still hash as journaled; the image's own bytes were matched by FolderState)."""
    journaled = record.get("source_hashes")
    if journaled is None or "hash" not in record:
        return f"{record['file']} has no content hashes in the journal (written by an earlier sample.py)"
    for path, digest in zip((pair.a, pair.b), journaled):
        if file_hash(path) != digest:
            return f"{path} changed since {record['file']} was fused from it"
    return None


def plan_resume(layout, state, pairs, key, fingerprint, overwrite, log):
    """Split the pairs into (todo, skipped) stems and list the images of recon/ to set aside.

    With --overwrite every pair is redone and every image it replaces, or that would mix, is set
    aside. Without it a mix is a RunError, and a pair whose sources or image changed since they
    were journaled is fused again (its image set aside), said in one line.
    """
    want = {f"{p.stem}.png": pair_sources(p) for p in pairs}
    other = [n for n, r in state.records.items() if r["key"] != key]
    moved = [(n, want[n]) for n, r in state.records.items()
             if n in want and r["key"] == key and r.get("sources") != want[n]]
    if overwrite:
        replace = (set(other) | {n for n, _ in moved} | set(state.unrecorded) | set(state.changed)
                   | (set(state.records) & set(want)))
        return [p.stem for p in pairs], [], sorted(replace)
    _refuse_mixing(layout, state, other, state.unrecorded + [n for n in state.changed if n not in want],
                   moved, fingerprint)
    changed = {n: reason for n, reason in state.changed.items() if n in want}
    for pair in pairs:
        name = f"{pair.stem}.png"
        if name in state.records:
            reason = changed_since_fused(state.records[name], pair)
            if reason is not None:
                changed[name] = reason
    if changed:
        first = next(iter(changed.values()))
        log(f"{len(changed)} pair(s) changed since they were fused, fusing them again ({first}"
            f"{'; ...' if len(changed) > 1 else ''})")
    done = {p.stem for p in pairs if f"{p.stem}.png" in state.records and f"{p.stem}.png" not in changed}
    return ([p.stem for p in pairs if p.stem not in done], [p.stem for p in pairs if p.stem in done],
            sorted(changed))


def drop_replaced(layout, state):
    """Remove the set-aside images whose stem has its new image in place: a run killed between
    the new image's rename and the removal. Returns how many went; the others stay aside until
    their stem's new image is written (by any run), so a killed --overwrite never loses one."""
    removed = 0
    for path, line in state.aside:
        new = state.records.get(f"{Path(path.name).stem}.png")
        if new is not None and line is not None and new["line"] > line:
            folder.drop(layout, path)
            removed += 1
    return removed


def drop_unfused(layout, state, run_id, stems, overwrite):
    """At the end of a finished run: the images it set aside whose stem is not among its pairs
    will never be replaced, and --overwrite removes them (as it promised); a finished --overwrite
    also removes those that earlier, killed --overwrite runs set aside. Those of its pairs that
    failed stay aside. Returns (removed, still aside)."""
    mine = [path for path, _ in state.aside if overwrite or path.parent == layout.aside(run_id)]
    gone = [path for path in mine if Path(path.name).stem not in stems]
    for path in gone:
        folder.drop(layout, path)
    return len(gone), len(mine) - len(gone)
