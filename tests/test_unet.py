"""The ADM UNet against the original implementation's goldens (tests/golden/README.md §1-§2).

Goldens come from OpenAI guided-diffusion at commit 22e0df8, run on CPU in float32. Our numbers
differ from them only by float rounding of the host's BLAS / exp kernels (~1e-6).
"""
import json
import math
from pathlib import Path

import pytest
import torch

from guided_diffusion import create_model
from guided_diffusion.nn import timestep_embedding
from guided_diffusion.unet import qkv_attention

GOLDEN = Path(__file__).parent / "golden"

# The official DDFM model YAML (configs/model_config_imagenet.yaml), minus model_path.
ADM256_UNCOND = dict(
    image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True,
    class_cond=False, use_checkpoint=False, attention_resolutions="32,16,8", num_heads=4,
    num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
    resblock_updown=True, use_fp16=False, use_new_attention_order=False,
)
MODEL_KEYS = tuple(ADM256_UNCOND)


def tiny_config(**overrides):
    cfg = json.loads((GOLDEN / "tiny_unet_config.json").read_text())
    return dict({k: cfg[k] for k in MODEL_KEYS}, **overrides)


def load_tiny(**overrides):
    model = create_model(**tiny_config(**overrides))
    state = torch.load(GOLDEN / "tiny_unet_state_dict.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def tiny_io():
    return torch.load(GOLDEN / "tiny_unet_io.pt", weights_only=True)


def read_reference_layout():
    """[(name, shape, runtime dtype column)] from adm256_uncond_state_dict.txt, in file order."""
    rows = []
    for line in (GOLDEN / "adm256_uncond_state_dict.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, _, runtime = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), runtime))
    return rows


def test_full_256_uncond_layout_equals_checkpoint_on_meta():
    with torch.device("meta"):
        model = create_model(**ADM256_UNCOND)
    assert all(p.is_meta for p in model.parameters())
    ours = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    reference = [(name, shape) for name, shape, _ in read_reference_layout()]
    assert len(reference) == 566
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == 552_814_086
    assert not list(model.buffers())
    assert not model.training


def test_full_256_fp16_conversion_halves_exactly_the_reference_set():
    with torch.device("meta"):
        model = create_model(**dict(ADM256_UNCOND, use_fp16=True))
    halved = {name for name, p in model.named_parameters() if p.dtype == torch.float16}
    expected = {name for name, _, runtime in read_reference_layout() if runtime == "fp16_at_runtime"}
    assert halved == expected
    assert sum(p.numel() for name, p in model.named_parameters() if name in halved) == 498_331_136


def test_tiny_unet_matches_reference_outputs(tiny_io):
    model = load_tiny()
    with torch.no_grad():
        out = model(tiny_io["x"], tiny_io["timesteps"])
        out_rect = model(tiny_io["x_rect"], tiny_io["timesteps_rect"])
    assert out.shape == (2, 6, 32, 32) and out_rect.shape == (1, 6, 24, 40)
    torch.testing.assert_close(out, tiny_io["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_rect, tiny_io["out_rect"], atol=1e-5, rtol=1e-5)


def test_timestep_embedding_matches_reference(tiny_io):
    ts = tiny_io["temb_timesteps"]
    torch.testing.assert_close(timestep_embedding(ts, 32), tiny_io["temb_dim32"], atol=1e-6, rtol=0)
    torch.testing.assert_close(timestep_embedding(ts, 33), tiny_io["temb_odd_dim33"], atol=1e-6, rtol=0)
    assert (timestep_embedding(ts, 33)[:, -1] == 0).all()
    torch.testing.assert_close(timestep_embedding(tiny_io["temb_frac_timesteps"], 32),
                               tiny_io["temb_frac_dim32"], atol=1e-6, rtol=0)
    # dim 256: cos(t*f) amplifies a 1-ulp difference in the float32 frequency f (different exp
    # kernels round a few of the 128 frequencies differently) by t, so allow 2 ulp of the
    # argument t*f: 2 * t * 2^-23. For t <= 10 this is still below 1e-5.
    ours = timestep_embedding(ts, 256)
    tol = 1e-6 + 2 * ts.double()[:, None] * 2.0 ** -23
    assert ((ours.double() - tiny_io["temb_dim256"].double()).abs() <= tol).all()


def legacy_einsum_attention(qkv, num_heads):
    """The original QKVAttentionLegacy maths: q, k scaled by ch^-1/4, explicit softmax weights."""
    bs, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = qkv.reshape(bs * num_heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


@pytest.mark.parametrize("heads,ch,tokens", [(2, 16, 64), (4, 64, 35), (1, 32, 7)])
def test_sdpa_attention_equals_legacy_einsum(heads, ch, tokens):
    gen = torch.Generator().manual_seed(heads * 100 + ch)
    qkv = 3 * torch.randn(2, 3 * heads * ch, tokens, generator=gen)
    # The blockwise (flash) softmax rescales partial sums, so it rounds differently from the dense
    # softmax: ~1e-5 on these deliberately large logits (|q.k|/sqrt(ch) up to ~30), the golden's
    # tolerance for whole-network outputs.
    torch.testing.assert_close(qkv_attention(qkv, heads, legacy_order=True),
                               legacy_einsum_attention(qkv, heads), atol=2e-5, rtol=1e-4)


def test_new_attention_order_is_qkv_thirds_then_heads():
    heads, ch = 4, 16
    qkv = torch.randn(2, 3 * heads * ch, 20, generator=torch.Generator().manual_seed(5))
    # Re-ordering the thirds-first layout into per-head q|k|v blocks must give the legacy result.
    per_head = qkv.reshape(2, 3, heads, ch, 20).transpose(1, 2).reshape(2, 3 * heads * ch, 20)
    torch.testing.assert_close(qkv_attention(qkv, heads, legacy_order=False),
                               qkv_attention(per_head, heads, legacy_order=True))


def test_new_attention_order_model_runs_and_differs(tiny_io):
    model = load_tiny(use_new_attention_order=True)
    with torch.no_grad():
        out = model(tiny_io["x"], tiny_io["timesteps"])
    assert out.shape == tiny_io["out"].shape and torch.isfinite(out).all()
    # The checkpoint's layout is legacy; reading it in the new order is a large, visible error.
    assert (out - tiny_io["out"]).abs().max() > 0.1


def test_fp16_path_runs_close_to_fp32(tiny_io):
    model = load_tiny(use_fp16=True)
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.time_embed[0].weight.dtype == torch.float32
    with torch.no_grad():
        out = model(tiny_io["x"][:1], tiny_io["timesteps"][:1])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, tiny_io["out"][:1], atol=2e-2, rtol=2e-2)


def test_non_square_input_and_scalar_timestep():
    model = load_tiny()
    x = torch.randn(1, 3, 8, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([7])), model(x, 7))


def test_create_model_parses_list_and_int_forms():
    with torch.device("meta"):
        as_strings = create_model(**tiny_config())
        as_lists = create_model(**tiny_config(attention_resolutions=[16, 8], channel_mult=(1, 1, 2)))
        single = create_model(**tiny_config(attention_resolutions=16))
    shapes = [(k, v.shape) for k, v in as_strings.state_dict().items()]
    assert shapes == [(k, v.shape) for k, v in as_lists.state_dict().items()]
    assert as_strings.attention_resolutions == (2, 4) and single.attention_resolutions == (2,)


def test_create_model_rejects_unknown_key():
    with pytest.raises(TypeError, match="num_chanels"):
        with torch.device("meta"):
            create_model(**ADM256_UNCOND, num_chanels=128)


def test_create_model_rejects_unsupported_image_size_without_channel_mult():
    with pytest.raises(ValueError, match="channel_mult"):
        with torch.device("meta"):
            create_model(**dict(ADM256_UNCOND, image_size=100))


def test_use_checkpoint_gives_the_same_values_and_gradients():
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    grads = []
    for flag in (False, True):
        model = load_tiny(use_checkpoint=flag)
        model(x, torch.tensor([50])).square().sum().backward()
        grads.append(model.input_blocks[1][0].in_layers[2].weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_class_cond_adds_label_embedding():
    with torch.device("meta"):
        model = create_model(**tiny_config(class_cond=True))
    assert tuple(model.label_emb.weight.shape) == (1000, 128)


def test_attention_never_materialises_the_score_matrix():
    """qkv_attention runs SDPA's blockwise (flash) kernel, not the [T, T] math fallback."""
    from guided_diffusion.unet import qkv_attention

    qkv = torch.randn(1, 3 * 2 * 16, 4096)
    with torch.profiler.profile() as prof:
        qkv_attention(qkv, num_heads=2, legacy_order=True)
    names = {event.key for event in prof.key_averages()}
    assert any("flash_attention" in name for name in names), sorted(names)
    assert "aten::softmax" not in names and "aten::_softmax" not in names
