"""Small building blocks shared by the UNet: float32 GroupNorm, sinusoidal timestep embedding,
zero-initialised layers and an optional gradient checkpoint.

These reproduce the behaviour of OpenAI guided-diffusion's `nn.py` (see
reference/guided_diffusion.md §5); the parameter layout they create is the checkpoint's.
"""
import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

# Devices whose ATen group_norm keeps a channels-last input channels-last. Elsewhere (CUDA) it
# makes the input contiguous first, so every following conv would get an NCHW input with
# channels-last weights and convert it again: there GroupNorm32 normalises in NHWC itself.
NATIVE_CHANNELS_LAST_DEVICES = ("cpu",)


def is_channels_last(x):
    """A 4-D tensor laid out NHWC (and not also plain-contiguous, as 1x1 or 1-channel ones are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm_channels_last(x, num_groups, weight, bias, eps):
    """GroupNorm of a channels-last [N, C, H, W], statistics and affine in float32, returned
    channels-last in x's dtype.

    The NHWC data seen as [N, H*W, G, C/G] is a view, so the group statistics are one reduction
    over dims 1 and 3 (of a float32 copy: exact statistics); the normalisation and the affine fold
    into one per-(image, channel) scale and shift, applied by a single addcmul that computes in
    float32 and writes x's dtype, so no float32 image-sized output exists besides that copy
    (under autograd: a float32 result, then the cast).
    """
    n, c, h, w = x.shape
    grouped = x.permute(0, 2, 3, 1).reshape(n, h * w, num_groups, c // num_groups)
    var, mean = torch.var_mean(grouped.float(), dim=(1, 3), keepdim=True, correction=0)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.float().view(1, 1, num_groups, -1)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.float().view(1, 1, num_groups, -1)
    if torch.is_grad_enabled() and (grouped.requires_grad or scale.requires_grad):
        out = torch.addcmul(shift, grouped, scale).to(x.dtype)  # out= has no autograd
    else:
        out = x.new_empty(grouped.shape)
        torch.addcmul(shift, grouped, scale, out=out)
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (keeps fp16 runs stable).
    A channels-last input stays channels-last on every device (see NATIVE_CHANNELS_LAST_DEVICES)."""

    def forward(self, x):
        if x.device.type not in NATIVE_CHANNELS_LAST_DEVICES and is_channels_last(x):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
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
