"""What an audit of the save folder found (issue 25): an edit through a shared memory mapping, a
killed --overwrite whose stems the input no longer has, leftovers of the report step, Ctrl-C while
torch loads, journal lines nested too deeply, and recon/ replaced by a file."""
import mmap
import signal
import time

import pytest
from PIL import Image

import sample
from helpers import make_dataset, random_pair
from test_save_folder import error_lines, main, record_of, seamed

STEMS = [f"f{k}" for k in range(4)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "in"
    return make_dataset(root, {stem: random_pair(80 + k, 32, 32) for k, stem in enumerate(STEMS)})


def prior_free(inputs, out, *args):
    return sample.main(["--input_dir", str(inputs), "--save_dir", str(out), "--quiet", "prior=none", *args])


def _counts(out):
    return record_of(out)["counts"]


def test_an_edit_through_a_shared_mapping_is_noticed(tmp_path, capsys):
    """A write through mmap moves mtime and ctime only when it dirties a clean page: later writes
    to the same page leave every timestamp as it was until the kernel writes the page back (about
    30 s on ext4; never on tmpfs). A hash cached in between must not be trusted."""
    inputs = tmp_path / "in"
    for mod in ("ir", "vi"):  # BMP: a pixel byte can change and the file still decodes
        (inputs / mod).mkdir(parents=True)
        for k, stem in enumerate(["m0", "m1"]):
            Image.fromarray(random_pair(85 + k, 32, 32)[mod == "vi"]).save(inputs / mod / f"{stem}.bmp")
    out = tmp_path / "out"
    assert prior_free(inputs, out) == 0
    source, image = inputs / "vi" / "m1.bmp", out / "recon" / "m0.png"
    with open(source, "r+b") as s, open(image, "r+b") as i:
        source_map, image_map = mmap.mmap(s.fileno(), 0), mmap.mmap(i.fileno(), 0)
    try:
        source_map[-1:] = source_map[-1:]  # dirty the pages: the timestamps move now, not later
        image_map[-20:-19] = image_map[-20:-19]
        before = source.stat(), image.stat()
        time.sleep(2.1)  # the files look settled to a cache that waits for that
        assert prior_free(inputs, out) == 0 and _counts(out)["skipped"] == 2
        source_map[-1:] = bytes([255 - source_map[-1]])  # pixel bytes: no timestamp moves
        image_map[-20:-19] = bytes([255 - image_map[-20]])  # the PNG's last chunk: its CRC breaks
        after = source.stat(), image.stat()
        assert [(s.st_mtime_ns, s.st_ctime_ns, s.st_size) for s in before] == \
               [(s.st_mtime_ns, s.st_ctime_ns, s.st_size) for s in after]
        capsys.readouterr()
        assert prior_free(inputs, out) == 0
        err = capsys.readouterr().err
        assert "2 pair(s) changed since they were fused, fusing them again" in err
        assert _counts(out) == {"fused": 2, "skipped": 0, "failed": 0, "in_folder": 2}
    finally:
        source_map.close()
        image_map.close()


def test_a_finished_overwrite_drops_what_a_killed_one_set_aside_for_stems_now_gone(inputs, tmp_path):
    fewer = make_dataset(tmp_path / "fewer", {stem: random_pair(80 + k, 32, 32) for k, stem in enumerate(STEMS[:2])})
    out = tmp_path / "out"
    assert main(inputs, out) == 0
    # Killed after its set_aside lines and its settings line: all four old images are aside.
    proc = seamed(fewer, out, ("kill", str(len(STEMS) + 1)), "seed=0", "--overwrite")
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert len(list((out / "recon" / ".replaced").rglob("*.png"))) == len(STEMS)
    assert main(fewer, out, "seed=0", "--overwrite") == 0  # the same command, to its end
    assert not (out / "recon" / ".replaced").exists()
    record = record_of(out)
    assert "set_aside" not in record and sorted(record["fused"]) == STEMS[:2]
    assert sorted(p.stem for p in (out / "recon").glob("*.png")) == STEMS[:2]


def test_temporary_files_of_a_killed_report_are_removed_at_the_next_start(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert prior_free(inputs, out) == 0
    leftover = out / "report" / "plots" / ".bars.abc123.png.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a plot")
    capsys.readouterr()
    assert prior_free(inputs, out) == 0
    assert "removed the temporary files of an interrupted run" in capsys.readouterr().err
    assert not leftover.exists()


def test_ctrl_c_while_torch_loads_is_an_interruption_not_a_traceback(inputs, tmp_path):
    proc = seamed(inputs, tmp_path / "out", ("interrupt-import",))
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "Traceback" not in err and err.startswith("interrupted: ")


def test_a_journal_line_nested_too_deeply_is_skipped(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert prior_free(inputs, out) == 0
    with open(out / "journal.jsonl", "a") as journal:
        journal.write("[" * 100_000 + "]" * 100_000 + "\n")
    (out / ".hashes.json").write_text("{" + '"a":{' * 100_000 + "}" * 100_001)  # an earlier version's cache
    capsys.readouterr()
    assert prior_free(inputs, out) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert _counts(out)["skipped"] == len(STEMS) and not (out / ".hashes.json").exists()


def test_recon_replaced_by_a_file_is_one_start_error(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert prior_free(inputs, out) == 0
    record = (out / "run.json").read_bytes()
    for path in (out / "recon").iterdir():
        path.unlink()
    (out / "recon").rmdir()
    (out / "recon").write_text("not a folder")
    capsys.readouterr()
    assert prior_free(inputs, out) == 2
    err = error_lines(capsys.readouterr().err)
    assert err == [f"error: {out / 'recon'}: is a file where the run writes a folder; move it away "
                   f"or choose another --save_dir"]
    assert (out / "run.json").read_bytes() == record  # nothing already written is lost
