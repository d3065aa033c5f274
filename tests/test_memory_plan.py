"""Memory planned, not discovered (ddfm.memory): the peak model's arithmetic, the build that casts
on the host before it moves, and a pair that would not fit (predicted, or a real out-of-memory
error mid-pair) failing in one line while the run goes on. The model against the simulated-CUDA
tracker is tests/test_fake_cuda_memory.py."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

import guided_diffusion
import sample
from ddfm import memory, methods
from ddfm.methods.ddfm import fuser as fusion
from ddfm.prior import PriorModel, wrap_unet
from helpers import MODEL_CONFIG, ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair

ADM_PARAMS, ADM_BLOCK_CONV_PARAMS = 552_814_086, 498_331_136  # reference/guided_diffusion.md §1, §5


def adm_prior(dtype="bf16", channels_last=False):
    config = {k: v for k, v in yaml.safe_load(MODEL_CONFIG.read_text()).items() if k != "model_path"}
    with torch.device("meta"):
        return PriorModel(guided_diffusion.create_model(**config), dtype=dtype, channels_last=channels_last)


def test_weights_are_counted_as_they_run():
    fp32, bf16 = adm_prior("fp32"), adm_prior("bf16")
    assert memory.weight_bytes(fp32.unet) == 4 * ADM_PARAMS
    expected_bf16 = 2 * ADM_BLOCK_CONV_PARAMS + 4 * (ADM_PARAMS - ADM_BLOCK_CONV_PARAMS)
    assert memory.weight_bytes(bf16.unet) == expected_bf16 == memory.weight_bytes(fp32.unet, torch.bfloat16)
    assert round(expected_bf16 / memory.GIB, 2) == 1.13


@pytest.mark.parametrize("dtype, channels_last, per_pixel", [
    ("bf16", False, 6144), ("bf16", True, 4480), ("fp32", False, 8960), ("fp32", True, 8960),
    ("bf16-autocast", False, 6144)])
def test_unet_peak_place_by_dtype_and_layout(dtype, channels_last, per_pixel):
    """The places of the module docstring for the ADM (C0 = C1 = 256, R = 2): A = 2*(2*256) +
    2*512 + 4*512 + 4*512 in bf16; channels-last bf16 peaks at C = 2*(3*256 + 768/4 + 5*256);
    float32 at C = 4*(3*256 + 768/4 + 5*256) whatever the layout."""
    model = adm_prior(dtype, channels_last)
    plan = memory.plan_peak(model, 480, 640, device="cuda")
    extra = methods.get("ddfm").sampler_bytes_per_pixel + (12 if channels_last else 0)
    assert plan.per_pixel == per_pixel + extra and plan.pixels == 480 * 640
    assert plan.total == plan.weights + plan.pixels * plan.per_pixel
    # On the CPU ATen's group_norm keeps channels-last itself: the NCHW-style float32 copies.
    cpu = memory.plan_peak(model, 480, 640, device="cpu")
    assert cpu.per_pixel == (6144 if dtype != "fp32" else 8960) + extra


def test_the_hint_names_cheaper_settings_with_their_predictions():
    model, h, w = adm_prior("fp32"), 768, 1024
    plan = memory.plan_peak(model, h, w, 2, device="cuda")
    advice = memory.hint(model, plan, h, w, 2, methods.get("ddfm").sampler_bytes_per_pixel, "cuda")
    bf16 = memory.plan_peak(adm_prior("bf16"), h, w, 2, device="cuda")
    cl = memory.plan_peak(model, h, w, 2, device="cuda", channels_last=True)
    one = memory.plan_peak(model, h, w, 1, device="cuda")
    assert advice == (f"try dtype: bf16 ({memory.gib(bf16.total)}), batch_size: 1 ({memory.gib(one.total)}), "
                      f"smaller images or a card with more free memory")
    assert cl.total > plan.total  # float32: channels-last saves nothing, so it is not offered
    advice = memory.hint(adm_prior("bf16"), bf16, h, w, 2, methods.get("ddfm").sampler_bytes_per_pixel, "cuda")
    cl_bf16 = memory.plan_peak(adm_prior("bf16", True), h, w, 2, device="cuda")
    assert advice.startswith(f"try channels_last: true ({memory.gib(cl_bf16.total)}), batch_size: 1")
    assert memory.gib(5.72 * memory.GIB) == "5.72 GiB" and memory.gib(3 * 2 ** 20) == "3.0 MiB"


def test_batch_and_method_scale_the_image_part_only():
    model = adm_prior("bf16")
    one, four = (memory.plan_peak(model, 256, 256, batch, device="cuda") for batch in (1, 4))
    assert four.weights == one.weights and four.activations == 4 * one.activations
    ccf = memory.plan_peak(model, 256, 256, sampler_bytes=methods.get("ccf").sampler_bytes_per_pixel, device="cuda")
    assert ccf.per_pixel - one.per_pixel == 256 - 128


class DeviceCopies(TorchDispatchMode):
    """Bytes of every tensor made on the meta device (standing in for the GPU)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.device.type == "meta":
            self.made.append((out.dtype, out.numel() * out.element_size()))
        return out


