"""benchmarks/gpu_check.py: the dry run (the GPU command's code path on the CPU) and its parts."""
import csv
import json
import math
import subprocess
import sys
import time

import pytest
import torch
import yaml

from benchmarks import gpu_ccf, gpu_check, gpu_fit, gpu_setup
from helpers import MODEL_CONFIG, ROOT, TINY_MODEL_CONFIG


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
        if gpu_check.MODES[mode].compile in ("step", "graph"):
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


def test_card_peak_by_the_names_cuda_reports():
    expected = {"NVIDIA H200": 989.0, "NVIDIA GH200 480GB": 989.0, "NVIDIA H200 NVL": 835.0,
                "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0,
                "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA L40S": 362.0, "NVIDIA L40": 181.0,
                "NVIDIA L4": 121.0, "NVIDIA GeForce RTX 4090": 165.2, "Tesla T4": None}
    assert {name: gpu_setup.card_peak(name) for name in expected} == expected


def fake_bench(tmp_path):
    from types import SimpleNamespace
    args = SimpleNamespace(dry_run=True, out=str(tmp_path), steps=2, warmup_steps=1)
    return SimpleNamespace(args=args, device=torch.device("cpu"), sizes=gpu_check.DRY_SIZES,
                           fused={}, env={"name": "test"}, flops={})


def test_rows_are_saved_as_they_finish_and_a_sigterm_keeps_them(tmp_path, monkeypatch):
    """An outer `timeout` (SIGTERM) mid-plan: the rows done so far are already on disk, the
    interrupted row and the rest are marked; a torch.compile-wrapped alarm counts as the budget."""
    seen = []

    def run_entry(bench, entry):
        seen.append(entry)
        if entry == "bf16@256":
            raise gpu_check.Terminated()
        if entry == "bf16_compile@256":
            try:
                raise gpu_check.RowTimeout()
            except gpu_check.RowTimeout as err:
                raise RuntimeError("backend='inductor' raised: RowTimeout") from err
        row = {"row": entry.split("@")[0], "size": "32x32", "batch": 1, "steps": 2, "note": ""}
        saved = json.loads((tmp_path / "gpu_check_dry.json").read_text())["rows"] if seen[1:] else []
        row["note"] = f"{len(saved)} rows on disk"
        return [row]

    monkeypatch.setattr(gpu_check, "run_entry", run_entry)
    plan = ["fp32_exact@256", "bf16_compile@256", "bf16_cl@256", "bf16@256", "bf16_graph@256"]
    rows = gpu_check.run_plan(fake_bench(tmp_path), plan, deadline=time.monotonic() + 600)
    assert seen == plan[:4]
    notes = [r["note"] for r in rows]
    assert notes[0] == "0 rows on disk" and notes[2] == "2 rows on disk"
    assert notes[1] == "stopped: the time budget ran out during this row"
    assert notes[3].startswith("stopped: terminated") and notes[4] == "skipped: terminated"
    with open(tmp_path / "gpu_check_dry.csv", newline="") as handle:
        assert [r["note"] for r in csv.DictReader(handle)] == notes


def test_cross_row_columns_are_not_added_twice(tmp_path):
    bench = fake_bench(tmp_path)
    rows = [{"row": "bf16", "size": "32x32", "batch": 1, "note": "", "_key": ("bf16", "256")}]
    bench.fused[("bf16", "256")] = [torch.zeros(32, 32).numpy()]
    for _ in range(3):
        done = gpu_check.finished(bench, rows)
    assert done[0]["note"] == "no exact row at this size" and rows[0]["note"] == ""


def test_fit_search_counts_a_refused_size_as_not_fitting(tmp_path, monkeypatch):
    """Past 2**31 elements cuDNN can refuse a size with a plain RuntimeError before memory runs
    out: the search goes on below it and names it; another cap's search is not lost."""
    def fit_trial(bench, step, side, limit_gb):
        if side > 4 * limit_gb:
            raise torch.OutOfMemoryError("simulated")
        if side > 64:
            raise RuntimeError("Expected canUse32BitIndexMath(input) to be true, but got false.")

    monkeypatch.setattr(gpu_fit, "fit_trial", fit_trial)
    bench = fake_bench(tmp_path)
    built = []
    bench.model = lambda mode: (built.append(mode), (None, None))[1]
    rows = {r["row"]: r for r in gpu_fit.run_fit(bench)}
    assert built == ["bf16_cl"]  # one model serves both caps
    assert rows["fit_12gb"]["size"] == "32x32" and "refused" not in rows["fit_12gb"]["note"]
    assert rows["fit_24gb"]["size"] == "64x64"
    assert "refused (not out of memory): 96px RuntimeError: Expected canUse32BitIndexMath" in rows["fit_24gb"]["note"]


