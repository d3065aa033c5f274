"""Dataset driver: pairs -> batches -> (ranks) -> fused images, progress, run.json, resume.

Every per-pair problem is reported as one line and the other pairs still run; the caller turns
the failure count into the exit code. Outputs are written atomically and existing ones are
skipped (unless overwrite), so an interrupted run resumes where it stopped.
"""
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddfm import distributed, io
from ddfm.config import ConfigError
from ddfm.fusion import Fuser
from ddfm.prior import build_diffusion, build_prior, resolve_device, resolve_prior


class RunError(ValueError):
    """A problem that stops the whole run (bad folders, bad output location), as one line."""


def check_save_dir(save_dir, input_dir, modalities):
    """The output folder must be writable and must not be an input folder."""
    save = Path(save_dir).resolve()
    for folder in [Path(input_dir)] + [Path(input_dir) / m for m in modalities]:
        if folder.exists() and folder.resolve() == save:
            raise RunError(f"{save_dir}: output folder is the input folder {folder}; choose another --save_dir")
    try:
        (save / "recon").mkdir(parents=True, exist_ok=True)
        probe = save / "recon" / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunError(f"{save_dir}: output folder is not writable ({err.strerror or err})") from None


class Recorder:
    """Collects the per-step progress frames of one batch and writes them (files + GIF)."""

    def __init__(self, save_dir, stems):
        self.dirs = [Path(save_dir) / "progress" / stem for stem in stems]
        self.frames = [[] for _ in stems]

    def __call__(self, i, frames):
        for k, frame in enumerate(frames):
            io.write_image_atomic(self.dirs[k] / f"x_{i:04d}.png", frame)
            self.frames[k].append(frame)

    def finish(self):
        for folder, frames in zip(self.dirs, self.frames):
            if frames:
                io.write_gif(folder.with_suffix(".gif"), frames)


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def build_fuser(config, log):
    """Resolve the prior and device, build model and sampler; returns (fuser, prior_info)."""
    fusion = config.fusion
    kind, reason = resolve_prior(fusion["prior"], config.model)
    log(reason)
    device = distributed.local_device(resolve_device(fusion["device"]))
    seed = int(config.diffusion.get("seed", 3407))
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


def load_pairs(pairs, failures, log):
    """Decode and check each pair lazily; a bad pair is logged and recorded, not fatal."""
    for pair in pairs:
        try:
            src_a, src_b = io.read_image(pair.a), io.read_image(pair.b)
            io.check_pair(pair.stem, src_a, src_b)
        except io.FusionInputError as err:
            log(f"error: {err}")
            failures[pair.stem] = str(err)
            continue
        yield pair, src_a, src_b


def output_fingerprint(config, prior_kind):
    """The settings that decide a fused image's pixels: a resumed run must share them."""
    fusion = config.fusion
    fingerprint = {"prior": prior_kind, "modalities": fusion["modalities"], "color": fusion["color"]}
    if prior_kind == "adm":
        fingerprint.update({key: fusion[key] for key in ("variant", "lamb", "rho", "size", "normalize", "dtype")})
        fingerprint["model"] = dict(config.model)
        fingerprint["diffusion"] = dict(config.diffusion)
    return fingerprint


def previous_record(save_dir, fingerprint, overwrite):
    """The run.json of an earlier run in save_dir; a different configuration is an error unless
    everything is redone (--overwrite): its images must not be mixed with new ones."""
    path = Path(save_dir) / "run.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    before = old.get("fingerprint")
    if before is not None and before != fingerprint and not overwrite:
        changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        raise RunError(f"{path}: {save_dir} holds images fused with other settings ({', '.join(changed)}); "
                       f"use --overwrite to redo them or choose another --save_dir")
    return old


def fuse_pairs(fuser, todo, save_dir, failures, log, progress):
    """Fuse and write every pair of `todo`; returns {stem: seconds}. A batch that fails (a write
    error, out of memory) is logged and recorded; the others still run."""
    fusion, recon, timings = fuser.fusion, Path(save_dir) / "recon", {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="pairs", unit="pair")
    for batch in iter_batches(load_pairs(todo, failures, log), fuser, fusion["batch_size"]):
        stems = [pair.stem for pair, _, _ in batch]
        recorder = Recorder(save_dir, stems) if fusion["record"] and not fuser.prior_free else None
        start = time.perf_counter()
        try:
            images = fuser.fuse_batch([(a, b) for _, a, b in batch], step_callback=recorder,
                                      progress=progress)
            seconds = (time.perf_counter() - start) / len(batch)
            for stem, image in zip(stems, images):
                io.write_image_atomic(recon / f"{stem}.png", image)
                timings[stem] = round(seconds, 4)
            if recorder is not None:
                recorder.finish()
        except (OSError, RuntimeError) as err:
            message = f"{', '.join(stems)}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            log(f"error: {message}")
            failures.update({stem: message for stem in stems if stem not in timings})
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return timings


def run(config, save_dir="output", overwrite=False, log=print, progress=True):
    """Fuse every pair of the configured folders into <save_dir>/recon; returns the run record."""
    fusion = config.fusion
    check_save_dir(save_dir, fusion["input_dir"], fusion["modalities"])
    pairs, problems = io.find_pairs(fusion["input_dir"], fusion["modalities"])
    rank, world = distributed.rank_and_world()
    pairs = pairs[rank::world]
    failures = {}
    for message in problems:
        log(f"error: {message}")
        failures[Path(message.split(":")[0]).stem] = message
    fingerprint = output_fingerprint(config, resolve_prior(fusion["prior"], config.model)[0])
    old = previous_record(save_dir, fingerprint, overwrite)
    recon = Path(save_dir) / "recon"
    todo = [p for p in pairs if overwrite or not (recon / f"{p.stem}.png").exists()]
    skipped = [p.stem for p in pairs if p not in todo]
    if skipped:
        log(f"{len(skipped)} pair(s) already fused in {recon}: skipped (use --overwrite to redo)")

    fuser, prior_info = build_fuser(config, log)
    if fusion["record"] and fuser.prior_free:
        log("record: the prior-free fusion has no sampling steps to record")
    # Timings of the pairs an earlier run fused stay in the record of a resumed run.
    timings = {stem: t for stem, t in old.get("fused", {}).items() if stem in skipped}
    record = {"configs": config.as_dict(), "prior": prior_info, "variant": fusion["variant"],
              "seed": int(config.diffusion.get("seed", 3407)), "fingerprint": fingerprint,
              "versions": versions(), "command": sys.argv, "fused": timings, "skipped": skipped,
              "failed": failures}
    try:
        timings.update(fuse_pairs(fuser, todo, save_dir, failures, log, progress))
    finally:  # also after Ctrl-C: the record says what is on disk
        record = distributed.write_run_record(save_dir, record, rank, world)
    return record


def evaluate_run(config, save_dir, method="DDFM", log=print):
    """The metrics table of a finished run (reference protocol); also saved as metrics.json."""
    from ddfm.evaluation import EvaluationError, evaluate_folders, format_table, write_json

    root = Path(config.fusion["input_dir"])
    first, second = config.fusion["modalities"]
    try:
        result = evaluate_folders(root / first, root / second, {method: Path(save_dir) / "recon"},
                                  warn=lambda message: log(f"warning: {message}"))
    except EvaluationError as err:
        log(f"evaluation skipped: {err}")
        return ""
    write_json(result, Path(save_dir) / "metrics.json")
    return format_table(result)
