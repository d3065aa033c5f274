"""Dataset driver: pairs -> batches -> (ranks) -> fused images, progress, run.json, resume.

Every per-pair problem is reported as one line and the other pairs still run; the caller turns
the failure count into the exit code. The save folder is locked for the run and keeps a journal
(ddfm.journal) of the settings that made each image: a resumed run skips only images made with
its own settings and source files and refuses to mix others in; run.json is rebuilt from the
journal at the end, also after Ctrl-C or SIGTERM.
"""
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddfm import determinism, distributed, io, journal
from ddfm.config import DEFAULT_SEED, ConfigError
from ddfm.fusion import Fuser
from ddfm.journal import RunError
from ddfm.prior import build_diffusion, build_prior, resolve_device, resolve_prior


def check_save_dir(save_dir, input_dir, modalities):
    """The output folder must not be an input folder (checked before anything is written)."""
    save = Path(save_dir).resolve()
    for folder in [Path(input_dir)] + [Path(input_dir) / m for m in modalities]:
        if folder.exists() and folder.resolve() == save:
            raise RunError(f"{save_dir}: output folder is the input folder {folder}; choose another --save_dir")


def resolve_modalities(input_dir, modalities, log):
    """The modality folders as they are spelled on disk: `pet` finds `PET` when exactly one
    sub-folder matches without regard to case; otherwise the error lists the sub-folders."""
    root = Path(input_dir)
    try:
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    except OSError as err:
        raise RunError(f"{root}: input folder cannot be read ({err.strerror or err})") from None
    resolved = []
    for name in modalities:
        matches = [s for s in subfolders if s.lower() == name.lower()]
        if (root / name).is_dir():
            resolved.append(name)
        elif len(matches) == 1:
            log(f"modality '{name}': using the folder {root / matches[0]}")
            resolved.append(matches[0])
        else:
            there = ", ".join(subfolders) if subfolders else "none"
            where = f"sub-folders of {root}: {there}" if root.is_dir() else f"{root} does not exist"
            raise io.FusionInputError(f"{root / name}: input folder not found ({where})")
    return resolved


class Recorder:
    """Collects the per-step progress frames of one batch and writes them (files + GIF)."""

    def __init__(self, save_dir, stems):
        self.dirs = [Path(save_dir) / "progress" / stem for stem in stems]
        self.frames = [[] for _ in stems]
        self.details = [[] for _ in stems]  # CCF: each step's conditions and weights per image

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
                from ddfm.ccf_record import write_step_record
                write_step_record(folder.with_suffix(".json"), folder.name, details)


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def build_fuser(config, log):
    """Resolve the prior and device, build model and sampler; returns (fuser, prior_info)."""
    fusion = config.fusion
    kind, reason = resolve_prior(fusion["prior"], config.model)
    log(reason)
    device = distributed.local_device(resolve_device(fusion["device"]))
    determinism.prepare_device(fusion, device)
    seed = int(config.diffusion.get("seed", DEFAULT_SEED))
    if kind == "none":
        return Fuser(fusion, seed=seed, device=device), {"prior": "none", "reason": reason}
    try:
        model = build_prior(config.model, device, dtype=fusion["dtype"],
                            channels_last=fusion["channels_last"], compile_mode=fusion["compile"])
    except (TypeError, ValueError) as err:  # flags the UNet cannot be built from
        raise ConfigError(f"model config: {err}") from None
    diffusion = build_diffusion(config.diffusion)
    info = {"prior": "adm", "model_path": str(config.model.get("model_path")), "reason": reason,
            "device": str(device), "dtype": fusion["dtype"], "steps": int(diffusion.num_timesteps)}
    if fusion["method"] == "ccf":
        from ddfm.ccf_fusion import CCFFuser, settings_from_fusion
        info["method"] = "ccf"
        return CCFFuser(fusion, settings_from_fusion(fusion), seed=seed, model=model,
                        diffusion=diffusion, device=device), info
    return Fuser(fusion, seed=seed, model=model, diffusion=diffusion, device=device), info


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


