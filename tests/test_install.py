"""The package as a user installs it: light imports, a wheel that carries every file, the `ddfm` command."""
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import sample
from ddfm.cli import COMMANDS, main as ddfm_main

ROOT = Path(__file__).resolve().parent.parent
DEMO_PAIRS = ("07", "19", "24")
HEAVY = ("matplotlib", "jinja2")


def _clean_env():
    """No PYTHONPATH, so a subprocess sees only what is installed (or its own working directory)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_import_ddfm_and_metrics_load_neither_matplotlib_nor_jinja2():
    code = ("import sys, ddfm; ddfm.metrics; import ddfm.metrics, ddfm.present.table; "
            f"print(sorted(m for m in {HEAVY!r} + ('torch',) if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[]"  # nor torch: scoring needs no network


def test_ddfm_command_lists_its_sub_commands_and_refuses_unknown_ones(capsys):
    assert ddfm_main([]) == 2
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS)
    assert ddfm_main(["fusee"]) == 2
    assert "unknown command 'fusee'" in capsys.readouterr().err


def test_ddfm_fuse_takes_a_shipped_preset_by_name(tmp_path):
    from ddfm.cli.fuse import preset
    assert preset("fusion_mri_ct") == str(ROOT / "configs" / "fusion_mri_ct.yaml")
    assert preset("fusion_nope") == "fusion_nope"  # not a preset: read as a path (and refused there)
    mine = tmp_path / "fusion_mri_ct.yaml"
    assert preset(str(mine)) == str(mine)  # a path is never replaced by a preset


def _source_tree(dest):
    """What a checkout ships to `pip install .` (tests and outputs stay behind)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ddfm", "guided_diffusion", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_fuses_the_demo_pairs(tmp_path):
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    _source_tree(src)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("ddfm-*.whl")

    # Every module and data file of the tree is in the wheel; the configs inside the package.
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("ddfm", "guided_diffusion"):
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                assert path.relative_to(ROOT).as_posix() in names, path
    for config in (ROOT / "configs").glob("*.yaml"):
        assert f"ddfm/configs/{config.name}" in names

    env = tmp_path / "venv"
    venv.create(env, system_site_packages=True, with_pip=True)  # reuses the installed torch
    python = env / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=600, env=_clean_env())
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # From another folder, with the demo pairs copied there: the console command fuses them.
    work = tmp_path / "elsewhere"
    for modality in ("ir", "vi"):
        shutil.copytree(ROOT / "input" / modality, work / "pairs" / modality)
    fused = subprocess.run([str(env / "bin" / "ddfm"), "fuse", "--input_dir", "pairs", "--save_dir", "out",
                            "--quiet"], cwd=work, capture_output=True, text=True, timeout=600, env=_clean_env())
    assert fused.returncode == 0, fused.stderr
    assert "PRIOR-FREE" in fused.stderr and "fused 3" in fused.stderr
    assert sorted(p.stem for p in (work / "out" / "recon").glob("*.png")) == list(DEMO_PAIRS)
    assert (work / "out" / "run.json").is_file()

    # The same pixels as python sample.py from the checkout.
    assert sample.main(["--input_dir", str(work / "pairs"), "--save_dir", str(tmp_path / "ref"), "--quiet"]) == 0
    for stem in DEMO_PAIRS:
        assert (work / "out" / "recon" / f"{stem}.png").read_bytes() == \
            (tmp_path / "ref" / "recon" / f"{stem}.png").read_bytes()

    check = ("import ddfm, sys; ddfm.metrics; assert 'matplotlib' not in sys.modules; "
             "print(ddfm.__file__); print(ddfm.CONFIG_DIR)")
    imported = subprocess.run([str(python), "-c", check], cwd=work, capture_output=True, text=True,
                              timeout=300, env=_clean_env())
    assert imported.returncode == 0, imported.stderr
    module_file, config_dir = imported.stdout.split("\n")[:2]
    assert Path(module_file).is_relative_to(env) and Path(config_dir) == Path(module_file).parent / "configs"
