"""evaluate.py and ddfm.evaluation end to end on small temporary folders (and the MRI_CT golden)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluate
from ddfm.evaluation import EvaluationError, evaluate_folders, format_table
from ddfm.metrics import METRICS, compute_metrics, read_luma

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
