"""Build the full ADM fuser on fake CUDA from a config and run fuse_batch to the end of its
sampling loop, recording what a GPU run would do (fakecuda.recorder).

The harness patches (each named; `PATCHES` lists them, FakeCuda.patches says which were used):
  device_choice       torch.cuda.is_available() is True inside ddfm.build.resolve_device only,
                      torch.cuda.current_device() is 0 (FakeTensorMode keeps seeing no CUDA).
  fake_weights        guided_diffusion.checkpoint.load_state_dict_file returns fake float32 CPU
                      tensors with the checkpoint's names and shapes (the ADM of
                      configs/model_config_imagenet.yaml, whatever the config under test says; a
                      placeholder file passes the existence check); the strict key/shape check
                      and assign=True loading run for real.
  swap_tensors        Module.to() swaps parameters with torch.utils.swap_tensors, whose weakref
                      check trips on the fake converter's own references: that check is skipped.
  python_bindings     t[...], t[...] = v, t.contiguous(), t.copy_() and t.to() (to or from CUDA)
                      of fake CUDA tensors through torch.ops.aten: torch.Tensor's attributes, so
                      torch's own Python code (FakeTensor's conv rule) is re-routed too (counted
                      per binding in FakeRun.reroutes).
  ccf_guidance_meta   CCF's guidance (forward and backward of its conditions) runs on fake `meta`
                      (autograd aborts on fake CUDA): its sources once, x0 there and back per step
                      (counted in FakeRun.reroutes, never as copies). torch.tensor/as_tensor(...,
                      device="meta") is made on the host and copied (what CUDA does; on meta the
                      copy would be invisible), so host data made per step counts as a copy.
  stop_after_sampling ddfm_sample / ccf_sample return their tensor to the harness, which stops
                      fuse_batch there (a fake tensor has no data for .numpy() and the PNGs).
  cudnn_layouts       conv output layouts on fake CUDA as cuDNN chooses them: FakeTensor's conv rule
                      asks the CPU build for the backend's output layout, which answers "contiguous"
                      for every CUDA conv without cuDNN; a CUDA build with cuDNN gives a 4-D conv a
                      channels-last output when its input or its weight is channels-last.
  flash_attention     (attention="flash", default) scaled_dot_product_attention calls the flash
                      (bf16/fp16) or memory-efficient (fp32) aten op, as an H100 runs it; "math"
                      leaves the fake's math path (a T x T score matrix).
Observers (no behaviour change): step marks on StepFunction / CCFStep calls, and float-dtype
records of the tensors entering EM, the colour conversions, the sampler maths and CCF (`WATCHED`).
"""
import contextlib
import dataclasses
import functools
import tempfile
from collections import defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format
from torch._subclasses.fake_tensor import FakeTensorMode

import guided_diffusion
from ddfm import build as ddfm_build, io
from ddfm.config import load_config, read_yaml
from ddfm.methods.ccf import guidance as ccf
from ddfm.methods.ccf.conditions import ConditionBank
from ddfm.methods.ddfm import em, fuser as fusion, sampling
from fakecuda.recorder import DispatchRecorder, FunctionRecorder, Recorder, rerouted_bindings
from guided_diffusion import checkpoint as gd_checkpoint
from guided_diffusion.gaussian_diffusion import GaussianDiffusion

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = ROOT / "configs" / "model_config_imagenet.yaml"
DIFFUSION_CONFIG = ROOT / "configs" / "diffusion_config.yaml"
PATCHES = ("device_choice", "fake_weights", "swap_tensors", "python_bindings", "ccf_guidance_meta",
           "stop_after_sampling", "cudnn_layouts", "flash_attention")
# tag -> (owner, attribute): functions whose tensor inputs must be float32 (FakeRun.entries).
WATCHED = {
    "em": [(em.EM_STEPS, "official"), (em.EM_STEPS, "paper")],
    "colour": [(em.LUMA_IO, "official"), (em.LUMA_IO, "paper")],
    "sampler": [(GaussianDiffusion, "split_model_output"), (GaussianDiffusion, "ddim_step"),
                (GaussianDiffusion, "ddpm_step")],
    "ccf_conditions": [(ConditionBank, "__init__"), (ConditionBank, "losses_and_grads"),
                       (ccf, "guidance_step")],
}
BLOCK_PREFIXES = ("input_blocks.", "middle_block.", "output_blocks.")


