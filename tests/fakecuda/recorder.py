"""What a fake CUDA run records: host<->device copies, host syncs, convolutions, live device bytes.

Two modes stacked on FakeTensorMode (fake_cuda.md): a TorchDispatchMode sees every aten op with its
arguments, a TorchFunctionMode sees the Python calls that read a value back to the host and
re-routes the Python bindings that would open a CUDA device guard (see fakecuda.indexing).
Every record carries the phase it happened in ("build", "setup", "step", "after") and the step
number (1-based; 0 outside the loop), set by the runner.
"""
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fakecuda import indexing

aten = torch.ops.aten
COPY_OPS = (aten._to_copy.default, aten.copy_.default)
CONV_OPS = (aten.convolution.default,)
# Python calls that read a device value back to the host: on CUDA each waits for the GPU.
HOST_READS = {torch.Tensor.item: "item()", torch.Tensor.__float__: "float()",
              torch.Tensor.__int__: "int()", torch.Tensor.__bool__: "bool()",
              torch.Tensor.__index__: "__index__", torch.Tensor.tolist: "tolist()",
              torch.Tensor.numpy: "numpy()", torch.Tensor.__array__: "__array__"}
# Python bindings that open a CUDA device guard on a CPU build, and their aten spelling.
REROUTES = {torch.Tensor.__getitem__: indexing.getitem, torch.Tensor.__setitem__: indexing.setitem,
            torch.Tensor.contiguous: indexing.contiguous, torch.Tensor.copy_: indexing.copy_,
            torch.Tensor.to: indexing.to}


@dataclass(frozen=True)
class Copy:
    """One copy between devices: src/dst device types, pinned source, non_blocking, bytes."""
    src: str
    dst: str
    pinned: bool
    non_blocking: bool
    nbytes: int
    phase: str
    step: int

    @property
    def host_to_device(self):
        return self.src == "cpu" and self.dst != "cpu"


@dataclass(frozen=True)
class Sync:
    """A host read of a device tensor (item(), float(), bool(), ...) or a device->host copy."""
    what: str
    phase: str
    step: int


@dataclass(frozen=True)
class ConvRecord:
    """One convolution: the UNet parameter name of its weight (None outside the UNet), input and
    weight dtypes, whether the input / weight are channels-last, kernel shape, device type."""
    name: str
    input_dtype: torch.dtype
    weight_dtype: torch.dtype
    input_channels_last: bool
    weight_channels_last: bool
    kernel: tuple
    device: str
    phase: str
    step: int


def _storage_key(tensor):
    return tensor.untyped_storage()._cdata


def _channels_last(t):
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()


class DeviceMemory:
    """Live bytes of the device storages (one weak reference each) and their peak.

    live: bytes now; peak: the largest live seen since the last reset_peak(); peak_at: (op name,
    phase, step) of that peak. Counts storages on `device_type` only (the CCF guidance that the
    runner moves to `meta` is not counted).
    """

    def __init__(self, device_type="cuda"):
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self.peak_at = None
        self._sizes = {}

    def reset_peak(self):
        self.peak, self.peak_at = self.live, None

    def _freed(self, key):
        self.live -= self._sizes.pop(key, 0)

    def see(self, tensor, where):
        if tensor.device.type != self.device_type:
            return
        storage = tensor.untyped_storage()
        key, nbytes = storage._cdata, storage.nbytes()
        known = self._sizes.get(key)
        if known is None:
            weakref.finalize(storage, self._freed, key)
            self._sizes[key] = nbytes
            self.live += nbytes
        elif nbytes > known:  # an out= op resized it
            self._sizes[key] = nbytes
            self.live += nbytes - known
        if self.live > self.peak:
            self.peak, self.peak_at = self.live, where


