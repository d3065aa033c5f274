"""CCF in the product: the preset's exact command against the released outputs, batching, resume,
the settings guard, the record JSON and the report strip (tiny UNet, small crops, few steps)."""
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import ddfm
import sample
from ddfm.methods.ccf import record as ccf_record
from helpers import GOLDEN, ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png
from test_save_folder import error_lines, main as ddfm_main, start_held, stop

CCF_GOLDEN = GOLDEN / "ccf"
PRESET = ROOT / "configs" / "fusion_ccf.yaml"
# The command of the issue, from a fresh clone: preset + tiny model, respacing 10, seed 3407.
EXACT = ["--fusion_config", str(PRESET), "--model_config", "tests/golden/tiny_model_config.yaml",
         "prior=adm", "timestep_respacing=10", "seed=3407", "device=cpu"]
TINY_CCF = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
            "timestep_respacing=3", "device=cpu", "method=ccf", "--quiet"]


def share_within_one_level(ours, reference):
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.mean(np.abs(ours.astype(int) - reference.astype(int)) <= 1))


@pytest.fixture(scope="module")
def golden_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("ccf_golden") / "in"
    for mod, name in (("ir", "input_ir_01_64.png"), ("vi", "input_vi_01_64.png")):
        (root / mod).mkdir(parents=True)
        shutil.copy(CCF_GOLDEN / name, root / mod / "01.png")
    return root


