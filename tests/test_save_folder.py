"""A save folder never mixes settings and run.json tells the truth (issue 12's scenarios).

Runs are interrupted from the test with SIGKILL / SIGINT / SIGTERM while some images exist: the
child runs tests/seamed_sample.py, which stops after its k-th image until a signal comes,
the test waits for the k images, signals, then reruns. Every rerun either refuses with one line
(exit 2) or leaves a folder where each image equals a clean run of the settings journaled for it.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import sample
from helpers import ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png, start_child

TINY = ["--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
        "timestep_respacing=2", "device=cpu"]
STEMS = [f"q{k}" for k in range(6)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "in"
    return make_dataset(root, {stem: random_pair(40 + k, 32, 32) for k, stem in enumerate(STEMS)})


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory):
    return clean_runs(inputs, tmp_path_factory)


def clean_runs(inputs, tmp_path_factory):
    """{seed: {stem: image}} of clean single runs: what every image of a settings must equal."""
    refs = {}
    for seed in (3407, 0):
        out = tmp_path_factory.mktemp(f"clean{seed}")
        assert main(inputs, out, f"seed={seed}") == 0
        refs[seed] = {p.stem: read_png(p) for p in (out / "recon").glob("*.png")}
    return refs


def main(inputs, save_dir, *args):
    return sample.main(["--input_dir", str(inputs), "--save_dir", str(save_dir), "--quiet", *TINY, *args])


def seamed(inputs, save_dir, seam, *args):
    """sample.py in a child process through tests/seamed_sample.py; seam: its mode (and count)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return start_child([sys.executable, str(ROOT / "tests" / "seamed_sample.py"), *seam,
                        "--input_dir", str(inputs), "--save_dir", str(save_dir), "--quiet", *TINY, *args],
                       cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def start_held(inputs, save_dir, hold, *args):
    """sample.py in a child process that stops after its `hold`-th image; returns once it has."""
    proc = seamed(inputs, save_dir, ("hold", str(hold)), *args)
    deadline = time.monotonic() + 60
    while held_images(save_dir, proc.pid) < hold:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the child never wrote its images"
        time.sleep(0.05)
    return proc


def held_images(save_dir, pid):
    """The images a child has journaled and written (it holds right after the rename)."""
    try:
        lines = (save_dir / "journal.jsonl").read_text().splitlines()
    except OSError:
        return 0
    events = [json.loads(line) for line in lines if '"event": "image"' in line and f":{pid}:" in line]
    return sum((save_dir / "recon" / event["file"]).exists() for event in events)


def stop(proc, signum):
    proc.send_signal(signum)
    proc.wait(timeout=60)
    return proc.returncode, proc.stderr.read()


def record_of(save_dir):
    return json.loads((save_dir / "run.json").read_text())


def assert_truthful(save_dir, clean):
    """Every image in recon/ is listed in run.json with the settings that really made it."""
    record = record_of(save_dir)
    on_disk = {p.stem: read_png(p) for p in (save_dir / "recon").glob("*.png")}
    assert set(record["fused"]) == set(on_disk)
    for stem, image in on_disk.items():
        settings = record["settings"][record["fused"][stem]["settings"]]
        assert np.array_equal(image, clean[settings["diffusion"]["seed"]][stem]), stem
        assert record["fused"][stem]["seconds"] >= 0
    return record


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error")]


def test_killed_run_resumes_only_with_its_own_settings(inputs, clean, tmp_path, capsys):
    out = tmp_path / "out"
    proc = start_held(inputs, out, 3)
    assert stop(proc, signal.SIGKILL)[0] == -signal.SIGKILL
    assert not (out / "run.json").exists()
    # Leftovers of the kill: a temporary image and a torn journal line.
    (out / "recon" / ".q5.abc123.png.tmp").write_bytes(b"half a png")
    with open(out / "journal.jsonl", "ab") as journal:
        journal.write(b'{"event": "image", "run": "x", "ste')
    capsys.readouterr()
    assert main(inputs, out, "seed=0") == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "3 image(s) fused with other settings" in err
    assert "diffusion.seed" in err and "temporary files of an interrupted run" in err
    assert main(inputs, out) == 0
    assert "fused 3, skipped 3 (already fused), failed 0" in capsys.readouterr().err
    assert not list((out / "recon").glob(".*"))
    record = assert_truthful(out, clean)
    assert len(record["fused"]) == 6 and len(record["settings"]) == 1
    assert record["counts"] == {"fused": 3, "skipped": 3, "failed": 0, "in_folder": 6}
    assert record["skipped"] == STEMS[:3]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_overwrite_never_leaves_a_mix(inputs, clean, tmp_path, capsys, signum):
    out = tmp_path / "out"
    assert main(inputs, out) == 0
    proc = start_held(inputs, out, 2, "--overwrite", "seed=0")
    code, err = stop(proc, signum)
    if signum == signal.SIGINT:  # Ctrl-C: one line, and run.json says what is on disk
        assert code == 130 and "Traceback" not in err and "interrupted" in err
        record = assert_truthful(out, clean)
        assert len(record["fused"]) == 2 and record["counts"]["fused"] == 2
    # The old images went before the first new one: only seed-0 images remain.
    assert len(list((out / "recon").glob("*.png"))) == 2
    capsys.readouterr()
    assert main(inputs, out) == 2  # the old settings no longer match what is in the folder
    assert "fused with other settings" in capsys.readouterr().err
    assert main(inputs, out, "seed=0") == 0
    record = assert_truthful(out, clean)
    assert len(record["fused"]) == 6 and record["counts"]["skipped"] == 2
    assert {image["settings"] for image in record["fused"].values()} == {record["settings_key"]}


def test_a_child_started_where_sigint_is_ignored_still_stops_on_sigint(inputs, clean, tmp_path):
    """`pytest &` from a script ignores SIGINT, and children would inherit that: each child the
    tests start gets SIGINT back as a terminal delivers it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = start_held(inputs, tmp_path / "out", 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    code, err = stop(proc, signal.SIGINT)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert len(assert_truthful(tmp_path / "out", clean)["fused"]) == 1


def test_a_second_run_on_the_same_folder_is_refused(inputs, clean, tmp_path, capsys):
    out = tmp_path / "out"
    proc = start_held(inputs, out, 1)
    capsys.readouterr()
    assert main(inputs, out, "seed=0") == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "another sample.py run is using this folder" in err[0]
    assert f"pid {proc.pid} on" in err[0] and "started" in err[0]
    code, child_err = stop(proc, signal.SIGTERM)  # SIGTERM ends a run like Ctrl-C
    assert code == 130 and "interrupted" in child_err and "Traceback" not in child_err
    record = assert_truthful(out, clean)
    assert len(record["fused"]) == 1
    assert main(inputs, out) == 0  # the lock went with its process
    assert len(assert_truthful(out, clean)["fused"]) == 6


def test_overwrite_with_a_now_corrupt_input_keeps_no_old_image(tmp_path, capsys):
    pairs = {f"c{k}": random_pair(50 + k, 40, 40, colour_b=True) for k in range(3)}
    inputs = make_dataset(tmp_path / "in", pairs)
    out = tmp_path / "out"
    assert sample.main(["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none"]) == 0
    assert read_png(out / "recon" / "c1.png").ndim == 3
    (inputs / "vi" / "c1.png").write_bytes(b"not a png any more")
    args = ["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none", "color=grey"]
    assert sample.main([*args, "--overwrite"]) == 1
    assert not (out / "recon" / "c1.png").exists()
    assert all(read_png(out / "recon" / f"c{k}.png").ndim == 2 for k in (0, 2))
    assert sample.main(args) == 1  # c1 is not "already fused": it fails again
    record = record_of(out)
    assert set(record["fused"]) == {"c0", "c2"} and set(record["failed"]) == {"c1"}
    assert record["skipped"] == ["c0", "c2"] and record["settings"][record["settings_key"]]["color"] == "grey"


def test_colliding_stems_from_another_input_folder_are_not_already_fused(tmp_path, capsys):
    first = make_dataset(tmp_path / "first", {"s": random_pair(60, 40, 40)})
    second = make_dataset(tmp_path / "second", {"s": random_pair(61, 40, 40)})
    out = tmp_path / "out"

    def run(inputs, *extra):
        return sample.main(["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none", *extra])

    assert run(first) == 0
    capsys.readouterr()
    assert run(second) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and str(first / "ir" / "s.png") in err[0] and str(second / "ir" / "s.png") in err[0]
    assert run(second, "--overwrite") == 0
    record = record_of(out)
    assert record["fused"]["s"]["sources"] == [str(second / "ir" / "s.png"), str(second / "vi" / "s.png")]
    assert run(second) == 0 and record_of(out)["skipped"] == ["s"]


def test_images_the_journal_does_not_know_are_explained(tmp_path, capsys):
    """A folder of an earlier version (recon/ and run.json, no journal), or a file put in by hand."""
    inputs = make_dataset(tmp_path / "in", {"o": random_pair(62, 40, 40)})
    out = tmp_path / "out"
    (out / "recon").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(out / "recon" / "o.png")
    (out / "run.json").write_text(json.dumps({"fingerprint": {"prior": "none"}, "fused": {"o": 1.0}}))
    args = ["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none"]
    assert sample.main(args) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "o.png" in err[0] and "not in journal.jsonl" in err[0]
    assert read_png(out / "recon" / "o.png").max() == 0  # nothing was touched
    assert sample.main([*args, "--overwrite"]) == 0
    assert read_png(out / "recon" / "o.png").max() > 0 and set(record_of(out)["fused"]) == {"o"}


@pytest.mark.parametrize("bad_line", [{"event": "settings"}, {"event": "image", "stem": "o"},
                                      {"event": "image", "stem": "o", "file": ["o.png"], "key": "k"}])
def test_a_journal_line_missing_fields_is_skipped_with_a_warning(tmp_path, capsys, bad_line):
    """Valid JSON that lacks a field or has one of the wrong type: one warning naming the line,
    never a traceback; the image it would name counts as unknown (refused, then --overwrite)."""
    inputs = make_dataset(tmp_path / "in", {"o": random_pair(63, 40, 40)})
    out = tmp_path / "out"
    args = ["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none"]
    assert sample.main(args) == 0
    lines = (out / "journal.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["event"] != "image"]  # o.png now has no good line
    (out / "journal.jsonl").write_text("\n".join(kept + [json.dumps(bad_line)]) + "\n")
    capsys.readouterr()
    assert sample.main(args) == 2
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"line {len(kept) + 1}" in warnings[0] and "skipped" in warnings[0]
    assert "Traceback" not in err and "o.png" in error_lines(err)[0]
    assert sample.main([*args, "--overwrite"]) == 0
    assert set(record_of(out)["fused"]) == {"o"}


def test_a_start_whose_lock_cannot_be_written_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """A full disk at the lock's own write: one line, exit 2, and no folder left behind."""
    import errno
    inputs = make_dataset(tmp_path / "in", {"o": random_pair(64, 40, 40)})

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    out = tmp_path / "out"
    assert sample.main(["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "No space left on device" in err[0]
    assert not out.exists()