class RunLog:
    """This run's lines in the save folder's journal (ddfm.journal), and its failures in memory."""

    def __init__(self, save_dir, run_id, key, log):
        self.save_dir, self.run_id, self.key, self.log = Path(save_dir), run_id, key, log
        self.failed = {}

    def write(self, event, **fields):
        journal.append(self.save_dir, {"event": event, "run": self.run_id, **fields})

    def image(self, pair, seconds, made_with=None):
        """Journal an image just before it is renamed into recon/ (see io.write_image_atomic);
        made_with: ddfm.determinism.provenance of the batch that made it."""
        self.write("image", stem=pair.stem, file=f"{pair.stem}.png", key=self.key, seconds=seconds,
                   sources=journal.pair_sources(pair), made_with=made_with)

    def fail(self, stem, message):
        self.log(f"error: {message}")
        self.failed[stem] = message
        try:
            self.write("failed", stem=stem, reason=message)
        except OSError:  # the journal is unwritable too: run.json still gets it from memory
            pass


def load_pairs(pairs, runlog):
    """Decode and check each pair lazily; a bad pair is logged and recorded, not fatal."""
    for pair in pairs:
        try:
            src_a, src_b = io.read_image(pair.a), io.read_image(pair.b)
            io.check_pair(pair.stem, src_a, src_b)
        except io.FusionInputError as err:
            runlog.fail(pair.stem, str(err))
            continue
        yield pair, src_a, src_b


# What the prior-free Bayesian fusion never reads, and why (issue 10): reported, not fingerprinted.
PRIOR_FREE_IGNORED = ("variant", "lamb", "rho", "size", "normalize", "dtype", "batch_size",
                      "channels_last", "compile", "device")
PRIOR_FREE_WHY = ("the prior-free Bayesian fusion runs on the CPU at the source size with the BF "
                  "release's fixed parameters and rounding, without a UNet or a sampler")


def output_fingerprint(config, prior_kind):
    """The settings that decide a fused image's pixels: a resumed run must share them."""
    fusion = config.fusion
    fingerprint = {"prior": prior_kind, "modalities": fusion["modalities"], "color": fusion["color"]}
    if prior_kind == "adm":
        if fusion["method"] == "ccf":  # method, ccf_ keys, size/normalize/dtype; no DDFM-only key
            from ddfm.ccf_fusion import ccf_fingerprint
            fingerprint.update(ccf_fingerprint(fusion))
        else:
            fingerprint.update({key: fusion[key] for key in ("variant", "lamb", "rho", "size", "normalize", "dtype")})
        fingerprint["model"] = dict(config.model)
        fingerprint["diffusion"] = dict(config.diffusion)
    return fingerprint


def record_header(config, prior_info, fingerprint, save_dir):
    """The run-level part of run.json. A prior-free run records only the settings that decided
    its pixels; the keys it ignored are listed apart, with the reason."""
    fusion = config.fusion
    header = {"configs": config.as_dict(), "prior": prior_info, "variant": fusion["variant"],
              "seed": int(config.diffusion.get("seed", DEFAULT_SEED))}
    if prior_info["prior"] == "none":
        ignored = {key: fusion[key] for key in PRIOR_FREE_IGNORED}
        ignored.update(seed=header["seed"], model=dict(config.model), diffusion=dict(config.diffusion))
        header = {"configs": {"fusion": {k: v for k, v in fusion.items() if k not in ignored}},
                  "prior": prior_info, "ignored": {"keys": ignored, "why": PRIOR_FREE_WHY}}
    header.update(fingerprint=fingerprint, settings_key=journal.settings_key(fingerprint),
                  input_dir=str(Path(fusion["input_dir"]).resolve()), save_dir=str(save_dir),
                  versions=versions(), command=sys.argv, world_size=distributed.rank_and_world()[1],
                  determinism=determinism.contract(fusion))
    return header


