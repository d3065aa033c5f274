"""DDFM: Denoising Diffusion Model for multi-modality image fusion (Zhao et al., ICCV 2023).

Programmatic use shares every line with `sample.py`:

    import ddfm
    fused = ddfm.fuse(ir, vi)                          # arrays (H,W) / (H,W,3) -> uint8
    fuser = ddfm.load_fuser(timestep_respacing=25)     # build once, fuse many
    fused = fuser.fuse(ct, mri)

The first image plays the infrared role (intensity: ir, ct, pet, spect), the second the visible
role (texture: vi, mri).
"""
from pathlib import Path

_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def load_fuser(model_config=_CONFIGS / "model_config_imagenet.yaml",
               diffusion_config=_CONFIGS / "diffusion_config.yaml", fusion_config=None,
               log=print, **overrides):
    """Resolve configs (any config key as a keyword) and build the prior once; returns a Fuser."""
    from ddfm.config import load_config
    from ddfm.build import build_fuser

    config = load_config(model_config, diffusion_config, fusion_config, list(overrides.items()))
    fuser, _ = build_fuser(config, log)
    return fuser


_ANNOUNCED = set()  # the prior choices ddfm.fuse has already told this process about


def fuse(a, b, log=print, **kwargs):
    """Fuse one pair of arrays or tensors ((H,W), (H,W,3) or (3,H,W); uint8, or floats in [0,1]).

    The prior choice ("running the PRIOR-FREE Bayesian fusion", ...) is announced once per
    process, not at every call.
    """
    def log_once(message):
        if message not in _ANNOUNCED:
            _ANNOUNCED.add(message)
            log(message)
    return load_fuser(log=log_once, **kwargs).fuse(a, b)