def full_adm_config(*overrides, steps=2):
    """The full ADM (configs/model_config_imagenet.yaml) with `steps` respaced steps, device cuda,
    and `overrides` ("key=value", as on the command line): a ddfm.config.Config."""
    return load_config(MODEL_CONFIG, DIFFUSION_CONFIG, None,
                       [f"timestep_respacing={steps}", "device=cuda", "prior=adm", *overrides])


def source_pairs(batch=1, size=(480, 640), padded=False, colour=False, seed=0):
    """`batch` random uint8 (SourceImage, SourceImage) pairs of `size`; padded: every pair after the
    first is 14 x 13 pixels smaller (same sampler size: a padded batch). colour: RGB visible."""
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(batch):
        h, w = size if not (padded and k) else (size[0] - 14, size[1] - 13)
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        b = rng.integers(0, 256, (h, w, 3) if colour else (h, w), dtype=np.uint8)
        pairs.append((io.source_from_array(a, "a"), io.source_from_array(b, "b")))
    return pairs


@dataclasses.dataclass
class FakeRun:
    """What one fuse_batch on fake CUDA did, up to the end of its sampling loop.

    output: the sampler's returned tensor (fake) or None; error: the exception that stopped the
    run (a device mismatch, a host read, ...) or None; steps: sampling steps started;
    recorder: the fakecuda.recorder.Recorder (copies, syncs, convs, memory, reroutes, float64_ops);
    entries: tag of WATCHED -> set of the float dtypes that entered those functions.
    """
    output: object = None
    error: BaseException = None
    steps: int = 0
    recorder: Recorder = None
    entries: dict = dataclasses.field(default_factory=lambda: defaultdict(set))

    @property
    def copies(self):
        return self.recorder.copies

    @property
    def syncs(self):
        return self.recorder.syncs

    @property
    def convs(self):
        return self.recorder.convs

    @property
    def reroutes(self):
        return self.recorder.reroutes

    @property
    def peak_bytes(self):
        return self.recorder.memory.peak

    def loop_syncs(self):
        """Host reads and blocking device->host copies inside the sampling loop (setup included)."""
        return [s for s in self.syncs if s.phase in ("setup", "step")]

    def copies_per_step(self):
        """Host->device copies of each step (a step runs from its call to the next one's)."""
        return self.recorder.copies_per_step(self.steps)

    def block_convs(self):
        """The conv records whose weight belongs to the UNet's input/middle/output blocks."""
        return [c for c in self.convs if c.name and c.name.startswith(BLOCK_PREFIXES)]


class _SamplingDone(Exception):
    def __init__(self, output):
        super().__init__("sampling loop finished")
        self.output = output


