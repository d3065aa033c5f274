"""evaluate.py and ddfm.metrics.evaluation end to end on small temporary folders (and the MRI_CT golden)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluate
from ddfm.metrics import METRICS, compute_metrics, read_luma
from ddfm.metrics.evaluation import EvaluationError, evaluate_folders, format_table

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "metrics"
STEMS = ("01", "02", "03")


def _image(seed, shape=(64, 72)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rng = np.random.default_rng(seed)
    base = 110 + 70 * np.sin(xx / (4.0 + seed % 5)) * np.cos(yy / 6.0) + rng.normal(0, 10, shape)
    return np.clip(np.round(base), 0, 255).astype(np.uint8)


def _save(folder, stem, array, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / f"{stem}{ext}")


@pytest.fixture
def dataset(tmp_path):
    """ir/, vi/ sources and two fused folders (mean as .png, max as .bmp) for three pairs."""
    for k, stem in enumerate(STEMS):
        ir, vi = _image(3 * k), _image(3 * k + 1)
        _save(tmp_path / "ir", stem, ir)
        _save(tmp_path / "vi", stem, vi)
        _save(tmp_path / "mean", stem, ((ir.astype(int) + vi) // 2).astype(np.uint8))
        _save(tmp_path / "max", stem, np.maximum(ir, vi), ext=".bmp")
    return tmp_path


def _run(capsys, *args):
    code = evaluate.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _expected(root, fused_dir, stem, protocol="reference"):
    a, b = read_luma(root / "ir" / f"{stem}.png"), read_luma(root / "vi" / f"{stem}.png")
    fused = read_luma(next((root / fused_dir).glob(f"{stem}.*")))
    return compute_metrics(a, b, fused, protocol=protocol)


def test_table_json_csv_for_several_methods(dataset, capsys):
    out_json, out_csv = dataset / "r.json", dataset / "r.csv"
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi",
                          "--fused", f"mean={dataset / 'mean'}", "--fused", f"max={dataset / 'max'}",
                          "--json", out_json, "--csv", out_csv)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "protocol: reference" in lines[0]
    assert lines[1].split() == ["method", *METRICS]
    assert [line.split()[0] for line in lines[2:]] == ["mean", "max"]

    result = json.loads(out_json.read_text())
    assert result["protocol"] == "reference"
    assert list(result["methods"]) == ["mean", "max"]
    for method in ("mean", "max"):
        data = result["methods"][method]
        assert list(data["per_image"]) == list(STEMS)
        for stem in STEMS:
            expected = _expected(dataset, method, stem)
            assert data["per_image"][stem] == pytest.approx(expected, abs=1e-12)
        for m in METRICS:
            assert data["mean"][m] == pytest.approx(np.mean([data["per_image"][s][m] for s in STEMS]))
    # the printed table shows the same means
    assert float(lines[2].split()[1]) == pytest.approx(result["methods"]["mean"]["mean"]["EN"], abs=1e-4)

    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 * (len(STEMS) + 1)
    assert {r["protocol"] for r in rows} == {"reference"}
    assert [r["image"] for r in rows if r["method"] == "max"] == [*STEMS, "mean"]
    mean_row = rows[len(STEMS)]
    assert float(mean_row["SSIM"]) == pytest.approx(result["methods"]["mean"]["mean"]["SSIM"])


def test_aliases_protocol_metrics_subset(dataset, capsys):
    code, out, err = _run(capsys, "--a", dataset / "ir", "--b", dataset / "vi", "--fused", dataset / "mean",
                          "--protocol", "corrected", "--metrics", "mi,SSIM", "--json", dataset / "c.json")
    assert code == 0, err
    assert "protocol: corrected" in out
    assert out.splitlines()[1].split() == ["method", "MI", "SSIM"]
    result = json.loads((dataset / "c.json").read_text())
    assert result["protocol"] == "corrected"
    row = result["methods"]["mean"]["per_image"]["02"]
    expected = _expected(dataset, "mean", "02", protocol="corrected")
    assert row == pytest.approx({"MI": expected["MI"], "SSIM": expected["SSIM"]}, abs=1e-12)


def test_crop_to_fused_size_with_warning(dataset, capsys):
    # DDFM crops its inputs top-left to a multiple of 32: 64x72 -> 64x64
    for stem in STEMS:
        fused = np.asarray(Image.open(dataset / "mean" / f"{stem}.png"))
        _save(dataset / "ddfm", stem, np.ascontiguousarray(fused[:64, :64]))
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused",
                          f"ddfm={dataset / 'ddfm'}", "--json", dataset / "d.json")
    assert code == 0, err
    assert "warning" in err and "cropped" in err
    got = json.loads((dataset / "d.json").read_text())["methods"]["ddfm"]["per_image"]["01"]
    a = read_luma(dataset / "ir" / "01.png")[:64, :64]
    b = read_luma(dataset / "vi" / "01.png")[:64, :64]
    assert got == pytest.approx(compute_metrics(a, b, read_luma(dataset / "ddfm" / "01.png")), abs=1e-12)


def test_colour_fused_images_scored_on_luma(dataset, capsys):
    for stem in STEMS:
        grey = np.asarray(Image.open(dataset / "mean" / f"{stem}.png"))
        rgb = np.dstack([grey, grey, grey]).astype(np.int16)
        rgb[..., 0] += 3  # a tint, so the luma differs from any single channel
        rgb[..., 2] -= 3
        _save(dataset / "colour", stem, np.clip(rgb, 0, 255).astype(np.uint8), ext=".tif")
    result = evaluate_folders(dataset / "ir", dataset / "vi", {"colour": dataset / "colour"},
                              warn=lambda msg: None)
    for stem in STEMS:
        expected = _expected(dataset, "colour", stem)  # read_luma of the RGB file
        assert result["methods"]["colour"]["per_image"][stem] == pytest.approx(expected, abs=1e-12)
    assert "protocol: reference" in format_table(result)


def test_missing_fused_files_listed_in_one_error(dataset, capsys):
    (dataset / "mean" / "01.png").unlink()
    (dataset / "mean" / "03.png").unlink()
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "01" in lines[0] and "03" in lines[0] and "2 of 3" in lines[0]


def test_size_mismatch_names_the_pair(dataset, capsys):
    _save(dataset / "mean", "02", _image(99, shape=(80, 80)))
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean")
    assert code == 1
    assert err.count("\n") == 1 and "'02'" in err and "80x80" in err



def test_fused_image_too_small_for_vif_names_both_sizes(dataset, capsys):
    """A fused image far smaller than its sources (not the /32 crop): the sources are cropped to
    it and VIF cannot score 32x32; the one line must say which sizes met, not only VIF's limit."""
    _save(dataset / "mean", "02", _image(99, shape=(32, 32)))
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean")
    assert code == 1 and err.count("\n") == 1, err
    assert "'02'" in err and "32x32" in err and "64x72" in err and "VIF" in err

