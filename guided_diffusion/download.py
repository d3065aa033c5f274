"""Download the ADM checkpoint with resume, atomic write and size/SHA-256 checks.

    python -m guided_diffusion.download [--url URL] [--output PATH] [--sha256 HEX]
                                        [--expected-size N] [--force] [--quiet] [--timeout S]

Bytes go to <output>.part first. An interrupted run leaves that file behind and the next run
resumes it with an HTTP Range request (a server that ignores Range and answers 200 makes the
download restart from zero; 416 means the .part is already complete). Only after the size and,
when known, the SHA-256 match is the .part renamed to <output> with os.replace, so <output> is
either absent or complete. With the default URL the published size and SHA-256 are checked.
Failures print one line to stderr and exit non-zero.
"""
import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from guided_diffusion.checkpoint import (
    CHECKPOINT_URL,
    DEFAULT_CHECKPOINT_PATH,
    EXPECTED_SHA256,
    EXPECTED_SIZE_BYTES,
    CheckpointError,
    sha256_file,
    verify_checkpoint,
)

CHUNK_SIZE = 1 << 20
DEFAULT_TIMEOUT = 60.0
USER_AGENT = "ddfm-checkpoint-download/1.0"


class DownloadError(Exception):
    """A download failed; the message is one line saying what and where."""


def part_path(output):
    """The temporary file that holds a download in progress: <output>.part."""
    output = Path(output)
    return output.with_name(output.name + ".part")


def _reason(exc):
    """A short one-line reason for a network or IO exception."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason  # the socket error inside, e.g. ConnectionRefusedError
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias of TimeoutError
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_content_range(value):
    """Parse 'bytes START-END/TOTAL' or 'bytes */TOTAL' into (start or None, total or None)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _check_existing(output, expected_size, sha256):
    """Return True if an existing output passes every check we can make, False otherwise."""
    if expected_size is not None and output.stat().st_size != expected_size:
        return False
    if sha256 is not None and sha256_file(output) != sha256:
        return False
    return True


def _open(url, offset, timeout):
    """Send the GET (with a Range header when resuming); return (response, status, Content-Range).

    HTTP 416 comes back as (None, 416, Content-Range); other HTTP and network errors raise DownloadError.
    """
    headers = {"User-Agent": USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as exc:  # Request() itself rejects a URL without a scheme or host
        raise DownloadError(f"invalid URL {url!r}: {' '.join(str(exc).split())}") from None
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:
            # Range not satisfiable: the caller decides whether the .part is complete or stale.
            content_range = err.headers.get("Content-Range") if err.headers else None
            err.close()
            return None, 416, content_range
        err.close()
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(f"cannot reach {url}: {_reason(exc)}") from None
    return response, response.status, response.headers.get("Content-Range")


def _finish(part, output, expected_size, sha256, digest):
    """Check the completed .part (size, SHA-256), then move it into place atomically."""
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"downloaded {size:,} bytes but expected {expected_size:,}; "
                            f"removed {part}, wrong URL or file changed upstream")
    if sha256 is not None:
        actual = digest.hexdigest() if digest is not None else sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(f"SHA-256 mismatch for {output}: got {actual}, expected {sha256}; removed {part}")
    os.replace(part, output)
    return output


