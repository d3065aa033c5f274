"""compare.py as a user meets it: every cell a save folder, the table, figures and index; an
unchanged second call fuses and scores nothing; a killed call resumes to the same bytes; bad input
is one line each and the other cells still complete."""
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import compare
from ddfm.compare import scoring
from ddfm.metrics.evaluation import evaluate_folders
from helpers import ROOT, TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, start_child, write_png

TINY_DDFM = f"ddfm:model_path={TINY_WEIGHTS}:timestep_respacing=2"
METHODS = f"prior-free,mean,max,tiny={TINY_DDFM}"
LABELS = ["prior-free", "mean", "max", "tiny"]


@pytest.fixture
def data(tmp_path):
    one = make_dataset(tmp_path / "one", {f"p{i}": random_pair(i, 48, 64) for i in range(3)})
    two = make_dataset(tmp_path / "two", {f"q{i}": random_pair(10 + i, 48, 56, colour_b=True) for i in range(2)},
                       mods=("CT", "MRI"))
    return [f"one={one}", f"two={two}"]


def run_compare(data, save_dir, *extra, methods=METHODS, jobs=1):
    return compare.main(["--datasets", ",".join(data), "--methods", methods, "--save_dir", str(save_dir),
                         "--model_config", str(TINY_MODEL_CONFIG), "--jobs", str(jobs), "--quiet",
                         "device=cpu", *extra])


def journal_lines(root):
    return {p: len(p.read_text().splitlines()) for p in sorted(Path(root).glob("*/*/journal.jsonl"))}


def tree_bytes(root):
    """{relative path: hash} of the images, scores and tables (not the logs' timings)."""
    paths = [p for pattern in ("*/*/recon/*.png", "metrics/*.json", "table.*", "figures/*.png")
             for p in Path(root).glob(pattern)]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


def test_compare_writes_folders_table_figures_and_index(tmp_path, data, capsys):
    res = tmp_path / "res"
    assert run_compare(data, res, jobs=2) == 0
    for label in LABELS:
        assert sorted(p.name for p in (res / label / "one" / "recon").iterdir()) == ["p0.png", "p1.png", "p2.png"]
        assert sorted(p.name for p in (res / label / "two" / "recon").iterdir()) == ["q0.png", "q1.png"]
        assert (res / label / "one" / "run.json").is_file()
        assert (res / label / "one" / "report" / "index.html").is_file()
    # The cached scores are evaluate.py's scores of each folder.
    cached = scoring.ScoreCache(res)
    mine = evaluate_folders(tmp_path / "two" / "CT", tmp_path / "two" / "MRI", {"tiny": res / "tiny" / "two" / "recon"})
    import json
    saved = json.loads((res / "metrics" / "two.json").read_text())
    expected = {stem: {m: float(v) for m, v in row.items()} for stem, row in mine["methods"]["tiny"]["per_image"].items()}
    assert saved["methods"]["tiny"]["per_image"] == expected
    assert len(cached.scores) == 5 * 4  # 5 pairs x 4 methods, one protocol
    # The table is table.py's table of the same metrics files (ranks included).
    import table
    assert table.main(["--json", f"one={res / 'metrics' / 'one.json'}", "--json", f"two={res / 'metrics' / 'two.json'}",
                       "--out", str(tmp_path / "t.md")]) == 0
    assert (res / "table.md").read_text() == (tmp_path / "t.md").read_text()
    assert "**" in (res / "table.md").read_text() and "\\textbf" in (res / "table.tex").read_text()
    assert len((res / "table.csv").read_text().splitlines()) == 1 + 2 * 8 * 4
    for name in ("one", "two"):
        from PIL import Image
        with Image.open(res / "figures" / f"{name}.png") as figure:
            assert figure.width > 500 and figure.height > 100
    index = (res / "index.html").read_text()
    links = re.findall(r'href="([^"]+)"', index)
    for label in LABELS:
        for name in ("one", "two"):
            assert f"{label}/{name}/report/index.html" in links
    assert all((res / link).exists() for link in links)
    assert "figures/one.png" in index and "table.tex" in links
    # The table's header as in table.md: each dataset over its 8 metric columns, each metric with its
    # direction (the caption explains the arrows).
    assert re.findall(r'<th class="group" colspan="(\d+)">(\w+)</th>', index) == [("8", "one"), ("8", "two")]
    assert index.count("<th>EN\u2191</th>") == 2 and "(\u2191 higher / \u2193 lower is better)" in index