def test_unreadable_image_and_missing_folder(dataset, capsys):
    (dataset / "mean" / "03.png").write_bytes(b"not a png")
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean")
    assert code == 1 and err.count("\n") == 1 and "03.png" in err
    code, out, err = _run(capsys, "--ir", dataset / "nope", "--vi", dataset / "vi", "--fused", dataset / "max")
    assert code == 1 and err.count("\n") == 1 and "nope" in err
    with pytest.raises(EvaluationError):
        evaluate_folders(dataset / "ir", dataset / "vi", {"x": dataset / "missing"})


def test_script_runs_as_a_command(dataset):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ir", str(dataset / "ir"),
                           "--vi", str(dataset / "vi"), "--fused", f"max={dataset / 'max'}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "protocol: reference" in proc.stdout and "\nmax " in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ir", str(dataset / "ir")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2  # argparse usage error


def test_golden_dataset_means_through_evaluate_folders():
    reference = json.loads((GOLDEN / "metrics_reference.json").read_text())["results"]
    src = GOLDEN / "sources" / "MRI_CT"
    result = evaluate_folders(src / "ct", src / "mri", {"mean": GOLDEN / "fused" / "mean" / "MRI_CT",
                                                        "max": GOLDEN / "fused" / "max" / "MRI_CT"})
    for method in ("mean", "max"):
        means = result["methods"][method]["mean"]
        for m, value in reference[f"{method}/MRI_CT"]["mean"].items():
            assert means[m] == pytest.approx(value, abs=1e-4), (method, m)


