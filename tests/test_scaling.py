"""Batching, torchrun sharding and reduced-precision paths give the plain path's fusion: on the
default path up to float order (the README's bound; byte equality is tests/test_determinism.py's)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
from helpers import ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png
from test_determinism import DEFAULT_PATH_FRACTION

TINY = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
        "timestep_respacing=4", "device=cpu", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling") / "in"
    # Four same-size pairs (one batch of 3 plus a remainder) and one of another size.
    pairs = {f"s{k}": random_pair(20 + k, 40, 56) for k in range(4)}
    pairs["other"] = random_pair(30, 64, 32)
    return make_dataset(root, pairs)


def fused_images(save_dir):
    return {p.stem: read_png(p) for p in sorted((save_dir / "recon").glob("*.png"))}


def assert_within_float_order(images, reference):
    """At most one grey level apart, on at most the README's fraction of the values."""
    assert images.keys() == reference.keys()
    diffs = np.concatenate([np.abs(images[s].astype(int) - reference[s].astype(int)).ravel() for s in reference])
    assert diffs.max() <= 1 and (diffs > 0).mean() <= DEFAULT_PATH_FRACTION, (diffs.max(), (diffs > 0).mean())


@pytest.fixture(scope="module")
def single_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert sample.main(["--input_dir", str(dataset), "--save_dir", str(out), *TINY]) == 0
    return fused_images(out)


def test_batch_of_three_equals_runs_of_one_up_to_float_order(dataset, single_run, tmp_path):
    assert sample.main(["--input_dir", str(dataset), "--save_dir", str(tmp_path), *TINY,
                        "batch_size=3"]) == 0
    batched = fused_images(tmp_path)
    assert len(batched) == 5
    assert_within_float_order(batched, single_run)


def test_batched_sampler_equals_single_sampler_tensors():
    """The sampler itself: a batch of 3 gives the per-image results to float32 rounding."""
    import yaml

    import guided_diffusion
    from ddfm.methods.ddfm.sampling import ddfm_sample

    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text()) | {"model_path": str(TINY_WEIGHTS)}
    model = guided_diffusion.create_model(**config)
    diffusion = guided_diffusion.create_sampler(
        sampler="ddim", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
        model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
        rescale_timesteps=False, timestep_respacing="5")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 32, 64, generator=gen) * 2 - 1
    b = torch.rand(3, 1, 32, 64, generator=gen) * 2 - 1
    batch = ddfm_sample(model, diffusion, a, b, seed=11)
    for k in range(3):
        one = ddfm_sample(model, diffusion, a[k:k + 1], b[k:k + 1], seed=11)
        assert (batch[k:k + 1] - one).abs().max() < 1e-4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_single_process_up_to_float_order(dataset, single_run, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           str(ROOT / "sample.py"), "--input_dir", str(dataset), "--save_dir", str(tmp_path), *TINY]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sharded = fused_images(tmp_path)
    assert_within_float_order(sharded, single_run)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["world_size"] == 2 and set(record["fused"]) == set(single_run)
    # Both ranks journaled their images under the one settings line of rank 0.
    assert {image["settings"] for image in record["fused"].values()} == {record["settings_key"]}
    assert record["counts"] == {"fused": 5, "skipped": 0, "failed": 0, "in_folder": 5}
    # A refused start (settings that would mix): one error line, from rank 0 only; every rank
    # exits 2 and torch's launcher exits 1 with its own ChildFailedError report (README).
    cmd[cmd.index(next(a for a in cmd if a.startswith("--master_port")))] = f"--master_port={free_port()}"
    done = subprocess.run(cmd + ["seed=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fused with other settings" in errors[0], done.stderr[-3000:]
    assert done.returncode == 1 and "exitcode  : 2" in done.stderr


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(dataset, single_run, tmp_path, dtype):
    try:
        with torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
    except RuntimeError as err:
        pytest.skip(f"torch {torch.__version__} has no CPU autocast for {dtype}: {err}")
    assert sample.main(["--input_dir", str(dataset), "--save_dir", str(tmp_path), *TINY,
                        f"dtype={dtype}"]) == 0
    reduced = fused_images(tmp_path)
    for stem, image in single_run.items():
        # Same image up to the precision of the UNet: well correlated with the fp32 result.
        corr = np.corrcoef(reduced[stem].ravel().astype(float), image.ravel().astype(float))[0, 1]
        assert corr > 0.9, (stem, corr)
