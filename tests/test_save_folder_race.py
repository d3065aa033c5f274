"""Two runs started together on a save folder that does not exist yet (issue 25): the refused one
removes nothing, and the winner's lock and journal stay in place for its whole run.

The many-starts test forks processes that call the production start directly, all released at
once on fresh folders; the seam test pauses one run (tests/seamed_sample.py pause-mkdir) between
its check that the folder is missing and its mkdir, while another run takes the folder.
"""
import json
import multiprocessing
import signal
import time

import pytest

from ddfm.common import RunError
from ddfm.savefolder.layout import Layout
from ddfm.savefolder.lock import FolderLock, holder_run
from ddfm.savefolder.start import start_run
from helpers import make_dataset, random_pair
from test_save_folder import assert_truthful, clean_runs, error_lines, main, seamed, start_held, stop

STEMS = [f"r{k}" for k in range(3)]
HEADER = {"settings_key": "k", "fingerprint": {"prior": "none"}, "input_dir": "/nowhere"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("race") / "in"
    return make_dataset(root, {stem: random_pair(90 + k, 32, 32) for k, stem in enumerate(STEMS)})


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory):
    return clean_runs(inputs, tmp_path_factory)


def _start(folder, barrier, done, results, worker):
    """One start on `folder`, released with the others; the winner keeps the lock until every
    start has returned, then reports whether its lock file and journal are still there."""
    layout, run_id = Layout(folder), f"run{worker}"
    lock = FolderLock(layout)
    barrier.wait()
    try:
        start_run(layout, lock, run_id, [], [], HEADER, False, lambda message: None)
    except RunError as err:
        done.wait()
        results.put((worker, "refused", str(err)))
        return
    done.wait()
    intact = holder_run(layout) == run_id and f'"run": "{run_id}"' in layout.journal.read_text()
    results.put((worker, "won", intact))
    lock.release()


def test_many_simultaneous_starts_on_fresh_folders_leave_the_winner_intact(tmp_path):
    context, starts, rounds = multiprocessing.get_context("fork"), 4, 25
    for attempt in range(rounds):
        folder = tmp_path / f"new{attempt}" / "out"  # two levels to create
        barrier, done, results = context.Barrier(starts), context.Barrier(starts), context.Queue()
        procs = [context.Process(target=_start, args=(folder, barrier, done, results, k)) for k in range(starts)]
        try:
            for proc in procs:
                proc.start()
            outcome = sorted(results.get(timeout=60) for _ in procs)
        finally:
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
        won = [entry for entry in outcome if entry[1] == "won"]
        assert len(won) == 1 and won[0][2], (attempt, outcome)  # the winner's files survived
        assert all("another sample.py run" in entry[2] for entry in outcome if entry[1] == "refused")
        assert sorted(p.name for p in folder.iterdir()) == ["journal.jsonl", "run.lock"], attempt


def test_a_start_paused_before_its_mkdir_removes_nothing_of_the_winner(inputs, clean, tmp_path, capsys):
    out, flag = tmp_path / "out", tmp_path / "go"
    loser = seamed(inputs, out, ("pause-mkdir", str(flag)))
    deadline = time.monotonic() + 120
    while not (tmp_path / "go.paused").exists():  # it has seen the folder missing
        assert loser.poll() is None and time.monotonic() < deadline, loser.stderr.read()
        time.sleep(0.05)
    assert not out.exists()
    winner = start_held(inputs, out, 1)
    flag.touch()
    assert loser.wait(timeout=120) == 2
    err = error_lines(loser.stderr.read())
    assert len(err) == 1 and f"another sample.py run is using this folder (pid {winner.pid}" in err[0]
    # The winner still owns its folder: its lock, its journal, its image.
    assert json.loads((out / "run.lock").read_text())["pid"] == winner.pid
    assert f":{winner.pid}:" in (out / "journal.jsonl").read_text()
    capsys.readouterr()
    assert main(inputs, out) == 2  # a third run is still refused while the winner runs
    assert f"pid {winner.pid}" in error_lines(capsys.readouterr().err)[0]
    code, winner_err = stop(winner, signal.SIGTERM)
    assert code == 130 and "Traceback" not in winner_err
    assert main(inputs, out) == 0  # and the folder resumes
    record = assert_truthful(out, clean)
    assert record["counts"] == {"fused": 2, "skipped": 1, "failed": 0, "in_folder": 3}
