"""Checkpoint loading fails loudly and clearly; it never leaves random or half-loaded weights."""
import ast
import math

import pytest
import torch
from torch import nn

from guided_diffusion import checkpoint as ckpt
from guided_diffusion.checkpoint import CheckpointError, load_checkpoint, load_state_dict_file, verify_checkpoint

GOLDEN_KEYS = "adm256_uncond_state_dict.txt"


class TinyNet(nn.Module):
    """A small stand-in for the UNet: conv, norm with buffers, linear."""

    def __init__(self, channels=4, extra=False):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, 2)
        if extra:
            self.extra = nn.Linear(2, 2)


class Payload:
    """Pickles as a call to open(); weights_only loading must refuse it without calling it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def seeded_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    net = TinyNet(**kwargs)
    with torch.no_grad():
        net.norm.running_mean.uniform_()  # non-default buffers, so loading them is visible
    return net


def saved(tmp_path, net, name="tiny.pt"):
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


def assert_one_line(err):
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text


def test_roundtrip_loads_every_tensor(tmp_path):
    source = seeded_net(0)
    path = saved(tmp_path, source)
    target = seeded_net(1)
    assert not torch.equal(target.conv.weight, source.conv.weight)
    assert load_checkpoint(target, path) is target
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_state_dict_file_returns_plain_cpu_tensors(tmp_path):
    path = saved(tmp_path, seeded_net(0))
    state = load_state_dict_file(str(path))  # str paths are fine too
    assert set(state) == set(TinyNet().state_dict())
    assert all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in state.values())


def test_model_dtype_is_kept(tmp_path):
    path = saved(tmp_path, seeded_net(0))
    target = seeded_net(1).to(torch.float64)
    load_checkpoint(target, path)
    assert target.conv.weight.dtype == torch.float64
    assert torch.allclose(target.conv.weight, seeded_net(0).conv.weight.double())


def test_meta_device_model_gets_real_weights(tmp_path):
    path = saved(tmp_path, seeded_net(0))
    with torch.device("meta"):
        target = TinyNet().half()
    load_checkpoint(target, path)
    assert not target.conv.weight.is_meta
    assert target.conv.weight.dtype == torch.float16
    assert torch.equal(target.conv.weight, seeded_net(0).conv.weight.half())
    assert target.conv.weight.requires_grad  # still a Parameter of the module


def test_missing_file_says_where_how_and_alternative(tmp_path):
    path = tmp_path / "models" / ckpt.CHECKPOINT_FILENAME
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(TinyNet(), path)
    text = str(info.value)
    assert_one_line(info.value)
    assert str(path) in text
    assert ckpt.CHECKPOINT_URL in text
    assert "python -m guided_diffusion.download" in text
    assert "prior=none" in text


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_state_dict_file(tmp_path)


def test_truncated_file(tmp_path):
    path = saved(tmp_path, seeded_net(0), ckpt.CHECKPOINT_FILENAME)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    text = str(info.value)
    assert_one_line(info.value)
    assert str(path) in text and "truncated" in text and "re-download" in text
    assert f"{len(data) // 2:,} bytes" in text
    assert f"expected {ckpt.EXPECTED_SIZE_BYTES:,} bytes" in text  # the official name gets the expected size
    assert "--force" in text  # the downloader would otherwise keep the broken file


def test_truncated_legacy_format_file(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(seeded_net(0).state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert_one_line(info.value)
    assert "legacy-format" in str(info.value) and str(path) in str(info.value)


def test_legacy_format_file_loads(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(seeded_net(0).state_dict(), path, _use_new_zipfile_serialization=False)
    target = seeded_net(1)
    load_checkpoint(target, path)
    assert torch.equal(target.head.weight, seeded_net(0).head.weight)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict_file(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x13" + bytes(torch.randint(0, 256, (4095,), generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.uint8).tolist()))
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert_one_line(info.value)
    assert "not a PyTorch checkpoint" in str(info.value)


def test_html_error_page_is_named(tmp_path):
    path = tmp_path / "page.pt"
    path.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(CheckpointError, match="HTML"):
        load_state_dict_file(path)


@pytest.mark.parametrize("content, words", [
    ([torch.zeros(2)], "contains a list"),
    ({}, "empty dict"),
    ({"w": torch.zeros(2), "step": 10}, "maps 'step' to a int"),
    ({0: torch.zeros(2)}, "non-string key"),
    ({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, "weights under key 'state_dict'"),
    ({"model": {"w": torch.zeros(2)}}, "weights under key 'model'"),
])
def test_not_a_state_dict(tmp_path, content, words):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert_one_line(info.value)
    assert words in str(info.value) and str(path) in str(info.value)


def test_arbitrary_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "was_called"
    path = tmp_path / "hostile.pt"
    torch.save({"conv.weight": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert_one_line(info.value)
    assert "weights_only" in str(info.value) and "open" in str(info.value)
    assert not marker.exists()


def test_python_objects_in_a_legacy_format_file_are_named_as_such(tmp_path):
    """torch 2.13 refuses them with the same words in the legacy (pre-1.6) pickle format, which
    used to be reported as an unreadable file to re-download."""
    marker = tmp_path / "was_called"
    path = tmp_path / "hostile_legacy.pt"
    torch.save({"conv.weight": Payload(str(marker))}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert_one_line(info.value)
    assert "contains Python objects other than tensors" in str(info.value) and "open" in str(info.value)
    assert "re-download" not in str(info.value) and not marker.exists()


def test_extra_layer_in_model_lists_missing_keys(tmp_path):
    path = saved(tmp_path, seeded_net(0))
    target = seeded_net(1, extra=True)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    text = str(info.value)
    assert_one_line(info.value)
    assert "2 missing, 0 unexpected, 0 with another shape" in text
    assert "extra.weight (2, 2)" in text and "extra.bias (2,)" in text and "TinyNet" in text
    # Nothing was copied: the model is exactly as before the failed load.
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_extra_layer_in_file_lists_unexpected_keys(tmp_path):
    path = saved(tmp_path, seeded_net(0, extra=True))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(seeded_net(1), path)
    assert "0 missing, 2 unexpected" in str(info.value)
    assert "unexpected in file: extra.weight (2, 2), extra.bias (2,)" in str(info.value)


def test_wrong_shapes_are_listed_with_both_shapes(tmp_path):
    path = saved(tmp_path, seeded_net(0, channels=8))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(seeded_net(1, channels=4), path)
    text = str(info.value)
    assert_one_line(info.value)
    assert "conv.weight file (8, 3, 3, 3) vs model (4, 3, 3, 3)" in text
    assert "+" in text and "more" in text  # 8 mis-shaped tensors, only the first few are listed


def test_verify_checkpoint_counts(tmp_path):
    net = seeded_net(0)
    path = saved(tmp_path, net)
    state = net.state_dict()
    n_params = sum(t.numel() for t in state.values())
    assert verify_checkpoint(path, len(state), n_params) == (len(state), n_params)
    with pytest.raises(CheckpointError, match=f"has {len(state)} tensors, expected 566"):
        verify_checkpoint(path)  # the ADM defaults
    with pytest.raises(CheckpointError, match="parameters, expected"):
        verify_checkpoint(path, None, n_params + 1)


def test_verify_checkpoint_finds_nan(tmp_path):
    net = seeded_net(0)
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    path = saved(tmp_path, net)
    with pytest.raises(CheckpointError, match="NaN/Inf values in 1 tensors \\(head.bias\\)"):
        verify_checkpoint(path, None, None)


def read_golden_keys(golden_dir):
    """Parse the golden key list: (name, shape) for each non-comment line."""
    entries = []
    for line in (golden_dir / GOLDEN_KEYS).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split("\t")[:2]
        entries.append((name, ast.literal_eval(shape)))
    return entries


def test_constants_match_the_golden_key_list(golden_dir):
    entries = read_golden_keys(golden_dir)
    assert len(entries) == ckpt.EXPECTED_NUM_TENSORS == 566
    assert len({name for name, _ in entries}) == len(entries)
    assert sum(math.prod(shape) for _, shape in entries) == ckpt.EXPECTED_NUM_PARAMS == 552_814_086


def test_size_constant_fits_an_all_float32_file():
    # 4 bytes per parameter plus a little zip/pickle overhead (well under 1 %).
    overhead = ckpt.EXPECTED_SIZE_BYTES - 4 * ckpt.EXPECTED_NUM_PARAMS
    assert 0 < overhead < 0.01 * ckpt.EXPECTED_SIZE_BYTES


def test_constants_are_consistent():
    assert ckpt.CHECKPOINT_URL.endswith("/" + ckpt.CHECKPOINT_FILENAME)
    assert ckpt.DEFAULT_CHECKPOINT_PATH == "models/256x256_diffusion_uncond.pt"
    assert ckpt.EXPECTED_SHA256 is None or len(ckpt.EXPECTED_SHA256) == 64


def test_checkpoint_status(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_FILENAME
    assert ckpt.checkpoint_status(path) == "missing"
    path.write_bytes(b"x")
    assert ckpt.checkpoint_status(path) == "wrong-size"
    other = tmp_path / "other.pt"
    other.write_bytes(b"x")
    assert ckpt.checkpoint_status(other) == "ok"


def test_command_line_help_path_and_exit_codes(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "guided_diffusion.checkpoint", "--help"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "PATH" in proc.stdout
    assert ckpt.DEFAULT_CHECKPOINT_PATH in proc.stdout
    # A missing file and a file of another model: exit 1, one line.
    assert ckpt.main([str(tmp_path / "absent.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: checkpoint not found") and "absent.pt" in err
    assert ckpt.main([str(saved(tmp_path, seeded_net()))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected 566" in err
    # No PATH: the default path is checked; a good file exits 0.
    checked = []
    monkeypatch.setattr(ckpt, "verify_checkpoint", lambda path: checked.append(path) or (566, 10))
    assert ckpt.main([]) == 0
    assert checked == [ckpt.DEFAULT_CHECKPOINT_PATH] and "566 tensors" in capsys.readouterr().out


def test_relative_model_path_is_found_under_ddfm_home_and_the_message_names_every_place(tmp_path, monkeypatch):
    from ddfm.prior import resolve_prior

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.delenv(ckpt.HOME_ENV, raising=False)
    assert "$DDFM_HOME not set" in ckpt.missing_file_message(ckpt.DEFAULT_CHECKPOINT_PATH)
    monkeypatch.setenv(ckpt.HOME_ENV, str(home))
    message = ckpt.missing_file_message(ckpt.DEFAULT_CHECKPOINT_PATH)
    assert f"nor under $DDFM_HOME={home}" in message and "models/ under the working directory" in message
    assert "model_path" in message and "\n" not in message
    assert ckpt.locate_checkpoint(ckpt.DEFAULT_CHECKPOINT_PATH) == ckpt.DEFAULT_CHECKPOINT_PATH  # nowhere: as given

    in_home = home / ckpt.DEFAULT_CHECKPOINT_PATH
    in_home.parent.mkdir(parents=True)
    in_home.write_bytes(b"weights")
    assert ckpt.locate_checkpoint(ckpt.DEFAULT_CHECKPOINT_PATH) == str(in_home)
    assert resolve_prior("auto", ckpt.DEFAULT_CHECKPOINT_PATH) == ("adm", f"prior: {in_home}")
    in_cwd = tmp_path / ckpt.DEFAULT_CHECKPOINT_PATH  # the working directory comes first
    in_cwd.parent.mkdir(parents=True)
    in_cwd.write_bytes(b"weights")
    assert ckpt.locate_checkpoint(ckpt.DEFAULT_CHECKPOINT_PATH) == ckpt.DEFAULT_CHECKPOINT_PATH
    assert ckpt.locate_checkpoint(str(tmp_path / "absent.pt")) == str(tmp_path / "absent.pt")  # absolute: as given