def test_second_call_fuses_and_scores_nothing_and_notices_a_changed_source(tmp_path, data, monkeypatch):
    res = tmp_path / "res"
    assert run_compare(data, res) == 0
    before, cache_before = journal_lines(res), (res / scoring.CACHE).read_bytes()
    table_before = (res / "table.md").read_bytes()
    scored = []
    real = scoring.score_group
    monkeypatch.setattr(scoring, "score_group", lambda *a, **k: scored.append(a[1]) or real(*a, **k))
    (res / "table.md").unlink()
    assert run_compare(data, res) == 0
    # Each folder's journal gains only the run header and the 'skipped' line: no image line.
    assert {p: n - before[p] for p, n in journal_lines(res).items()} == {p: 2 for p in before}
    assert scored == [] and (res / scoring.CACHE).read_bytes() == cache_before
    assert (res / "table.md").read_bytes() == table_before  # the outputs are rebuilt
    # A source edited in place: its pair is fused again by every method and only those are scored.
    a, _ = random_pair(99, 48, 64)
    write_png(tmp_path / "one" / "ir" / "p1.png", a)
    assert run_compare(data, res) == 0
    assert len(scored) == 1 and sorted(stem for _, stem, _ in scored[0]) == ["p1"] * 4


@pytest.mark.parametrize("mode,count", [("kill-journal", 9), ("kill-score", 4)])
def test_killed_call_resumes_to_the_same_bytes(tmp_path, data, mode, count):
    whole = tmp_path / "whole"
    assert run_compare(data, whole) == 0
    killed = tmp_path / "killed"
    args = ["--datasets", ",".join(data), "--methods", METHODS, "--save_dir", str(killed), "--model_config",
            str(TINY_MODEL_CONFIG), "--jobs", "1", "--quiet", "device=cpu"]
    child = start_child([sys.executable, str(ROOT / "tests" / "seamed_compare.py"), mode, str(count), *args],
                        cwd=ROOT, stderr=subprocess.PIPE)
    child.wait(timeout=600)
    assert child.returncode == -9
    assert not (killed / "index.html").exists()
    assert run_compare(data, killed) == 0
    assert tree_bytes(killed) == tree_bytes(whole)
    assert len(scoring.ScoreCache(killed).scores) == 20


