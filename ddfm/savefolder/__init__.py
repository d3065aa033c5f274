"""sample.py's save folder: its layout, its lock, its journal, content hashes and resume policy.

    layout   the only place that names the folder's files (Layout), run.json and metrics.json I/O,
             and the moves of images an --overwrite run sets aside
    lock     the flock held for the whole run, evaluation and report included
    journal  the append-only journal.jsonl: its line format, written and read back
    hashes   content hashes of sources and images (always read: no timestamp vouches for bytes)
    resume   what the folder holds, what a run may skip, what it must refuse, run.json's content

This package may import `ddfm.common`, `ddfm.files`, `ddfm.metrics.images` (image extensions) and the
standard library; never the driver, the methods, the prior or torch. `ddfm.run` drives pairs into it.
"""
