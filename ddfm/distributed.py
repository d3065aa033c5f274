"""Sharding a dataset over processes started by `torchrun` (torch.distributed, env:// rendezvous).

Pairs are independent, so each rank fuses every world-th pair to do and writes its own images
and journal lines. Rank 0 alone locks and prepares the save folder (the others get its decision)
and, once all ranks are done, writes run.json from the journal. The process group (gloo: CPU-side
coordination only) is used for that one broadcast and one barrier, nothing else.
"""
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ddfm.files import write_atomic


def rank_and_world():
    """(rank, world_size) from torchrun's environment; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(device):
    """Under torchrun each local rank takes its own GPU (cuda -> cuda:LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _barrier():
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    dist.barrier()


def write_json_atomic(path, data):
    write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=2, default=str).encode()))


def from_rank0(work):
    """Run work() on rank 0 only and hand its result to every rank (or its error, as a RunError on
    the other ranks): the save folder is locked, checked and prepared once per run, not per rank."""
    rank, world = rank_and_world()
    if world == 1:
        return work()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    box, error = [None], None
    if rank == 0:
        try:
            box[0] = ("ok", work())
        except Exception as err:  # the other ranks must not wait forever for a result
            error = err
            box[0] = ("error", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        from ddfm.journal import RunError
        raise RunError(f"rank 0 could not start the run: {value}")
    return value


def write_run_record(save_dir, build, rank, world, finished=True):
    """run.json, built from the journal every rank appends to and written by rank 0. A finished
    run waits for all ranks first; after an interruption rank 0 writes at once what it holds."""
    if world > 1 and finished:
        _barrier()
    record = build()
    if rank == 0:
        write_json_atomic(Path(save_dir) / "run.json", record)
    return record
