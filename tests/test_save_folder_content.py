"""Content, not paths (issue 17): a resumed run notices a source or an image changed in place, a
killed --overwrite loses no image, the lock covers evaluation and report, and the save folder's
layout is named in one module.

Kills and holds go through tests/seamed_sample.py, which wraps the production functions from
outside (the production code has no test hook).
"""
import ast
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sample
from ddfm.savefolder.layout import Layout
from ddfm.savefolder.resume import FolderState, drop_replaced
from helpers import ROOT, make_dataset, random_pair, read_png, write_png
from test_save_folder import clean_runs, error_lines, main, record_of, seamed

STEMS = ["k0", "k1", "k2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("content") / "in"
    return make_dataset(root, {stem: random_pair(70 + k, 32, 32) for k, stem in enumerate(STEMS)})


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory):
    return clean_runs(inputs, tmp_path_factory)


def test_a_source_edited_in_place_is_fused_again(inputs, clean, tmp_path, capsys):
    data = make_dataset(tmp_path / "in", {stem: random_pair(70 + k, 32, 32) for k, stem in enumerate(STEMS)})
    out = tmp_path / "out"
    assert main(data, out) == 0
    source = data / "vi" / "k1.png"
    mtime = source.stat().st_mtime_ns
    write_png(source, 255 - random_pair(71, 32, 32)[1])  # same name and shape, other pixels
    os.utime(source, ns=(mtime, mtime))  # and the old mtime: only the content tells
    capsys.readouterr()
    assert main(data, out) == 0
    err = capsys.readouterr().err
    assert f"1 pair(s) changed since they were fused, fusing them again ({source} changed since k1.png" in err
    record = record_of(out)
    assert record["counts"] == {"fused": 1, "skipped": 2, "failed": 0, "in_folder": 3}
    assert not np.array_equal(read_png(out / "recon" / "k1.png"), clean[3407]["k1"])
    from ddfm.savefolder.hashes import content_hash
    assert record["fused"]["k1"]["source_hashes"][1] == content_hash(source.read_bytes())
    assert record["fused"]["k1"]["hash"] == content_hash((out / "recon" / "k1.png").read_bytes())