def _batch_error(stems, err):
    """One line for a batch that failed as a whole (a write error, out of memory)."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, MemoryError):
        reason = f"out of memory ({reason})"
    return f"{', '.join(stems)}: {reason}"


def _hold_for_tests(count):
    """Test hook (DDFM_TEST_HOLD_AFTER=k): stop after the k-th image until a signal arrives, so
    the tests can interrupt a run at a known point."""
    hold = os.environ.get("DDFM_TEST_HOLD_AFTER")
    while hold is not None and count >= int(hold):
        time.sleep(0.05)


def fuse_pairs(fuser, todo, save_dir, runlog, progress):
    """Fuse, journal and write every pair of `todo`; returns the number of images written. A batch
    that fails (a write error, out of memory) is logged and recorded; the others still run."""
    fusion, recon, written = fuser.fusion, Path(save_dir) / "recon", 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="pairs", unit="pair")
    for batch in iter_batches(load_pairs(todo, runlog), fuser, fusion["batch_size"]):
        stems = [pair.stem for pair, _, _ in batch]
        recorder = Recorder(save_dir, stems) if fusion["record"] and not fuser.prior_free else None
        start, done = time.perf_counter(), set()
        try:
            images = fuser.fuse_batch([(a, b) for _, a, b in batch], step_callback=recorder,
                                      progress=progress)
            seconds = round((time.perf_counter() - start) / len(batch), 4)
            made_with = fuser.provenance(len(batch))
            for (pair, _, _), image in zip(batch, images):
                io.write_image_atomic(recon / f"{pair.stem}.png", image,
                                      before_publish=lambda: runlog.image(pair, seconds, made_with))
                done.add(pair.stem)
                written += 1
                _hold_for_tests(written)
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


def prepare_folder(save_dir, lock, run_id, pairs, problems, header, overwrite, log):
    """Rank 0, before any image: lock the folder, clear a killed run's leftovers, decide what to
    fuse (or refuse to mix), delete what --overwrite replaces, journal the settings.
    Returns (todo stems, skipped stems); on any error the lock is released again."""
    save = Path(save_dir)
    created = not save.exists()
    try:
        save.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"{save_dir}: output folder is not writable ({err.strerror or err})") from None
    try:  # from here on a failure undoes the start, the lock's own write included (a full disk)
        lock.acquire(run_id)
        journal.end_torn_line(save)
        if journal.remove_leftovers(save):
            log(f"removed the temporary files of an interrupted run in {save_dir}")
        state = journal.FolderState(save, warn=lambda message: log(f"warning: {message}"))
        todo, skipped, doomed = journal.plan_resume(save_dir, state, pairs,
                                                    header["settings_key"], header["fingerprint"], overwrite)
        if doomed:
            log(f"--overwrite: deleting {len(doomed)} earlier image(s) in {save / 'recon'} before fusing")
            journal.delete_outputs(save, doomed)
        journal.append(save, {"event": "settings", "run": run_id, "key": header["settings_key"],
                              "fingerprint": header["fingerprint"], "input_dir": header["input_dir"]})
        for stem, message in problems:
            journal.append(save, {"event": "failed", "run": run_id, "stem": stem, "reason": message})
        if skipped:
            journal.append(save, {"event": "skipped", "run": run_id, "stems": skipped})
    except BaseException as err:
        lock.release()
        if created:  # a failed start leaves nothing behind
            (save / journal.LOCK).unlink(missing_ok=True)
            (save / journal.JOURNAL).unlink(missing_ok=True)
            try:
                save.rmdir()
            except OSError:
                pass
        if isinstance(err, OSError):
            raise RunError(f"{save_dir}: output folder is not writable ({err.strerror or err})") from None
        raise
    return todo, skipped


def run(config, save_dir="output", overwrite=False, log=print, progress=True):
    """Fuse every pair of the configured folders into <save_dir>/recon; returns the run record."""
    fusion = config.fusion
    check_save_dir(save_dir, fusion["input_dir"], fusion["modalities"])
    pairs, problems = find_input_pairs(fusion, log)
    for _, message in problems:
        log(f"error: {message}")
    fuser, prior_info = build_fuser(config, log)
    fingerprint = output_fingerprint(config, prior_info["prior"])
    if fuser.prior_free:
        log(f"prior-free: these settings have no effect: {', '.join(PRIOR_FREE_IGNORED)}, seed, the "
            f"model and diffusion configs ({PRIOR_FREE_WHY})")
        if fusion["record"]:
            log("record: the prior-free fusion has no sampling steps to record")
    header = record_header(config, prior_info, fingerprint, save_dir)
    rank, world = distributed.rank_and_world()
    lock, run_id = journal.FolderLock(save_dir), journal.new_run_id()
    run_id, todo, skipped = distributed.from_rank0(
        lambda: (run_id, *prepare_folder(save_dir, lock, run_id, pairs, problems, header, overwrite, log)))
    if rank > 0 and journal.lock_holder_run(save_dir) != run_id:
        raise RunError(f"{save_dir}: {journal.LOCK} is not held by this run's rank 0 "
                       f"(is --save_dir on a filesystem all ranks share?)")
    if skipped:
        log(f"{len(skipped)} pair(s) already fused in {Path(save_dir) / 'recon'} with these settings: "
            f"skipped (use --overwrite to redo)")
    runlog = RunLog(save_dir, run_id, header["settings_key"], log)
    mine = [p for p in pairs if p.stem in set(todo)][rank::world]
    finished = False
    try:
        fuse_pairs(fuser, mine, save_dir, runlog, progress)
        finished = True
    finally:  # also after Ctrl-C or SIGTERM: run.json says what is on disk
        record = write_record(save_dir, header, run_id, runlog, rank, world, finished, log)
        lock.release()
    return record


def write_record(save_dir, header, run_id, runlog, rank, world, finished, log):
    """run.json rebuilt from the journal (written by rank 0); an unwritable run.json is one error
    line, the images and the journal stay as they are."""
    def build():
        record = journal.build_record(save_dir, header, run_id)
        record["failed"].update(runlog.failed)  # in case the journal could not take them
        record["counts"]["failed"] = len(record["failed"])
        return record
    try:
        record = distributed.write_run_record(save_dir, build, rank, world, finished)
    except OSError as err:
        record = build()
        record["record_error"] = f"{Path(save_dir) / 'run.json'}: cannot write the run record ({err.strerror or err})"
        log(f"error: {record['record_error']}; the images and {journal.JOURNAL} are complete")
    return record


def source_folders(config):
    """The two modality folders of the run's input_dir, spelled as on disk."""
    root = Path(config.fusion["input_dir"])
    first, second = resolve_modalities(root, config.fusion["modalities"], lambda message: None)
    return root / first, root / second


def evaluate_run(config, save_dir, method="DDFM", log=print):
    """The metrics tables of a finished run (protocol(s): eval_protocol); also saved as metrics.json."""
    from ddfm.evaluation import EvaluationError, evaluate_protocols, format_table, write_json

    try:
        results = evaluate_protocols(*source_folders(config), {method: Path(save_dir) / "recon"},
                                     protocols=[config.fusion.get("eval_protocol", "reference")],
                                     warn=lambda message: log(f"warning: {message}"), allow_missing=True)
    except EvaluationError as err:
        log(f"evaluation skipped: {err}")
        return ""
    write_json(results, Path(save_dir) / "metrics.json")
    return "\n\n".join(format_table(result) for result in results)


def report_run(config, save_dir, method="DDFM", log=print):
    """The HTML report of a finished run, <save_dir>/report/index.html (see ddfm.report)."""
    from ddfm.report import write_run_report
    return write_run_report(config, save_dir, method, *source_folders(config), log=log)
