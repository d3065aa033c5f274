"""What makes two runs give the same bytes: thread count, batch shape, device, torch version.

Float sums are not associative, so a reduction computed in another order (more threads splitting
it, a batch of 3 instead of 1 changing how a kernel blocks its loops) can move a value across a
rounding boundary: the fused image then differs by one grey level at a few pixels. `threads`
fixes the first cause for a run and every torchrun rank; `deterministic: true` removes the second
by fusing each pair of a batch on its own, exactly the batch-1 computation, and on CUDA also asks
torch for its deterministic kernels. Every image's journal line records what made it.
"""
import os
import platform
from contextlib import contextmanager

import torch

# cuBLAS needs a fixed workspace for deterministic matmuls; it must be set before its first use.
CUBLAS_WORKSPACE = ":4096:8"


def resolved_threads(fusion):  # fusion: ddfm.settings.FusionSettings
    """The intra-op thread count a run uses: `threads`, or 1 in deterministic mode, else
    auto_threads() (None: leave torch's count)."""
    if fusion.threads != "auto":
        return int(fusion.threads)
    return 1 if fusion.deterministic else auto_threads()


def auto_threads():
    """`threads: auto`: one core fewer than the CPUs this process may run on (its affinity), at
    least one. A thread pool as wide as the machine stalls at every barrier as soon as another
    process takes one core: on this project's 2-core machine, busy with other jobs, a tiny-UNet
    run took 2.2-9.5x as long with 2 threads as with 1 (benchmarks/README.md, "threads: auto"). Where
    OMP_NUM_THREADS is set (torchrun sets it to 1 per rank), torch's count already follows it:
    None."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus - 1)


def prepare_device(fusion, device):
    """Before the model is built: the cuBLAS workspace setting deterministic CUDA kernels need."""
    if fusion.deterministic and torch.device(device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextmanager
def run_settings(threads, deterministic):
    """Within: torch uses `threads` intra-op threads (None: unchanged) and, when deterministic,
    only deterministic algorithms (cuDNN autotuning off). The previous state comes back after, so
    the Python API leaves the caller's process as it found it."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
        torch.backends.cudnn.benchmark = before[2]


def contract(fusion):
    """The run-level statement for run.json: what this run's images can be compared with."""
    threads = resolved_threads(fusion)
    same = "the same device type, torch version and thread count"
    return {"threads": threads if threads is not None else torch.get_num_threads(),
            "deterministic": bool(fusion.deterministic),
            "byte_identical_with": (f"any run with deterministic: true on {same}, whatever its batch "
                                    f"size and torchrun rank count" if fusion.deterministic else
                                    f"a run on {same} and batch size; otherwise equal up to float "
                                    f"order (see the README's determinism contract)"),
            "per_image": "fused[stem].made_with"}


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.machine()}{', ' + platform.processor() if platform.processor() else ''})"


def provenance(device, batch_size, deterministic):
    """What made an image, for its journal line: call it while the run's settings are in force."""
    return {"threads": torch.get_num_threads(), "batch_size": batch_size,
            "deterministic": bool(deterministic), "device": device_name(device),
            "torch": torch.__version__}


def one_at_a_time(fuse, pairs, step_callback=None, progress=False):
    """fuse(pairs, step_callback, progress) applied to each pair alone: the pixels of a pair are
    those of a batch-1 run whatever batch it came in. Progress frames are handed on per step for
    the whole batch, as a batched call would."""
    outputs, steps = [], {}

    def collect(i, *per_image):  # frames, and whatever else the fuser hands on (CCF: details)
        kinds = steps.setdefault(i, [[] for _ in per_image])
        for kind, values in zip(kinds, per_image):
            kind.extend(values)

    for pair in pairs:
        outputs += fuse([pair], None if step_callback is None else collect, progress)
    for i, kinds in steps.items():  # in step order: dicts keep the order of insertion
        step_callback(i, *kinds)
    return outputs
