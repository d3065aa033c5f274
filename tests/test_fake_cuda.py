"""The GPU path on simulated CUDA (tests/fakecuda): the full ADM at 480x640, two respaced steps,
build_fuser -> fuse_batch, with no device mismatch, no host sync in the step loop, the stated
host->device copies per step, float32 maths outside the UNet and bf16 block convs under bf16.
The canaries at the end prove that each detector still catches what it is there for."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

import fakecuda
from ddfm.methods.ddfm import em, sampling
from guided_diffusion.checkpoint import EXPECTED_NUM_PARAMS, EXPECTED_NUM_TENSORS, CheckpointError

pytestmark = pytest.mark.skipif(fakecuda.cpu_build_only() is not None,
                                reason=str(fakecuda.cpu_build_only()))

SIZE = (480, 640)
STEPS = 2


def fake(*overrides, batch=1, padded=False, size=SIZE):
    config = fakecuda.full_adm_config(*overrides, f"batch_size={batch}", steps=STEPS)
    return fakecuda.fake_run(config, fakecuda.source_pairs(batch=batch, size=size, padded=padded))


def assert_clean(run, channels, batch):
    """No error (mismatch, host read), every step ran, no host sync in the loop, the output."""
    assert run.error is None, f"{type(run.error).__name__}: {run.error}"
    assert run.steps == STEPS
    assert run.loop_syncs() == []
    assert run.output is not None
    assert run.output.device == torch.device("cuda", 0)
    assert run.output.dtype == torch.float32
    assert tuple(run.output.shape) == (batch, channels, *SIZE)


def assert_float32_maths(run, tags):
    for tag in tags:
        assert run.entries[tag] == {torch.float32}, (tag, run.entries[tag])


def assert_block_convs(run, dtype):
    convs = run.block_convs()
    assert len(convs) > 100 * STEPS  # every block conv of the full ADM, per step
    assert {(c.input_dtype, c.weight_dtype, c.device) for c in convs} == {(dtype, dtype, "cuda")}


@pytest.fixture(scope="module")
def official_bf16_cl_batch2():
    return fake("dtype=bf16", "channels_last=true", batch=2, padded=True)


@pytest.fixture(scope="module")
def official_fp32():
    return fake("dtype=fp32")


def test_ddfm_official_bf16_channels_last_padded_batch(official_bf16_cl_batch2):
    run = official_bf16_cl_batch2
    assert_clean(run, channels=1, batch=2)
    assert run.copies_per_step() == [[]] * STEPS
    assert_float32_maths(run, ("em", "colour", "sampler"))
    assert_block_convs(run, torch.bfloat16)
    # Weights and inputs are channels-last: GroupNorm32 keeps NHWC on CUDA (issue 22 item 4).
    convs = [c for c in run.block_convs() if c.kernel == (3, 3)]
    assert all(c.weight_channels_last for c in convs)
    assert sum(c.input_channels_last for c in convs) >= 0.95 * len(convs)


def test_ddfm_official_fp32_full_adm(official_fp32):
    run = official_fp32
    assert_clean(run, channels=1, batch=1)
    assert run.copies_per_step() == [[]] * STEPS
    assert_float32_maths(run, ("em", "colour", "sampler"))
    assert_block_convs(run, torch.float32)
    # the real strict loading path took the checkpoint's tensors: the full 552.8 M-parameter ADM
    assert run.recorder.param_count == EXPECTED_NUM_PARAMS
    assert run.recorder.tensor_count == EXPECTED_NUM_TENSORS
    assert run.peak_bytes > 4 * 2 ** 30  # fp32 weights (2.2 GB) plus 480x640 activations


def test_fake_weights_go_through_the_strict_loader():
    config = fakecuda.full_adm_config("num_channels=128")  # not the checkpoint's architecture
    with fakecuda.FakeCuda() as fake, pytest.raises(CheckpointError, match="does not fit UNetModel"):
        fake.build(config)


def test_ddfm_paper_bf16_one_pinned_noise_copy_per_step():
    run = fake("dtype=bf16", "variant=paper")
    assert_clean(run, channels=1, batch=1)
    assert_float32_maths(run, ("em", "colour", "sampler"))
    assert_block_convs(run, torch.bfloat16)
    # Drawn one step ahead: the first before the loop, then one per step but the last.
    noise = run.recorder.host_to_device("setup")[-1:] + [c for cs in run.copies_per_step() for c in cs]
    assert [(c.pinned, c.non_blocking) for c in noise] == [(True, True)] * STEPS
    assert [len(cs) for cs in run.copies_per_step()] == [1] * (STEPS - 1) + [0]


def test_ccf_no_host_copy_or_sync_per_step():
    """CCF's UNet and sampler on fake CUDA, its guidance (conditions forward and backward) on fake
    meta: the filter taps and enabled ids cross to the device once, before the loop."""
    run = fake("method=ccf", batch=2, padded=True)
    assert_clean(run, channels=3, batch=2)
    assert run.copies_per_step() == [[]] * STEPS
    assert_float32_maths(run, ("sampler", "ccf_conditions"))
    assert run.reroutes["ccf_x0_to_meta"] == STEPS  # the guidance really ran, once per step
    assert any(c.device == "meta" for c in run.convs)  # the conditions' convolutions


# --- canaries: each detector must catch what it is there for --------------------------------------

CANARY_SIZE = (256, 256)


def canary_run(*overrides):
    config = fakecuda.full_adm_config("dtype=bf16", *overrides, steps=STEPS)
    return fakecuda.fake_run(config, fakecuda.source_pairs(size=CANARY_SIZE))


def test_canary_host_read_in_the_step_is_caught(monkeypatch):
    rectify = sampling.Rectifier.__call__

    def with_float_t(self, x0, t):
        float(t[0])  # the classic: a timestep read back to the host
        return rectify(self, x0, t)

    monkeypatch.setattr(sampling.Rectifier, "__call__", with_float_t)
    run = canary_run()
    assert [(s.what, s.phase, s.step) for s in run.loop_syncs()] == [("float() of a cuda tensor", "step", 1)]
    assert run.error is not None and run.output is None


def test_canary_cpu_tensor_in_the_step_is_caught(monkeypatch):
    rectify = sampling.Rectifier.__call__

    def with_cpu_tensor(self, x0, t):
        return rectify(self, x0 + torch.zeros(1, 1, 1, 1), t)  # a CPU tensor meets CUDA

    monkeypatch.setattr(sampling.Rectifier, "__call__", with_cpu_tensor)
    run = canary_run()
    assert isinstance(run.error, FakeTensorDeviceMismatchError), repr(run.error)
    assert run.steps == 1 and run.output is None


def test_canary_bf16_into_em_is_caught(monkeypatch):
    luma_in, luma_out = em.LUMA_IO["official"]

    def bf16_luma_in(x0):
        f_tilde, aux = luma_in(x0)
        return f_tilde.to(torch.bfloat16), aux

    monkeypatch.setitem(em.LUMA_IO, "official", (bf16_luma_in, luma_out))
    run = canary_run()
    assert torch.bfloat16 in run.entries["em"]


def test_canary_host_data_made_on_the_device_per_step_is_caught(monkeypatch):
    rectify = sampling.Rectifier.__call__

    def with_host_constant(self, x0, t):
        return rectify(self, x0 * torch.tensor([1.0], device=x0.device), t)

    monkeypatch.setattr(sampling.Rectifier, "__call__", with_host_constant)
    run = canary_run()
    assert run.error is None
    assert [[(c.pinned, c.non_blocking) for c in cs] for cs in run.copies_per_step()] == [[(False, False)]] * STEPS
