"""sample.py as a user meets it: outputs, resume, colour, sizes, and every bad-input case.

Most cases run the prior-free mode (a second per pair); the cases that need the sampler use the
tiny UNet on 32-64 px images with a few steps.
"""
import json

import numpy as np
import pytest
from PIL import Image

import sample
from helpers import TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png, write_png

TINY = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
        "timestep_respacing=3", "device=cpu"]


def run_cli(tmp_path, *args, input_dir=None, save_dir=None):
    return sample.main(["--input_dir", str(input_dir or tmp_path / "in"),
                        "--save_dir", str(save_dir or tmp_path / "out"), "--quiet", *args])


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "in", {"p1": random_pair(1, 40, 50), "p2": random_pair(2, 40, 50)})


def test_prior_free_run_writes_outputs_and_run_json(tmp_path, dataset, capsys):
    assert run_cli(tmp_path, "prior=none") == 0
    for stem in ("p1", "p2"):
        out = read_png(tmp_path / "out" / "recon" / f"{stem}.png")
        assert out.shape == (40, 50) and out.dtype == np.uint8
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["prior"]["prior"] == "none"
    assert set(record["fused"]) == {"p1", "p2"} and record["failed"] == {}
    assert record["configs"]["fusion"]["prior"] == "none" and record["seed"] == 3407
    assert "prior-free" in capsys.readouterr().err.lower()


def test_auto_prior_without_checkpoint_announces_prior_free(tmp_path, dataset, capsys):
    assert run_cli(tmp_path, f"model_path={tmp_path / 'absent.pt'}") == 0
    assert "PRIOR-FREE" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["prior"]["prior"] == "none"


def test_adm_prior_without_checkpoint_is_one_line_error(tmp_path, dataset, capsys):
    assert run_cli(tmp_path, "prior=adm", f"model_path={tmp_path / 'absent.pt'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.pt" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / "recon" / "p1.png").exists()


def test_resume_skips_existing_outputs_unless_overwrite(tmp_path, dataset):
    assert run_cli(tmp_path, "prior=none") == 0
    marker = np.full((40, 50), 7, np.uint8)
    write_png(tmp_path / "out" / "recon" / "p1.png", marker)
    assert run_cli(tmp_path, "prior=none") == 0
    assert np.array_equal(read_png(tmp_path / "out" / "recon" / "p1.png"), marker)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["skipped"] == ["p1", "p2"]
    assert sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / "out"),
                        "--quiet", "--overwrite", "prior=none"]) == 0
    assert not np.array_equal(read_png(tmp_path / "out" / "recon" / "p1.png"), marker)


def test_tiny_model_pad_keeps_source_size_and_crop_follows_official_rule(tmp_path):
    make_dataset(tmp_path / "in", {"odd": random_pair(3, 45, 70)})
    assert run_cli(tmp_path, *TINY) == 0
    assert read_png(tmp_path / "out" / "recon" / "odd.png").shape == (45, 70)
    assert run_cli(tmp_path, *TINY, "size=crop", save_dir=tmp_path / "crop") == 0
    assert read_png(tmp_path / "crop" / "recon" / "odd.png").shape == (32, 64)


def test_colour_visible_source_gives_colour_output_with_fused_luma(tmp_path):
    a, b = random_pair(4, 40, 48, colour_b=True)
    make_dataset(tmp_path / "in", {"c": (a, b)})
    assert run_cli(tmp_path, "prior=none") == 0
    out = read_png(tmp_path / "out" / "recon" / "c.png")
    assert out.shape == (40, 48, 3)
    assert run_cli(tmp_path, "prior=none", "color=grey", save_dir=tmp_path / "grey") == 0
    grey = read_png(tmp_path / "grey" / "recon" / "c.png")
    assert grey.shape == (40, 48)
    # The colour output's BT.601 luma is the grey fusion (up to rounding and gamut clipping).
    luma = out.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.median(np.abs(luma - grey)) <= 1.0
    # Its chroma is the visible source's.
    def chroma(rgb):
        rgb = rgb.astype(float)
        return -0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    assert np.corrcoef(chroma(out).ravel(), chroma(b).ravel())[0, 1] > 0.9


def test_record_writes_every_step_and_a_gif(tmp_path):
    make_dataset(tmp_path / "in", {"r": random_pair(5, 32, 32)})
    assert run_cli(tmp_path, *TINY, "record=true") == 0
    frames = sorted((tmp_path / "out" / "progress" / "r").glob("x_*.png"))
    assert [f.name for f in frames] == ["x_0000.png", "x_0001.png", "x_0002.png"]
    with Image.open(tmp_path / "out" / "progress" / "r.gif") as gif:
        assert gif.n_frames == 3