def test_wrap_unet_casts_on_the_host_then_moves():
    """Only the final weights reach the device: no float32 block conv weight is ever there, so
    the build's device peak is the bf16 weights (before: float32 weights, then their casts)."""
    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text())
    config["model_path"] = str(ROOT / config["model_path"])
    unet = guided_diffusion.create_model(**config)
    with DeviceCopies() as copies:
        model = wrap_unet(unet, torch.device("meta"), "bf16", channels_last=True)
    final = memory.weight_bytes(model.unet)
    assert sum(n for _, n in copies.made) == final
    assert sum(n for dtype, n in copies.made if dtype == torch.bfloat16) == 2 * sum(
        p.numel() for conv in model.unet.block_convs() for p in conv.parameters())


# --------------------------------------------------------------------------- the run goes on
TINY = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
        "timestep_respacing=2", "device=cpu"]


def run_two_sizes(tmp_path, *extra):
    make_dataset(tmp_path / "in", {"big": random_pair(80, 96, 128), "small": random_pair(81, 32, 32)})
    code = sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / "out"),
                        "--quiet", *TINY, *extra])
    return code, json.loads((Path(tmp_path) / "out" / "run.json").read_text())


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error")]


def test_a_pair_predicted_not_to_fit_fails_in_one_line_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """free memory (torch.cuda.mem_get_info on CUDA) patched to lie between the two pairs'
    predictions: the big pair is refused before it starts, the small one is fused."""
    probe = wrap_unet(guided_diffusion.create_model(**{**yaml.safe_load(TINY_MODEL_CONFIG.read_text()),
                                                       "model_path": str(TINY_WEIGHTS)}),
                      torch.device("cpu"), "fp32")
    small, big = (memory.plan_peak(probe, s[0], s[1]) for s in ((32, 32), (96, 128)))
    free = (small.activations + big.activations) // 2
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    code, record = run_two_sizes(tmp_path)
    assert code == 1
    assert set(record["fused"]) == {"small"} and set(record["failed"]) == {"big"}
    (line,) = error_lines(capsys)
    assert line.startswith("error: big: 96x128 (batch 1) does not fit on cpu: predicted peak ")
    assert f"{memory.gib(big.total)} ({memory.gib(big.weights)} weights, already loaded" in line
    assert f"{memory.gib(free)} free; try dtype: bf16 (" in line
    assert line == "error: " + record["failed"]["big"]


def test_out_of_memory_mid_pair_fails_that_pair_in_one_line(tmp_path, capsys, monkeypatch):
    real, released = fusion.ddfm_sample, []

    def runs_out(model, diffusion, a, b, **kwargs):
        if a.shape[-2:] == (96, 128):
            big = torch.empty(1000)  # noqa: F841  a tensor the error's frames hold
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has "
                                         "a total capacity of 79.10 GiB\nof which 1.2 GiB is free.")
        return real(model, diffusion, a, b, **kwargs)

    monkeypatch.setattr(fusion, "ddfm_sample", runs_out)
    monkeypatch.setattr(memory, "release", lambda device: released.append(str(device)))
    code, record = run_two_sizes(tmp_path, "dtype=bf16", "channels_last=true")
    assert code == 1 and released == ["cpu"]
    assert set(record["fused"]) == {"small"} and set(record["failed"]) == {"big"}
    (line,) = error_lines(capsys)
    assert line.startswith("error: big: 96x128 (batch 1) ran out of memory on cpu (predicted peak ")
    assert "free memory unknown); try smaller images or a card with more free memory" in line


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    assert memory.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert memory.is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not memory.is_out_of_memory(RuntimeError("Expected canUse32BitIndexMath(input)"))


def test_the_python_api_raises_the_same_line(monkeypatch):
    import numpy as np

    import ddfm

    fuser = ddfm.load_fuser(model_config=TINY_MODEL_CONFIG, model_path=str(TINY_WEIGHTS), prior="adm",
                            device="cpu", timestep_respacing=2, log=lambda message: None)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    with pytest.raises(memory.DeviceMemoryError, match=r"^32x32 \(batch 1\) does not fit on cpu: "):
        fuser.fuse(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8))


@pytest.mark.parametrize("dtype, channels_last", [("bf16", True), ("fp32", False)])
def test_largest_square_under_a_cap(dtype, channels_last):
    """What gpu_check's fit rows print as "planned": the largest /32 square whose plan fits."""
    model = adm_prior(dtype, channels_last)
    for cap_gib in (12, 24):
        side = memory.largest_square(model, cap_gib * memory.GIB, device="cuda")
        assert side % 32 == 0 and side > 1000
        assert memory.plan_peak(model, side, side, device="cuda").total <= cap_gib * memory.GIB
        assert memory.plan_peak(model, side + 32, side + 32, device="cuda").total > cap_gib * memory.GIB
