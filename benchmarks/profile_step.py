"""Where a DDFM step's time goes: torch.profiler over a few steps, grouped by kind of operator.

GroupNorm32 calls are wrapped in a profiler range while profiling, so the GroupNorm share counts
their float32 casts too (what the fast path pays for keeping GroupNorm in float32).
"""
from contextlib import contextmanager

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from guided_diffusion.nn import GroupNorm32

# (kind, substrings of an aten operator's name); first match wins, the rest is "other".
KINDS = (
    ("groupnorm", ("group_norm",)),
    ("convolution", ("conv", "cudnn")),
    ("attention", ("attention", "flash", "efficient")),
    ("matmul", ("mm", "matmul", "linear", "einsum")),
    ("fft", ("fft",)),
    ("copy/cast", ("copy", "_to_copy", "contiguous", "clone", "cat")),
    ("elementwise", ("add", "mul", "sub", "div", "silu", "sqrt", "rsqrt", "clamp", "where", "min",
                     "max", "mean", "sum", "exp", "abs", "reciprocal", "softmax", "upsample", "pool")),
)


@contextmanager
def labelled_groupnorm():
    original = GroupNorm32.forward

    def forward(self, x):
        with record_function("GroupNorm32"):
            return original(self, x)

    GroupNorm32.forward = forward
    try:
        yield
    finally:
        GroupNorm32.forward = original


def kind_of(name):
    lowered = name.lower()
    for kind, keys in KINDS:
        if any(key in lowered for key in keys):
            return kind
    return "other"


def profile_steps(run_steps, device, count):
    """Profile run_steps() (`count` sampling steps, synchronised at the end); returns
    {"shares": {kind: fraction of the operators' time}, "groupnorm32_share", "total_ms", ...}."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with labelled_groupnorm(), profile(activities=activities) as prof:
        run_steps()
    events = prof.key_averages()

    def self_time(evt):
        return evt.self_device_time_total if cuda else evt.self_cpu_time_total

    totals = {}
    for evt in events:
        if evt.key.startswith("aten::"):
            kind = kind_of(evt.key)
            totals[kind] = totals.get(kind, 0.0) + self_time(evt)
    total = sum(totals.values()) or 1.0
    # The CPU-side range: its device time is its kernels'. On CUDA the profiler also records a
    # device-side copy of the range whose time is its wall span, idle gaps included.
    label = next((e for e in events if e.key == "GroupNorm32" and e.device_type == DeviceType.CPU), None)
    inclusive = 0.0 if label is None else (label.device_time_total if cuda else label.cpu_time_total)
    shares = dict(sorted(((k, v / total) for k, v in totals.items()), key=lambda kv: -kv[1]))
    shares["GroupNorm32 incl. casts"] = inclusive / total
    return {"shares": shares, "groupnorm32_share": inclusive / total, "total_ms": total / 1e3,
            "steps": count, "timer": "device" if cuda else "cpu"}