def test_bad_pairs_are_reported_and_others_still_fused(tmp_path, capsys):
    root = make_dataset(tmp_path / "in", {"good": random_pair(6, 40, 40)})
    a, _ = random_pair(7, 40, 40)
    write_png(root / "ir" / "lonely.png", a)                           # missing partner
    write_png(root / "ir" / "sizes.png", a)                            # different sizes
    write_png(root / "vi" / "sizes.png", random_pair(8, 41, 40)[0])
    (root / "ir" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # corrupt
    (root / "vi" / "broken.png").write_bytes(b"garbage")
    write_png(root / "ir" / "small.png", a[:20, :20])                  # below 32 px
    write_png(root / "vi" / "small.png", a[:20, :20])
    (root / "ir" / "notes.txt").write_text("ignored")                  # non-image file
    assert run_cli(tmp_path, "prior=none") == 1
    err = capsys.readouterr().err
    assert "lonely.png: no partner image" in err
    assert "different sizes" in err and "sizes.png" in err
    assert "broken.png: cannot read image" in err
    assert "smaller than 32 px" in err
    assert "notes" not in err and "Traceback" not in err
    assert (tmp_path / "out" / "recon" / "good.png").exists()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(record["failed"]) == {"lonely", "sizes", "broken", "small"}


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P", "CMYK", "LA"])
def test_unusual_image_modes_are_converted(tmp_path, mode):
    rng = np.random.default_rng(9)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert(mode)
    (tmp_path / "in" / "ir").mkdir(parents=True)
    (tmp_path / "in" / "vi").mkdir(parents=True)
    image.save(tmp_path / "in" / "ir" / "m.png" if mode != "CMYK" else tmp_path / "in" / "ir" / "m.tif")
    write_png(tmp_path / "in" / "vi" / "m.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    assert run_cli(tmp_path, "prior=none") == 0
    assert read_png(tmp_path / "out" / "recon" / "m.png").shape[:2] == (40, 40)


@pytest.mark.parametrize("args,needle", [
    (["no_such_key=1"], "unknown key 'no_such_key'"),
    (["timestep_respacing=ddim1"], "timestep_respacing"),
    (["timestep_respacing=2000"], "timestep_respacing"),
    (["variant=magic"], "variant"),
    (["batch_size=0"], "batch_size"),
    (["batch_size=true"], "batch_size"),
    (["lamb=.nan"], "lamb"),
    (["lamb=0", "rho=0"], "lamb and rho"),
    (["clip_denoised=abc"], "clip_denoised"),
    (["sampler=ddpm", "eta=0.5"], "eta"),
    (["device=nonsense"], "device"),
])
def test_config_errors_are_one_line(tmp_path, dataset, capsys, args, needle):
    assert run_cli(tmp_path, "prior=none", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_unknown_key_in_config_file(tmp_path, dataset, capsys):
    bad = tmp_path / "fusion.yaml"
    bad.write_text("variant: official\ncolour: auto\n")
    assert run_cli(tmp_path, "--fusion_config", str(bad)) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err


def test_missing_or_empty_folder(tmp_path, capsys):
    assert run_cli(tmp_path, "prior=none", input_dir=tmp_path / "nowhere") == 2
    assert "input folder not found" in capsys.readouterr().err
    (tmp_path / "empty" / "ir").mkdir(parents=True)
    (tmp_path / "empty" / "vi").mkdir(parents=True)
    assert run_cli(tmp_path, "prior=none", input_dir=tmp_path / "empty") == 2
    assert "no images found" in capsys.readouterr().err


def test_output_folder_problems(tmp_path, dataset, capsys):
    assert run_cli(tmp_path, "prior=none", save_dir=tmp_path / "in" / "ir") == 2
    assert "is the input folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli(tmp_path, "prior=none", save_dir=blocker) == 2
    assert "not writable" in capsys.readouterr().err


def test_medical_modalities_by_config(tmp_path):
    make_dataset(tmp_path / "in", {"s": random_pair(10, 36, 36)}, mods=("ct", "mri"))
    assert run_cli(tmp_path, "prior=none", "modalities=[ct, mri]") == 0
    assert (tmp_path / "out" / "recon" / "s.png").exists()


def test_evaluate_true_prints_the_metrics_table(tmp_path, capsys):
    make_dataset(tmp_path / "in", {"e1": random_pair(11, 48, 48), "e2": random_pair(12, 48, 48)})
    assert run_cli(tmp_path, "prior=none", "evaluate=true") == 0
    out = capsys.readouterr().out
    assert "protocol: reference" in out and "prior-free" in out and "Qabf" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["protocol"] == "reference"
    assert set(saved["methods"]["prior-free"]["per_image"]) == {"e1", "e2"}


def test_paper_variant_with_ddpm_sampler_is_seeded_and_differs_from_official(tmp_path):
    make_dataset(tmp_path / "in", {"p": random_pair(13, 32, 64)})
    paper = TINY + ["variant=paper"]  # implies the DDPM sampler
    assert run_cli(tmp_path, *paper, "seed=1", save_dir=tmp_path / "a") == 0
    assert run_cli(tmp_path, *paper, "seed=1", save_dir=tmp_path / "b") == 0
    assert run_cli(tmp_path, *paper, "seed=2", save_dir=tmp_path / "c") == 0
    assert run_cli(tmp_path, *TINY, save_dir=tmp_path / "o") == 0
    a, b, c, o = (read_png(tmp_path / d / "recon" / "p.png") for d in "abco")
    assert np.array_equal(a, b)            # same seed, same stochastic path
    assert not np.array_equal(a, c)        # the DDPM posterior step draws noise
    assert not np.array_equal(a, o)        # paper and official variants differ
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["configs"]["diffusion"]["sampler"] == "ddpm" and record["variant"] == "paper"


def test_python_api_gives_the_cli_pixels(tmp_path):
    import ddfm

    a, b = random_pair(14, 40, 52, colour_b=True)
    make_dataset(tmp_path / "in", {"x": (a, b)})
    assert run_cli(tmp_path, "prior=none") == 0
    assert np.array_equal(ddfm.fuse(a, b, prior="none", log=lambda m: None),
                          read_png(tmp_path / "out" / "recon" / "x.png"))
    assert run_cli(tmp_path, *TINY, save_dir=tmp_path / "tiny") == 0
    fuser = ddfm.load_fuser(model_config=TINY_MODEL_CONFIG, model_path=str(TINY_WEIGHTS), prior="adm",
                            timestep_respacing=3, device="cpu", log=lambda m: None)
    assert np.array_equal(fuser.fuse(a, b), read_png(tmp_path / "tiny" / "recon" / "x.png"))
    # Tensors in CHW order work too.
    import torch
    chw = torch.from_numpy(b).permute(2, 0, 1)
    assert np.array_equal(fuser.fuse(torch.from_numpy(a), chw), fuser.fuse(a, b))


def test_checkpoint_for_another_architecture_is_one_line_error(tmp_path, dataset, capsys):
    """The full ADM config with the tiny weights: refused before anything is fused (and cheap,
    since the layout is built on the meta device and never initialised)."""
    assert run_cli(tmp_path, "prior=adm", f"model_path={TINY_WEIGHTS}") == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert len(err) == 1 and "does not fit" in err[0] and "missing from file" in err[0]
    assert not (tmp_path / "out" / "recon" / "p1.png").exists()


def test_corrupt_checkpoint_with_auto_prior_is_an_error_not_a_fallback(tmp_path, dataset, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(TINY_WEIGHTS.read_bytes()[:5000])
    assert run_cli(tmp_path, "--model_config", str(TINY_MODEL_CONFIG), f"model_path={broken}") == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "PRIOR-FREE" not in err


def test_resume_with_other_settings_is_refused_unless_overwrite(tmp_path, dataset, capsys):
    assert run_cli(tmp_path, "prior=none") == 0
    assert run_cli(tmp_path, *TINY) == 2
    err = capsys.readouterr().err
    assert "holds images fused with other settings" in err and "prior" in err
    assert run_cli(tmp_path, *TINY, "--overwrite") == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["fingerprint"]["prior"] == "adm" and set(record["fused"]) == {"p1", "p2"}


def test_resumed_run_keeps_earlier_timings_in_run_json(tmp_path, dataset):
    assert run_cli(tmp_path, "prior=none") == 0
    (tmp_path / "out" / "recon" / "p2.png").unlink()
    assert run_cli(tmp_path, "prior=none") == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(record["fused"]) == {"p1", "p2"} and record["skipped"] == ["p1"]


def test_write_error_fails_that_pair_and_keeps_the_record(tmp_path, dataset, capsys, monkeypatch):
    from ddfm import io as ddfm_io

    real = ddfm_io.write_image_atomic

    def flaky(path, array):
        if path.stem == "p1":
            raise OSError(28, "No space left on device")
        return real(path, array)

    monkeypatch.setattr(ddfm_io, "write_image_atomic", flaky)
    assert run_cli(tmp_path, "prior=none") == 1
    assert "p1: [Errno 28] No space left on device" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(record["fused"]) == {"p2"} and set(record["failed"]) == {"p1"}


def test_folder_names_are_taken_as_typed(tmp_path, capsys):
    make_dataset(tmp_path / "007", {"n": random_pair(15, 36, 36)}, mods=("01", "02"))
    assert run_cli(tmp_path, "prior=none", "modalities=[01, 02]", input_dir=tmp_path / "007") == 0
    assert (tmp_path / "out" / "recon" / "n.png").exists()


def test_sample_py_runs_from_another_working_directory(tmp_path, dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sample.main(["--input_dir", "in", "--save_dir", "elsewhere", "--quiet", "prior=none"]) == 0
    assert (tmp_path / "elsewhere" / "recon" / "p1.png").exists()


def test_evaluate_true_on_an_already_fused_folder(tmp_path, capsys):
    make_dataset(tmp_path / "in", {"v": random_pair(16, 48, 48)})
    assert run_cli(tmp_path, "prior=none") == 0
    capsys.readouterr()
    assert run_cli(tmp_path, "prior=none", "evaluate=true") == 0
    assert "protocol: reference" in capsys.readouterr().out
