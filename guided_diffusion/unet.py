"""The ADM UNet (Dhariwal & Nichol 2021, OpenAI guided-diffusion `UNetModel`).

Module names and parameter order equal the released checkpoints' state_dict layout
(tests/golden/adm256_uncond_state_dict.txt), so `load_state_dict(strict=True)` works on them.
Architecture notes: reference/guided_diffusion.md §2-§5.
"""
from abc import abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import avg_pool_nd, checkpoint, conv_nd, normalization, timestep_embedding, zero_module


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x, emb):
        """Apply the module to x [N, C, ...] given emb [N, emb_channels]."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """nn.Sequential that passes `emb` to the children that take it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 conv (module name `conv`)."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        if self.dims == 3:
            # 3-D signals are upsampled in the inner two dimensions only.
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """x2 downsampling by a stride-2 3x3 conv, or 2x2 average pooling (module name `op`)."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            assert self.channels == self.out_channels
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block: GN-SiLU-conv, timestep FiLM (scale-shift norm or additive), GN-SiLU-dropout-conv.

    With up/down the resampling happens between the first SiLU and conv, on both branches.
    x: [N, channels, H, W], emb: [N, emb_channels] -> [N, out_channels, H', W'].
    """

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_conv=False,
                 use_scale_shift_norm=False, dims=2, use_checkpoint=False, up=False, down=False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )

        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x, emb):
        return checkpoint(self._forward, (x, emb), self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = self.h_upd(in_rest(x))
            x = self.x_upd(x)
            h = in_conv(h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            # First half is the scale, second half the shift (checkpoint convention).
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv, num_heads, legacy_order=True):
    """Multi-head self-attention over T tokens with softmax(q·k / sqrt(ch)) weights.

    qkv: [N, 3·H·ch, T]. Legacy order groups channels per head as (q|k|v) blocks of ch;
    the new order splits q|k|v thirds first, then heads. Returns [N, H·ch, T].
    Uses scaled_dot_product_attention, so the [T, T] weight matrix is never materialised;
    its default 1/sqrt(ch) scale equals the original's ch^(-1/4) applied to q and to k.
    """
    bs, width, length = qkv.shape
    assert width % (3 * num_heads) == 0
    ch = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(bs * num_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = qkv.chunk(3, dim=1)
    # SDPA wants [batch, heads, tokens, channels]: with heads as their own axis and contiguous
    # channels, the CPU and GPU kernels run flash-style in blocks (otherwise the CPU falls back to
    # the explicit [T, T] matrix). Its softmax accumulates in float32 as the original's does.
    q, k, v = (part.reshape(bs, num_heads, ch, length).transpose(-1, -2).contiguous()
               for part in (q, k, v))
    a = F.scaled_dot_product_attention(q, k, v)
    return a.transpose(-1, -2).reshape(bs, -1, length).type(qkv.dtype)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual: x + proj_out(attn(qkv(GN(x)))).

    x: [N, C, *spatial] -> same shape. Heads = C / num_head_channels when that is set.
    """

    def __init__(self, channels, num_heads=1, num_head_channels=-1, use_checkpoint=False,
                 use_new_attention_order=False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            assert channels % num_head_channels == 0, (
                f"q,k,v channels {channels} is not divisible by num_head_channels {num_head_channels}"
            )
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.legacy_order = not use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x):
        return checkpoint(self._forward, (x,), self.use_checkpoint)

    def _forward(self, x):
        b, c, *spatial = x.shape
        tokens = x.reshape(b, c, -1)  # tokens in row-major spatial order (a copy if channels-last)
        h = qkv_attention(self.qkv(self.norm(tokens)), self.num_heads, self.legacy_order)
        h = self.proj_out(h).reshape(b, c, *spatial)
        # x first: the sum takes x's memory format, so a channels-last UNet stays channels-last.
        return x + h


class UNetModel(nn.Module):
    """ADM UNet: eps (and variance interpolant) prediction from x_t [N, in_ch, H, W] and t [N].

    attention_resolutions holds downsample rates (ds), not pixel sizes. H and W must be
    divisible by 2^(len(channel_mult)-1). forward returns the raw [N, out_channels, H, W].
    """

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True,
                 dims=2, num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.dtype = torch.float16 if use_fp16 else torch.float32

        def res_block(ch, out_ch, **updown):
            return ResBlock(ch, time_embed_dim, dropout, out_channels=out_ch, dims=dims,
                            use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm, **updown)

        def attention(ch, heads):
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  use_checkpoint=use_checkpoint,
                                  use_new_attention_order=use_new_attention_order)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        # Encoder: the channel count after every block is remembered for the skip connections.
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (res_block(ch, ch, down=True) if resblock_updown
                        else Downsample(ch, conv_resample, dims=dims, out_channels=ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch),
            attention(ch, num_heads),
            res_block(ch, ch),
        )

        # Decoder: each block eats one skip tensor; the last block of a level upsamples.
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = skip_chans.pop()
                layers = [res_block(ch + skip_ch, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res_block(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)),
        )

    def convert_to_fp16(self):
        """Halve conv weights/biases inside input, middle and output blocks (original fp16 mode)."""
        self.convert_blocks(torch.float16)

    def convert_to_fp32(self):
        """Undo convert_to_fp16."""
        self.convert_blocks(torch.float32)

    def convert_blocks(self, dtype):
        """Cast the conv weights/biases inside input, middle and output blocks to `dtype`, once.

        As the original fp16 mode: the timestep MLP, GroupNorm affine and the output conv keep
        their float32 weights (GroupNorm32 normalises in float32 and casts back). The blocks then
        run in `dtype` (self.dtype) and the output conv in the input's dtype.
        """
        self.dtype = dtype
        for m in self.block_convs():
            m.weight.data = m.weight.data.to(dtype)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(dtype)

    def block_convs(self):
        """The convolutions inside input, middle and output blocks (those convert_blocks casts)."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    yield m

    def forward(self, x, timesteps, y=None):
        """x: [N, C, H, W], timesteps: [N] original (unscaled) timesteps, y: [N] labels if class-cond."""
        assert (y is not None) == (self.num_classes is not None), "y must be given iff class-conditional"
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)

        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)  # current features first, skip second
            h = module(h, emb)
        return self.out(h.type(x.dtype))
