"""Choosing and building the prior: the ADM UNet from its checkpoint, or none at all.

A random-weight network is never used as a prior: `adm` needs a checkpoint that loads strictly,
and `auto` falls back to the prior-free Bayesian fusion (announced) only when the file is absent.
"""
from contextlib import nullcontext
from pathlib import Path

import torch

import guided_diffusion
from ddfm.common import one_line
from ddfm.config import ConfigError
from guided_diffusion.checkpoint import CheckpointError, locate_checkpoint, missing_file_message, places_looked

# dtype key -> (dtype the UNet's block convs are cast to once, autocast dtype). GroupNorm, the
# timestep MLP, the output conv, the EM step and the sampler maths stay float32 in every mode.
PRECISIONS = {
    "fp32": (None, None),
    "tf32": (None, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "bf16-autocast": (None, torch.bfloat16),
    "fp16-autocast": (None, torch.float16),
}


def set_tf32(enabled, matmul=None):
    """TF32 for CUDA float32 convolutions (and matmuls: `matmul`, default the same): off gives
    exact float32 (PyTorch's default turns it on for cuDNN convolutions only).

    Set through the legacy flags: in torch >= 2.9 they update the fp32_precision state too, so
    every getter stays readable. Setting only fp32_precision leaves the legacy state behind, and
    then reading it (torch.get_float32_matmul_precision(), cudnn.allow_tf32, which inductor and
    cuBLAS consult) raises "mix of the legacy and new APIs"."""
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled if matmul is None else matmul)


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; anything else is handed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r}: {one_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine")
    return device


def resolve_prior(mode, model_config, label="DDFM"):
    """Decide between 'adm' and 'none' for the method called `label`; returns (kind, reason)
    or raises CheckpointError."""
    path = locate_checkpoint(model_config.get("model_path"))  # as given, else under $DDFM_HOME
    if mode == "none":
        return "none", "prior=none: prior-free Bayesian fusion"
    if path and Path(path).is_file():
        return "adm", f"prior: {path}"
    if mode == "adm":
        raise CheckpointError(missing_file_message(path))
    return "none", (f"checkpoint {places_looked(path)} not found: running the PRIOR-FREE Bayesian fusion "
                    f"(not {label}); see README 'Getting the checkpoint'")


class PriorModel(torch.nn.Module):
    """model(x, t) with the fast-path settings: precision mode and channels-last; output float32.

    dtype "bf16"/"fp16" casts the block convs of `unet` (in place) once; "*-autocast" leaves the
    weights float32 and lets autocast cast them at every forward.
    """

    def __init__(self, unet, dtype="fp32", channels_last=False):
        super().__init__()
        weight_dtype, self.autocast_dtype = PRECISIONS[dtype]
        if weight_dtype is not None:
            unet.convert_blocks(weight_dtype)
        if channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        self.unet = unet
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


def wrap_unet(unet, device, dtype="fp32", channels_last=False, compile_mode="none",
              backend="inductor"):
    """An eval-mode UNet on `device` as the sampler's model: precision, memory format, TF32 flag
    (on for dtype tf32 only) and, for compile_mode "unet", torch.compile with static shapes.

    Cast and laid out where the weights are, then moved: a UNet on the host reaches the device
    already in its final dtype, so building peaks at the bf16 weights (1.13 GiB for the ADM),
    not at float32 weights plus their bf16 copies (2.06 GiB)."""
    if device.type == "cuda":
        set_tf32(dtype == "tf32")
    unet = unet.eval().requires_grad_(False)
    model = PriorModel(unet, dtype=dtype, channels_last=channels_last).to(device)
    if compile_mode == "unet":
        # dynamic=False: one graph per image size, never a dynamic-shape graph.
        model = torch.compile(model, dynamic=False, backend=backend)
    return model


def build_prior(model_config, device, dtype="fp32", channels_last=False, compile_mode="none"):
    """Build the UNet, load its checkpoint strictly and wrap it for sampling (see wrap_unet)."""
    unet = guided_diffusion.create_model(**model_config)
    return wrap_unet(unet, device, dtype, channels_last, compile_mode)


def build_diffusion(diffusion_config):
    """The respaced sampler from the official diffusion keys (the seed is ours, not the sampler's)."""
    keys = {k: v for k, v in diffusion_config.items() if k != "seed"}
    return guided_diffusion.create_sampler(**keys)
