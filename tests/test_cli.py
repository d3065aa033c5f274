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
    assert record["configs"]["fusion"]["prior"] == "none"
    assert "seed" not in record and record["ignored"]["keys"]["seed"] == 3407
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
    fused = read_png(tmp_path / "out" / "recon" / "p1.png")
    assert run_cli(tmp_path, "prior=none") == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["skipped"] == ["p1", "p2"]
    # An image replaced in recon/ is no longer what the journal says was fused: made again (issue 17).
    marker = np.full((40, 50), 7, np.uint8)
    write_png(tmp_path / "out" / "recon" / "p1.png", marker)
    assert run_cli(tmp_path, "prior=none") == 0
    assert np.array_equal(read_png(tmp_path / "out" / "recon" / "p1.png"), fused)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["skipped"] == ["p2"]
    write_png(tmp_path / "out" / "recon" / "p1.png", marker)
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
    (["threads=0"], "threads"),
    (["threads=true"], "threads"),
    (["threads=many"], "threads"),
    (["deterministic=maybe"], "deterministic"),
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
    assert "image(s) fused with other settings" in err and "prior" in err
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
    from ddfm.savefolder import writer

    real = writer.write_atomic

    def flaky(path, save, **kwargs):
        if path.stem == "p1":
            raise OSError(28, "No space left on device")
        return real(path, save, **kwargs)

    monkeypatch.setattr(writer, "write_atomic", flaky)
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


def _error_lines(err, name):
    """The stderr lines that mention a file name; each problem must be exactly one of them."""
    return [line for line in err.splitlines() if name in line]


def test_unsupported_and_oversized_images_fail_their_pair_only(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "in", {"good": random_pair(17, 40, 40)})
    grey = random_pair(18, 40, 40)[0]
    Image.fromarray(np.full((40, 40), 1_000_000, np.int32)).save(root / "ir" / "deep.tif")  # > 16 bit
    write_png(root / "vi" / "deep.png", grey)
    Image.fromarray(np.full((40, 40), 2.5, np.float32)).save(root / "ir" / "float.tif")    # mode F
    write_png(root / "vi" / "float.png", grey)
    big = random_pair(19, 100, 100)
    write_png(root / "ir" / "bomb.png", big[0])
    write_png(root / "vi" / "bomb.png", big[1])
    # Pillow refuses images over twice MAX_IMAGE_PIXELS: 100x100 is a "bomb" here, 40x40 is not.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert run_cli(tmp_path, "prior=none") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name, needle in [("deep.tif", "outside 0..65535"), ("float.tif", "floating-point"),
                         ("bomb.png", "too large")]:
        lines = _error_lines(err, name)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, err)
    assert (tmp_path / "out" / "recon" / "good.png").exists()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(record["fused"]) == {"good"} and set(record["failed"]) == {"deep", "float", "bomb"}


def test_duplicate_stems_fail_that_pair_only(tmp_path, capsys):
    root = make_dataset(tmp_path / "in", {"good": random_pair(20, 40, 40), "a": random_pair(21, 40, 40)})
    Image.fromarray(random_pair(22, 40, 40)[0]).save(root / "ir" / "a.jpg")
    assert run_cli(tmp_path, "prior=none") == 1
    err = capsys.readouterr().err
    lines = _error_lines(err, "a.jpg")
    assert len(lines) == 1 and "a.png" in lines[0] and "stem 'a'" in lines[0]
    assert not (tmp_path / "out" / "recon" / "a.png").exists()
    assert (tmp_path / "out" / "recon" / "good.png").exists()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(record["fused"]) == {"good"} and set(record["failed"]) == {"a"}


