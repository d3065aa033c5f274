"""Opening a save folder for a run (rank 0, before any image): lock it, finish what a killed run
left, decide what to fuse (or refuse to mix), set aside what --overwrite replaces, journal the
settings. A start that fails at any step leaves no folder it created."""
from ddfm.messages import RunError
from ddfm.savefolder import journal, layout as folder
from ddfm.savefolder.hashes import HashCache
from ddfm.savefolder.resume import FolderState, drop_replaced, plan_resume


def _make_folder(root):
    """mkdir -p; returns the folders it created, outermost first."""
    missing = [p for p in [root, *root.parents] if not p.exists()][::-1]
    root.mkdir(parents=True, exist_ok=True)
    return missing


def _undo_start(layout, created):
    """A failed start leaves nothing behind in a folder it created."""
    if not created:
        return
    for path in (layout.lock, layout.journal, layout.hash_cache):
        path.unlink(missing_ok=True)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


def start_run(layout, lock, run_id, pairs, problems, header, overwrite, log):
    """Returns (todo stems, skipped stems); on any error the lock is released again."""
    created = []
    try:
        created = _make_folder(layout.root)
        lock.acquire(run_id)
        try:
            return _prepare(layout, run_id, pairs, problems, header, overwrite, log)
        except BaseException:
            lock.release()
            raise
    except BaseException as err:
        _undo_start(layout, created)
        if isinstance(err, OSError):
            raise RunError(f"{layout.root}: output folder is not writable ({err.strerror or err})") from None
        raise


def _prepare(layout, run_id, pairs, problems, header, overwrite, log):
    journal.end_torn_line(layout.journal)
    if folder.remove_leftovers(layout):
        log(f"removed the temporary files of an interrupted run in {layout.root}")
    hashes = HashCache(layout.hash_cache)
    state = FolderState(layout, hashes, warn=lambda message: log(f"warning: {message}"))
    if drop_replaced(layout, state):
        log(f"finished the clean-up of an interrupted --overwrite run in {layout.replaced}")
        state = FolderState(layout, hashes)
    todo, skipped, replace = plan_resume(layout, state, pairs, header["settings_key"],
                                         header["fingerprint"], overwrite, hashes, log)
    if replace:
        log(f"{len(replace)} earlier image(s) set aside in {layout.aside(run_id)}: each is removed "
            f"once the new image of its stem is in place")
    for name in replace:
        journal.append(layout.journal, {"event": "set_aside", "run": run_id, "file": name})
        folder.set_aside(layout, run_id, name)
    hashes.save()
    journal.append(layout.journal, {"event": "settings", "run": run_id, "key": header["settings_key"],
                                    "fingerprint": header["fingerprint"], "input_dir": header["input_dir"]})
    for stem, message in problems:
        journal.append(layout.journal, {"event": "failed", "run": run_id, "stem": stem, "reason": message})
    if skipped:
        journal.append(layout.journal, {"event": "skipped", "run": run_id, "stems": skipped})
    return todo, skipped
