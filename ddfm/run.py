"""Dataset driver: pairs -> batches -> (ranks) -> fused images, then evaluation and report.

Every per-pair problem is reported as one line and the other pairs still run; the caller turns
the failure count into the exit code. What the save folder holds, may skip or must refuse, and
how it is locked and journaled, is ddfm.savefolder's: this module only drives the pairs through
the fuser into it. run.json is rebuilt from the journal at the end, also after Ctrl-C or SIGTERM.
"""
import time
from dataclasses import dataclass
from pathlib import Path

from ddfm import distributed, io, postrun
from ddfm.build import build_fuser
from ddfm.common import RunError, one_line
from ddfm.datasets.layouts import InputFolderError, find_modality_folders
from ddfm.fingerprint import ignored_without_prior, output_fingerprint, ran, record_header
from ddfm.savefolder import journal, lock as folder_lock
from ddfm.savefolder.hashes import content_hash
from ddfm.savefolder.layout import Layout
from ddfm.savefolder.record import build_record, write_record
from ddfm.savefolder.resume import FolderState, drop_unfused, pair_sources
from ddfm.savefolder.start import start_run
from ddfm.savefolder.writer import RunJournal


def check_save_dir(save_dir, input_dir, modalities):
    """The output folder must not be an input folder (checked before anything is written)."""
    save = Path(save_dir).resolve()
    for folder in [Path(input_dir)] + [Path(input_dir) / m for m in modalities]:
        if folder.exists() and folder.resolve() == save:
            raise RunError(f"{save_dir}: output folder is the input folder {folder}; choose another --save_dir")


def resolve_modalities(input_dir, modalities, log):
    """The modality folders as they are spelled on disk, or a known layout (ddfm.datasets.layouts)."""
    try:
        return find_modality_folders(input_dir, modalities, log)
    except InputFolderError as err:
        raise io.FusionInputError(str(err)) from None


class Recorder:
    """Collects the per-step progress frames of one batch and writes them (files + GIF), and
    whatever else the method hands on per step (its own record, Method.write_step_record)."""

    def __init__(self, layout, stems, method):
        self.dirs = [layout.frames(stem) for stem in stems]
        self.frames = [[] for _ in stems]
        self.details = [[] for _ in stems]
        self.method = method

    def __call__(self, i, frames, details=None):
        for k, frame in enumerate(frames):
            io.write_image_atomic(self.dirs[k] / f"x_{i:04d}.png", frame)
            self.frames[k].append(frame)
            if details is not None:
                self.details[k].append(details[k])

    def finish(self):
        for folder, frames, details in zip(self.dirs, self.frames, self.details):
            if frames:
                io.write_gif(folder.with_suffix(".gif"), frames)
            if details:
                self.method.write_step_record(folder.with_suffix(".json"), folder.name, details)


def iter_batches(items, fuser, batch_size):
    """Group (pair, src_a, src_b) by sampler size; yield lists of at most batch_size.

    With many image sizes, partly filled buckets would hold decoded images until the end: once
    2 * batch_size pairs wait, the fullest bucket goes as it is.
    """
    pending = {}
    for item in items:
        key = (None,) if fuser.prior_free else fuser.fused_shape(item[1])
        bucket = pending.setdefault(key, [])
        bucket.append(item)
        if len(bucket) >= batch_size:
            yield pending.pop(key)
        elif sum(len(b) for b in pending.values()) >= 2 * batch_size:
            yield pending.pop(max(pending, key=lambda k: len(pending[k])))
    yield from pending.values()


def load_pairs(pairs, runlog):
    """Read, hash, decode and check each pair lazily; a bad pair is logged and recorded, not fatal.
    Yields (pair, src_a, src_b, source hashes): the hashes are of the very bytes decoded."""
    for pair in pairs:
        try:
            data = [io.read_file_bytes(pair.a), io.read_file_bytes(pair.b)]
            src_a, src_b = io.read_image(pair.a, data[0]), io.read_image(pair.b, data[1])
            io.check_pair(pair.stem, src_a, src_b)
        except io.FusionInputError as err:
            runlog.fail(pair.stem, str(err))
            continue
        yield pair, src_a, src_b, [content_hash(d) for d in data]


def _batch_error(stems, err):
    """One line for a batch that failed as a whole (a write error, out of memory)."""
    reason = one_line(err)
    if isinstance(err, MemoryError):
        reason = f"out of memory ({reason})"
    return f"{', '.join(stems)}: {reason}"


