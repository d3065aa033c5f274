"""Simulated CUDA on a CPU build of torch: the full ADM fuser at full size on fake CUDA tensors
(reference/fake_cuda.md). Nothing is computed; shapes, dtypes, devices and memory formats flow
through every op, so device mismatches, host syncs, host->device copies, conv dtypes/formats and
live device bytes can be checked in seconds.

API
  full_adm_config(*overrides, steps=2) -> ddfm.config.Config of the full ADM on device cuda.
  source_pairs(batch=1, size=(480, 640), padded=False, colour=False) -> [(SourceImage, SourceImage)].
  FakeCuda(attention="flash"): context manager; inside it
      .build(config) -> the fuser (ddfm.build.build_fuser on fake CUDA, real strict loading);
      .fuse(fuser, pairs) -> FakeRun (fuse_batch up to the end of the sampling loop);
      .memory -> DeviceMemory: .live, .peak, .peak_at (op, phase, step), .reset_peak();
      .patches -> names of the harness patches in use (runner.PATCHES documents each).
  fake_run(config, pairs, attention="flash") -> FakeRun: build and fuse in one context.
  FakeRun: .output, .error, .steps, .copies [Copy], .syncs [Sync], .convs [ConvRecord],
      .reroutes (Counter by binding), .entries (tag -> float dtypes entering EM / colour /
      sampler / CCF conditions), .peak_bytes, .loop_syncs(), .copies_per_step(), .block_convs().
  Copy(src, dst, pinned, non_blocking, nbytes, phase, step) (.host_to_device);
  Sync(what, phase, step); ConvRecord(name, input_dtype, weight_dtype, input_channels_last,
      weight_channels_last, kernel, device, phase, step).
Phases: "build", "prepare" (fuse_batch before the sampler), "setup" (sampler before its first
step), "step" (step k runs from its call to the next step's call), "after".

cpu_build_only() -> reason string when torch is not a CPU-only build (the harness needs one).
"""
import torch

from fakecuda.recorder import Copy, ConvRecord, DeviceMemory, Recorder, Sync  # noqa: F401
from fakecuda.runner import (BLOCK_PREFIXES, PATCHES, WATCHED, FakeCuda, FakeRun,  # noqa: F401
                             full_adm_config, source_pairs)


def fake_run(config, pairs, attention="flash"):
    """Build the fuser of `config` and fuse `pairs` on fake CUDA; returns the FakeRun."""
    with FakeCuda(attention=attention) as fake:
        return fake.fuse(fake.build(config), pairs)


def cpu_build_only():
    """None on a CPU-only torch build; otherwise why the fake CUDA harness cannot run here."""
    if torch.version.cuda is not None or torch.cuda.is_available():
        return f"fake CUDA needs a CPU-only torch build (this is {torch.__version__}, CUDA {torch.version.cuda})"
    return None
