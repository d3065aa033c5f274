"""The determinism contract (README, ddfm/determinism.py): `deterministic: true` gives the same
bytes whatever the batch size and torchrun rank count; the default path only agrees up to float
order, and these tests first show that it really does differ on the inputs they use."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddfm
import sample
from ddfm import determinism, io
from ddfm.settings import FusionSettings
from helpers import ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png

TINY = {"model_config": TINY_MODEL_CONFIG, "model_path": str(TINY_WEIGHTS), "prior": "adm",
        "timestep_respacing": 4, "device": "cpu"}
TINY_CLI = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
            "timestep_respacing=4", "device=cpu", "--quiet"]


def fuse_in_batches(pairs, batch, monkeypatch, **settings):
    """uint8 images and the float luma each was rounded from (io.luma_to_uint8's input)."""
    floats, real = [], io.luma_to_uint8
    monkeypatch.setattr(io, "luma_to_uint8", lambda luma, mode: (floats.append(np.array(luma)), real(luma, mode))[1])
    fuser = ddfm.load_fuser(log=lambda message: None, **TINY, **settings)
    images = []
    for k in range(0, len(pairs), batch):
        images += fuser.fuse_batch(pairs[k:k + batch])
    monkeypatch.setattr(io, "luma_to_uint8", real)
    return images, floats


def source_pairs(seed, count=3, h=40, w=56):
    return [tuple(io.source_from_array(x) for x in random_pair(seed + k, h, w)) for k in range(count)]


@pytest.fixture(scope="module")
def differing_pairs():
    """Pairs on which a batch of 3 and three batches of 1 give different floats by default
    (searched over a few seeds, so the test below proves the mode matters)."""
    mp = pytest.MonkeyPatch()
    try:
        for seed in range(0, 50, 10):
            pairs = source_pairs(seed)
            _, one = fuse_in_batches(pairs, 1, mp)
            _, three = fuse_in_batches(pairs, 3, mp)
            if any(not np.array_equal(x, y) for x, y in zip(one, three)):
                return pairs
    finally:
        mp.undo()
    pytest.fail("no inputs found on which the default path depends on the batch size")


def test_deterministic_mode_makes_the_batch_size_irrelevant(differing_pairs, monkeypatch):
    one, one_floats = fuse_in_batches(differing_pairs, 1, monkeypatch, deterministic=True)
    three, three_floats = fuse_in_batches(differing_pairs, 3, monkeypatch, deterministic=True)
    two, two_floats = fuse_in_batches(differing_pairs, 2, monkeypatch, deterministic=True)
    for k in range(3):
        assert np.array_equal(one_floats[k], three_floats[k]) and np.array_equal(one_floats[k], two_floats[k])
        assert np.array_equal(one[k], three[k]) and np.array_equal(one[k], two[k])


def test_default_path_differs_by_at_most_one_level(differing_pairs, monkeypatch):
    one, one_floats = fuse_in_batches(differing_pairs, 1, monkeypatch)
    three, three_floats = fuse_in_batches(differing_pairs, 3, monkeypatch)
    assert max(float(np.abs(x - y).max()) for x, y in zip(one_floats, three_floats)) < 1e-4
    diffs = np.concatenate([np.abs(x.astype(int) - y.astype(int)).ravel() for x, y in zip(one, three)])
    assert diffs.max() <= 1 and (diffs > 0).mean() <= DEFAULT_PATH_FRACTION


# The README's bound for the default path (measured: benchmarks/README.md, "Determinism").
DEFAULT_PATH_FRACTION = 1e-3


def test_threads_key_applies_during_fusion_and_is_restored(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    fuser = ddfm.load_fuser(log=lambda message: None, **TINY, threads=1)
    real = fuser._fuse_together
    monkeypatch.setattr(fuser, "_fuse_together", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    fuser.fuse_batch(source_pairs(0, count=1, h=32, w=32))
    assert seen == [1] and torch.get_num_threads() == before
    assert fuser.provenance(4)["threads"] == 1 and fuser.provenance(4)["batch_size"] == 4
    assert ddfm.load_fuser(log=lambda message: None, **TINY, deterministic=True).threads == 1
    assert ddfm.load_fuser(log=lambda message: None, **TINY).threads == determinism.auto_threads()


def test_threads_auto_leaves_a_core_of_the_affinity_free(monkeypatch):
    """A pool as wide as the machine stalls when another process holds a core (issue 25 item 7)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cpus, threads in (({0, 1, 2, 3}, 3), ({0, 1}, 1), ({5}, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: cpus)
        assert determinism.resolved_threads(FusionSettings(threads="auto")) == threads
    assert determinism.resolved_threads(FusionSettings(threads="auto", deterministic=True)) == 1
    assert determinism.resolved_threads(FusionSettings(threads=4)) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's per-rank setting: torch follows it
    assert determinism.resolved_threads(FusionSettings(threads="auto")) is None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism") / "in"
    return make_dataset(root, {f"d{k}": random_pair(40 + k, 40, 56) for k in range(3)})


def fused_images(save_dir):
    return {p.stem: read_png(p) for p in sorted((save_dir / "recon").glob("*.png"))}


def test_deterministic_batch_and_torchrun_equal_a_single_run_byte_for_byte(dataset, tmp_path):
    runs = {}
    for name, extra in (("one", []), ("three", ["batch_size=3"])):
        out = tmp_path / name
        assert sample.main(["--input_dir", str(dataset), "--save_dir", str(out), *TINY_CLI,
                            "deterministic=true", *extra]) == 0
        runs[name] = fused_images(out)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # torchrun's one thread per rank is not what decides: deterministic fixes the count itself.
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(ROOT / "sample.py"), "--input_dir", str(dataset),
           "--save_dir", str(tmp_path / "ranks"), *TINY_CLI, "deterministic=true"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs["ranks"] = fused_images(tmp_path / "ranks")
    assert runs["one"].keys() == runs["three"].keys() == runs["ranks"].keys() and len(runs["one"]) == 3
    for stem, image in runs["one"].items():
        assert np.array_equal(runs["three"][stem], image) and np.array_equal(runs["ranks"][stem], image), stem
    made_with = {stem: image["made_with"] for stem, image in
                 json.loads((tmp_path / "ranks" / "run.json").read_text())["fused"].items()}
    for entry in made_with.values():
        assert entry["threads"] == 1 and entry["deterministic"] is True and entry["torch"] == torch.__version__
        assert entry["device"].startswith("cpu") and entry["batch_size"] == 1
    record = json.loads((tmp_path / "three" / "run.json").read_text())
    assert {image["made_with"]["batch_size"] for image in record["fused"].values()} == {3}
    assert record["determinism"]["deterministic"] is True and record["determinism"]["threads"] == 1


def test_one_at_a_time_hands_on_every_per_image_list_per_step():
    """Each pair fused alone; the callback still gets, per step, one entry per image of the batch
    in every list the fuser hands on (frames, and CCF's per-step details)."""
    from ddfm.determinism import one_at_a_time

    def fuse(pairs, callback, progress):
        for i in (1, 0):
            callback(i, [f"frame{pairs[0]}@{i}"], [{"pair": pairs[0], "i": i}])
        return [f"image{pairs[0]}"]

    seen = []
    images = one_at_a_time(fuse, ["a", "b"], lambda i, frames, details: seen.append((i, frames, details)))
    assert images == ["imagea", "imageb"]
    assert seen == [(1, ["framea@1", "frameb@1"], [{"pair": "a", "i": 1}, {"pair": "b", "i": 1}]),
                    (0, ["framea@0", "frameb@0"], [{"pair": "a", "i": 0}, {"pair": "b", "i": 0}])]
