"""DDFM end to end against the official code's traces (golden/DDFM_TRACES.md §6, level 0 and 3).

The traces were made by the official DDFM code with the tiny UNet; we free-run from x_T with our
own prior, EM and loop, then compare every stored step, the fused PNG and the progress PNGs.
"""
import numpy as np
import pytest
import torch
import yaml

import guided_diffusion
import sample
from ddfm import io
from ddfm.methods.ddfm.sampling import ddfm_sample, per_image_noise, seeded_generators
from helpers import TINY_MODEL_CONFIG, TINY_WEIGHTS, load_golden, read_png, write_png

TRACES = ["ddfm_trace_tno_r10.pt", "ddfm_trace_mrict_r25.pt"]


@pytest.fixture(scope="module")
def tiny_model():
    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text())
    config["model_path"] = str(TINY_WEIGHTS)
    return guided_diffusion.create_model(**config)


@pytest.fixture(scope="module", params=TRACES)
def trace_run(request, tiny_model):
    """Free-run one trace with our loop; keep every step's tensors for the comparisons."""
    trace = load_golden(request.param)
    diffusion = guided_diffusion.create_sampler(**trace["diffusion_config"])
    steps = []
    # Official roles: V (the infrared role, folder ir/) is `a`, I (visible role, vi/) is `b`.
    fused = ddfm_sample(tiny_model, diffusion, trace["V"], trace["I"], variant="official",
                        lamb=trace["lamb"], rho=trace["rho"], seed=trace["seed"],
                        callback=lambda info: steps.append(
                            {k: (v.clone() if torch.is_tensor(v) else v) for k, v in info.items()
                             if k != "em_state"} | {"tau_a": float(info["em_state"].tau_a),
                                                    "tau_b": float(info["em_state"].tau_b)}))
    return trace, steps, fused


def test_inputs_match_official_reading(trace_run):
    trace, _, _ = trace_run
    for key, grey in (("I", "vi_gray_u8"), ("V", "ir_gray_u8")):
        ours = torch.from_numpy((trace[grey].numpy() / 255.0).astype(np.float32)) * 2 - 1
        assert torch.equal(ours[None, None], trace[key])
    h, w = trace["crop_hw"]
    x_T = per_image_noise(seeded_generators(trace["seed"], 1), (3, h, w), "cpu")
    assert torch.equal(x_T, trace["x_T"])


def test_every_step_matches_free_running(trace_run):
    trace, steps, _ = trace_run
    assert len(steps) == trace["num_steps"]
    assert [s["t"] for s in steps] == trace["step_t_orig"].tolist()
    for k, step in enumerate(steps):
        # EM output at every stored position, atol 1e-3 (level 3).
        if k in trace["em_F_steps"].tolist():
            row = trace["em_F_steps"].tolist().index(k)
            assert (step["em_F"] - trace["em_F"][row]).abs().max() < 1e-3, f"em_F at step {k}"
        for ours, key in (("pred_xstart", "pred_xstart"), ("rectified", "x0_rect")):
            if k in trace[f"{key}_steps"].tolist():
                row = trace[f"{key}_steps"].tolist().index(k)
                assert (step[ours] - trace[key][row]).abs().max() < 1e-3, f"{key} at step {k}"
        assert step["tau_a"] == pytest.approx(float(trace["em_tau_a"][k]), rel=1e-4)
        assert step["tau_b"] == pytest.approx(float(trace["em_tau_b"][k]), rel=1e-4)
    # The latent handed to the next step equals the stored next input.
    stored = trace["x_t_steps"].tolist()
    for k in range(len(steps) - 1):
        if k + 1 in stored:
            assert (steps[k]["x"] - trace["x_t"][stored.index(k + 1)]).abs().max() < 1e-3


def assert_png_close(ours, golden, what):
    diff = np.abs(ours.astype(int) - golden.astype(int))
    assert diff.max() <= 1, f"{what}: max difference {diff.max()} grey levels"
    assert (diff > 0).mean() <= 0.005, f"{what}: {(diff > 0).mean():.2%} of pixels differ"