def download(url=CHECKPOINT_URL, output=DEFAULT_CHECKPOINT_PATH, expected_size=None, sha256=None,
             progress=True, *, force=False, timeout=DEFAULT_TIMEOUT):
    """Download url to output (resuming output.part); return the output Path or raise DownloadError.

    expected_size / sha256: checked when given (the server's Content-Length is always checked).
    An existing output that passes those checks is kept and returned without any network access;
    one that fails them is an error unless force=True, which downloads it afresh.
    """
    output = Path(output)
    part = part_path(output)
    sha256 = sha256.strip().lower() if sha256 else None
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise DownloadError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    if output.is_dir():
        raise DownloadError(f"output {output} is a directory; give the file path, e.g. {output / Path(url).name}")
    if output.exists() and not force:
        if _check_existing(output, expected_size, sha256):
            return output
        raise DownloadError(f"{output} exists but fails the size/SHA-256 check; pass --force to replace it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create folder {output.parent}: {_reason(exc)}") from None

    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the whole file: certainly not a prefix of it
        offset = 0
    for _attempt in range(2):  # a second pass only after discarding a stale .part on HTTP 416
        response, status, content_range = _open(url, offset, timeout)
        if status == 416:
            _, total = _parse_content_range(content_range)
            checkable = expected_size is not None or sha256 is not None
            if offset > 0 and (total == offset or (total is None and checkable)):
                # The .part already holds every byte; _finish's size/SHA checks catch a bad one.
                return _finish(part, output, expected_size, sha256, None)
            part.unlink(missing_ok=True)
            offset = 0
            continue
        break
    else:
        raise DownloadError(f"server keeps refusing the byte range for {url} (HTTP 416)")

    with response:
        if status == 206:
            start, total = _parse_content_range(content_range)
            if start != offset:
                raise DownloadError(f"server answered range {content_range!r} to a request from byte {offset}; "
                                    f"delete {part} and retry")
            mode = "ab"
        else:
            # 200: a fresh download, or a server that ignored our Range header; either way from byte 0.
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadError(f"server reports {total:,} bytes for {url} but expected {expected_size:,}; "
                                f"wrong URL or file changed upstream")
        total = total if total is not None else expected_size
        need = (total - offset) if total is not None else 0
        free = shutil.disk_usage(output.parent).free
        if need > free:
            raise DownloadError(f"not enough disk space in {output.parent}: need {need:,} bytes, {free:,} free")

        digest = None
        if sha256 is not None:
            digest = hashlib.sha256()
            if mode == "ab":
                with open(part, "rb") as f:  # hash the part we already have, so we never re-read it all
                    for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
                        digest.update(chunk)

        received = offset
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=output.name, disable=not progress, leave=False)
        try:
            with open(part, mode) as f:
                while True:
                    chunk = response.read(CHUNK_SIZE)
                    if not chunk:
                        break
                    f.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())  # the rename below must never publish unwritten bytes
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"download of {url} stopped at {received:,} bytes ({_reason(exc)}); "
                                f"run the same command again to resume from {part}") from None
        finally:
            bar.close()

    if total is not None and received < total:
        raise DownloadError(f"connection closed at {received:,} of {total:,} bytes; "
                            f"run the same command again to resume from {part}")
    return _finish(part, output, expected_size, sha256, digest)


def _build_parser():
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m guided_diffusion.download",
        description="Download the ADM 256x256 unconditional checkpoint (resumable, verified).")
    parser.add_argument("--url", default=CHECKPOINT_URL, help="source address (default: the official OpenAI URL)")
    parser.add_argument("--output", default=DEFAULT_CHECKPOINT_PATH, help=f"destination file (default: {DEFAULT_CHECKPOINT_PATH})")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 (default: the published one for the official URL)")
    parser.add_argument("--expected-size", type=int, default=None, help="expected size in bytes (default: the published one for the official URL)")
    parser.add_argument("--force", action="store_true", help="download again even if the output already exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the server (default: %(default)s)")
    return parser


def main(argv=None):
    """Run the command line; return the exit status (0 ok, 1 failure, 130 interrupted)."""
    args = _build_parser().parse_args(argv)
    official = args.url == CHECKPOINT_URL
    # For the official file fill in the published checks unless the user gave their own.
    sha256 = args.sha256 if args.sha256 is not None else (EXPECTED_SHA256 if official else None)
    expected_size = args.expected_size if args.expected_size is not None else (EXPECTED_SIZE_BYTES if official else None)
    output = Path(args.output)
    existed = output.exists() and not args.force
    try:
        path = download(args.url, output, expected_size=expected_size, sha256=sha256,
                        progress=not args.quiet, force=args.force, timeout=args.timeout)
        if official and sha256 is None:
            # Nothing byte-exact to compare with: at least check the content is the ADM state_dict.
            verify_checkpoint(path)
    except (DownloadError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permissions, ... while writing
        print(f"error: {output}: {_reason(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; partial download kept in {part_path(output)}, run again to resume", file=sys.stderr)
        return 130
    checks = ", ".join(name for name, value in (("size", expected_size), ("SHA-256", sha256)) if value is not None)
    verb = "already present" if existed else "downloaded"
    print(f"{verb}: {path} ({path.stat().st_size:,} bytes{'; ' + checks + ' OK' if checks else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