def test_an_image_edited_in_recon_is_fused_again(inputs, clean, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(inputs, out) == 0
    image = out / "recon" / "k2.png"
    mtime = image.stat().st_mtime_ns
    write_png(image, 255 - read_png(image))
    os.utime(image, ns=(mtime, mtime))
    capsys.readouterr()
    assert main(inputs, out) == 0
    err = capsys.readouterr().err
    assert f"1 pair(s) changed since they were fused, fusing them again ({image} changed since it was written)" in err
    assert np.array_equal(read_png(image), clean[3407]["k2"])
    assert record_of(out)["counts"]["fused"] == 1


def _invariant(out, clean, old_seed, new_seed):
    """After the start's clean-up: each stem has exactly one image, in recon/ (matching its journal
    line and its settings' clean run) or set aside (the old one)."""
    layout = Layout(out)
    state = FolderState(layout)
    drop_replaced(layout, state)
    state = FolderState(layout)
    assert not state.unrecorded and not state.changed
    seeds = {key: line["fingerprint"]["diffusion"]["seed"] for key, line in state.settings.items()}
    aside = {path.stem: path for path, _ in state.aside}
    for stem in STEMS:
        in_recon = f"{stem}.png" in state.records
        assert in_recon != (stem in aside), stem
        if in_recon:
            seed = seeds[state.records[f"{stem}.png"]["key"]]
            assert seed in (old_seed, new_seed)
            assert np.array_equal(read_png(layout.image(stem)), clean[seed][stem]), stem
        else:
            assert np.array_equal(read_png(aside[stem]), clean[old_seed][stem]), stem
    return state


def test_sigkill_at_every_journal_line_of_an_overwrite_loses_no_image(inputs, clean, tmp_path):
    reference = tmp_path / "reference"
    assert main(inputs, reference) == 0
    before = len((reference / "journal.jsonl").read_text().splitlines())
    assert main(inputs, reference, "seed=0", "--overwrite") == 0
    lines = len((reference / "journal.jsonl").read_text().splitlines()) - before
    assert lines == 2 * len(STEMS) + 1  # a set_aside line per image, the settings, an image line each
    kills = [("kill", n) for n in range(1, lines + 1)] + [("kill-drop", n) for n in range(1, len(STEMS) + 1)]
    for mode, n in kills:
        out = tmp_path / f"{mode}{n}"
        assert main(inputs, out) == 0
        proc = seamed(inputs, out, (mode, str(n)), "seed=0", "--overwrite")
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (mode, n, proc.stderr.read()[-2000:])
        _invariant(out, clean, 3407, 0)
        # Resuming the killed run's settings finishes it: every stem new, nothing left aside.
        assert main(inputs, out, "seed=0", "--overwrite") == 0
        state = _invariant(out, clean, 3407, 0)
        assert not state.aside and not (out / "recon" / ".replaced").exists(), (mode, n)
        assert all(np.array_equal(read_png(out / "recon" / f"{s}.png"), clean[0][s]) for s in STEMS)


def test_a_killed_overwrite_resumes_without_overwrite_and_drops_what_it_replaced(inputs, clean, tmp_path):
    out = tmp_path / "out"
    assert main(inputs, out) == 0
    proc = seamed(inputs, out, ("kill", str(len(STEMS) + 3)), "seed=0", "--overwrite")  # after image 1
    proc.wait(timeout=120)
    assert len(list((out / "recon" / ".replaced").rglob("*.png"))) == len(STEMS) - 1
    assert main(inputs, out, "seed=0") == 0  # the same settings resume: the old images go as the new come
    assert not (out / "recon" / ".replaced").exists()
    assert record_of(out)["counts"] == {"fused": 2, "skipped": 1, "failed": 0, "in_folder": 3}


def test_a_failed_pair_of_an_overwrite_keeps_its_old_image_aside(tmp_path, capsys):
    pairs = {f"c{k}": random_pair(50 + k, 40, 40) for k in range(2)}
    data = make_dataset(tmp_path / "in", pairs)
    out = tmp_path / "out"
    args = ["--input_dir", str(data), "--save_dir", str(out), "--quiet", "prior=none"]
    assert sample.main(args) == 0
    old = (out / "recon" / "c1.png").read_bytes()
    (data / "vi" / "c1.png").write_bytes(b"not a png any more")
    capsys.readouterr()
    assert sample.main([*args, "--overwrite"]) == 1
    assert "1 earlier image(s) stay set aside" in capsys.readouterr().err
    kept = list((out / "recon" / ".replaced").rglob("c1.png"))
    assert len(kept) == 1 and kept[0].read_bytes() == old
    assert record_of(out)["set_aside"] == [str(kept[0].relative_to(out))]
    write_png(data / "vi" / "c1.png", pairs["c1"][1])
    assert sample.main(args) == 0  # c1 fused again: its set-aside image goes
    assert not (out / "recon" / ".replaced").exists()


def test_a_second_run_during_evaluate_and_report_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    proc = seamed(inputs, out, ("hold-postrun",), "evaluate=true", "report=true")
    deadline = time.monotonic() + 120
    while not (out / "run.json").exists():  # run.json is written just before the post-run step
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    capsys.readouterr()
    assert main(inputs, out, "seed=0", "--overwrite") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "another sample.py run is using this folder" in err[0] and f"pid {proc.pid}" in err[0]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert "in the post-run step" in proc.stderr.read()
    assert main(inputs, out) == 0  # the lock went with its process


# A path of the layout as code would spell it ("recon", "progress/x", "out/run.json"); prose that
# names a file and the config key `report` are not paths.
LAYOUT_NAMES = re.compile(r"[\w./-]*((^|/)(recon|progress)(/[\w./-]*)?|(^|/)report/[\w./-]*"
                          r"|journal\.jsonl|run\.json|metrics\.json|run\.lock|\.replaced)")


def _string_literals(path):
    """The string constants of a module that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_save_folder_layout_is_named_in_one_module():
    owner = ROOT / "ddfm" / "savefolder" / "layout.py"
    code = sorted((ROOT / "ddfm").rglob("*.py")) + [ROOT / name for name in ("sample.py", "evaluate.py", "table.py", "figure.py")]
    offenders = {str(path.relative_to(ROOT)): hits for path in code if path != owner and path.exists()
                 for hits in [[s for s in _string_literals(path) if LAYOUT_NAMES.fullmatch(s)]] if hits}
    assert offenders == {}
    assert sum(bool(LAYOUT_NAMES.fullmatch(s)) for s in _string_literals(owner)) >= 6  # the test does see them


def test_the_python_api_does_not_import_the_run_driver():
    code = ("import sys, ddfm; ddfm.load_fuser(prior='none', log=lambda m: None); "
            "print(sorted(m for m in sys.modules if m in ('ddfm.run', 'ddfm.postrun') "
            "or m.startswith('ddfm.savefolder')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_run_json_lists_the_content_hashes(inputs, tmp_path):
    out = tmp_path / "out"
    assert main(inputs, out) == 0
    record, lines = record_of(out), (out / "journal.jsonl").read_text().splitlines()
    images = {json.loads(line)["stem"]: json.loads(line) for line in lines if '"image"' in line}
    for stem in STEMS:
        assert record["fused"][stem]["hash"] == images[stem]["hash"]
        assert record["fused"][stem]["source_hashes"] == images[stem]["source_hashes"]
        assert len(record["fused"][stem]["hash"]) == 32
