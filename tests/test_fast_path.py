"""The GPU fast paths, checked on the CPU: device-resident schedule tables, a step that compiles as
one graph, bf16/fp16 weights cast once (equal to autocast within tolerance), pre-drawn noise."""
import pytest
import torch
import yaml

import guided_diffusion
from ddfm.config import ConfigError, fusion_defaults, validate_fusion
from ddfm.methods.ddfm.sampling import Rectifier, StepFunction, StepNoise, per_image_noise, seeded_generators
from ddfm.prior import PriorModel
from guided_diffusion.gaussian_diffusion import DEVICE_TABLES, extract_into_tensor
from helpers import TINY_MODEL_CONFIG, TINY_WEIGHTS


def tiny_unet():
    config = yaml.safe_load(TINY_MODEL_CONFIG.read_text()) | {"model_path": str(TINY_WEIGHTS)}
    return guided_diffusion.create_model(**config)


def sampler(kind="ddim", respacing="4"):
    return guided_diffusion.create_sampler(sampler=kind, steps=1000, timestep_respacing=respacing)


def test_device_tables_equal_the_host_arithmetic():
    diffusion = sampler("ddpm", "10").tables_to("cpu")
    t = torch.tensor([0, 3, 9])
    for name in DEVICE_TABLES:
        expected = extract_into_tensor(getattr(diffusion, name), t, (3, 3, 4, 4))
        assert torch.equal(diffusion.coef(name, t, (3, 3, 4, 4)), expected), name


def test_a_sampling_step_makes_no_host_table_copy(monkeypatch):
    """After tables_to, a DDIM and a DDPM step (timestep map included) never convert a host table."""
    model = lambda x, t: torch.cat([x * 0.1, x * 0], dim=1)  # noqa: E731
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 2])
    for kind in ("ddim", "ddpm"):
        diffusion = sampler(kind).tables_to("cpu")
        calls = []
        real = torch.from_numpy
        monkeypatch.setattr(torch, "from_numpy", lambda a: calls.append(a) or real(a))
        diffusion.sample_step(model, x, t, rectify_fn=lambda x0, t: x0 * 0.5, noise=torch.randn_like(x))
        monkeypatch.undo()
        assert calls == [], kind


def test_the_whole_step_compiles_as_one_graph_without_breaks():
    """UNet + x0 + EM + DDPM update (the paper variant; the official DDIM step is checked by the
    gpu_check dry run): one graph, zero graph breaks."""
    model, diffusion = PriorModel(tiny_unet()), sampler("ddpm").tables_to("cpu")
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(1, 1, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    step = StepFunction(model, diffusion)
    x = torch.randn(1, 3, 32, 32, generator=gen)
    t = torch.full((1,), 3, dtype=torch.long)
    with torch.no_grad():
        explained = torch._dynamo.explain(step._step)(x, t, torch.randn_like(x), Rectifier("paper", a, b))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_weights_cast_once_match_autocast(dtype, torch_dtype):
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 300])
    try:
        with torch.no_grad():
            exact = PriorModel(tiny_unet())(x, t)
            autocast = PriorModel(tiny_unet(), dtype=f"{dtype}-autocast")(x, t)
            cast_model = PriorModel(tiny_unet(), dtype=dtype)
            cast_once = cast_model(x, t)
    except RuntimeError as err:
        pytest.skip(f"torch {torch.__version__} lacks a CPU {dtype} kernel: {err}")
    unet = cast_model.unet
    assert unet.input_blocks[1][0].in_layers[2].weight.dtype == torch_dtype
    assert unet.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # GroupNorm affine
    assert unet.out[2].weight.dtype == torch.float32 and cast_once.dtype == torch.float32
    scale = exact.abs().max().item()
    err_autocast = (autocast - exact).abs().max().item()
    err_cast = (cast_once - exact).abs().max().item()
    # Both are reduced-precision versions of the same network: close to fp32, and to each other.
    assert 0 < err_cast < 0.03 * scale and 0 < err_autocast < 0.03 * scale
    assert (cast_once - autocast).abs().max().item() < 0.03 * scale


def test_step_noise_draws_what_per_step_draws_would():
    ahead = StepNoise(seeded_generators(9, 2), (3, 8, 8), "cpu", steps=3)
    plain = seeded_generators(9, 2)
    for _ in range(3):
        noise = ahead.take()
        ahead.prefetch()
        assert torch.equal(noise, per_image_noise(plain, (3, 8, 8), "cpu"))
    assert ahead.take() is None  # exactly one draw per step, none beyond


@pytest.mark.parametrize("value, expected", [(True, "unet"), (False, "none"), ("step", "step"),
                                             ("graph", "graph"), ("UNET", "unet")])
def test_compile_key_accepts_modes_and_the_old_booleans(value, expected):
    fusion = dict(fusion_defaults(), compile=value, dtype="bf16-autocast")
    assert validate_fusion(fusion)["compile"] == expected


def test_compile_key_rejects_unknown_modes():
    with pytest.raises(ConfigError, match="compile='fast' is not one of none, unet, step, graph"):
        validate_fusion(dict(fusion_defaults(), compile="fast"))


def test_compile_step_config_builds_one_compiled_step_for_the_fuser():
    """`compile: step` reaches the sampling loop: the Fuser holds one compiled StepFunction."""
    import ddfm
    fuser = ddfm.load_fuser(model_config=TINY_MODEL_CONFIG, model_path=str(TINY_WEIGHTS), prior="adm",
                            device="cpu", compile="step", log=lambda message: None)
    assert isinstance(fuser.step, StepFunction) and fuser.step.model is fuser.model
    assert fuser.step.run != fuser.step._step  # the torch.compile wrapper, built once
