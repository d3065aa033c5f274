"""Small building blocks shared by the UNet: float32 GroupNorm, sinusoidal timestep embedding,
zero-initialised layers and an optional gradient checkpoint.

These reproduce the behaviour of OpenAI guided-diffusion's `nn.py` (see
reference/guided_diffusion.md §5); the parameter layout they create is the checkpoint's.
"""
import math

import torch
import torch.nn as nn
import torch.utils.checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (keeps fp16 runs stable)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    """The ADM normalisation layer: GroupNorm with 32 groups, eps 1e-5, affine."""
    return GroupNorm32(32, channels)


def _by_dims(dims, layers):
    if dims not in (1, 2, 3):
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims - 1]


def conv_nd(dims, *args, **kwargs):
    """nn.Conv1d / Conv2d / Conv3d chosen by `dims`."""
    return _by_dims(dims, (nn.Conv1d, nn.Conv2d, nn.Conv3d))(*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    """nn.AvgPool1d / 2d / 3d chosen by `dims`."""
    return _by_dims(dims, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))(*args, **kwargs)


def zero_module(module):
    """Zero every parameter of `module` in place and return it (ADM's zero-init output convs).

    Works on the meta device too: zero_() on a meta tensor is a no-op that allocates nothing.
    """
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding [cos(t·f_i), sin(t·f_i)], f_i = max_period^(-i/half), i < half = dim//2.

    timesteps: [N] tensor (int or float; fractional values are fine).
    Returns [N, dim] float32; an odd `dim` gets a trailing zero column.
    """
    half = dim // 2
    # Same operation order as the original (float32 arange, multiply, then divide) so the
    # frequencies round identically.
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func, inputs, enabled):
    """Run func(*inputs), recomputing activations in backward when `enabled` and grads are on.

    Values are identical either way; only training memory changes.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
