"""What a run records about itself: the settings that decide a fused image's pixels (its
fingerprint, and so the journal's settings key) and the run-level part of run.json.

The method that ran (ddfm.methods) states its own part; this module names no method.
"""
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from ddfm import determinism, distributed, methods
from ddfm.common import DEFAULT_SEED
from ddfm.savefolder.journal import settings_key


def ran(prior_info):
    """The method that made the images (the configured one, or the fallback without a prior)."""
    return methods.get(prior_info["method"])


def ignored_without_prior(config, running):
    """The fusion keys a run without the prior does not read: the sampler's (size rule,
    precision, batching, device) and, when the configured method fell back, its own and `method`."""
    asked = config.method
    if asked is running:
        return methods.SAMPLER_KEYS
    return asked.ignored_keys() + ("method",)


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def output_fingerprint(config, prior_info):
    """The settings that decide a fused image's pixels: a resumed run must share them. A key a
    method added after a release is left out at the value that release behaved as
    (Method.fingerprint_since), so folders made before it still resume."""
    fusion, method = config.fusion, ran(prior_info)
    fingerprint = {"prior": prior_info["prior"], "modalities": fusion["modalities"], "color": fusion["color"]}
    run, _ = config.settings()
    own = method.fingerprint(run, method.settings(fusion))
    for key, released in method.fingerprint_since.items():
        if key in own and own[key] == released:
            del own[key]
    fingerprint.update(own)
    if method.needs_prior:
        fingerprint["model"] = dict(config.model)
        fingerprint["diffusion"] = dict(config.diffusion)
    return fingerprint


def record_header(config, prior_info, fingerprint, save_dir):
    """The run-level part of run.json. A run without the prior records only the settings that
    decided its pixels; the keys it ignored are listed apart, with the reason."""
    fusion, method = config.fusion, ran(prior_info)
    header = {"configs": config.as_dict(), "prior": prior_info, "seed": int(config.diffusion.get("seed", DEFAULT_SEED))}
    if method.needs_prior:
        header.update(method.run_fields(*config.settings()))
    else:
        ignored = {key: fusion[key] for key in ignored_without_prior(config, method)}
        ignored.update(seed=header["seed"], model=dict(config.model), diffusion=dict(config.diffusion))
        header = {"configs": {"fusion": {k: v for k, v in fusion.items() if k not in ignored}},
                  "prior": prior_info, "ignored": {"keys": ignored, "why": method.why_no_effect}}
    header.update(fingerprint=fingerprint, settings_key=settings_key(fingerprint),
                  input_dir=str(Path(fusion["input_dir"]).resolve()), save_dir=str(save_dir),
                  versions=versions(), command=sys.argv, world_size=distributed.rank_and_world()[1],
                  determinism=determinism.contract(config.settings()[0]))
    return header