def test_negative_digits_is_an_argument_error(dataset, capsys):
    args = ["--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean"]
    with pytest.raises(SystemExit) as info:
        _run(capsys, *args, "--digits", "-1")
    assert info.value.code == 2
    assert "--digits: expected a whole number >= 0, got -1" in capsys.readouterr().err
    code, out, err = _run(capsys, *args, "--digits", "0")
    assert code == 0 and "Traceback" not in err


# ---------------------------------------------------------------- several protocols (issue 11)


def test_protocol_all_prints_one_table_each_and_stores_all(dataset, capsys):
    out_json, out_csv = dataset / "all.json", dataset / "all.csv"
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean",
                          "--protocol", "all", "--json", out_json, "--csv", out_csv)
    assert code == 0, err
    headers = [line for line in out.splitlines() if line.startswith("protocol:")]
    assert [h.split()[1] for h in headers] == ["reference", "corrected", "tang"]
    saved = json.loads(out_json.read_text())
    assert [r["protocol"] for r in saved["protocols"]] == ["reference", "corrected", "tang"]
    tang = saved["protocols"][2]["methods"]["mean"]
    assert "Nabf" in tang["mean"] and "MS_SSIM" in tang["mean"]
    assert tang["per_image"]["02"] == pytest.approx(_expected(dataset, "mean", "02", protocol="tang"), abs=1e-12)
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["protocol"] for r in rows] == ["reference"] * 4 + ["corrected"] * 4 + ["tang"] * 4
    assert rows[0]["Nabf"] == "" and float(rows[-1]["Nabf"]) == pytest.approx(tang["mean"]["Nabf"])


def test_repeated_protocols_and_alias(dataset, capsys):
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean",
                          "--protocol", "cddfuse", "--protocol", "tang", "--protocol", "reference",
                          "--metrics", "MI,SSIM,Nabf", "--json", dataset / "two.json")
    assert code == 0, err
    saved = json.loads((dataset / "two.json").read_text())["protocols"]
    assert [r["protocol"] for r in saved] == ["reference", "tang"]  # cddfuse is reference: once
    assert list(saved[0]["methods"]["mean"]["mean"]) == ["MI", "SSIM"]  # Nabf is tang's only
    assert list(saved[1]["methods"]["mean"]["mean"]) == ["MI", "SSIM", "Nabf"]


def test_sample_evaluate_true_with_eval_protocol(tmp_path, capsys):
    import sample
    from helpers import make_dataset, random_pair

    make_dataset(tmp_path / "in", {"e1": random_pair(11, 48, 48)})
    assert sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / "out"), "--quiet",
                        "prior=none", "evaluate=true", "eval_protocol=tang"]) == 0
    out = capsys.readouterr().out
    assert "protocol: tang" in out and "MS_SSIM" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["protocol"] == "tang" and set(saved["methods"]["prior-free"]["per_image"]) == {"e1"}
    assert sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / "out"), "--quiet",
                        "prior=none", "evaluate=true", "eval_protocol=matlab"]) == 2


# ---------------------------------------------------------------- messages (issue 10, item 5)