def fuse_pairs(fuser, method, todo, layout, runlog, progress):
    """Fuse, journal and write every pair of `todo` with `method`'s fuser; returns the number of
    images written. A batch that fails (a write error, out of memory) is logged and recorded; the
    others still run."""
    run, written, bar = fuser.run, 0, None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="pairs", unit="pair")
    for batch in iter_batches(load_pairs(todo, runlog), fuser, run.batch_size):
        stems = [pair.stem for pair, *_ in batch]
        recorder = Recorder(layout, stems, method) if run.record and not fuser.prior_free else None
        start, done = time.perf_counter(), set()
        try:
            images = fuser.fuse_batch([(a, b) for _, a, b, _ in batch], step_callback=recorder,
                                      progress=progress)
            seconds = round((time.perf_counter() - start) / len(batch), 4)
            made_with = fuser.provenance(len(batch))
            for (pair, _, _, source_hashes), image in zip(batch, images):
                runlog.write_image(pair.stem, io.encode_png(image), seconds, pair_sources(pair),
                                   source_hashes, made_with)
                done.add(pair.stem)
                written += 1
            if recorder is not None:
                recorder.finish()
        except (OSError, RuntimeError, MemoryError) as err:
            message = _batch_error(stems, err)
            for stem in stems:
                if stem not in done:
                    runlog.fail(stem, message)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return written


def find_input_pairs(fusion, log):
    """The pairs of the input folder (modality folders matched as spelled on disk)."""
    fusion["modalities"] = resolve_modalities(fusion["input_dir"], fusion["modalities"], log)
    try:
        return io.find_pairs(fusion["input_dir"], fusion["modalities"])
    except OSError as err:
        raise RunError(f"{err.filename or fusion['input_dir']}: input folder cannot be read "
                       f"({err.strerror or err})") from None


@dataclass
class Outcome:
    """What a run returns: its run.json record, the metrics tables (evaluate) and whether the
    report failed (report)."""
    record: dict
    table: str = ""
    report_failed: bool = False


def run(config, save_dir="output", overwrite=False, log=print, progress=True):
    """Fuse every pair of the configured folders into <save_dir>/recon, then evaluate and report
    as configured, all under the folder's lock; returns an Outcome."""
    fusion, layout = config.fusion, Layout(save_dir)
    check_save_dir(save_dir, fusion["input_dir"], fusion["modalities"])
    pairs, problems = find_input_pairs(fusion, log)
    for _, message in problems:
        log(f"error: {message}")
    fuser, prior_info = build_fuser(config, log)
    method = ran(prior_info)
    if not method.needs_prior:
        log(f"{method.label}: these settings have no effect: {', '.join(ignored_without_prior(config, method))}, "
            f"seed, the model and diffusion configs ({method.why_no_effect})")
        if fusion["record"]:
            log(f"record: {method.label} has no sampling steps to record")
    header = record_header(config, prior_info, output_fingerprint(config, prior_info), save_dir)
    rank, world = distributed.rank_and_world()
    lock, run_id = folder_lock.FolderLock(layout), journal.new_run_id()
    run_id, todo, skipped = distributed.from_rank0(
        lambda: (run_id, *start_run(layout, lock, run_id, pairs, problems, header, overwrite, log)))
    try:
        if rank > 0 and folder_lock.holder_run(layout) != run_id:
            raise RunError(f"{save_dir}: {layout.lock.name} is not held by this run's rank 0 "
                           f"(is --save_dir on a filesystem all ranks share?)")
        if skipped:
            log(f"{len(skipped)} pair(s) already fused in {layout.recon} with these settings: "
                f"skipped (use --overwrite to redo)")
        runlog = RunJournal(layout, run_id, header["settings_key"], log)
        mine = [p for p in pairs if p.stem in set(todo)][rank::world]
        finished = False
        try:
            fuse_pairs(fuser, method, mine, layout, runlog, progress)
            finished = True
        finally:  # also after Ctrl-C or SIGTERM: run.json says what is on disk
            record = finish(layout, header, run_id, runlog, {p.stem for p in pairs} if finished else None,
                            overwrite, log)
        outcome = Outcome(record)
        if rank == 0:
            sources = [Path(fusion["input_dir"]) / m for m in fusion["modalities"]]
            outcome.table, outcome.report_failed = postrun.evaluate_and_report(config, layout, method,
                                                                               sources, log)
        return outcome
    finally:
        lock.release()


def finish(layout, header, run_id, runlog, stems, overwrite, log):
    """After the last image (stems: this finished run's pairs) or an interruption (None), once
    all ranks of a finished run are done: rank 0 removes what this run (or, for --overwrite, any
    run) set aside and will never replace, and writes run.json from the journal. An unwritable run.json is one error
    line; the images and the journal stay as they are."""
    rank = distributed.rank_and_world()[0]
    if stems is not None:
        distributed.barrier()
    if rank == 0 and stems is not None and layout.replaced.is_dir():
        state = FolderState(layout)
        _, kept = drop_unfused(layout, state, run_id, stems, overwrite)
        if kept:
            log(f"{kept} earlier image(s) stay set aside in {layout.replaced} until their pair "
                f"is fused again")
    record = build_record(layout, header, run_id, runlog.failed)
    if rank > 0:
        return record
    try:
        write_record(layout, record)
    except OSError as err:
        record["record_error"] = f"{layout.record}: cannot write the run record ({err.strerror or err})"
        log(f"error: {record['record_error']}; the images and {layout.journal.name} are complete")
    return record
