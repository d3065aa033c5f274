"""Issue 22 items 4-5 on simulated CUDA (tests/fakecuda): the peak-memory model of ddfm.memory
against the fake run's live device bytes at 256x256, 480x640 and 768x1024; the build's device
peak is the weights as they run; channels-last reaches the convs (>= 95 % of the 3x3 convs get an
NHWC input; ATen's CUDA group_norm alone would leave most of them NCHW). CCF's plan is checked on
a fake CPU (its guidance runs off the fake CUDA device in the harness).

Conv output layouts are cuDNN's (the harness's `cudnn_layouts` patch)."""

import pytest
import torch

import fakecuda
from ddfm import memory, methods
from guided_diffusion import nn as gd_nn

pytestmark = pytest.mark.skipif(fakecuda.cpu_build_only() is not None,
                                reason=str(fakecuda.cpu_build_only()))

SIZES = ((256, 256), (480, 640), (768, 1024))
TOLERANCE = 0.05


def peaks(*overrides, sizes=SIZES, batch=1):
    """(build peak, weights plan, [(h, w, fake peak, plan)]) for one fuser fused at each size."""
    config = fakecuda.full_adm_config(*overrides, f"batch_size={batch}", steps=2)
    found = []
    with fakecuda.FakeCuda() as fake:
        fuser = fake.build(config)
        build_peak = fake.memory.peak
        for h, w in sizes:
            fake.memory.reset_peak()
            run = fake.fuse(fuser, fakecuda.source_pairs(batch=batch, size=(h, w)))
            assert run.error is None, f"{type(run.error).__name__}: {run.error}"
            found.append((h, w, fake.memory.peak, memory.plan_peak(fuser.model, h, w, batch, device="cuda")))
    return build_peak, found


def assert_within(found):
    for h, w, fake_peak, plan in found:
        assert abs(plan.total - fake_peak) <= TOLERANCE * fake_peak, (h, w, fake_peak, plan)


@pytest.mark.parametrize("dtype, channels_last", [("bf16", False), ("bf16", True), ("fp32", False)])
def test_peak_model_matches_the_fake_tracker_at_three_sizes(dtype, channels_last):
    build_peak, found = peaks(f"dtype={dtype}", f"channels_last={str(channels_last).lower()}")
    assert_within(found)
    # the build casts on the host, then moves: its device peak is the weights as they run
    assert build_peak == found[0][3].weights


def test_a_pair_over_the_free_memory_is_refused_before_any_device_work(monkeypatch):
    """The guard in fuse_batch on (fake) CUDA: free memory patched below the 768x1024 plan."""
    config = fakecuda.full_adm_config("dtype=bf16", steps=2)
    with fakecuda.FakeCuda() as fake:
        fuser = fake.build(config)
        plan = memory.plan_peak(fuser.model, 768, 1024, device="cuda")
        monkeypatch.setattr(memory, "free_bytes", lambda device: plan.activations - 1)
        fake.memory.reset_peak()
        run = fake.fuse(fuser, fakecuda.source_pairs(size=(768, 1024)))
        assert fake.memory.peak == plan.weights  # nothing was allocated for the pair
    assert isinstance(run.error, memory.DeviceMemoryError) and run.steps == 0
    assert str(run.error).startswith(f"768x1024 (batch 1) does not fit on cuda: predicted peak "
                                     f"{memory.gib(plan.total)} (1.13 GiB weights")
    assert "try channels_last: true (" in str(run.error)


def test_peak_model_scales_with_the_batch():
    _, found = peaks("dtype=bf16", sizes=((256, 256),), batch=3)
    assert_within(found)


def conv_inputs(run):
    """(2-D convs with an NHWC input, 3x3 convs with one, 3x3 convs, 2-D convs) of one forward."""
    convs = [c for c in run.convs if c.name and c.step == 1 and len(c.kernel) == 2]
    k3 = [c for c in convs if c.kernel == (3, 3)]
    return (sum(c.input_channels_last for c in convs), sum(c.input_channels_last for c in k3),
            len(k3), len(convs))


def test_channels_last_reaches_the_convs_on_cuda(monkeypatch):
    """Measured: all 106 2-D convs of a forward (86 3x3, 20 1x1) see an NHWC input. With ATen's
    group_norm on CUDA (its input made contiguous, as before) 85 of the 106 saw NCHW with
    channels-last weights, each one an input conversion in cuDNN: only the 20 1x1 skip convs
    and the input conv kept NHWC."""
    config = fakecuda.full_adm_config("dtype=bf16", "channels_last=true", steps=2)
    run = fakecuda.fake_run(config, fakecuda.source_pairs())
    assert run.error is None
    nhwc, nhwc_3x3, k3, convs = conv_inputs(run)
    assert (convs, k3) == (106, 86)
    assert nhwc_3x3 >= 0.95 * k3 and nhwc == convs
    monkeypatch.setattr(gd_nn, "NATIVE_CHANNELS_LAST_DEVICES", ("cpu", "cuda"))  # ATen's path
    config = fakecuda.full_adm_config("dtype=bf16", "channels_last=true", steps=2)
    before = fakecuda.fake_run(config, fakecuda.source_pairs())
    assert before.error is None and conv_inputs(before)[:2] == (21, 1)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_ccf_plan_matches_a_fake_run_of_ccf_sample(dtype):
    """CCF's guidance runs on `meta` in the fake CUDA harness (autograd aborts on fake CUDA), out
    of its device tracker: the whole ccf_sample (UNet, conditions, their backward, Adam) runs here
    on a fake CPU, with the harness's recorder counting live CPU bytes (NCHW, two steps)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import guided_diffusion
    from ddfm.config import read_yaml
    from ddfm.methods.ccf.guidance import ccf_sample
    from ddfm.prior import PriorModel
    from fakecuda.recorder import DispatchRecorder, Recorder

    config = {**read_yaml(fakecuda.runner.MODEL_CONFIG), "model_path": None}
    with torch.device("meta"):
        unet = guided_diffusion.create_model(**config)
    diffusion = guided_diffusion.create_sampler(timestep_respacing="2")
    rec = Recorder(memory_device="cpu")
    h, w = 256, 320
    with FakeTensorMode(allow_non_fake_inputs=True), DispatchRecorder(rec):
        model = PriorModel(unet.to_empty(device="cpu").eval().requires_grad_(False), dtype=dtype)
        rec.memory.reset_peak()
        ir, vis = torch.empty(1, 3, h, w), torch.empty(1, 3, h, w)
        ccf_sample(model, diffusion, ir, vis)
    plan = memory.plan_peak(model, h, w, sampler_bytes=methods.get("ccf").sampler_bytes_per_pixel, device="cpu")
    assert abs(plan.total - rec.memory.peak) <= TOLERANCE * rec.memory.peak
    assert abs((rec.memory.peak - plan.weights) / (h * w) - plan.per_pixel) < 2  # bytes per pixel
