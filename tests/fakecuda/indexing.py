"""Python indexing of fake CUDA tensors through torch.ops.aten (fake_cuda.md, patch 4).

On a CPU build, `t[...]`, `t[...] = v`, `t.contiguous()`, `t.copy_()` and `t.to()` on a CUDA tensor open a
C++ CUDA device guard in their Python bindings and fail ("PyTorch is not linked with support for
cuda devices"), although the aten ops they stand for run fine on fake tensors. These functions
spell the same operations with aten ops, as PyTorch's own indexing does (integers select, slices
slice, None unsqueezes, tensors and lists index); a Python list becomes a CPU index tensor copied
to the device, the host->device copy a real CUDA run makes for it.
"""
import torch

aten = torch.ops.aten


def _as_index_tensor(item, device):
    """A list / tuple / tensor index as a tensor on `device` (a list crosses from the host)."""
    if torch.is_tensor(item):
        return item
    tensor = torch.tensor(item, dtype=torch.long)  # as PyTorch: built on the host, then copied
    return aten._to_copy.default(tensor, device=device)


def _basic(t, index):
    """Apply ints, slices, None and Ellipsis; returns (view, [(dim, advanced index) ...])."""
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(item, bool) for item in items):
        raise NotImplementedError("fake CUDA indexing: a bool index")
    view, dim, advanced = t, 0, []
    for position, item in enumerate(items):
        if item is Ellipsis:
            # the dimensions the items after it consume are the last ones of the view
            after = sum(1 for rest in items[position + 1:] if rest is not None)
            dim = view.dim() - after
        elif item is None:
            view = aten.unsqueeze.default(view, dim)
            dim += 1
        elif isinstance(item, int):
            view = aten.select.int(view, dim, item)
        elif isinstance(item, slice):
            step = 1 if item.step is None else item.step
            view = aten.slice.Tensor(view, dim, item.start, item.stop, step)
            dim += 1
        else:
            advanced.append((dim, _as_index_tensor(item, t.device)))
            dim += 1
    return view, advanced


def _index_list(view, advanced):
    indices = [None] * view.dim()
    for dim, index in advanced:
        indices[dim] = index
    last = max(dim for dim, _ in advanced)
    return indices[:last + 1]


def getitem(t, index):
    """t[index] through aten ops."""
    view, advanced = _basic(t, index)
    if not advanced:
        return view
    return aten.index.Tensor(view, _index_list(view, advanced))


def setitem(t, index, value):
    """t[index] = value through aten ops (a Python number is filled in on the device)."""
    view, advanced = _basic(t, index)
    if not advanced:
        if torch.is_tensor(value):
            aten.copy_.default(view, value)
        else:
            aten.fill_.Scalar(view, value)
        return
    if not torch.is_tensor(value):
        value = aten.scalar_tensor.default(value, dtype=t.dtype, device=t.device)
    aten.index_put_.default(view, _index_list(view, advanced), value)


def contiguous(t, memory_format=torch.contiguous_format):
    return aten.contiguous.default(t, memory_format=memory_format)


def copy_(t, src, non_blocking=False):
    return aten.copy_.default(t, src, non_blocking)


def to(t, *args, **kwargs):
    """t.to(...) through aten._to_copy (self when nothing changes, as Tensor.to)."""
    copy = kwargs.pop("copy", False)
    device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
    device = t.device if device is None else torch.device(device)
    dtype = t.dtype if dtype is None else dtype
    memory_format = torch.preserve_format if memory_format is None else memory_format
    if not copy and device == t.device and dtype == t.dtype and memory_format == torch.preserve_format:
        return t
    return aten._to_copy.default(t, dtype=dtype, device=device, non_blocking=non_blocking,
                                 memory_format=memory_format)