def test_preset_command_reproduces_the_released_recon_color(golden_pair, tmp_path):
    """The exact command of the issue (a child process in the project folder, as a user runs
    it): its image equals the released recon_color within 1 grey level on >= 99.9 % of pixels."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "sample.py", *EXACT, "--input_dir", str(golden_pair),
                           "--save_dir", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = read_png(out / "recon" / "01.png")
    released = read_png(CCF_GOLDEN / "official_recon_color_01.png")
    assert share_within_one_level(ours, released) >= 0.999
    assert json.loads((out / "run.json").read_text())["fingerprint"]["method"] == "ccf"


def test_color_rgb_reproduces_the_released_recon(golden_pair):
    fuser = ddfm.load_fuser(fusion_config=PRESET, model_config=TINY_MODEL_CONFIG,
                            model_path=str(TINY_WEIGHTS), prior="adm", timestep_respacing=10,
                            device="cpu", color="rgb", log=lambda m: None)
    ours = fuser.fuse(read_png(golden_pair / "ir" / "01.png"), read_png(golden_pair / "vi" / "01.png"))
    released = read_png(CCF_GOLDEN / "official_recon_01.png")
    assert share_within_one_level(ours, released) >= 0.999


def tiny_fuser(**keys):
    return ddfm.load_fuser(model_config=TINY_MODEL_CONFIG, model_path=str(TINY_WEIGHTS), prior="adm",
                           timestep_respacing=3, device="cpu", method="ccf", log=lambda m: None, **keys)


@pytest.mark.parametrize("size", ["pad", "official"])
def test_batch_of_two_equals_two_single_runs(size):
    """Per-image guidance state (Adam moments, GradNorm weights, L0): a batch is its singles."""
    from ddfm.io import source_from_array
    fuser = tiny_fuser(size=size, color="rgb")
    pairs = [tuple(source_from_array(x, n) for x, n in zip(random_pair(seed, 40, 70, colour_b=True), "ab"))
             for seed in (1, 2)]
    batch = fuser.fuse_batch(pairs)
    for pair, image in zip(pairs, batch):
        np.testing.assert_array_equal(image, fuser.fuse_batch([pair])[0])
    assert batch[0].shape == ((40, 70, 3) if size == "pad" else (32, 64, 3))
    assert not np.array_equal(batch[0], batch[1])


def test_killed_ccf_run_resumes_to_the_uninterrupted_result(tmp_path):
    stems = {f"c{k}": random_pair(70 + k, 32, 48, colour_b=True) for k in range(3)}
    inputs = make_dataset(tmp_path / "in", stems)
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert ddfm_main(inputs, clean, *TINY_CCF) == 0
    proc = start_held(inputs, out, 2, *TINY_CCF)
    assert stop(proc, signal.SIGKILL)[0] == -signal.SIGKILL
    assert ddfm_main(inputs, out, *TINY_CCF) == 0
    for stem in stems:
        np.testing.assert_array_equal(read_png(out / "recon" / f"{stem}.png"),
                                      read_png(clean / "recon" / f"{stem}.png"))
    record = json.loads((out / "run.json").read_text())
    assert record["counts"]["skipped"] == 2 and record["counts"]["fused"] == 1


def test_ddfm_folder_resumed_with_method_ccf_is_refused_with_one_line(tmp_path, capsys):
    inputs = make_dataset(tmp_path / "in", {"d0": random_pair(5, 32, 32)})
    out = tmp_path / "out"
    tiny = [a for a in TINY_CCF if a != "method=ccf"]
    assert ddfm_main(inputs, out, *tiny) == 0
    capsys.readouterr()
    assert ddfm_main(inputs, out, *TINY_CCF) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "fused with other settings" in lines[0] and "method" in lines[0]


@pytest.mark.parametrize("override, words", [
    ("ccf_conditions=[ssim,nonsense]", "nonsense"), ("ccf_topk=9", "topk"), ("ccf_topk=0", "topk"),
    ("ccf_lr=0", "lr"), ("ccf_lr=.nan", "lr"), ("ccf_lr=-0.1", "lr"),
    ("size=official method=ddfm", "method: ccf"), ("color=visible method=ddfm", "method: ccf")])
def test_bad_ccf_settings_are_one_line_and_exit_2(tmp_path, capsys, override, words):
    inputs = make_dataset(tmp_path / "in", {"e0": random_pair(6, 32, 32)})
    args = [a for a in TINY_CCF if not (a == "method=ccf" and "method=" in override)]
    code = sample.main(["--input_dir", str(inputs), "--save_dir", str(tmp_path / "out"), *args,
                        *override.split()])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_record_writes_frames_and_the_per_step_conditions(tmp_path):
    inputs = make_dataset(tmp_path / "in", {"r0": random_pair(8, 32, 48, colour_b=True)})
    out = tmp_path / "out"
    assert ddfm_main(inputs, out, *TINY_CCF, "record=true", "report=true") == 0
    frames = sorted((out / "progress" / "r0").glob("x_*.png"))
    assert [f.name for f in frames] == ["x_0000.png", "x_0001.png", "x_0002.png"]
    assert read_png(frames[0]).shape == (32, 48)
    data = json.loads((out / "progress" / "r0.json").read_text())
    from ddfm.methods.ccf.conditions import CONDITION_NAMES
    assert data["stem"] == "r0" and data["conditions"] == list(CONDITION_NAMES)
    steps = data["steps"]
    assert [s["i"] for s in steps] == [2, 1, 0] and [s["t"] for s in steps] == [999, 500, 0]
    for step in steps:
        assert len(step["selected"]) == 3 and len(set(step["selected"])) == 3
        assert all(0 <= c < len(CONDITION_NAMES) for c in step["selected"])
        assert len(step["losses"]) == len(step["w_before"]) == len(step["w_after"]) == len(CONDITION_NAMES)
        assert sum(step["w_after"]) == pytest.approx(len(CONDITION_NAMES), rel=1e-5)  # GradNorm's renormalisation
        # The selection is the top-k of the weights carried into the step.
        ranked = np.argsort(-np.array(step["w_before"]), kind="stable")[:3]
        assert set(step["selected"]) == set(ranked.tolist()) or steps.index(step) == 0
    assert steps[0]["w_before"] == [1.0] * len(CONDITION_NAMES)
    assert steps[1]["w_before"] == steps[0]["w_after"]
    strip = ccf_record.condition_strip(data)
    html = (out / "report" / "index.html").read_text()
    assert 'table class="strip" data-stem="r0"' in html
    assert html.count('class="on"') == sum(row["count"] for row in strip["rows"]) == 9


def test_ccf_keys_are_the_core_settings_with_the_released_defaults():
    from dataclasses import fields

    from ddfm.config import fusion_defaults, read_yaml
    from ddfm.methods.ccf import IO_KEYS, KEYS as CCF_DEFAULTS
    from ddfm.methods.ccf.guidance import CCFSettings, settings_from_fusion
    defaults = {f.name: f.default for f in fields(CCFSettings)}
    for key, value in CCF_DEFAULTS.items():
        if key not in IO_KEYS:
            assert defaults[key[len("ccf_"):]] == (tuple(value) if isinstance(value, list) else value), key
    assert settings_from_fusion(fusion_defaults()) == CCFSettings()
    yaml_values = read_yaml(ROOT / "configs" / "fusion_config.yaml")
    assert {k: yaml_values[k] for k in CCF_DEFAULTS} == CCF_DEFAULTS


def test_ccf_without_checkpoint_has_the_same_guard_as_ddfm(tmp_path, capsys):
    inputs = make_dataset(tmp_path / "in", {"g0": random_pair(9, 32, 32)})
    missing = [a if not a.startswith("model_path=") else f"model_path={tmp_path / 'none.pt'}" for a in TINY_CCF]
    code = sample.main(["--input_dir", str(inputs), "--save_dir", str(tmp_path / "out"), *missing])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "none.pt" in lines[0]
    auto = [a for a in missing if a != "prior=adm"] + ["prior=auto"]
    assert sample.main(["--input_dir", str(inputs), "--save_dir", str(tmp_path / "out2"), *auto]) == 0
    assert "PRIOR-FREE" in capsys.readouterr().err
