"""The journal of a save folder: which settings made each image, from which sources, with which bytes.

The journal is append-only, one JSON object per line, each line written with one write() and
fsync'd before the run goes on:

    {"event": "settings", "run": R, "key": K, "fingerprint": {...}, "input_dir": "/abs/in"}
    {"event": "image", "run": R, "stem": S, "file": "S.png", "key": K, "seconds": t,
     "sources": [a, b], "source_hashes": [ha, hb], "hash": h, "made_with": {...}}
    {"event": "set_aside", "run": R, "file": F}      (an image --overwrite moves into recon/.replaced/<R>/)
    {"event": "skipped", "run": R, "stems": [S, ...]}       {"event": "failed", "run": R, "stem": S, "reason": "..."}

A run writes its settings line before its first image, each image line just before the image is
renamed into recon/, and each set_aside line just before an old image is moved aside. So whatever
kills the process, every image in recon/ is named by a line that says which settings made it and
what its bytes hash to; a line whose rename never happened names bytes that are not there and
counts for nothing. A truncated last line (a kill mid-write) is ignored.
"""
import hashlib
import json
import os
import socket
import time

from ddfm.files import naming


def settings_key(fingerprint):
    """A short name for a fingerprint: equal settings, equal key."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def new_run_id():
    return f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}"


def append(path, event):
    """One line, one write(), fsync'd: the line is on disk before the caller goes on."""
    data = (json.dumps(event, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        with naming(path):
            written = os.write(fd, data)
            if written < len(data):  # a file-size limit or a full disk cut the line: the rest raises
                os.write(fd, data[written:])
            os.fsync(fd)
    finally:
        os.close(fd)


def end_torn_line(path):
    """After a kill mid-write the journal may end inside a line: start the next one cleanly."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


# The fields each kind of line must have, and their types; a line without them is skipped.
REQUIRED_FIELDS = {"settings": {"key": str, "fingerprint": dict},
                   "image": {"stem": str, "file": str, "key": str},
                   "set_aside": {"file": str},
                   "skipped": {"stems": list}, "failed": {"stem": str}}
# Fields that lines of earlier versions lack, but that have these types when present.
OPTIONAL_FIELDS = {"hash": str, "source_hashes": list, "sources": list}


def _bad_fields(event):
    """The fields of a journal line that are absent (when required) or of the wrong type."""
    wanted = REQUIRED_FIELDS.get(event["event"], {})
    bad = [name for name, kind in wanted.items() if not isinstance(event.get(name), kind)]
    return bad + [name for name, kind in OPTIONAL_FIELDS.items()
                  if name in event and not isinstance(event[name], kind)]


def read_events(path, warn=None):
    """Every complete, well-formed line of the journal, each with its line number as "line".
    Torn lines (a kill mid-write) are skipped silently; a JSON line that lacks a field or has one
    of the wrong type is skipped with a warning naming its line number (an image it names then
    counts as unknown)."""
    if not path.is_file():
        return []
    events = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to be a journal line
            continue
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            continue
        bad = _bad_fields(event)
        if bad:
            if warn is not None:
                warn(f"{path}: line {number} ({event['event']}) lacks or mistypes {', '.join(bad)}: skipped")
            continue
        events.append(dict(event, line=number))
    return events