def test_python_api_reads_integer_and_float_arrays_like_files(tmp_path):
    import ddfm
    from ddfm import io

    a, b = random_pair(23, 40, 44, colour_b=True)
    grey, colour = io.source_from_array(a), io.source_from_array(b)
    low_byte = np.random.default_rng(24).integers(0, 256, a.shape, dtype=np.uint16)
    for same in (a.astype(np.int64), a.astype(np.int16), a.astype(np.uint32), a / 255.0,
                 (a / 255.0).astype(np.float32), (a.astype(np.uint16) << 8) | low_byte):
        assert np.array_equal(io.source_from_array(same).luma, grey.luma), same.dtype
    for same in (b.astype(np.int32), b / 255.0):
        source = io.source_from_array(same)
        assert np.array_equal(source.luma, colour.luma) and np.array_equal(source.rgb, colour.rgb)
    # A uint16 array is read like the same data saved as a 16-bit file.
    deep = (a.astype(np.uint16) << 8) | low_byte
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.array_equal(io.read_image(tmp_path / "deep.png").luma, io.source_from_array(deep).luma)
    # Floats a rounding error outside [0, 1] are clipped, not refused.
    assert io.source_from_array(np.full((4, 4), 1.0 + 1e-6)).luma.max() == 255
    fused = ddfm.fuse(a, b, prior="none", log=lambda m: None)
    assert np.array_equal(ddfm.fuse(a.astype(np.int64), b.astype(np.int64), prior="none",
                                    log=lambda m: None), fused)


@pytest.mark.parametrize("array,needle", [
    (np.full((40, 40), 300, np.int64), "int64 values 300..300"),
    (np.full((40, 40), -1, np.int16), "int16 values -1..-1"),
    (np.full((40, 40), 1.5), "outside [0, 1]; float images are taken as [0, 1] (divide by 255 first)"),
    (np.full((40, 40), 4095.0), "divide by 65535 first"),  # 12/16-bit data as float: not "8-bit"
    (np.full((40, 40), -0.2, np.float32), "outside [0, 1]"),
    (np.full((40, 40), np.nan), "NaN or infinite"),
    (np.full((40, 40), np.inf, np.float32), "NaN or infinite"),
    (np.zeros((40, 40), bool), "unsupported dtype bool"),
    (np.zeros((40, 40), complex), "unsupported dtype complex128"),
])
def test_python_api_refuses_arrays_it_cannot_read_as_grey_levels(array, needle):
    from ddfm import io

    with pytest.raises(io.FusionInputError) as info:
        io.source_from_array(array, "a")
    message = str(info.value)
    assert message.startswith("a: ") and needle in message and "\n" not in message


def test_outputs_are_readable_as_the_umask_allows(tmp_path):
    """mkstemp makes 0600 files; outputs must get 0o666 & ~umask like any file (umask 027 -> 0640)."""
    import os
    import stat
    import subprocess
    import sys

    from helpers import ROOT

    make_dataset(tmp_path / "in", {"u": random_pair(25, 36, 36)})
    out = tmp_path / "out"
    script = (
        "import os, sys, numpy as np, sample\n"
        "from ddfm import files, io\n"
        f"rc = sample.main(['--input_dir', {str(tmp_path / 'in')!r}, '--save_dir', {str(out)!r},"
        " '--quiet', 'prior=none'])\n"
        "frame = np.zeros((8, 8), np.uint8)\n"
        f"io.write_gif({str(out / 'u.gif')!r}, [frame, frame + 9])\n"
        f"open({str(out / 'tmp')!r}, 'w').close()\n"
        f"os.chmod({str(out / 'tmp')!r}, 0o600)\n"  # as mkstemp leaves it
        f"files.publish({str(out / 'tmp')!r}, {str(out / 'published.json')!r})\n"
        "sys.exit(rc)\n")
    previous = os.umask(0o027)  # the child reads this umask when it imports ddfm.io
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    finally:
        os.umask(previous)
    assert proc.returncode == 0, proc.stderr
    for path in (out / "recon" / "u.png", out / "u.gif", out / "published.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert not list(out.rglob("*.tmp")) and not (out / "tmp").exists()
