"""Channels-last that stays channels-last: GroupNorm32 normalises NHWC itself where ATen's
group_norm would make its input contiguous (CUDA), and the attention blocks hand back the input's
layout. On the CPU the NHWC path is forced by emptying NATIVE_CHANNELS_LAST_DEVICES; the
simulated-CUDA proof (convs' input layouts on fake CUDA) is in test_fake_cuda_memory.py."""
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

import guided_diffusion
from ddfm.prior import PriorModel
from guided_diffusion import nn as gd_nn
from helpers import ROOT, TINY_MODEL_CONFIG


@pytest.fixture
def nhwc_everywhere(monkeypatch):
    """GroupNorm32 takes its own NHWC path on the CPU too (as it does on CUDA)."""
    monkeypatch.setattr(gd_nn, "NATIVE_CHANNELS_LAST_DEVICES", ())


class ConvLayouts(TorchDispatchMode):
    """Records (kernel size, input is channels-last) of every convolution."""

    def __init__(self):
        super().__init__()
        self.convs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, weight = args[0], args[1]
            self.convs.append((tuple(weight.shape[2:]), x.dim() == 4 and
                               x.is_contiguous(memory_format=torch.channels_last)))
        return func(*args, **(kwargs or {}))


def tiny_prior(dtype, channels_last):
    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text())
    config["model_path"] = str(ROOT / config["model_path"])
    return PriorModel(guided_diffusion.create_model(**config), dtype=dtype, channels_last=channels_last)


def tiny_output(dtype, channels_last):
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 64, 96, generator=gen), torch.tensor([500, 20])
    layouts = ConvLayouts()
    with torch.no_grad(), layouts:
        out = tiny_prior(dtype, channels_last)(x, t)
    return out, layouts.convs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
def test_nhwc_group_norm_equals_aten(dtype, affine):
    gen = torch.Generator().manual_seed(1)
    norm = gd_nn.GroupNorm32(32, 64, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(1 + 0.3 * torch.randn(64, generator=gen))
            norm.bias.copy_(0.2 * torch.randn(64, generator=gen))
    x = (3 + 2 * torch.randn(2, 64, 12, 20, generator=gen)).to(dtype)
    expected = norm(x)  # NCHW: ATen's group_norm in float32, cast back
    got = gd_nn.group_norm_channels_last(x.contiguous(memory_format=torch.channels_last), 32,
                                         norm.weight, norm.bias, norm.eps)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert not got.is_contiguous()
    if dtype == torch.float32:
        assert (got - expected).abs().max() < 1e-5
    else:  # the same float32 value rounded to bf16: at most one bf16 step apart
        step = expected.float().abs().clamp_min(2 ** -20) * 2 ** -7
        assert ((got.float() - expected.float()).abs() <= step).all()


def test_nhwc_path_is_taken_off_the_native_devices(nhwc_everywhere):
    x = torch.randn(1, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    calls = []
    original = gd_nn.group_norm_channels_last
    try:
        gd_nn.group_norm_channels_last = lambda *a: calls.append(a) or original(*a)
        out = gd_nn.GroupNorm32(32, 64)(x)
        gd_nn.GroupNorm32(32, 64)(x.contiguous())  # NCHW input: ATen's path
    finally:
        gd_nn.group_norm_channels_last = original
    assert len(calls) == 1 and out.is_contiguous(memory_format=torch.channels_last)


def test_every_3x3_conv_of_a_channels_last_unet_gets_channels_last_input(nhwc_everywhere):
    _, convs = tiny_output("bf16", channels_last=True)
    k3 = [cl for kernel, cl in convs if kernel == (3, 3)]
    assert len(k3) == 32 and all(k3)
    _, convs = tiny_output("bf16", channels_last=False)
    assert not any(cl for kernel, cl in convs if kernel == (3, 3))


def test_channels_last_output_equals_nchw_within_the_bf16_tolerance(nhwc_everywhere):
    """fp32: equal to float order (1e-5). bf16: channels-last and NCHW run different conv
    kernels, so their bf16 roundings differ; the tolerance is the bf16 path's own error: the RMS
    difference between the two layouts is at most the RMS error of NCHW bf16 against exact fp32
    (measured 0.0041 vs 0.0047 on an output of RMS 0.32), and no value differs by over 0.05."""
    exact, _ = tiny_output("fp32", channels_last=False)
    fp32_cl, _ = tiny_output("fp32", channels_last=True)
    assert (fp32_cl - exact).abs().max() < 1e-5
    nchw, _ = tiny_output("bf16", channels_last=False)
    cl, _ = tiny_output("bf16", channels_last=True)

    def rms(d):
        return d.pow(2).mean().sqrt().item()
    bf16_error = rms(nchw - exact)
    assert 1e-4 < bf16_error < 0.05 * rms(exact)  # a real bf16 error, not a float32 run
    assert rms(cl - nchw) <= bf16_error and (cl - nchw).abs().max() < 0.05
    assert abs(rms(cl - exact) - bf16_error) < 0.25 * bf16_error  # as accurate as NCHW bf16


def test_attention_block_returns_its_input_layout():
    block = guided_diffusion.unet.AttentionBlock(64, num_head_channels=16).eval()
    x = torch.randn(2, 64, 6, 10)
    with torch.no_grad():
        nchw = block(x)
        cl = block(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert nchw.is_contiguous() and (cl - nchw).abs().max() < 1e-6