def test_bad_input_is_one_line_each_and_the_other_cells_complete(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("DDFM_DATA_ROOT", str(tmp_path / "nodata"))
    res = tmp_path / "res"
    assert run_compare(data, res, methods="prior-free") == 0
    kept = tree_bytes(res)["prior-free/one/recon/p0.png"]
    capsys.readouterr()
    datasets = data + ["tno-cddfuse", "mine=" + str(tmp_path / "absent")]
    methods = f"prior-free,bogus,noprior=ddfm:model_path={tmp_path / 'none.pt'},tiny={TINY_DDFM}"
    assert run_compare(datasets, res, methods=methods) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 5, errors
    assert any("unknown method 'bogus'" in e for e in errors)
    assert any("python -m ddfm.datasets fetch tno-cddfuse --root" in e for e in errors)
    assert any(f"{tmp_path / 'absent'}: dataset folder not found" in e for e in errors)
    assert sum(e.startswith("error: noprior on ") and "none.pt" in e for e in errors) == 2
    assert tree_bytes(res)["prior-free/one/recon/p0.png"] == kept
    assert sorted(p.name for p in (res / "tiny" / "two" / "recon").iterdir()) == ["q0.png", "q1.png"]
    md = (res / "table.md").read_text()
    assert re.search(r"^\| noprior \| – \| – ", md, re.M) and "–: no result for noprior on one, noprior on two" in md
    assert "noprior on one" in (res / "index.html").read_text()
    # Only a failed cell: exit 1. An unusable results folder: one line, exit 2.
    assert run_compare(data, res, methods=f"prior-free,noprior=ddfm:model_path={tmp_path / 'none.pt'}") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert run_compare(data, blocker / "res", methods="prior-free") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {blocker / 'res'}: cannot make")


def test_under_torchrun_each_cell_is_sharded_and_rank0_writes_the_outputs(tmp_path, data):
    import json
    import os

    from test_scaling import free_port
    whole = tmp_path / "whole"
    assert run_compare(data, whole, methods="prior-free,mean") == 0
    res = tmp_path / "res"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(ROOT / "compare.py"), "--datasets", ",".join(data),
           "--methods", f"prior-free,mean,tiny={TINY_DDFM}", "--save_dir", str(res), "--model_config",
           str(TINY_MODEL_CONFIG), "--jobs", "1", "--quiet", "device=cpu"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for label in ("prior-free", "mean", "tiny"):
        record = json.loads((res / label / "one" / "run.json").read_text())
        assert record["world_size"] == 2 and sorted(record["fused"]) == ["p0", "p1", "p2"]
    assert done.stderr.count("wrote ") == 4  # table.md, .tex, .csv and index.html, by rank 0 only
    same = {k: v for k, v in tree_bytes(res).items() if k.split("/")[0] in ("prior-free", "mean")}
    assert same == {k: v for k, v in tree_bytes(whole).items() if k.split("/")[0] in ("prior-free", "mean")}


def cache_entries(root):
    """The cache file's lines, parsed (a torn line fails the test)."""
    import json
    return [json.loads(line) for line in (Path(root) / scoring.CACHE).read_text().splitlines()]


def test_score_cache_is_compacted_when_stale_lines_outnumber_live_ones_and_a_kill_loses_nothing(tmp_path, data):
    import json
    res = tmp_path / "res"
    assert run_compare(data[:1], res, methods="mean,max") == 0
    live = cache_entries(res)
    assert len(live) == 6  # 3 pairs x 2 methods
    # Stale lines: scores of images no save folder lists, a duplicate, a torn line. Not more than the
    # live entries: the file is left alone (appended to only).
    stale = [json.dumps({"key": f"gone:{i}", "protocol": "reference", "metrics": {"EN": i}}) for i in range(4)]
    cache = res / scoring.CACHE
    cache.write_text(cache.read_text() + "\n".join(stale[:3] + [json.dumps(live[0])]) + "\n{\"key\": \"to")
    kept = cache.read_bytes()
    assert run_compare(data[:1], res, methods="mean") == 0
    assert cache.read_bytes() == kept
    # One more stale line than live entries: the next call, even with fewer methods, keeps every
    # folder's scores (max's too) and only those.
    cache.write_text(cache.read_text() + "\n" + stale[3] + "\n" + json.dumps(live[1]) + "\n")
    before = cache.read_bytes()
    args = ["--datasets", data[0], "--methods", "mean", "--save_dir", str(res), "--model_config",
            str(TINY_MODEL_CONFIG), "--jobs", "1", "--quiet", "device=cpu"]
    child = start_child([sys.executable, str(ROOT / "tests" / "seamed_compare.py"), "kill-compact", "0", *args],
                        cwd=ROOT, stderr=subprocess.PIPE)
    child.wait(timeout=600)
    assert child.returncode == -9  # killed with the new file written, not yet renamed
    assert cache.read_bytes() == before and list(res.glob(".*.tmp"))
    assert run_compare(data[:1], res, methods="mean") == 0
    assert sorted(map(json.dumps, cache_entries(res))) == sorted(map(json.dumps, live))
    assert not list(res.glob(".*.tmp"))  # the killed call's leftover is gone
    compacted, table = cache.read_bytes(), (res / "table.md").read_text()
    assert run_compare(data[:1], res, methods="mean") == 0
    assert cache.read_bytes() == compacted and (res / "table.md").read_text() == table


def test_under_torchrun_only_rank0_prints_the_problems_and_every_rank_exits_with_its_status(tmp_path, data):
    import os

    from test_scaling import free_port
    res = tmp_path / "res"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
             f"--master_port={free_port()}", str(ROOT / "compare.py")]
    # An unknown method, a missing dataset folder and a cell refused for its missing checkpoint: the
    # good cells are fused and scored (rank 0 is not stopped by another rank's early exit) and each
    # problem is one line.
    cmd = start + ["--datasets", f"{data[0]},mine={tmp_path / 'absent'}", "--methods",
                   f"mean,bogus,noprior=ddfm:model_path={tmp_path / 'none.pt'}", "--save_dir", str(res),
                   "--jobs", "1", "--quiet", "device=cpu"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, done.stderr[-3000:]
    assert any("unknown method 'bogus'" in e for e in errors)
    assert any(f"{tmp_path / 'absent'}: dataset folder not found" in e for e in errors)
    assert any(e.startswith("error: noprior on one: ") and "none.pt" in e for e in errors)
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", done.stderr)  # torchrun may stop a rank that is still exiting
    assert "2" in codes and set(codes) <= {"2", "-15"}, done.stderr[-3000:]
    assert done.returncode != 0 and "interrupted" not in done.stderr
    assert "| mean |" in (res / "table.md").read_text() and (res / "index.html").is_file()
    # An argument error: argparse's usage and message once.
    done = subprocess.run(start + ["--datasets", data[0], "--methods", "mean", "--protocol", "nope"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.stderr.count("error: ") == 1 and done.stderr.count("usage: ") == 1, done.stderr[-3000:]
