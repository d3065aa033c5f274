"""sample.py, evaluate.py and figure.py find the standard datasets' modality folders on their own,
through one resolver (ddfm.datasets.layouts), and --dataset NAME reads a fetched split."""
import json

import pytest

import evaluate
import figure
import sample
from ddfm.datasets.layouts import InputFolderError, dataset_folder, find_modality_folders
from helpers import make_dataset, random_pair, read_png


def _folders(root, *names):
    for name in names:
        (root / name).mkdir(parents=True)
    return root


@pytest.mark.parametrize("subfolders, expected", [
    (("Ir", "Vis"), ["Ir", "Vis"]),  # M3FD
    (("infrared", "visible"), ["infrared", "visible"]),  # LLVIP
    (("cropinfrared", "crop_HR_visible", "crop_LR_visible", "infrared"), ["cropinfrared", "crop_HR_visible"]),
    (("CT", "MRI"), ["CT", "MRI"]), (("MRI", "PET"), ["PET", "MRI"]), (("spect", "mri"), ["spect", "mri"]),
    (("IR", "VI"), ["IR", "VI"]),
])
def test_known_layouts_are_found_and_said_in_one_line(tmp_path, subfolders, expected):
    heard = []
    root = _folders(tmp_path / "set", *subfolders)
    assert find_modality_folders(root, ["ir", "vi"], heard.append) == expected
    assert find_modality_folders(root, None, lambda m: None) == expected
    assert len(heard) == 1 and expected[0] in heard[0] and expected[1] in heard[0]


def test_configured_names_win_and_a_named_modality_takes_only_its_folder(tmp_path):
    root = _folders(tmp_path / "set", "ir", "vi", "thermal")
    assert find_modality_folders(root, ["thermal", "vi"], print) == ["thermal", "vi"]
    pet = _folders(tmp_path / "pet", "PET", "MRI")
    with pytest.raises(InputFolderError, match=r"spect: input folder not found \(sub-folders of .*: MRI, PET\)"):
        find_modality_folders(pet, ["spect", "mri"], print)


def test_two_layouts_in_one_folder_is_an_error_not_a_guess(tmp_path):
    root = _folders(tmp_path / "set", "Ir", "Vis", "CT", "MRI")
    with pytest.raises(InputFolderError, match=r"several known pairs of modality folders \(Ir/Vis, CT/MRI\)"):
        find_modality_folders(root, ["ir", "vi"], print)
    with pytest.raises(InputFolderError, match=r"no known pair of modality folders \(sub-folders of .*: a, b\)"):
        find_modality_folders(_folders(tmp_path / "other", "a", "b"), None, print)


def test_missing_dataset_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DDFM_DATA_ROOT", raising=False)
    with pytest.raises(InputFolderError) as err:
        dataset_folder("tno-cddfuse", tmp_path / "data")
    assert str(err.value).endswith(f"fetch it with: python -m ddfm.datasets fetch tno-cddfuse --root {tmp_path / 'data'}")
    (tmp_path / "data" / "tno-cddfuse" / "ir").mkdir(parents=True)  # a fetch that did not finish
    with pytest.raises(InputFolderError, match="is incomplete"):
        dataset_folder("tno-cddfuse", tmp_path / "data")
    monkeypatch.setenv("DDFM_DATA_ROOT", str(tmp_path / "data"))
    (tmp_path / "data" / "tno-cddfuse" / "dataset.json").write_text("{}")
    assert dataset_folder("tno-cddfuse") == tmp_path / "data" / "tno-cddfuse"
    with pytest.raises(InputFolderError, match="'nope' is not there and is not in the registry"):
        dataset_folder("nope")


def test_sample_fuses_an_m3fd_layout_without_modalities(tmp_path, capsys):
    make_dataset(tmp_path / "M3FD_Fusion", {"00001": random_pair(5, 40, 48)}, mods=("Ir", "Vis"))
    assert sample.main(["--input_dir", str(tmp_path / "M3FD_Fusion"), "--save_dir", str(tmp_path / "out"),
                        "--quiet", "prior=none"]) == 0
    assert "modality folders Ir (first role) and Vis (second role)" in capsys.readouterr().err
    assert read_png(tmp_path / "out" / "recon" / "00001.png").shape == (40, 48)


def test_sample_dataset_flag_reads_the_fetched_split_or_says_how_to_fetch(tmp_path, capsys):
    root = tmp_path / "data"
    assert sample.main(["--dataset", "mri_ct-cddfuse", "--data_root", str(root), "--save_dir",
                        str(tmp_path / "out"), "prior=none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"python -m ddfm.datasets fetch mri_ct-cddfuse --root {root}")
    assert not (tmp_path / "out").exists()
    make_dataset(root / "mri_ct-cddfuse", {"11": random_pair(6, 40, 40)}, mods=("ct", "mri"))
    (root / "mri_ct-cddfuse" / "dataset.json").write_text(json.dumps({"name": "mri_ct-cddfuse"}))
    assert sample.main(["--dataset", "mri_ct-cddfuse", "--data_root", str(root), "--save_dir",
                        str(tmp_path / "out"), "--quiet", "prior=none"]) == 0
    assert "ct (first role) and mri (second role)" in capsys.readouterr().err
    assert (tmp_path / "out" / "recon" / "11.png").is_file()


def test_evaluate_and_figure_take_a_known_layout_instead_of_ir_vi(tmp_path, capsys):
    a, b = random_pair(7, 48, 48)
    make_dataset(tmp_path / "set", {"p": (a, b)}, mods=("infrared", "visible"))
    make_dataset(tmp_path / "fused", {"p": (a // 2 + b // 2, b)}, mods=("mean", "unused"))
    fused = str(tmp_path / "fused" / "mean")
    assert evaluate.main(["--input_dir", str(tmp_path / "set"), "--fused", fused, "--metrics", "EN,SD"]) == 0
    by_layout = capsys.readouterr()
    assert "infrared (first role) and visible (second role)" in by_layout.err
    assert evaluate.main(["--ir", str(tmp_path / "set" / "infrared"), "--vi", str(tmp_path / "set" / "visible"),
                          "--fused", fused, "--metrics", "EN,SD"]) == 0
    assert capsys.readouterr().out == by_layout.out  # the same folders, the same table
    out = tmp_path / "fig.png"
    assert figure.main(["--input_dir", str(tmp_path / "set"), "--fused", fused, "--stems", "p",
                        "--out", str(out), "--dpi", "50"]) == 0
    assert out.is_file() and "infrared (first role)" in capsys.readouterr().err
    assert evaluate.main(["--dataset", "m3fd-300", "--data_root", str(tmp_path / "none"), "--fused", fused]) == 1
    assert "python -m ddfm.datasets fetch m3fd-300 --root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        evaluate.main(["--ir", str(tmp_path), "--input_dir", str(tmp_path), "--fused", fused])
    assert usage.value.code == 2
