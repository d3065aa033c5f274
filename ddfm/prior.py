"""Choosing and building the prior: the ADM UNet from its checkpoint, or none at all.

A random-weight network is never used as a prior: `adm` needs a checkpoint that loads strictly,
and `auto` falls back to the prior-free Bayesian fusion (announced) only when the file is absent.
"""
from contextlib import nullcontext
from pathlib import Path

import torch

import guided_diffusion
from ddfm.config import ConfigError
from guided_diffusion.checkpoint import CheckpointError, missing_file_message

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; anything else is handed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r}: {str(err).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine")
    return device


def resolve_prior(mode, model_config):
    """Decide between 'adm' and 'none'; returns (kind, reason) or raises CheckpointError."""
    path = model_config.get("model_path")
    if mode == "none":
        return "none", "prior=none: prior-free Bayesian fusion"
    if path and Path(path).is_file():
        return "adm", f"prior: {path}"
    if mode == "adm":
        raise CheckpointError(missing_file_message(path))
    return "none", (f"checkpoint {path} not found: running the PRIOR-FREE Bayesian fusion "
                    f"(not DDFM); see README 'Getting the checkpoint'")


class PriorModel(torch.nn.Module):
    """model(x, t) with the fast-path settings: autocast dtype and channels-last; output float32."""

    def __init__(self, unet, dtype="fp32", channels_last=False):
        super().__init__()
        self.unet = unet
        self.autocast_dtype = AUTOCAST_DTYPES.get(dtype)
        self.channels_last = channels_last

    def forward(self, x, timesteps):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            context = nullcontext()
        else:
            context = torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
        with context:
            out = self.unet(x, timesteps)
        return out.float()


def build_prior(model_config, device, dtype="fp32", channels_last=False, compile_model=False):
    """Build the UNet, load its checkpoint strictly and wrap it for sampling."""
    unet = guided_diffusion.create_model(**model_config)
    unet = unet.to(device).eval().requires_grad_(False)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    model = PriorModel(unet, dtype=dtype, channels_last=channels_last)
    if compile_model:
        model = torch.compile(model)
    return model


def build_diffusion(diffusion_config):
    """The respaced sampler from the official diffusion keys (the seed is ours, not the sampler's)."""
    keys = {k: v for k, v in diffusion_config.items() if k != "seed"}
    return guided_diffusion.create_sampler(**keys)
