"""Opening a save folder for a run (rank 0, before any image): lock it, finish what a killed run
left, decide what to fuse (or refuse to mix), set aside what --overwrite replaces, journal the
settings. A start that fails at any step leaves no folder it created and no other run uses, and
a start refused the lock removes nothing."""
from ddfm.common import RunError
from ddfm.savefolder import journal, layout as folder
from ddfm.savefolder.resume import FolderState, drop_replaced, plan_resume


def _make_folder(root):
    """mkdir -p; returns the folders this call created, outermost first: each is made by one
    mkdir of its own, so of two starts racing for a new folder only the one whose mkdir succeeded
    counts it as created."""
    created = []
    for path in [p for p in [root, *root.parents] if not p.exists()][::-1]:
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:  # another start made it between the check and the mkdir
            pass
    root.mkdir(parents=True, exist_ok=True)  # the errors: a file in the way, no permission
    return created


def _own_folder(layout, created):
    """Whether this start made the folder and, holding the lock, finds nothing else in it but
    run.lock: then no other run has used it, and everything in it is this start's."""
    try:
        return layout.root in created and [p.name for p in layout.root.iterdir()] == [layout.lock.name]
    except OSError:
        return False


def _undo_start(layout, created):
    """A failed start removes, still holding the lock, what it wrote and the folders it created
    (called only for a folder it owns, see _own_folder)."""
    for path in (layout.journal, layout.lock):
        path.unlink(missing_ok=True)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


def start_run(layout, lock, run_id, pairs, problems, header, overwrite, log):
    """Returns (todo stems, skipped stems); on any error the lock is released again.

    A start refused the lock touches nothing: the folder and its files are the holder's, even if
    this start's mkdir made the folder. A start that fails while holding the lock removes the
    folders it created, before releasing it, and only if no other run had used them."""
    created, own = [], None
    try:
        created = _make_folder(layout.root)
        lock.acquire(run_id)
        own = _own_folder(layout, created)
        return _prepare(layout, run_id, pairs, problems, header, overwrite, log)
    except BaseException as err:
        if lock.fd is not None:
            if own is None:  # run.lock itself could not be written: nothing else is this start's yet
                own = _own_folder(layout, created)
            if own:
                _undo_start(layout, created)
            lock.release()
        if isinstance(err, OSError):
            raise RunError(f"{err.filename or layout.root}: output folder is not writable "
                           f"({err.strerror or err})") from None
        raise


def _check_recon(layout):
    """recon/ must be a folder: one line now, not one error per pair. (A file in report/'s place
    fails only the report, after the images: see postrun.)"""
    if layout.recon.exists() and not layout.recon.is_dir():
        raise RunError(f"{layout.recon}: is a file where the run writes a folder; move it away or "
                       f"choose another --save_dir")


def _prepare(layout, run_id, pairs, problems, header, overwrite, log):
    _check_recon(layout)
    journal.end_torn_line(layout.journal)
    if folder.remove_leftovers(layout):
        log(f"removed the temporary files of an interrupted run in {layout.root}")
    layout.old_hash_cache.unlink(missing_ok=True)  # earlier versions cached hashes there
    state = FolderState(layout, warn=lambda message: log(f"warning: {message}"))
    if drop_replaced(layout, state):
        log(f"finished the clean-up of an interrupted --overwrite run in {layout.replaced}")
        state = FolderState(layout)
    todo, skipped, replace = plan_resume(layout, state, pairs, header["settings_key"],
                                         header["fingerprint"], overwrite, log)
    if replace:
        log(f"{len(replace)} earlier image(s) set aside in {layout.aside(run_id)}: each is removed "
            f"once the new image of its stem is in place")
    for name in replace:
        journal.append(layout.journal, {"event": "set_aside", "run": run_id, "file": name})
        folder.set_aside(layout, run_id, name)
    journal.append(layout.journal, {"event": "settings", "run": run_id, "key": header["settings_key"],
                                    "fingerprint": header["fingerprint"], "input_dir": header["input_dir"]})
    for stem, message in problems:
        journal.append(layout.journal, {"event": "failed", "run": run_id, "stem": stem, "reason": message})
    if skipped:
        journal.append(layout.journal, {"event": "skipped", "run": run_id, "stems": skipped})
    return todo, skipped
