"""Peak device memory of a fusion, planned before it runs; the one-line refusal of a pair that
would not fit, and the same line for a real out-of-memory error mid-pair.

The model (bytes; a, the activation dtype's size: 2 for bf16/fp16/autocast, 4 otherwise):

    peak = weights + batch * H * W * (unet_bytes_per_pixel + sampler_bytes_per_pixel)

weights: the UNet's parameters as they run (ADM: 1.13 GiB with bf16 block convs, 2.06 GiB in
float32). unet_bytes_per_pixel: the live activations where an ADM forward peaks. Its encoder
leaves every level's skip tensors waiting, so the peak sits early in the full-resolution decoder
level, where the skips of that level (C0 = model channels of level 0, C1 of level 1, R res
blocks per level) are still held; three places compete (per image pixel, half-resolution
tensors count a quarter):
  A. the GroupNorm of the first full-resolution decoder ResBlock: R skips a*R*C0, the block input
     (the concatenation) a*Cin with Cin = C1 + C0, and GroupNorm32's float32 work on it:
     ATen's path (NCHW) a float32 copy of the input (only when a < 4) and a float32 output,
     4*Cin each; the channels-last path (guided_diffusion.nn.group_norm_channels_last) one
     float32 copy for the statistics, 4*Cin, and its output in the input dtype, freed copy first;
  B. the SiLU after it: a*(R*C0 + 3*Cin) (input, normalised, SiLU);
  C. the second conv of the ResBlock that upsamples level 1 to level 0: the R + 1 level-0 skips,
     at half resolution the decoder block's input and its first ResBlock's output
     a*(2*C1 + C0)/4, and five full-resolution C1 tensors (the resampled x and h, the scale-shift
     result, its SiLU, the conv's output).
The ADM-256 (C0 = C1 = 256, R = 2) gives A = 6144 B/px in bf16 (the peak), 4096 channels-last,
C = 8960 in float32 (the peak) and 4480 in bf16 (the channels-last peak). Attention is assumed to
run in the flash (bf16/fp16) or memory-efficient (float32) kernel of scaled_dot_product_attention,
linear in the tokens, so it is never the peak; the math kernel's T x T scores at 1/8 resolution
would be quadratic in the pixels (8 heads * T^2 * 4 bytes: 0.74 GB at 480x640).

sampler_bytes_per_pixel: what the method holds while the UNet runs: the UNet's input (12 B),
the sources, x_t, x0, the EM or CCF state, counted by fake runs (DDFM: the full fuser on
simulated CUDA; CCF, whose guidance that harness runs on `meta`: its sampler on a fake CPU):
DDFM 128 B/px, CCF 256 B/px (each method's sampler_bytes_per_pixel, ddfm.methods), + 12 with
channels-last (the NHWC copy of the input).

Checked against the live device bytes of a simulated-CUDA run of the full fuser (FakeTensorMode,
tests/test_fake_cuda_memory.py) at 256x256, 480x640 and 768x1024. Not in the model: the CUDA
context (outside torch's allocator), the allocator's rounding and fragmentation,
cuDNN workspaces, and torch.compile (fuses GroupNorm: lower peaks, so the plan errs high).
benchmarks/gpu_check.py prints predicted against measured peaks per row.
"""
import math
import traceback
from typing import NamedTuple

import torch

GIB = 2 ** 30
# Bytes per pixel DDFM's sampler holds besides the UNet's activations (see the module docstring);
# every method states its own (ddfm.methods.Method.sampler_bytes_per_pixel).
DEFAULT_SAMPLER_BYTES = 128
CHANNELS_LAST_INPUT_BYTES_PER_PIXEL = 12  # the float32 3-channel input copied to NHWC
REDUCED_DTYPES = (torch.bfloat16, torch.float16)


class DeviceMemoryError(RuntimeError):
    """A pair that does not fit in the device's memory (predicted, or out of memory mid-pair)."""


class PeakPlan(NamedTuple):
    """A predicted peak: weights (bytes, resident once) + per_pixel bytes for each of pixels."""
    weights: int
    per_pixel: int
    pixels: int

    @property
    def activations(self):
        return self.per_pixel * self.pixels

    @property
    def total(self):
        return self.weights + self.activations


def unet_of(model):
    """The UNetModel inside a prior (ddfm.prior.PriorModel, possibly torch.compile'd)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "unet", model)


def weight_bytes(unet, block_dtype=None):
    """Bytes of the UNet's parameters and buffers; block_dtype: as if its block convs were cast
    to it (UNetModel.convert_blocks), e.g. to plan dtype bf16 for a float32 UNet."""
    total = sum(t.numel() * t.element_size() for t in (*unet.parameters(), *unet.buffers()))
    if block_dtype is not None:
        size = torch.empty((), dtype=block_dtype).element_size()
        total += sum(p.numel() * (size - p.element_size())
                     for conv in unet.block_convs() for p in conv.parameters())
    return total


def unet_bytes_per_pixel(unet, activation_bytes, nhwc_group_norm):
    """Live activation bytes per image pixel where the forward peaks (places A, B, C above)."""
    a = activation_bytes
    mult, base, r = unet.channel_mult, unet.model_channels, unet.num_res_blocks
    c0 = int(mult[0] * base)
    c1 = int(mult[1] * base) if len(mult) > 1 else c0
    c_in = c1 + c0
    group_norm = 4 * c_in if nhwc_group_norm else (4 * c_in if a < 4 else 0) + 4 * c_in
    place_a = a * (r * c0 + c_in) + group_norm
    place_b = a * (r * c0 + 3 * c_in)
    place_c = a * ((r + 1) * c0 + (2 * c1 + c0) / 4 + 5 * c1)
    return int(max(place_a, place_b, place_c))


def activation_bytes(model):
    """Bytes per activation value: the UNet's block dtype, or the autocast dtype."""
    dtype = getattr(getattr(model, "_orig_mod", model), "autocast_dtype", None) or unet_of(model).dtype
    return 2 if dtype in REDUCED_DTYPES else 4