def test_save_folder_is_scored_through_its_recon(dataset, capsys):
    save = dataset / "run1"
    (save / "recon").mkdir(parents=True)
    for stem in STEMS:
        (save / "recon" / f"{stem}.png").write_bytes((dataset / "mean" / f"{stem}.png").read_bytes())
    (save / "run.json").write_text("{}")
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", save)
    assert code == 0, err
    assert err.count("\n") == 1 and "sample.py save folder" in err and "recon/" in err
    assert out.splitlines()[2].split()[0] == "run1"  # named after the save folder, not 'recon'
    # a folder with neither images nor recon/ says where to point
    (dataset / "empty" / "sub").mkdir(parents=True)
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "empty")
    assert code == 1 and err.count("\n") == 1 and "no images" in err and "sub" in err


def test_several_recon_folders_get_distinct_names(dataset, capsys):
    for run, source in (("a", "mean"), ("b", "max")):
        (dataset / "out" / run / "recon").mkdir(parents=True)
        for path in (dataset / source).iterdir():
            (dataset / "out" / run / "recon" / path.name).write_bytes(path.read_bytes())
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi",
                          "--fused", dataset / "out" / "a" / "recon", "--fused", dataset / "out" / "b")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["a", "b"]


def test_table_header_grammar(dataset, capsys):
    for stem in STEMS[1:]:
        for folder in ("ir", "vi", "mean"):
            (dataset / folder / f"{stem}.png").unlink()
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean")
    assert code == 0, err
    assert "(dataset mean over 1 pair)" in out.splitlines()[0]


def test_allow_missing_scores_the_images_present(dataset, capsys):
    (dataset / "mean" / "02.png").unlink()
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean",
                          "--fused", f"max={dataset / 'max'}", "--allow-missing", "--json", dataset / "m.json")
    assert code == 0, err
    assert "1 of 3 fused images missing" in err and "02" in err
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["method", "n"]
    assert lines[2].split()[:2] == ["mean", "2"] and lines[3].split()[:2] == ["max", "3"]
    saved = json.loads((dataset / "m.json").read_text())["methods"]
    assert saved["mean"]["missing"] == ["02"] and saved["max"]["missing"] == []
    assert list(saved["mean"]["per_image"]) == ["01", "03"]
    present = [_expected(dataset, "mean", s)["SSIM"] for s in ("01", "03")]
    assert saved["mean"]["mean"]["SSIM"] == pytest.approx(np.mean(present), abs=1e-12)
    # without the flag the missing image is still an error that names the flag
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean")
    assert code == 1 and "--allow-missing" in err


# ---------------------------------------------------------------- exit codes, plain numbers (issue 12, item 7)


@pytest.mark.parametrize("extra, needle", [
    (["--metrics", "EN,XYZ"], "XYZ"),
    (["--metrics", ","], "none given"),
    (["--protocol", "tang", "--metrics", "Qabf,FMI"], "FMI"),
    (["--metrics", "Nabf"], "Nabf"),  # a tang metric asked of the reference protocol
    (["--fused", "mean=/elsewhere"], "given twice"),
])
def test_bad_arguments_exit_2_with_one_line(dataset, capsys, extra, needle):
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi",
                          "--fused", f"mean={dataset / 'mean'}", *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err


def test_unknown_protocol_is_a_usage_error(dataset, capsys):
    with pytest.raises(SystemExit) as info:
        _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean",
             "--protocol", "matlab")
    assert info.value.code == 2 and "invalid choice: 'matlab'" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["corrected", "reference", "tang"])
def test_csv_and_json_hold_plain_numbers(dataset, capsys, protocol):
    out_csv, out_json = dataset / "p.csv", dataset / "p.json"
    code, out, err = _run(capsys, "--ir", dataset / "ir", "--vi", dataset / "vi", "--fused", dataset / "mean",
                          "--protocol", protocol, "--csv", out_csv, "--json", out_json)
    assert code == 0, err
    rows = list(csv.reader(out_csv.open()))
    numbers = [cell for row in rows[1:] for cell in row[3:]]
    assert numbers and all(float(cell) == float(cell) or cell == "nan" for cell in numbers)
    assert "np." not in out_csv.read_text() and "np." not in out_json.read_text()
