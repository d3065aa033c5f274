"""Sharding a dataset over processes started by `torchrun` (torch.distributed, env:// rendezvous).

Pairs are independent, so each rank fuses every world-th pair and writes its own images and a
per-rank manifest; rank 0 waits for all ranks and merges the manifests into run.json. The
process group (gloo: CPU-side coordination only) is used for that one barrier, nothing else.
"""
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from ddfm.io import publish


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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    publish(tmp, path)


def merge_records(records):
    """One run record from per-rank ones: the per-pair maps are united, the rest is rank 0's."""
    merged = dict(records[0])
    merged["fused"], merged["failed"], merged["skipped"] = {}, {}, []
    for record in records:
        merged["fused"].update(record["fused"])
        merged["failed"].update(record["failed"])
        merged["skipped"] += record["skipped"]
    merged["fused"] = dict(sorted(merged["fused"].items()))
    merged["skipped"] = sorted(set(merged["skipped"]))
    merged["world_size"] = len(records)
    return merged


def write_run_record(save_dir, record, rank, world):
    """run.json for a single process; per-rank manifests merged by rank 0 under torchrun."""
    save_dir = Path(save_dir)
    if world == 1:
        write_json_atomic(save_dir / "run.json", record)
        return record
    write_json_atomic(save_dir / f"run.rank{rank}.json", record)
    _barrier()
    if rank == 0:
        records = [json.loads((save_dir / f"run.rank{r}.json").read_text()) for r in range(world)]
        record = merge_records(records)
        write_json_atomic(save_dir / "run.json", record)
    _barrier()
    return record
