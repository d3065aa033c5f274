"""sample.py's remaining failure modes as one line (issue 12 items 6-7) and an honest account of
what a run did (issue 10 items 4-5): ignored settings, counts, modality folders, the API's notice."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import sample
from helpers import TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png, write_png


def run_cli(tmp_path, *args, save_dir=None):
    return sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(save_dir or tmp_path / "out"),
                        "--quiet", *args])


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error")]


def record_of(save_dir):
    return json.loads((Path(save_dir) / "run.json").read_text())


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "in", {"p1": random_pair(70, 40, 40), "p2": random_pair(71, 40, 40)})


def test_out_of_memory_on_a_huge_image_fails_that_pair_only(tmp_path, capsys, monkeypatch):
    from ddfm.methods.priorfree import fuser as fusion

    make_dataset(tmp_path / "in", {"a": random_pair(72, 40, 40), "huge": random_pair(73, 48, 64),
                                   "z": random_pair(74, 40, 40)})
    real = fusion.bayes_fuse

    def numpy_runs_out(ir, vi, **kwargs):
        if ir.shape == (48, 64):
            raise MemoryError("Unable to allocate 71.5 GiB for an array with shape (80000, 120000)")
        return real(ir, vi, **kwargs)

    monkeypatch.setattr(fusion, "bayes_fuse", numpy_runs_out)
    assert run_cli(tmp_path, "prior=none") == 1
    lines = error_lines(capsys)
    assert lines == ["error: huge: out of memory (Unable to allocate 71.5 GiB for an array with shape "
                     "(80000, 120000))"]
    record = record_of(tmp_path / "out")
    assert set(record["fused"]) == {"a", "z"} and set(record["failed"]) == {"huge"}


def test_seed_outside_the_generator_range_is_refused_at_the_door(tmp_path, dataset, capsys):
    tiny = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
            "timestep_respacing=2", "device=cpu"]
    assert run_cli(tmp_path, *tiny, f"seed={2**64}") == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "seed=18446744073709551616 is outside" in lines[0]
    assert not (tmp_path / "out").exists()
    assert run_cli(tmp_path, *tiny, f"seed={2**64 - 1}") == 0  # the largest seed torch takes


@pytest.mark.parametrize("eta", [".nan", ".inf", "1.5", "-0.1", "yes"])
def test_eta_must_be_finite_and_in_0_1(tmp_path, dataset, capsys, eta):
    assert run_cli(tmp_path, "prior=none", f"eta={eta}") == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "eta must be a number in [0, 1]" in lines[0]


def test_config_file_that_is_not_utf8_or_not_readable(tmp_path, dataset, capsys, monkeypatch):
    latin = tmp_path / "fusion.yaml"
    latin.write_bytes("color: grey  # gr\xe9y\n".encode("latin-1"))
    assert run_cli(tmp_path, "--fusion_config", str(latin)) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and str(latin) in lines[0] and "not UTF-8 text (byte 0xe9" in lines[0]

    locked = tmp_path / "locked.yaml"
    locked.write_text("color: grey\n")
    real = Path.read_bytes
    denied = lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(self))) \
        if self == locked else real(self)
    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: denied(self).decode())
    assert run_cli(tmp_path, "--fusion_config", str(locked)) == 2
    lines = error_lines(capsys)
    assert lines == [f"error: {locked}: config file cannot be read (Permission denied)"]


def test_unreadable_input_folder_is_one_line(tmp_path, dataset, capsys, monkeypatch):
    real = Path.iterdir
    blocked = dataset / "ir"

    def iterdir(self):
        if self == blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert run_cli(tmp_path, "prior=none") == 2
    assert error_lines(capsys) == [f"error: {blocked}: input folder cannot be read (Permission denied)"]


def test_unwritable_run_json_after_fusing_keeps_the_images(tmp_path, dataset, capsys, monkeypatch):
    from ddfm import run as driver

    def denied(layout, record):
        raise PermissionError(13, "Permission denied", str(layout.record))

    monkeypatch.setattr(driver, "write_record", denied)
    assert run_cli(tmp_path, "prior=none") == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and "run.json: cannot write the run record (Permission denied)" in lines[0]
    assert {p.name for p in (tmp_path / "out" / "recon").iterdir()} == {"p1.png", "p2.png"}
    monkeypatch.undo()
    assert run_cli(tmp_path, "prior=none") == 0  # the journal knows both: nothing to redo
    assert record_of(tmp_path / "out")["skipped"] == ["p1", "p2"]


def test_failure_keys_are_the_whole_stem(tmp_path, dataset):
    write_png(dataset / "ir" / "cam:01.png", random_pair(75, 40, 40)[0])  # no partner
    assert run_cli(tmp_path, "prior=none") == 1
    assert set(record_of(tmp_path / "out")["failed"]) == {"cam:01"}


def test_prior_free_settings_without_effect_are_reported_not_fingerprinted(tmp_path, dataset, capsys):
    """Verified, not assumed: none of these keys changes a prior-free pixel."""
    assert run_cli(tmp_path, "prior=none", save_dir=tmp_path / "a") == 0
    ignored = ["size=crop", "normalize=clip", "variant=paper", "batch_size=2", "dtype=bf16",
               "timestep_respacing=5", "seed=1", "lamb=0.2", "rho=0.01", "channels_last=true",
               "compile=true", "device=cpu"]
    capsys.readouterr()
    assert run_cli(tmp_path, "prior=none", *ignored, save_dir=tmp_path / "b") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "no effect" in line]
    assert len(notes) == 1 and "size" in notes[0] and "seed" in notes[0]
    for stem in ("p1", "p2"):
        assert np.array_equal(read_png(tmp_path / "a" / "recon" / f"{stem}.png"),
                              read_png(tmp_path / "b" / "recon" / f"{stem}.png"))
    a, b = record_of(tmp_path / "a"), record_of(tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"] == {"prior": "none", "modalities": ["ir", "vi"], "color": "auto"}
    assert "variant" not in b and "diffusion" not in b["configs"] and "variant" not in b["configs"]["fusion"]
    assert b["ignored"]["keys"]["size"] == "crop" and b["ignored"]["keys"]["seed"] == 1
    assert "source size" in b["ignored"]["why"]
    # So resuming a prior-free folder with another seed is a resume, not a conflict.
    assert run_cli(tmp_path, "prior=none", "seed=5", save_dir=tmp_path / "a") == 0
    assert record_of(tmp_path / "a")["skipped"] == ["p1", "p2"]


def test_resumed_run_that_skipped_everything_reports_counts(tmp_path, dataset, capsys):
    assert run_cli(tmp_path, "prior=none") == 0
    capsys.readouterr()
    assert run_cli(tmp_path, "prior=none") == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("fused 0, skipped 2 (already fused), failed 0 pair(s)")


def test_modality_folder_matched_without_case_or_listed(tmp_path, capsys):
    make_dataset(tmp_path / "in", {"m": random_pair(76, 40, 40)}, mods=("PET", "MRI"))
    assert run_cli(tmp_path, "prior=none", "modalities=[pet, mri]") == 0
    assert "modality 'pet': using the folder" in capsys.readouterr().err
    assert record_of(tmp_path / "out")["fingerprint"]["modalities"] == ["PET", "MRI"]
    assert run_cli(tmp_path, "prior=none", "modalities=[spect, mri]", save_dir=tmp_path / "o2") == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "spect: input folder not found (sub-folders of" in lines[0]
    assert lines[0].endswith("MRI, PET)")


def test_failed_start_leaves_no_folder_behind(tmp_path, dataset, capsys):
    out = tmp_path / "new" / "out"
    assert run_cli(tmp_path, "prior=adm", f"model_path={tmp_path / 'absent.pt'}", save_dir=out) == 2
    assert not (tmp_path / "new").exists()


def test_python_api_announces_the_prior_once_per_process(tmp_path):
    import ddfm

    a, b = random_pair(77, 40, 40)
    heard = []
    for _ in range(3):
        ddfm.fuse(a, b, model_path=str(tmp_path / "absent.pt"), log=heard.append)
    assert len(heard) == 1 and "PRIOR-FREE" in heard[0]


def test_a_write_that_is_too_large_names_its_file(tmp_path, dataset, capsys):
    """RLIMIT_FSIZE (ulimit -f) makes write() fail with EFBIG, an error that names no file."""
    import resource

    limit, codes = resource.getrlimit(resource.RLIMIT_FSIZE), []
    try:
        for size, folder in ((150, "start"), (400, "pairs")):  # the start's files fit only in 400
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, limit[1]))
            codes.append(run_cli(tmp_path, "prior=none", save_dir=tmp_path / folder))
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    lines = error_lines(capsys)
    assert codes == [2, 1] and len(lines) == 4, lines
    assert re.fullmatch(rf"error: {tmp_path / 'start'}/(run\.lock|journal\.jsonl): output folder is not "
                        rf"writable \(File too large\)", lines[0])
    for stem, line in zip(("p1", "p2"), lines[1:3]):
        assert line == f"error: {stem}: [Errno 27] File too large: '{tmp_path / 'pairs' / 'recon' / stem}.png'"
    assert "run.json: cannot write the run record (File too large)" in lines[3]


def test_an_unreadable_image_is_named_without_a_buffer_address(tmp_path, dataset, capsys):
    (dataset / "vi" / "p2.png").write_bytes(b"this is no image")
    assert run_cli(tmp_path, "prior=none") == 1
    assert error_lines(capsys) == [f"error: {dataset / 'vi' / 'p2.png'}: cannot read image "
                                   f"(cannot identify image file)"]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_pipe_named_like_an_image_is_named_itself(tmp_path, dataset, capsys, kind):
    odd = dataset / "vi" / "p3.png"
    write_png(dataset / "ir" / "p3.png", random_pair(76, 40, 40)[0])
    odd.mkdir() if kind == "folder" else os.mkfifo(odd)
    assert run_cli(tmp_path, "prior=none") == 1
    assert error_lines(capsys) == [f"error: {odd}: not a regular file (a folder or pipe named like an image)"]
    assert record_of(tmp_path / "out")["counts"]["fused"] == 2


def test_the_ccf_preset_without_a_checkpoint_says_what_it_is_not_and_ignores(tmp_path, dataset, capsys):
    from helpers import ROOT
    assert run_cli(tmp_path, "--fusion_config", str(ROOT / "configs" / "fusion_ccf.yaml"),
                   f"model_path={tmp_path / 'absent.pt'}") == 0
    err = capsys.readouterr().err
    assert "PRIOR-FREE Bayesian fusion (not CCF)" in err and "(not DDFM)" not in err
    ignored = next(line for line in err.splitlines() if "no effect" in line)
    assert "method" in ignored and "ccf_lr" in ignored and "ccf_conditions" in ignored
    keys = record_of(tmp_path / "out")["ignored"]["keys"]
    assert keys["method"] == "ccf" and "ccf_topk" in keys


def test_overwrite_help_says_the_images_are_set_aside(capsys):
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "set aside in recon/.replaced/" in help_text and "first delete" not in help_text
