"""DDFM: Denoising Diffusion Model for multi-modality image fusion (Zhao et al., ICCV 2023).

Programmatic use shares every line with `sample.py` (`ddfm fuse`):

    import ddfm
    fused = ddfm.fuse(ir, vi)                          # arrays (H,W) / (H,W,3) -> uint8
    fuser = ddfm.load_fuser(timestep_respacing=25)     # build once, fuse many
    fused = fuser.fuse(ct, mri)
    scores = ddfm.metrics.compute_metrics(a, b, fused) # sub-packages load on first use

The first image plays the infrared role (intensity: ir, ct, pet, spect), the second the visible
role (texture: vi, mri). Importing this package loads nothing heavy: torch comes with the first
fuser, matplotlib and Jinja2 only with a figure or a report.

Layout: the driver and configuration live at the top of the package (`config` validates the YAML
once and yields typed `settings`; `build` asks `methods` for the method by name; `run` drives the
pairs into the `savefolder`; `fingerprint`, `postrun`, `prior`, `memory`, `determinism`); the
rooms below it are `methods/` (one folder per method, one registry), `metrics/`, `present/`,
`savefolder/`, `datasets/` and `cli/` (the command lines, on top of everything). `common` is the
leaf they all share. Arrows run downwards only: nothing in `methods/` imports the driver or the
save folder, and `guided_diffusion` (the prior) imports nothing of `ddfm`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    Image = np.ndarray | torch.Tensor


def _config_dir() -> Path:
    """The default configs: shipped inside the package when installed (pyproject maps the
    project's configs/ to ddfm/configs/), the project's configs/ in a source checkout."""
    inside = Path(__file__).resolve().parent / "configs"
    return inside if inside.is_dir() else Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()
# Sub-packages reachable as attributes (ddfm.metrics) without importing them up front.
_LAZY = ("metrics", "present", "datasets", "savefolder", "cli")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"ddfm.{name}")
    raise AttributeError(f"module 'ddfm' has no attribute {name!r}")


class PairFuser(Protocol):
    """What load_fuser returns: a built prior and sampler that fuses pair after pair."""

    def fuse(self, a: Image, b: Image) -> np.ndarray: ...


def load_fuser(model_config: str | Path = CONFIG_DIR / "model_config_imagenet.yaml",
               diffusion_config: str | Path = CONFIG_DIR / "diffusion_config.yaml",
               fusion_config: str | Path | None = None, log: Callable[[str], Any] = print,
               **overrides: Any) -> PairFuser:
    """Resolve configs (any config key as a keyword) and build the prior once; returns a Fuser."""
    from ddfm.build import build_fuser
    from ddfm.config import load_config

    config = load_config(model_config, diffusion_config, fusion_config, list(overrides.items()))
    fuser, _ = build_fuser(config, log)
    return fuser


_ANNOUNCED: set[str] = set()  # the prior choices ddfm.fuse has already told this process about


def fuse(a: Image, b: Image, log: Callable[[str], Any] = print, **kwargs: Any) -> np.ndarray:
    """Fuse one pair of arrays or tensors ((H,W), (H,W,3) or (3,H,W); uint8, or floats in [0,1]).

    Returns the fused uint8 image, (H,W) or (H,W,3). The prior choice ("running the PRIOR-FREE
    Bayesian fusion", ...) is announced once per process, not at every call.
    """
    def log_once(message: str) -> None:
        if message not in _ANNOUNCED:
            _ANNOUNCED.add(message)
            log(message)
    return load_fuser(log=log_once, **kwargs).fuse(a, b)