def test_fit_cap_is_a_fraction_of_the_cards_memory_and_is_lifted(tmp_path, monkeypatch):
    """The CUDA branch of the fit search with torch.cuda faked: a 141 GiB card gets the fraction
    12/141 (then 24/141), set before the trials and back to 1.0 after, even after an error."""
    from types import SimpleNamespace
    fractions, allocated = [], {"now": 0}
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=141 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: fractions.append(round(fraction, 6)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def fit_trial(bench, step, side, limit_gb):
        if limit_gb == 24 and side > 512:
            raise ValueError("a bug in the trial")
        if side * side * 4 > limit_gb * 2**20:  # a stand-in for the allocator's cap
            raise torch.OutOfMemoryError("CUDA out of memory")
        allocated["now"] = side * side * 4 * 2**10

    monkeypatch.setattr(gpu_fit, "fit_trial", fit_trial)
    bench = fake_bench(tmp_path)
    bench.args.dry_run, bench.device, bench.model = False, torch.device("cuda"), lambda mode: (None, None)
    rows = {r["row"]: r for r in gpu_fit.run_fit(bench)}
    assert fractions == [round(12 / 141, 6), 1.0, round(24 / 141, 6), 1.0]
    assert rows["fit_12gb"]["size"] == "1760x1760"  # 1760^2 * 4 B <= 12 MiB < 1792^2 * 4 B
    assert rows["fit_12gb"]["peak_alloc_gb"] == pytest.approx(1760 ** 2 * 4 * 2**10 / 2**30)
    assert rows["fit_24gb"]["note"] == "error: ValueError: a bug in the trial"


def test_error_reason_is_the_type_and_first_line_without_the_row_prefix():
    from benchmarks.gpu_runtime import error_note, error_reason
    err = RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\ndetails")
    assert error_reason(err, limit=12) == "RuntimeError: cuDNN error:"
    assert error_note(err) == "error: RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"
    assert error_note(torch.OutOfMemoryError("CUDA out of memory. Tried")) == "error: out of memory"


def test_ccf_rows_are_timed_and_compared_with_the_exact_ccf_row(dry_run):
    _, record, _ = dry_run
    at = {(r["row"], r["size"]): r for r in record["rows"]}
    exact, fast = at[("ccf_fp32_exact", "32x64")], at[("ccf_bf16_cl", "32x64")]
    for row in (exact, fast):
        assert row["unet_ms"] > 0 and row["ms_per_step"] > 0 and row["tflops"] > 0, row
        assert "float32" in row["note"]
    assert "psnr_db" not in exact or exact.get("psnr_db") in (None, "")
    assert 15 < fast["psnr_db"] < 200 and 0 < fast["max_abs_diff"] <= 255, fast
    assert [e for e in gpu_check.PLAN if e.startswith("ccf_")] == list(gpu_ccf.CCF_PLAN)


def test_deterministic_row_matches_the_batched_row_to_precision(dry_run):
    """The deterministic row (each image alone, deterministic kernels) runs in the dry run and
    fuses what the batched bf16 channels-last row fuses, up to bf16 precision."""
    _, record, _ = dry_run
    at = {(r["row"], r["size"], r["batch"]): r for r in record["rows"]}
    h, w, batch = gpu_check.DRY_SIZES["256b8"]
    row = at[("bf16_cl_deterministic", f"{h}x{w}", batch)]
    assert not row["note"].startswith(("error", "skipped", "stopped")), row
    assert row["s_per_pair"] > 0 and row["psnr_db"] > 30, row


def test_sync_count_counts_the_sync_debug_warnings(monkeypatch):
    """On CUDA the count is the warnings of set_sync_debug_mode("warn"), set only around run();
    the loop's per-step syncs are the second step's, the rest are the set-up's."""
    import warnings

    from benchmarks import gpu_runtime
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def steps(n, setup=2, per_step=3):
        for _ in range(setup + n * per_step):
            warnings.warn("called a synchronizing CUDA operation (function cudaMemcpyAsync)")
        warnings.warn("an unrelated warning")

    cuda = torch.device("cuda")
    assert gpu_runtime.sync_count(lambda: steps(1), cuda) == 5 and modes == ["warn", "default"]
    row = {}
    gpu_runtime.fill_syncs(row, steps, cuda)
    assert (row["syncs_per_step"], row["setup_syncs"]) == (3, 2)
    assert gpu_runtime.sync_count(lambda: steps(1), torch.device("cpu")) == 5 and len(modes) == 6


def test_topk_tie_order_is_in_the_header(tmp_path):
    bench = fake_bench(tmp_path)
    bench.env.update(weights="w", device="cpu", torch="2", topk_ties={"device": [4, 5, 6], "cpu": [6, 5, 4]})
    bench.args.steps, bench.peak = 2, None
    lines = gpu_check.header_lines(bench)
    assert "torch.topk of 8 equal weights (k=3): cpu [4, 5, 6], cpu [6, 5, 4] (a DIFFERENT order" in "\n".join(lines)
    assert gpu_setup.topk_ties(torch.device("cpu")) == {"device": [6, 5, 4], "cpu": [6, 5, 4]}


def test_rows_carry_the_planned_peak_and_the_sync_counts(dry_run):
    """Every eager DDFM/CCF row has ddfm.memory's plan for its model and size (the tiny UNet's
    plan grows with the image) and its sync counts (0 on a CPU); the official loop has no plan."""
    _, record, _ = dry_run
    at = {(r["row"], r["size"], r["batch"]): r for r in record["rows"]}
    assert at[("fp32_exact", "32x32", 1)]["pred_peak_gb"] < at[("fp32_exact", "32x64", 1)]["pred_peak_gb"]
    assert at[("bf16", "32x64", 1)]["pred_peak_gb"] < at[("fp32_exact", "32x64", 1)]["pred_peak_gb"]
    assert at[("ccf_bf16_cl", "32x64", 1)]["pred_peak_gb"] > 0
    assert at[("official_like", "32x64", 1)].get("pred_peak_gb") is None
    for row in record["rows"]:
        if row.get("s_per_pair") is not None:
            assert (row["syncs_per_step"], row["setup_syncs"]) == (0, 0), row
    fits = {r["row"]: r for r in record["rows"] if r["row"].startswith("fit_")}
    assert all("planned " in r["note"] and r["pred_peak_gb"] > 0 for r in fits.values())
