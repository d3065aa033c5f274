"""benchmarks/gpu_check.py: the dry run (the GPU command's code path on the CPU) and its parts."""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import MODEL_CONFIG, ROOT, TINY_MODEL_CONFIG

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
import gpu_setup  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           # a generous budget: a loaded CI machine must not skip rows the test checks
                           "--budget-s", "600", "--out", str(out)], capture_output=True, text=True, timeout=900)
    record = json.loads((out / "gpu_check_dry.json").read_text())
    with open(out / "gpu_check_dry.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    return done, record, table


def test_dry_run_succeeds_and_prints_the_table(dry_run):
    done, record, _ = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " | ".join(gpu_check.COLUMNS) in done.stdout
    assert "random weights" in record["environment"]["weights"]


def test_every_planned_row_has_real_values(dry_run):
    _, record, table = dry_run
    rows = {(r["row"], r["size"], r["batch"]): r for r in record["rows"]}
    expected = [e for e in gpu_check.PLAN if e not in ("fit", "bf16_graph@256b8")]
    assert len(record["rows"]) == len(expected) + 2 == len(table)
    for entry in expected:
        mode, size = entry.split("@")
        h, w, batch = gpu_check.DRY_SIZES[size]
        row = rows[(mode, f"{h}x{w}", batch)]
        assert not row["note"].startswith(("error", "skipped", "stopped")), row
        assert row["s_per_pair"] > 0 and row["ms_per_step"] > 0 and row["tflops"] > 0, row
        assert math.isclose(row["ms_per_step"] * row["steps"] / 1e3, row["s_per_pair"] * batch, rel_tol=1e-6)
        assert row["unet_ms"] > 0 and math.isclose(row["outside_ms"], row["ms_per_step"] - row["unet_ms"])
        if gpu_check.MODES[mode][2] in ("step", "graph"):
            assert row["graphs"] == 1 and row["graph_breaks"] == 0, row  # the whole step: one graph
            assert "unet_ms of bf16_compile" in row["note"]


def test_reduced_precision_rows_are_compared_with_the_exact_row(dry_run):
    _, record, _ = dry_run
    at = {(r["row"], r["size"], r["batch"]): r for r in record["rows"]}
    for mode in ("fp16_autocast", "bf16_autocast", "bf16", "bf16_cl", "bf16_step"):
        row = at[(mode, "32x64", 1)]
        assert 20 < row["psnr_db"] < 200 and 0 < row["max_abs_diff"] <= 255, row
    assert at[("bf16_cl", "32x32", 2)]["psnr_db"] > 20  # each image of the batch against batch 1
    # The compiled step (capture only in a dry run) gives the eager fast path's image exactly.
    assert at[("bf16_step", "32x64", 1)]["psnr_db"] == at[("bf16_cl", "32x64", 1)]["psnr_db"]
    assert "no exact row" in at[("bf16_cl", "64x64", 1)]["note"]
    # On a CPU (no TF32) the official-like loop does the exact row's arithmetic: the same image,
    # so its timing is of the same work done the official way.
    for mode in ("fp32_tf32", "official_like"):
        assert (at[(mode, "32x64", 1)]["psnr_db"], at[(mode, "32x64", 1)]["max_abs_diff"]) == ("inf", 0.0)


def test_fit_rows_and_profile(dry_run):
    _, record, _ = dry_run
    fits = {r["row"]: r["size"] for r in record["rows"] if r["row"].startswith("fit_")}
    # the dry run simulates out-of-memory above 4 px per "GB": 48 and 96 px, searched in /32 steps
    assert fits == {"fit_12gb": "32x32", "fit_24gb": "96x96"}
    shares = record["profile"]["shares"]
    assert 0 < shares["groupnorm"] < 1 and 0 < record["profile"]["groupnorm32_share"] <= 1
    assert math.isclose(sum(v for k, v in shares.items() if k != "GroupNorm32 incl. casts"), 1.0)


def test_flop_count_reproduces_the_reference_figures():
    """ddfm_official.md §11: 2,240 / 10,709 / 28,483 GFLOP per ADM forward."""
    config, _ = gpu_setup.model_config(MODEL_CONFIG)
    for (h, w), gflop in (((256, 256), 2240), ((480, 640), 10709), ((768, 1024), 28483)):
        assert gpu_setup.flops_per_forward(config, h, w) / 1e9 == pytest.approx(gflop, rel=1e-3)


def test_re_randomised_unet_output_is_not_zero():
    """A fresh ADM outputs exactly 0 (zero-initialised output convs); re-drawn weights do not."""
    config = {k: v for k, v in yaml.safe_load(TINY_MODEL_CONFIG.read_text()).items() if k != "model_path"}
    import guided_diffusion
    unet = guided_diffusion.create_model(**config)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():
        assert unet(x, t).abs().max() == 0
        out = gpu_setup.randomise_(unet)(x, t)
    assert out.std() > 0.05 and all(p.std() > 0 for p in unet.parameters() if p.numel() > 1)


def test_tf32_switch_leaves_every_flag_readable():
    """Each row sets TF32 on or off; afterwards every getter (legacy and fp32_precision, which
    inductor and cuBLAS read) must answer: setting fp32_precision alone made them raise."""
    from ddfm.prior import set_tf32
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for conv, matmul in ((True, True), (False, False), (True, False), (True, True)):
            set_tf32(conv, matmul=matmul)
            assert torch.backends.cudnn.allow_tf32 is conv
            assert torch.backends.cuda.matmul.allow_tf32 is matmul
            assert torch.get_float32_matmul_precision() == ("high" if matmul else "highest")
            if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
                assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if matmul else "ieee")
    finally:
        set_tf32(*saved)
