"""The dataset registry is checked on load, and fetching lays every split out byte-exact.

Everything is served from a loopback HTTP server (127.0.0.1, port 0) over a tree the test makes,
`<owner>/<repo>/<commit>/<path>` as GitHub's raw-file address serves it; no test touches the network.
"""
import errno
import hashlib
import http.server
import json
import os
import re
import time

import pytest

from ddfm.datasets.__main__ import main
from ddfm.datasets.registry import load_registry
from helpers import loopback_server

TIMEOUT = 5.0  # a bound on a hang, never a speed check
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "someone/fusion-set"
STEMS = ("001", "002", "007")


class TreeHandler(http.server.BaseHTTPRequestHandler):
    """Serves server.root's files; honours 'Range: bytes=N-'; counts every request per path."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path in self.server.slow:
            time.sleep(self.server.slow[self.path])
        file = self.server.root / self.path.lstrip("/")
        if not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        try:
            self.wfile.write(data[start:])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def write_registry(path, files, pairs=len(STEMS), extra=""):
    lines = [f"      - {_sha(data)} {len(data)} {repo_path}" for repo_path, data in files.items()]
    path.write_text(
        "version: 1\ndatasets:\n  tiny:\n    description: three pairs\n"
        f"    repository: {REPO}\n    commit: {COMMIT}\n    verified: true\n    pairs: {pairs}\n"
        "    roles:\n      - {role: infrared, source: imgs/Inf, folder: ir}\n"
        "      - {role: visible, source: imgs/Vis, folder: vi}\n"
        "    licence: test terms\n    citation: a test citation\n"
        "    files:\n" + "\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def mirror(tmp_path):
    """A served tree of three pairs (and a Thumbs.db the registry does not list) + its registry."""
    base = tmp_path / "mirror" / REPO / COMMIT
    files = {}
    for i, stem in enumerate(STEMS):
        for folder in ("imgs/Inf", "imgs/Vis"):
            data = os.urandom(40_000 + 1_000 * i) + folder.encode()
            files[f"{folder}/{stem}.png"] = data
    for repo_path, data in files.items():
        (base / repo_path).parent.mkdir(parents=True, exist_ok=True)
        (base / repo_path).write_bytes(data)
    (base / "imgs/Vis/Thumbs.db").write_bytes(b"junk")
    with loopback_server(TreeHandler, TIMEOUT) as httpd:
        httpd.root, httpd.requests, httpd.slow = tmp_path / "mirror", [], {}
        httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.files, httpd.base = files, base
        httpd.registry = write_registry(tmp_path / "registry.yaml", files)
        yield httpd


def fetch(mirror, root, *extra, registry=None):
    return main(["--registry", str(registry or mirror.registry), "fetch", "tiny", "--root", str(root),
                 "--mirror", mirror.url, "--quiet", "--timeout", str(TIMEOUT), *extra])


def errors(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_fetch_lays_out_every_file_with_its_hash_and_a_record(mirror, tmp_path):
    assert fetch(mirror, tmp_path / "data", "--jobs", "3") == 0
    folder = tmp_path / "data" / "tiny"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        [f"ir/{s}.png" for s in STEMS] + [f"vi/{s}.png" for s in STEMS] + ["dataset.json"])
    for repo_path, data in mirror.files.items():
        target = folder / repo_path.replace("imgs/Inf", "ir").replace("imgs/Vis", "vi")
        assert target.read_bytes() == data
    record = json.loads((folder / "dataset.json").read_text())
    assert (record["repository"], record["commit"], record["licence"]) == (REPO, COMMIT, "test terms")
    assert record["source"] == f"https://github.com/{REPO}" and record["citation"] == "a test citation"
    assert {f["path"]: f["sha256"] for f in record["files"]} == {
        p.replace("imgs/Inf", "ir").replace("imgs/Vis", "vi"): _sha(d) for p, d in mirror.files.items()}
    assert sorted(p for p, _ in mirror.requests) == sorted(f"/{REPO}/{COMMIT}/{p}" for p in mirror.files)


def test_rerun_downloads_nothing_and_refetches_only_a_changed_file(mirror, tmp_path):
    assert fetch(mirror, tmp_path / "data") == 0
    served = len(mirror.requests)
    assert fetch(mirror, tmp_path / "data") == 0
    assert len(mirror.requests) == served
    edited = tmp_path / "data" / "tiny" / "vi" / "002.png"
    edited.write_bytes(b"x" + edited.read_bytes()[1:])  # same size, other bytes
    assert fetch(mirror, tmp_path / "data") == 0
    assert mirror.requests[served:] == [(f"/{REPO}/{COMMIT}/imgs/Vis/002.png", None)]
    assert edited.read_bytes() == mirror.files["imgs/Vis/002.png"]


def test_flipped_byte_is_one_line_and_no_file_in_place(mirror, tmp_path, capsys):
    served = mirror.base / "imgs/Inf/007.png"
    data = bytearray(served.read_bytes())
    data[1234] ^= 0x01
    served.write_bytes(bytes(data))
    assert fetch(mirror, tmp_path / "data") == 1
    lines = errors(capsys)
    folder = tmp_path / "data" / "tiny"
    assert len(lines) == 1 and str(folder / "ir" / "007.png") in lines[0] and "do not match" in lines[0]
    assert not list(folder.glob("ir/007.png*"))  # neither the file nor a .part
    assert (folder / "vi" / "007.png").read_bytes() == mirror.files["imgs/Vis/007.png"]
    assert not (folder / "dataset.json").exists()


def test_missing_file_on_the_server_is_one_404_line(mirror, tmp_path, capsys):
    assert fetch(mirror, tmp_path / "data") == 0
    (tmp_path / "data" / "tiny" / "vi" / "001.png").unlink()
    (mirror.base / "imgs/Vis/001.png").unlink()
    capsys.readouterr()
    assert fetch(mirror, tmp_path / "data") == 1
    lines = errors(capsys)
    assert len(lines) == 1 and "vi/001.png" in lines[0] and "HTTP 404" in lines[0]
    assert not list((tmp_path / "data" / "tiny" / "vi").glob("001.png*"))
    assert not (tmp_path / "data" / "tiny" / "dataset.json").exists()  # no longer complete


def test_interrupted_part_resumes_with_a_range_request(mirror, tmp_path):
    folder = tmp_path / "data" / "tiny" / "ir"
    folder.mkdir(parents=True)
    data = mirror.files["imgs/Inf/002.png"]
    (folder / "002.png.part").write_bytes(data[:25_000])
    assert fetch(mirror, tmp_path / "data") == 0
    assert (f"/{REPO}/{COMMIT}/imgs/Inf/002.png", "bytes=25000-") in mirror.requests
    assert (folder / "002.png").read_bytes() == data and not (folder / "002.png.part").exists()


def test_a_server_that_stalls_is_one_timeout_line(mirror, tmp_path, capsys):
    mirror.slow[f"/{REPO}/{COMMIT}/imgs/Inf/001.png"] = 1.5
    assert main(["--registry", str(mirror.registry), "fetch", "tiny", "--root", str(tmp_path / "data"),
                 "--mirror", mirror.url, "--quiet", "--timeout", "0.3"]) == 1
    lines = errors(capsys)
    assert len(lines) == 1 and "ir/001.png" in lines[0] and "timed out" in lines[0]
    assert not (tmp_path / "data" / "tiny" / "ir" / "001.png").exists()


def test_full_disk_is_one_line_and_leaves_neither_file_nor_part(mirror, tmp_path, capsys, monkeypatch):
    import ddfm.datasets.fetch as fetch_module

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch_module.os, "fsync", no_space)
    assert fetch(mirror, tmp_path / "data", "--jobs", "1") == 1
    lines = errors(capsys)
    assert len(lines) == len(mirror.files) and all("disk full" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "data" / "tiny").rglob("*") if p.is_file()) == []


def test_unwritable_root_is_one_line_exit_2(mirror, tmp_path, capsys):
    root = tmp_path / "a-file"
    root.write_text("not a folder")
    assert fetch(mirror, root) == 2
    lines = errors(capsys)
    assert len(lines) == 1 and str(root / "tiny") in lines[0] and "cannot create" in lines[0]
    assert root.read_text() == "not a folder" and mirror.requests == []


def test_unknown_and_unverified_splits(mirror, tmp_path, capsys):
    extra = ("  later:\n    description: d\n    repository: a/b\n    commit: null\n    verified: false\n"
             "    reason: too large to read\n    pairs: 2\n    roles:\n      - {role: ir, source: x, folder: ir}\n"
             "      - {role: vi, source: y, folder: vi}\n    licence: l\n    citation: c\n    files: []\n")
    registry = write_registry(tmp_path / "two.yaml", mirror.files, extra=extra)
    assert main(["--registry", str(registry), "fetch", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset(s) nope" in errors(capsys)[0]
    assert main(["--registry", str(registry), "fetch", "later", "--root", str(tmp_path), "--quiet"]) == 1
    line = errors(capsys)
    assert len(line) == 1 and "later: not verified" in line[0] and "too large to read" in line[0]


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace("version: 1", "version: 7"), "expected 'version: 1'"),
    (lambda text: text.replace("    pairs: 3", "    pairs: 4"), "make 3 pairs, the entry says 4"),
    (lambda text: text.replace(COMMIT, COMMIT[:7]), "full 40-hex-digit commit"),
    (lambda text: re.sub(r"- [0-9a-f]{64} ", "- abc ", text, count=1), "is not '<sha256> <size> <path>'"),
    (lambda text: text.replace("imgs/Inf/001.png", "imgs/Inf/../../001.png"), "not a safe path"),
    (lambda text: text.replace("    licence: test terms\n", ""), "missing field(s) licence"),
    (lambda text: text + "  : [\n", "not a valid YAML registry"),
])
def test_malformed_registry_is_one_line_exit_2(mirror, tmp_path, capsys, damage, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(damage(mirror.registry.read_text()))
    assert fetch(mirror, tmp_path / "data", registry=bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and message in err
    assert mirror.requests == [] and not (tmp_path / "data").exists()


def test_shipped_registry_holds_the_published_splits():
    splits = load_registry()
    counts = {name: (s.pairs, len(s.files)) for name, s in splits.items() if s.verified}
    assert counts["tno-cddfuse"] == (25, 50) and counts["roadscene-cddfuse"] == (50, 100)
    assert counts["mri_ct-cddfuse"] == (21, 42) and counts["mri_pet-cddfuse"] == (42, 84)
    assert counts["mri_spect-cddfuse"] == (73, 146) and counts["roadscene-221"] == (221, 442)
    assert counts["m3fd-300"] == (300, 600) and not splits["msrs-test"].verified
    assert not any(f.path.endswith(("Thumbs.db", ".DS_Store")) for s in splits.values() for f in s.files)
    assert splits["roadscene-221"].commit == "ab71420f8fc96396eeb97eecf3694909b3feb656"
