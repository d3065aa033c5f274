"""Download a registry split into `<root>/<split>/`, every byte checked against its SHA-256.

A file goes to `<target>.part` first (resumed with an HTTP Range request when one is left from
an interrupted run), is checked for size and hash, and only then renamed to its name: whatever
fails, no unchecked file ever sits under a name the sampler reads. Files already in place with the
registry's hash are kept, so a rerun downloads nothing. Each failure (404, timeout, mismatch, full
disk) is one line naming the file; `dataset.json` is written once every file is in place.
"""
import errno
import hashlib
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

DEFAULT_MIRROR = "https://raw.githubusercontent.com"  # serves <owner>/<repo>/<commit>/<path>
MIRROR_ENV = "DDFM_DATASETS_MIRROR"
RECORD = "dataset.json"
PART = ".part"
CHUNK = 1 << 20


class FetchError(Exception):
    """One file that could not be fetched and checked: one line naming it."""


class RootError(Exception):
    """The data root cannot hold the split (not creatable, not writable): one line."""


@dataclass
class FetchOutcome:
    folder: Path
    present: int = 0  # already in place with the right hash
    fetched: int = 0
    failed: list = field(default_factory=list)  # one line each


def file_url(base, split, data_file):
    """BASE/<owner>/<repo>/<commit>/<path>, the path percent-encoded."""
    return "/".join([base.rstrip("/"), split.repository, split.commit, urllib.parse.quote(data_file.path)])


def sha256_of(path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest


def is_in_place(path, data_file):
    """The file exists with the registry's size and SHA-256 (size first: the cheap no)."""
    try:
        if path.stat().st_size != data_file.size:
            return False
    except OSError:
        return False
    return sha256_of(path).hexdigest() == data_file.sha256


def _download(url, part, data_file, timeout, progress):
    """Stream url into part (resuming from its current length); returns its SHA-256 hexdigest."""
    have = part.stat().st_size if part.exists() else 0
    if have > data_file.size:
        part.unlink()
        have = 0
    digest = sha256_of(part) if have else hashlib.sha256()
    if have == data_file.size:
        return digest.hexdigest()
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # the server ignored the range: start again
            digest, have = hashlib.sha256(), 0
        with open(part, "ab" if have else "wb") as out:
            progress(have)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                progress(len(chunk))
                if out.tell() > data_file.size:
                    break  # more bytes than the registry's size: the check below says so
            out.flush()
            os.fsync(out.fileno())
    return digest.hexdigest()


def _reason(err):
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return "timed out"
    if isinstance(err, urllib.error.URLError):
        return f"cannot reach the server ({err.reason})"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "disk full"
    return " ".join(str(err).split()) or type(err).__name__


def fetch_file(split, data_file, folder, base, timeout, progress):
    """One file into place, checked. Raises FetchError (one line) and leaves no unchecked file
    under its name; a partial download stays as .part to resume, a wrong one is removed."""
    target = folder / data_file.target
    part = target.with_name(target.name + PART)
    url = file_url(base, split, data_file)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # present but not the registry's bytes (checked before): not kept
            target.unlink()
        got = _download(url, part, data_file, timeout, progress)
        size = part.stat().st_size
        if size != data_file.size or got != data_file.sha256:
            part.unlink()
            what = f"size {size}, expected {data_file.size}" if size != data_file.size else \
                f"SHA-256 {got}, expected {data_file.sha256}"
            raise FetchError(f"{target}: downloaded bytes do not match the registry ({what}) from {url}")
        os.replace(part, target)
    except FetchError:
        raise
    except (OSError, urllib.error.URLError, ValueError) as err:  # HTTPError, timeouts, full disk
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            part.unlink(missing_ok=True)
        raise FetchError(f"{target}: {_reason(err)} ({url})") from None


def prepare_folder(root, split):
    """<root>/<split>/ created and writable, or RootError naming the folder."""
    folder = Path(root) / split.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RootError(f"{folder}: cannot create the dataset folder ({err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RootError(f"{folder}: the dataset folder is not writable")
    return folder


def write_record(folder, split, base):
    """dataset.json: where the bytes came from, their terms, and every file's hash (atomic)."""
    record = {
        "name": split.name, "description": split.description,
        "source": f"https://github.com/{split.repository}", "repository": split.repository,
        "commit": split.commit, "mirror": base, "pairs": split.pairs,
        "roles": [{"role": r.role, "folder": r.folder, "source": r.source} for r in split.roles],
        "licence": split.licence, "citation": split.citation,
        "files": [{"path": f.target, "source": f.path, "size": f.size, "sha256": f.sha256} for f in split.files],
    }
    temp = folder / (RECORD + PART)
    temp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(temp, folder / RECORD)


def fetch_split(split, root, base=DEFAULT_MIRROR, jobs=4, timeout=60, progress=True, log=print):
    """Fetch every missing or wrong file of a verified split; returns a FetchOutcome."""
    if not split.verified:
        raise FetchError(f"{split.name}: not verified, nothing to check its bytes against ({split.reason})")
    folder = prepare_folder(root, split)
    outcome = FetchOutcome(folder)
    with ThreadPoolExecutor(max(1, jobs)) as pool:  # hashing releases the GIL: check in parallel too
        present = list(pool.map(lambda f: is_in_place(folder / f.target, f), split.files))
    todo = [f for f, ok in zip(split.files, present) if not ok]
    outcome.present = len(split.files) - len(todo)
    if todo:
        (folder / RECORD).unlink(missing_ok=True)  # the folder is not complete until every file is back
        log(f"{split.name}: {outcome.present} of {len(split.files)} file(s) in place, fetching {len(todo)} "
            f"from {base}")
        bar = tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=split.name, disable=not progress)
        lock = threading.Lock()

        def advance(n):
            with lock:
                bar.update(n)

        def one(data_file):
            try:
                fetch_file(split, data_file, folder, base, timeout, advance)
                return None
            except FetchError as err:
                return str(err)

        with bar, ThreadPoolExecutor(max(1, jobs)) as pool:
            results = list(pool.map(one, todo))
        outcome.failed = [r for r in results if r]
        outcome.fetched = len(todo) - len(outcome.failed)
    if not outcome.failed:
        try:
            write_record(folder, split, base)
        except OSError as err:
            outcome.failed.append(f"{folder / RECORD}: cannot write ({err.strerror or err})")
    return outcome