def _float_dtypes(value, found):
    """Collect the float dtypes of the tensors in value (tensors, sequences, dicts, dataclasses)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            found.add(value.dtype)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _float_dtypes(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _float_dtypes(item, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _float_dtypes(getattr(value, f.name), found)


class FakeCuda:
    """Context: fake CUDA for one build and one run. Use:

        with FakeCuda() as fake:
            fuser = fake.build(full_adm_config("dtype=bf16"))  # fake.memory.peak: the build's peak
            fake.memory.reset_peak()
            run = fake.fuse(fuser, source_pairs())             # a FakeRun

    attention: "flash" (as an H100: flash for bf16/fp16, memory-efficient for fp32) or "math".
    """

    def __init__(self, attention="flash"):
        if attention not in ("flash", "math"):
            raise ValueError(f"attention must be flash or math, not {attention!r}")
        self.attention = attention
        self.recorder = Recorder()
        self.run = FakeRun(recorder=self.recorder)
        self.patches = tuple(p for p in PATCHES if p != "flash_attention" or attention == "flash")
        self._stack = None

    @property
    def memory(self):
        """The live-device-bytes tracker (fakecuda.recorder.DeviceMemory): live, peak, peak_at."""
        return self.recorder.memory

    def __enter__(self):
        stack = contextlib.ExitStack()
        self._stack = stack
        tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        stack.callback(self._restore_tf32, tf32)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fakecuda-")))
        self.placeholder = folder / "256x256_diffusion_uncond.pt"
        self.placeholder.write_bytes(b"")
        for target in self._patch_list():
            stack.enter_context(target)
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(FunctionRecorder(self.recorder))
        stack.enter_context(DispatchRecorder(self.recorder))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    @staticmethod
    def _restore_tf32(flags):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags

    # --- building and running ---------------------------------------------------------------
    def build(self, config, log=lambda message: None):
        """ddfm.build.build_fuser(config) on fake CUDA (model_path set to the placeholder)."""
        config.model["model_path"] = str(self.placeholder)
        self.recorder.phase = "build"
        fuser, _ = ddfm_build.build_fuser(config, log)
        return fuser

    def fuse(self, fuser, pairs):
        """fuser.fuse_batch(pairs) to the end of its sampling loop; returns the FakeRun."""
        self.recorder.phase, self.recorder.step = "prepare", 0
        unet = getattr(getattr(fuser, "model", None), "unet", None)
        if unet is not None:
            self.recorder.name_parameters(unet)
        try:
            fuser.fuse_batch(pairs)
        except _SamplingDone as done:
            self.run.output = done.output
        except Exception as err:  # a mismatch, a host read: the run's finding, kept for the test
            self.run.error = err
        self.recorder.phase = "after"
        return self.run

    # --- the patches --------------------------------------------------------------------------
    def _patch_list(self):
        rec, run = self.recorder, self.run
        targets = [
            mock.patch.object(ddfm_build, "resolve_device", _with_cuda_available(ddfm_build.resolve_device)),
            mock.patch.object(torch.cuda, "current_device", lambda: 0),
            mock.patch.object(gd_checkpoint, "load_state_dict_file", self._fake_state_dict),
            mock.patch.object(torch.utils, "swap_tensors", _swap_without_weakref_check(torch.utils.swap_tensors)),
            mock.patch.object(ccf.CCFGuidance, "__init__", _guidance_init_on_meta(ccf.CCFGuidance.__init__, rec)),
            mock.patch.object(ccf.CCFGuidance, "__call__", _guidance_call_on_meta(ccf.CCFGuidance.__call__, rec)),
            mock.patch.object(fusion, "ddfm_sample", self._stopping(fusion.ddfm_sample)),
            mock.patch.object(ccf, "ccf_sample", self._stopping(ccf.ccf_sample)),
            mock.patch.object(sampling.StepFunction, "__call__", self._marking(sampling.StepFunction.__call__)),
            mock.patch.object(ccf.CCFStep, "__call__", self._marking(ccf.CCFStep.__call__)),
        ]
        targets += [mock.patch.object(torch.Tensor, name, binding)
                    for name, binding in rerouted_bindings(rec).items()]
        targets.append(mock.patch.object(torch._C, "_conv_determine_backend_memory_format",
                                         _as_cudnn(torch._C._conv_determine_backend_memory_format)))
        if self.attention == "flash":
            targets.append(mock.patch.object(F, "scaled_dot_product_attention", _flash_sdpa))
        for tag, places in WATCHED.items():
            for owner, name in places:
                original = owner[name] if isinstance(owner, dict) else getattr(owner, name)
                if isinstance(original, tuple):
                    wrapped = tuple(_watching(fn, tag, run) for fn in original)
                else:
                    wrapped = _watching(original, tag, run)
                if isinstance(owner, dict):
                    targets.append(mock.patch.dict(owner, {name: wrapped}))
                else:
                    targets.append(mock.patch.object(owner, name, wrapped))
        return targets

    def _fake_state_dict(self, path):
        """The checkpoint's tensors as fake float32 CPU tensors (names and shapes of the ADM)."""
        return {name: torch.empty(shape, dtype=torch.float32) for name, shape in checkpoint_shapes().items()}

    def _stopping(self, sampler):
        def sample_then_stop(*args, **kwargs):
            self.recorder.phase, self.recorder.step = "setup", 0
            out = sampler(*args, **kwargs)
            raise _SamplingDone(out)
        return sample_then_stop

    def _marking(self, call):
        def marked_step(step_self, *args, **kwargs):
            self.recorder.phase = "step"
            self.recorder.step += 1
            self.run.steps = self.recorder.step
            return call(step_self, *args, **kwargs)
        return marked_step