class Recorder:
    """The records of one run; `phase` and `step` are set by whoever drives the run."""

    def __init__(self, memory_device="cuda"):
        self.phase, self.step = "build", 0
        self.copies, self.syncs, self.convs = [], [], []
        self.reroutes = Counter()
        self.float64_ops = Counter()  # op name -> count of float64 outputs on the device
        self.memory = DeviceMemory(memory_device)
        self.param_names = {}  # storage key -> UNet parameter name
        self.param_count = self.tensor_count = 0
        self._pinned = weakref.WeakValueDictionary()  # storage key -> storage of pinned buffers

    def name_parameters(self, module):
        """Remember which storages are `module`'s parameters (names in the conv records) and
        count its tensors and parameter values (param_count, tensor_count)."""
        self.param_names = {_storage_key(p): name for name, p in module.named_parameters()}
        state = module.state_dict()
        self.tensor_count = len(state)
        self.param_count = sum(t.numel() for t in state.values())

    def where(self):
        return self.phase, self.step

    # --- called by the modes ---
    def on_copy(self, src, dst_device, non_blocking):
        src_type, dst_type = src.device.type, torch.device(dst_device).type
        if src_type == dst_type:
            return
        pinned = src_type == "cpu" and _storage_key(src) in self._pinned
        self.copies.append(Copy(src_type, dst_type, pinned, bool(non_blocking),
                                src.numel() * src.element_size(), *self.where()))
        if dst_type == "cpu" and not non_blocking:
            self.syncs.append(Sync(f"device->host copy from {src_type}", *self.where()))

    def on_pinned(self, tensor):
        storage = tensor.untyped_storage()
        self._pinned[storage._cdata] = storage

    def on_conv(self, args):
        x, weight = args[0], args[1]
        self.convs.append(ConvRecord(self.param_names.get(_storage_key(weight)), x.dtype, weight.dtype,
                                     _channels_last(x), _channels_last(weight), tuple(weight.shape[2:]),
                                     x.device.type, *self.where()))

    def on_host_read(self, what, tensor):
        self.syncs.append(Sync(f"{what} of a {tensor.device.type} tensor", *self.where()))

    # --- summaries ---
    def host_to_device(self, phase=None):
        return [c for c in self.copies if c.host_to_device and (phase is None or c.phase == phase)]

    def copies_per_step(self, steps):
        """Host->device copies made in each step (list of lists, one per step)."""
        return [[c for c in self.host_to_device("step") if c.step == k] for k in range(1, steps + 1)]


class DispatchRecorder(TorchDispatchMode):
    """Every aten op: copies between devices, pinned buffers, convolutions, live device bytes."""

    def __init__(self, recorder):
        super().__init__()
        self.rec = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        pinned = kwargs.get("pin_memory") is True
        if func is aten._to_copy.default:
            device = kwargs.get("device")
            if device is not None:
                rec.on_copy(args[0], device, kwargs.get("non_blocking", False))
        elif func is aten.copy_.default:
            rec.on_copy(args[1], args[0].device, args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        elif func in CONV_OPS:
            rec.on_conv(args)
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                if pinned:
                    rec.on_pinned(leaf)
                if leaf.device.type != "cpu" and leaf.dtype == torch.float64:
                    rec.float64_ops[str(func.overloadpacket.__name__)] += 1
                rec.memory.see(leaf, (str(func), *rec.where()))
        return out


def _fake_device_tensor(value):
    return isinstance(value, torch.Tensor) and value.device.type not in ("cpu",)


class FunctionRecorder(TorchFunctionMode):
    """Host reads of device tensors: recorded, then left to fail as FakeTensorMode makes them."""

    def __init__(self, recorder):
        super().__init__()
        self.rec = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and _fake_device_tensor(args[0]) and func in HOST_READS:
            self.rec.on_host_read(HOST_READS[func], args[0])
        elif func in (torch.tensor, torch.as_tensor) and _device_type(kwargs.get("device")) == "meta":
            # Made straight on `meta` (the runner's stand-in for CUDA), host data never shows as a
            # copy: make it on the host and copy it, as CUDA does (then rec.copies has it).
            self.rec.reroutes[f"{func.__name__}_on_meta"] += 1
            device = kwargs.pop("device")
            return func(*args, **kwargs).to(device)
        return func(*args, **kwargs)


def _device_type(device):
    return None if device is None else torch.device(device).type


def rerouted_bindings(rec):
    """{name: replacement} for torch.Tensor's bindings in REROUTES: the aten spelling when the call
    would open a CUDA device guard (counted in rec.reroutes), else the original binding. They
    replace the class attributes, so calls from inside torch (FakeTensor's own conv rule calls
    .contiguous()) are re-routed too."""
    replacements = {}
    for original, spelled in REROUTES.items():
        def binding(self, *args, _original=original, _spelled=spelled, **kwargs):
            if _touches_cuda(_original, (self, *args), kwargs):
                rec.reroutes[_original.__name__] += 1
                return _spelled(self, *args, **kwargs)
            return _original(self, *args, **kwargs)
        replacements[original.__name__] = binding
    return replacements


def _touches_cuda(func, args, kwargs):
    """Whether a re-routable binding would open a CUDA device guard: its tensor is on CUDA, or
    (Tensor.to) its target is."""
    if not args or not isinstance(args[0], torch.Tensor):
        return False
    if args[0].device.type == "cuda":
        return True
    if func.__name__ == "to":
        device = torch._C._nn._parse_to(*args[1:], **{k: v for k, v in kwargs.items() if k != "copy"})[0]
        return device is not None and torch.device(device).type == "cuda"
    return False
