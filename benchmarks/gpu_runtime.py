"""Small device helpers shared by the GPU check's rows and its memory-fit search."""
import gc

import torch

from ddfm.messages import one_line
from ddfm.sampling import Rectifier


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(err):
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def error_reason(err, limit=200):
    """What went wrong, in a few words: 'out of memory', or the error's type and first line."""
    if is_out_of_memory(err):
        return "out of memory"
    return f"{type(err).__name__}: {one_line(err)[:limit]}"


def error_note(err):
    """The note of a row that failed."""
    return f"error: {error_reason(err)}"


@torch.no_grad()
def warm_up(step, diffusion, a, b, x, count):
    """The first `count` steps of the loop through `step` (compiles a compiled step)."""
    rectify = Rectifier("official", a, b)
    for i in list(range(diffusion.num_timesteps))[::-1][:count]:
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x = step(x, t, torch.zeros_like(x), rectify)["sample"]
    return x
