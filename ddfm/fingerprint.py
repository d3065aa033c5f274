"""What a run records about itself: the settings that decide a fused image's pixels (its
fingerprint, and so the journal's settings key) and the run-level part of run.json."""
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from ddfm import determinism, distributed
from ddfm.defaults import DEFAULT_SEED
from ddfm.methods.ccf.fuser import ccf_fingerprint
from ddfm.savefolder.journal import settings_key

# What the prior-free Bayesian fusion never reads, and why (issue 10): reported, not fingerprinted.
PRIOR_FREE_IGNORED = ("variant", "lamb", "rho", "size", "normalize", "dtype", "batch_size",
                      "channels_last", "compile", "device")
PRIOR_FREE_WHY = ("the prior-free Bayesian fusion runs on the CPU at the source size with the BF "
                  "release's fixed parameters and rounding, without a UNet or a sampler")


def prior_free_ignored(fusion):
    """The fusion keys a prior-free run ignores: CCF's own too when the config asked for CCF."""
    if fusion["method"] != "ccf":
        return PRIOR_FREE_IGNORED
    return PRIOR_FREE_IGNORED + ("method",) + tuple(sorted(k for k in fusion if k.startswith("ccf_")))


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def output_fingerprint(config, prior_kind):
    """The settings that decide a fused image's pixels: a resumed run must share them."""
    fusion = config.fusion
    fingerprint = {"prior": prior_kind, "modalities": fusion["modalities"], "color": fusion["color"]}
    if prior_kind == "adm":
        if fusion["method"] == "ccf":  # method, ccf_ keys, size/normalize/dtype; no DDFM-only key
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
    header = {"configs": config.as_dict(), "prior": prior_info, "seed": int(config.diffusion.get("seed", DEFAULT_SEED))}
    if fusion["method"] != "ccf":  # CCF has no DDFM variant
        header["variant"] = fusion["variant"]
    if prior_info["prior"] == "none":
        ignored = {key: fusion[key] for key in prior_free_ignored(fusion)}
        ignored.update(seed=header["seed"], model=dict(config.model), diffusion=dict(config.diffusion))
        header = {"configs": {"fusion": {k: v for k, v in fusion.items() if k not in ignored}},
                  "prior": prior_info, "ignored": {"keys": ignored, "why": PRIOR_FREE_WHY}}
    header.update(fingerprint=fingerprint, settings_key=settings_key(fingerprint),
                  input_dir=str(Path(fusion["input_dir"]).resolve()), save_dir=str(save_dir),
                  versions=versions(), command=sys.argv, world_size=distributed.rank_and_world()[1],
                  determinism=determinism.contract(fusion))
    return header