def plan_peak(model, h, w, batch=1, sampler_bytes=DEFAULT_SAMPLER_BYTES, device=None, channels_last=None,
              block_dtype=None):
    """The predicted peak of fusing `batch` images of h x w with `model` (a prior as built by
    ddfm.prior.wrap_unet). channels_last / block_dtype: plan another setting than the model's."""
    from guided_diffusion.nn import NATIVE_CHANNELS_LAST_DEVICES

    unet = unet_of(model)
    if channels_last is None:
        channels_last = bool(getattr(getattr(model, "_orig_mod", model), "channels_last", False))
    if device is None:
        device = next(unet.parameters()).device
    a = activation_bytes(model) if block_dtype is None else torch.empty((), dtype=block_dtype).element_size()
    nhwc = channels_last and torch.device(device).type not in NATIVE_CHANNELS_LAST_DEVICES
    per_pixel = (unet_bytes_per_pixel(unet, a, nhwc) + sampler_bytes
                 + (CHANNELS_LAST_INPUT_BYTES_PER_PIXEL if channels_last else 0))
    return PeakPlan(weight_bytes(unet, block_dtype), per_pixel, batch * h * w)


def largest_square(model, limit_bytes, sampler_bytes=DEFAULT_SAMPLER_BYTES, device=None, multiple=32):
    """The largest square side (a multiple of `multiple`) whose planned peak fits limit_bytes."""
    plan = plan_peak(model, 1, 1, 1, sampler_bytes, device)
    room = limit_bytes - plan.weights
    side = int(math.isqrt(max(0, room) // plan.per_pixel)) // multiple * multiple
    return side


def free_bytes(device):
    """Bytes a new allocation can still get on a CUDA device: the driver's free memory plus what
    torch's allocator holds unused; None on other devices (nothing to plan against) and where
    CUDA is not available (a simulated-CUDA test run)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def is_out_of_memory(err):
    """torch's out-of-memory error, or a library's own way of saying it (cuDNN, cuBLAS)."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def gib(n):
    """Bytes for a message: GiB, or MiB below a tenth of one."""
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.1f} MiB"


def hint(model, plan, h, w, batch, sampler_bytes, device):
    """What would make it fit, with the predicted peak of each cheaper setting."""
    tries = []
    if activation_bytes(model) == 4:
        bf16 = plan_peak(model, h, w, batch, sampler_bytes, device, block_dtype=torch.bfloat16)
        tries.append(f"dtype: bf16 ({gib(bf16.total)})")
    channels_last = bool(getattr(getattr(model, "_orig_mod", model), "channels_last", False))
    if not channels_last:
        cl = plan_peak(model, h, w, batch, sampler_bytes, device, channels_last=True)
        if cl.total < plan.total:
            tries.append(f"channels_last: true ({gib(cl.total)})")
    if batch > 1:
        tries.append(f"batch_size: 1 ({gib(plan_peak(model, h, w, 1, sampler_bytes, device).total)})")
    tries.append("smaller images or a card with more free memory")
    return "try " + ", ".join(tries)


def refusal(plan, free, h, w, batch, device, advice):
    """The one line of a pair predicted not to fit."""
    return (f"{h}x{w} (batch {batch}) does not fit on {device}: predicted peak {gib(plan.total)} "
            f"({gib(plan.weights)} weights, already loaded, + {gib(plan.activations)}), "
            f"{gib(free)} free; {advice}")


def check_fits(model, h, w, batch, sampler_bytes, device):
    """Raise DeviceMemoryError (one line) when the predicted peak exceeds the free memory of a
    CUDA device; returns the plan (None when the device has nothing to plan against)."""
    free = free_bytes(device)
    if free is None:
        return None
    plan = plan_peak(model, h, w, batch, sampler_bytes, device)
    if plan.activations > free:  # the weights are on the device already
        raise DeviceMemoryError(refusal(plan, free, h, w, batch, device,
                                        hint(model, plan, h, w, batch, sampler_bytes, device)))
    return plan


def out_of_memory_line(err, model, h, w, batch, sampler_bytes, device):
    """The one line of an out-of-memory error mid-pair. Clears the error's frames (their tensors)
    and empties torch's cache, so the next pair starts with the memory this one held."""
    traceback.clear_frames(err.__traceback__)
    plan = plan_peak(model, h, w, batch, sampler_bytes, device)
    release(device)
    free = free_bytes(device)
    where = "free memory unknown" if free is None else f"{gib(free)} free after clean-up"
    return (f"{h}x{w} (batch {batch}) ran out of memory on {device} (predicted peak "
            f"{gib(plan.total)}, {where}); {hint(model, plan, h, w, batch, sampler_bytes, device)}")


def release(device):
    import gc
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