def test_fused_png_matches(trace_run):
    trace, steps, fused = trace_run
    final = steps[-1]["x"]
    assert (final - trace["x0_rect"][-1]).abs().max() < 1e-3
    ours = io.luma_to_uint8(fused[0, 0].numpy(), "minmax")
    assert_png_close(ours, trace["recon_png"].numpy(), "recon")
    if "progress_png" in trace:
        for k, step in enumerate(steps):
            luma = (step["x"][0] * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
            frame = io.progress_to_uint8(luma.numpy())
            assert np.abs(frame.astype(int) - trace["progress_png"][k].numpy().astype(int)).max() <= 1


@pytest.mark.parametrize("name,mods", [("ddfm_trace_tno_r10.pt", ("ir", "vi")),
                                       ("ddfm_trace_mrict_r25.pt", ("ct", "mri"))])
def test_sample_cli_reproduces_official_outputs(tmp_path, name, mods):
    """sample.py + configs/fusion_official.yaml + the tiny model give the official PNGs."""
    trace = load_golden(name)
    write_png(tmp_path / "in" / mods[0] / "01.png", trace["ir_gray_u8"].numpy())
    write_png(tmp_path / "in" / mods[1] / "01.png", trace["vi_gray_u8"].numpy())
    steps = trace["num_steps"]
    code = sample.main([
        "--model_config", str(TINY_MODEL_CONFIG), "--fusion_config", "configs/fusion_official.yaml",
        "--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / "out"), "--quiet",
        f"model_path={TINY_WEIGHTS}", f"timestep_respacing={steps}", f"seed={trace['seed']}",
        f"modalities=[{mods[0]}, {mods[1]}]", "prior=adm", "record=true", "device=cpu"])
    assert code == 0
    assert_png_close(read_png(tmp_path / "out" / "recon" / "01.png"), trace["recon_png"].numpy(), "recon")
    progress = sorted((tmp_path / "out" / "progress" / "01").glob("x_*.png"))
    assert len(progress) == steps
    assert (tmp_path / "out" / "progress" / "01.gif").is_file()
    if "progress_png" in trace:
        for k, index in enumerate(trace["progress_index"].tolist()):
            ours = read_png(tmp_path / "out" / "progress" / "01" / f"x_{index:04d}.png")
            assert np.abs(ours.astype(int) - trace["progress_png"][k].numpy().astype(int)).max() <= 1


def test_fast_path_fp32_channels_last_matches_the_exact_path(tiny_model, trace_run):
    """The fast-path wrapper (channels-last, fp32) equals the exact path: the UNet output on every
    stored input within 1e-4, and the free-running result within the level-3 tolerance (x0
    amplifies UNet rounding by up to sqrt(1/abar - 1) = 157 at t = 999)."""
    from ddfm.prior import PriorModel

    trace, _, exact = trace_run
    diffusion = guided_diffusion.create_sampler(**trace["diffusion_config"])
    fast = PriorModel(tiny_model.to(memory_format=torch.channels_last), dtype="fp32",
                      channels_last=True)
    try:
        with torch.no_grad():
            for row, k in enumerate(trace["x_t_steps"].tolist()):
                t = torch.tensor([int(trace["step_t_orig"][k])])
                x_t = trace["x_t"][row:row + 1]
                assert (fast(x_t, t) - tiny_model(x_t.contiguous(), t)).abs().max() < 1e-4, k
        fused = ddfm_sample(fast, diffusion, trace["V"], trace["I"], seed=trace["seed"])
    finally:
        tiny_model.to(memory_format=torch.contiguous_format)
    assert (fused - exact).abs().max() < 1e-3
    assert_png_close(io.luma_to_uint8(fused[0, 0].numpy(), "minmax"), trace["recon_png"].numpy(), "recon")