@functools.lru_cache(maxsize=1)
def checkpoint_shapes():
    """{name: shape} of the ADM checkpoint's tensors (from a meta build; plain tuples, kept)."""
    with torch.device("meta"):
        model = guided_diffusion.create_model(**{**read_yaml(MODEL_CONFIG), "model_path": None})
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _as_cudnn(determine):
    def cudnn_layout(input_, weight, backend):
        if input_.device.type != "cuda":
            return determine(input_, weight, backend)
        if weight.dim() == 4 and torch.float64 not in (input_.dtype, weight.dtype) and torch.channels_last in (
                suggest_memory_format(input_), suggest_memory_format(weight)):
            return torch.channels_last
        return torch.contiguous_format
    return cudnn_layout


def _with_cuda_available(resolve):
    def resolve_with_cuda(name):
        with mock.patch.object(torch.cuda, "is_available", lambda: True):
            return resolve(name)
    return resolve_with_cuda


def _swap_without_weakref_check(swap):
    class NoWeakrefs:
        @staticmethod
        def getweakrefs(obj):
            return []

    def swap_tensors(t1, t2):
        with mock.patch.object(torch.utils, "weakref", NoWeakrefs):
            return swap(t1, t2)
    return swap_tensors


def _to_meta(tensor, rec, what):
    rec.reroutes[what] += 1
    return torch.ops.aten._to_copy.default(tensor, device="meta") if tensor.device.type != "meta" else tensor


def _guidance_init_on_meta(init, rec):
    def init_on_meta(self, ir, vis, settings, valid_hw=None):
        self.device = ir.device
        with _rerouting(rec):
            ir, vis = _to_meta(ir, rec, "ccf_sources_to_meta"), _to_meta(vis, rec, "ccf_sources_to_meta")
        init(self, ir, vis, settings, valid_hw)
    return init_on_meta


def _guidance_call_on_meta(call, rec):
    def call_on_meta(self, x0, t):
        with _rerouting(rec):
            x0_meta, t_meta = _to_meta(x0, rec, "ccf_x0_to_meta"), _to_meta(t, rec, "ccf_t_to_meta")
        guided = call(self, x0_meta, t_meta)
        with _rerouting(rec):
            rec.reroutes["ccf_x0_from_meta"] += 1
            return torch.ops.aten._to_copy.default(guided, device=x0.device)
    return call_on_meta


@contextlib.contextmanager
def _rerouting(rec):
    """Copies made by the harness itself are not the program's: keep them out of rec.copies."""
    before = len(rec.copies)
    try:
        yield
    finally:
        del rec.copies[before:]


def _watching(fn, tag, run):
    def watched(*args, **kwargs):
        _float_dtypes((args, kwargs), run.entries[tag])
        return fn(*args, **kwargs)
    watched.__wrapped__ = fn
    return watched


def _flash_sdpa(q, k, v, *args, **kwargs):
    """The kernel an H100 picks for these inputs: flash (bf16/fp16) or memory-efficient (fp32)."""
    if args or kwargs or q.device.type != "cuda":
        raise NotImplementedError("fakecuda's flash_attention patch takes plain q, k, v on cuda")
    if q.dtype in (torch.bfloat16, torch.float16):
        return torch.ops.aten._scaled_dot_product_flash_attention.default(q, k, v)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention.default(q, k, v, None, False)[0]
