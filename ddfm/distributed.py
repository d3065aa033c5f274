"""Sharding a dataset over processes started by `torchrun` (torch.distributed, env:// rendezvous).

Pairs are independent, so each rank fuses every world-th pair to do. This module only hands
rank 0's decision to every rank and waits for all ranks (a gloo process group: CPU-side
coordination only); what is decided and written is ddfm.run's and ddfm.savefolder's.
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ddfm.common import RunError, one_line


class Rank0Failed(RunError):
    """Raised on the other ranks when rank 0 could not start the run (rank 0 says why)."""


def rank_and_world():
    """(rank, world_size) from torchrun's environment; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(device):
    """Under torchrun each local rank takes its own GPU (cuda -> cuda:LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


# How long a rank waits at a collective for the others: as long as the slowest rank's work (a
# pair more of DDFM on a CPU, a comparison's scoring on rank 0), not gloo's 30 minutes. A rank
# that dies ends the wait anyway: torchrun stops its peers.
WAIT = timedelta(days=7)


def _group():
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=WAIT)


def barrier():
    """Wait until every rank is here (nothing to wait for in a plain run)."""
    if rank_and_world()[1] > 1:
        _group()
        dist.barrier()


def from_rank0(work):
    """Run work() on rank 0 only and hand its result to every rank (or its error, as a RunError on
    the other ranks): the save folder is locked, checked and prepared once per run, not per rank."""
    rank, world = rank_and_world()
    if world == 1:
        return work()
    _group()
    box, error = [None], None
    if rank == 0:
        try:
            box[0] = ("ok", work())
        except Exception as err:  # the other ranks must not wait forever for a result
            error = err
            box[0] = ("error", one_line(err))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        _close_group()
        if error is not None:
            raise error
        raise Rank0Failed(f"rank 0 could not start the run: {value}")
    return value


def _close_group():
    """A refused start ends every rank: they leave the group together, so that none exits while
    another still talks to it (gloo aborts the process, SIGABRT, when its peer vanishes)."""
    dist.barrier()
    dist.destroy_process_group()
