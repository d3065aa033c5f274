"""The downloader resumes, verifies and writes atomically; served only from 127.0.0.1."""
import hashlib
import http.server
import os
import re
import socket

import pytest

from guided_diffusion import download as dl
from guided_diffusion.download import DownloadError, download, part_path
from helpers import loopback_server

TIMEOUT = 5.0  # every request in these tests is local; nothing should ever take this long
DATA = os.urandom(300 * 1024 + 17)  # a few hundred KB, not a multiple of the chunk size
SHA = hashlib.sha256(DATA).hexdigest()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves server.payload at any path; honours 'Range: bytes=N-' unless server.ignore_range."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        if self.path.endswith("/missing.pt"):
            self.send_error(404, "Not Found")
            return
        data = server.payload
        header = self.headers.get("Range")
        server.ranges.append(header)
        start = 0
        if header and not server.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", header)
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A server that dies mid-transfer: announce the full length, send only part of it.
        if server.cut_at is not None:
            body = body[: server.cut_at]
        self.wfile.write(body)


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 (port chosen by the OS), run in a background thread."""
    with loopback_server(FileHandler, TIMEOUT) as httpd:
        httpd.payload = DATA
        httpd.ignore_range = False
        httpd.cut_at = None
        httpd.ranges = []
        httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/256x256_diffusion_uncond.pt"
        yield httpd


def get(httpd, output, **kwargs):
    kwargs.setdefault("progress", False)
    return download(httpd.url, output, timeout=TIMEOUT, **kwargs)


def closed_port_url():
    """A URL on 127.0.0.1 whose port was just freed, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/256x256_diffusion_uncond.pt"


def test_full_download_verified(server, tmp_path):
    output = tmp_path / "models" / "ckpt.pt"  # the folder is created
    result = get(server, output, expected_size=len(DATA), sha256=SHA)
    assert result == output
    assert output.read_bytes() == DATA
    assert not part_path(output).exists()
    assert server.ranges == [None]


def test_resume_from_partial_file(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    part_path(output).write_bytes(DATA[:100_000])
    get(server, output, expected_size=len(DATA), sha256=SHA)
    assert server.ranges == ["bytes=100000-"]
    assert output.read_bytes() == DATA
    assert not part_path(output).exists()


def test_complete_part_file_gets_416_and_is_finished(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    part_path(output).write_bytes(DATA)
    get(server, output, sha256=SHA)
    assert server.ranges == [f"bytes={len(DATA)}-"]
    assert output.read_bytes() == DATA


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.ignore_range = True
    output = tmp_path / "ckpt.pt"
    part_path(output).write_bytes(b"\0" * 50_000)  # would corrupt the file if appended to
    get(server, output, expected_size=len(DATA), sha256=SHA)
    assert server.ranges == ["bytes=50000-"]
    assert output.read_bytes() == DATA


def test_interrupted_transfer_keeps_part_and_resumes(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    server.cut_at = 123_456
    with pytest.raises(DownloadError, match="resume"):
        get(server, output, sha256=SHA)
    assert not output.exists()
    assert part_path(output).read_bytes() == DATA[:123_456]
    server.cut_at = None
    get(server, output, sha256=SHA)
    assert server.ranges == [None, "bytes=123456-"]
    assert output.read_bytes() == DATA


def test_size_mismatch_is_an_error_and_creates_nothing(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    with pytest.raises(DownloadError) as info:
        get(server, output, expected_size=len(DATA) + 1)
    assert "expected" in str(info.value) and "\n" not in str(info.value)
    assert not output.exists()


def test_wrong_sha256_is_an_error_and_creates_nothing(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        get(server, output, expected_size=len(DATA), sha256="0" * 64)
    assert not output.exists()
    assert not part_path(output).exists()  # bad bytes are never resumed from


def test_existing_file_is_not_overwritten_without_force(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    output.write_bytes(b"keep me")
    assert get(server, output) == output  # nothing to check it against: it is kept as is
    assert output.read_bytes() == b"keep me"
    with pytest.raises(DownloadError, match="--force"):
        get(server, output, sha256=SHA)  # fails the check: refused, still untouched
    assert output.read_bytes() == b"keep me"
    assert server.ranges == []  # the server was never asked
    get(server, output, sha256=SHA, force=True)
    assert output.read_bytes() == DATA


def test_existing_valid_file_is_kept(server, tmp_path):
    output = tmp_path / "ckpt.pt"
    output.write_bytes(DATA)
    assert get(server, output, expected_size=len(DATA), sha256=SHA) == output
    assert server.ranges == []


def test_http_error_is_one_line(server, tmp_path):
    output = tmp_path / "a.pt"
    with pytest.raises(DownloadError) as info:
        download(server.url.rsplit("/", 1)[0] + "/missing.pt", output, progress=False, timeout=TIMEOUT)
    assert str(info.value).startswith("HTTP 404 Not Found for http://127.0.0.1:")
    assert not output.exists() and not part_path(output).exists()


def test_bad_sha256_argument(tmp_path):
    with pytest.raises(DownloadError, match="64 hex digits"):
        download(closed_port_url(), tmp_path / "a.pt", sha256="bad", progress=False, timeout=TIMEOUT)


def test_cli_unreachable_url_prints_one_line(tmp_path, capsys):
    output = tmp_path / "ckpt.pt"
    status = dl.main(["--url", closed_port_url(), "--output", str(output), "--quiet", "--timeout", str(TIMEOUT)])
    err = capsys.readouterr().err
    assert status != 0
    assert err.count("\n") == 1 and err.startswith("error: cannot reach http://127.0.0.1:")
    assert "Traceback" not in err
    assert not output.exists()


def test_cli_success_and_already_present(server, tmp_path, capsys):
    output = tmp_path / "ckpt.pt"
    args = ["--url", server.url, "--output", str(output), "--quiet", "--timeout", str(TIMEOUT),
            "--sha256", SHA, "--expected-size", str(len(DATA))]
    assert dl.main(args) == 0
    assert output.read_bytes() == DATA
    assert capsys.readouterr().out.startswith("downloaded: ")
    assert dl.main(args) == 0
    assert capsys.readouterr().out.startswith("already present: ")
    assert len(server.ranges) == 1


def test_cli_checksum_failure_exit_code(server, tmp_path, capsys):
    output = tmp_path / "ckpt.pt"
    status = dl.main(["--url", server.url, "--output", str(output), "--quiet", "--timeout", str(TIMEOUT),
                      "--sha256", "f" * 64])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.count("\n") == 1 and "SHA-256 mismatch" in captured.err
    assert not output.exists()


@pytest.mark.parametrize("url", ["notaurl", ""])
def test_cli_malformed_url_prints_one_line(tmp_path, capsys, url):
    output = tmp_path / "ckpt.pt"
    status = dl.main(["--url", url, "--output", str(output), "--quiet"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and err.startswith(f"error: invalid URL {url!r}")
    assert not output.exists() and not part_path(output).exists()
