"""Load the ADM checkpoint (256x256_diffusion_uncond.pt) safely, or fail with one clear line.

The official DDFM code catches every loading error and goes on with random weights. Here every
problem (missing file, truncated or corrupt file, foreign content, keys that do not fit the model)
raises CheckpointError with a single-line message that names the file and the problem. Files are
read with torch.load(weights_only=True), so a checkpoint can never run code while it is loaded.

The checkpoint is a plain state_dict (name -> tensor). Wrapped training checkpoints such as
{"state_dict": {...}} or {"model": {...}} are deliberately NOT unwrapped: the error says which key
to extract, so a file is never accepted by guessing.
"""
import hashlib
import math
import os
import re
import zipfile
from pathlib import Path

import torch

# Every fact about the official checkpoint lives here and nowhere else.
CHECKPOINT_FILENAME = "256x256_diffusion_uncond.pt"
CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/" + CHECKPOINT_FILENAME
DEFAULT_CHECKPOINT_PATH = "models/" + CHECKPOINT_FILENAME
DOWNLOAD_COMMAND = "python -m guided_diffusion.download"
# A folder where a relative model_path is also looked for (e.g. $DDFM_HOME/models/<file>), so an
# installed package finds one checkpoint from any working directory.
HOME_ENV = "DDFM_HOME"
EXPECTED_NUM_TENSORS = 566
EXPECTED_NUM_PARAMS = 552_814_086
# Published by several independent users of the official file (Disco Diffusion's model map and
# reproduction manifests that list both size and SHA-256); the size is 4 bytes per parameter plus
# about 127 KB of zip/pickle overhead, which fits an all-float32 state_dict.
EXPECTED_SIZE_BYTES = 2_211_383_297
EXPECTED_SHA256 = "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1"

# How many offending keys an error message lists per category before it says "+N more".
_SHOW_KEYS = 3


class CheckpointError(Exception):
    """A checkpoint could not be used; the message is one line naming the file and the problem."""


def _fmt_shape(shape):
    """Format a shape as (a, b, c), the way the golden key list writes it."""
    return str(tuple(int(s) for s in shape))


def _fmt_bytes(n):
    """Format a byte count with thousands separators, e.g. 2,211,383,297 bytes."""
    return f"{n:,} bytes"


def _one_line(text, limit=200):
    """Collapse whitespace and ANSI codes so that a foreign error message fits on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size_note(path, size):
    """'123 bytes', plus the expected size for the official file name (spots a partial download)."""
    note = _fmt_bytes(size)
    if Path(path).name == CHECKPOINT_FILENAME and EXPECTED_SIZE_BYTES:
        note += f", expected {_fmt_bytes(EXPECTED_SIZE_BYTES)}"
    return note


def _download_command(path, force=False):
    """The download command that writes to path (the default path needs no --output)."""
    command = DOWNLOAD_COMMAND
    if str(path) != DEFAULT_CHECKPOINT_PATH:
        command += f" --output {path}"
    if force:
        command += " --force"  # the downloader keeps an existing file unless told otherwise
    return f"`{command}`"


def source_checkout():
    """The project folder when this package runs from a source checkout (not when installed)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "guided_diffusion").is_dir() else None


def checkpoint_places(path):
    """Where a model_path is looked for, in order: as given (a relative path from the working
    directory), then, for a relative path, the project folder of a source checkout (so
    `models/...` works wherever sample.py is started from) and $DDFM_HOME when it is set."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return [path]
    home, checkout = os.environ.get(HOME_ENV), source_checkout()
    return ([path] + ([checkout / path] if checkout is not None else [])
            + ([Path(home).expanduser() / path] if home else []))


def locate_checkpoint(path):
    """The first of checkpoint_places(path) that exists, else path as given (None stays None)."""
    if not path:
        return path
    for place in checkpoint_places(path):
        if place.exists():
            return str(place)
    return str(path)


def places_looked(path):
    """'models/x.pt (resolved: /cwd/models/x.pt; $DDFM_HOME not set)': where a missing file was sought."""
    if not path:
        return str(path)
    where = Path(path).expanduser()
    notes = [] if str(where) == str(where.resolve()) else [f"resolved: {where.resolve()}"]
    if not where.is_absolute():
        home, checkout = os.environ.get(HOME_ENV), source_checkout()
        if checkout is not None:
            notes.append(f"nor in the project folder {checkout}")
        notes.append(f"nor under ${HOME_ENV}={home}" if home else f"${HOME_ENV} not set")
    return f"{where} ({'; '.join(notes)})" if notes else str(where)


def missing_file_message(path):
    """The one-line message for a checkpoint that is not on disk: where, how to get it, how to skip it."""
    where = Path(path)
    return (
        f"checkpoint not found: {places_looked(where)}; download it (about 2.2 GB) from {CHECKPOINT_URL} "
        f"with {_download_command(where)}, or put it in models/ under the working directory or under "
        f"${HOME_ENV}, or set model_path; or run with prior=none for the prior-free Bayesian fusion "
        f"(no diffusion prior)"
    )


def _describe_load_failure(path, size, exc):
    """Turn whatever torch.load raised into one line that says what is probably wrong."""
    with open(path, "rb") as f:
        head = f.read(64)
    text = str(exc)
    where = f"checkpoint {path} ({_size_note(path, size)})"
    again = f"re-download it with {_download_command(path, force=True)}"
    if size == 0:
        return f"{where} is empty; {again}"
    if head.startswith(b"version https://git-lfs"):
        return f"{where} is a Git LFS pointer, not the weights; {again}"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return f"{where} is an HTML/XML page (an error page saved as the file?), not a checkpoint; {again}"
    # A pickle that names a non-tensor global: foreign, possibly hostile. torch 2.13 words it
    # "Unsupported global: GLOBAL x.y", older releases "Trying to call reduce for unrecognized
    # function x" or "Can only build ... but got x"; in either file format.
    match = re.search(r"Unsupported global: GLOBAL (\S+)|unrecognized function (\S+)|but got (<[^>]+>)", text)
    if match and head.startswith((b"PK\x03\x04", b"\x80")):
        name = next(group for group in match.groups() if group)
        return (f"{where} contains Python objects other than tensors ({name}), refused by "
                f"weights_only loading; it is not a plain state_dict")
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            return f"{where} is truncated or corrupt (incomplete zip archive); {again}"
        return f"{where} could not be read ({type(exc).__name__}: {_one_line(text)}); {again}"
    if head.startswith(b"\x80"):  # a pickle stream: torch's legacy (pre-1.6) format
        return f"{where} could not be read as a legacy-format checkpoint ({type(exc).__name__}: {_one_line(text)}); {again}"
    return f"{where} is not a PyTorch checkpoint (neither a zip archive nor a pickle); {again}"


def load_state_dict_file(path):
    """Read a checkpoint file into a dict of name -> CPU tensor, or raise CheckpointError.

    Uses torch.load(path, map_location="cpu", weights_only=True). Only a plain dict whose keys are
    strings and whose values are tensors is accepted (see the module docstring about wrappers).
    """
    path = Path(locate_checkpoint(path))
    if not path.exists():
        raise CheckpointError(missing_file_message(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (a directory?); expected the .pt file itself")
    size = path.stat().st_size
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"checkpoint {path} ({_fmt_bytes(size)}) does not fit in memory") from None
    except Exception as exc:  # torch.load raises many types (RuntimeError, EOFError, UnpicklingError, ...)
        raise CheckpointError(_describe_load_failure(path, size, exc)) from None
    check_state_dict(obj, path)
    return obj


def check_state_dict(obj, path="<state_dict>"):
    """Raise CheckpointError unless obj is a non-empty dict of str -> torch.Tensor."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} contains a {type(obj).__name__}, not a state_dict (a dict of name -> tensor)")
    if not obj:
        raise CheckpointError(f"checkpoint {path} contains an empty dict, not model weights")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), dict):
            raise CheckpointError(
                f"checkpoint {path} is a wrapped training checkpoint (weights under key '{wrapper}'); "
                f"save obj['{wrapper}'] on its own with torch.save and load that file")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint {path} has a non-string key {key!r}; not a state_dict")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path} maps '{key}' to a {type(value).__name__}, not a tensor; not a state_dict")


def _list_keys(keys, tensors):
    """Format the first few keys with their shapes: 'a.weight (4, 3), b.bias (4,) +2 more'."""
    shown = ", ".join(f"{k} {_fmt_shape(tensors[k].shape)}" for k in keys[:_SHOW_KEYS])
    if len(keys) > _SHOW_KEYS:
        shown += f" +{len(keys) - _SHOW_KEYS} more"
    return shown


def compare_state_dicts(expected, found):
    """Return (missing, unexpected, mismatched) key lists between a model's and a file's state_dict."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    return missing, unexpected, mismatched


def mismatch_message(path, model_name, expected, found):
    """One line listing counts and the first few missing / unexpected / mis-shaped keys, or None if all fit."""
    missing, unexpected, mismatched = compare_state_dicts(expected, found)
    if not (missing or unexpected or mismatched):
        return None
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} with another shape"
    parts = []
    if missing:
        parts.append("missing from file: " + _list_keys(missing, expected))
    if unexpected:
        parts.append("unexpected in file: " + _list_keys(unexpected, found))
    if mismatched:
        shown = ", ".join(
            f"{k} file {_fmt_shape(found[k].shape)} vs model {_fmt_shape(expected[k].shape)}"
            for k in mismatched[:_SHOW_KEYS])
        if len(mismatched) > _SHOW_KEYS:
            shown += f" +{len(mismatched) - _SHOW_KEYS} more"
        parts.append("shape: " + shown)
    return (f"checkpoint {path} does not fit {model_name} ({counts}; file has {len(found)} tensors, "
            f"model expects {len(expected)}): " + "; ".join(parts)
            + "; check that the model flags match the checkpoint")


def load_checkpoint(model, path=DEFAULT_CHECKPOINT_PATH):
    """Load a state_dict file into model with strict key and shape matching; return the model.

    Keys and shapes are checked before any weight is copied, so a mismatch leaves the model
    untouched. Values are copied into the model's own tensors, so a model in fp16 or on a GPU keeps
    its dtype and device. A model built on the meta device gets real CPU tensors (assign=True)
    cast to the dtype it was built with. Raises CheckpointError on any problem; if the copy itself
    fails part-way (very unlikely after the checks), the error says to discard the model.
    """
    state = load_state_dict_file(path)
    model_name = type(model).__name__
    expected = model.state_dict()
    message = mismatch_message(path, model_name, expected, state)
    if message:
        raise CheckpointError(message)
    on_meta = any(t.is_meta for t in expected.values())
    try:
        if on_meta:
            # Copying into meta tensors is a silent no-op, so hand over real tensors instead.
            state = {k: v.to(dtype=expected[k].dtype) for k, v in state.items()}
            model.load_state_dict(state, strict=True, assign=True)
        else:
            model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path}: copying weights into {model_name} failed part-way "
            f"({type(exc).__name__}: {_one_line(exc)}); the model is partly loaded, discard it") from None
    return model


def count_params(state):
    """Total number of elements over all tensors of a state_dict."""
    return sum(math.prod(t.shape) for t in state.values())


def verify_checkpoint(path=DEFAULT_CHECKPOINT_PATH, expected_num_tensors=EXPECTED_NUM_TENSORS,
                      expected_num_params=EXPECTED_NUM_PARAMS, check_finite=True):
    """Check a checkpoint file structurally; return (num_tensors, num_params) or raise CheckpointError.

    Loads it with weights_only, then checks the tensor count and parameter count (pass None to skip
    either) and, with check_finite, that every floating-point value is finite (a corrupt download
    that still unpickles usually shows up as NaN/Inf or as wrong counts).
    """
    state = load_state_dict_file(path)
    num_tensors = len(state)
    num_params = count_params(state)
    if expected_num_tensors is not None and num_tensors != expected_num_tensors:
        raise CheckpointError(f"checkpoint {path} has {num_tensors} tensors, expected {expected_num_tensors}; "
                              f"wrong file or wrong model")
    if expected_num_params is not None and num_params != expected_num_params:
        raise CheckpointError(f"checkpoint {path} has {num_params:,} parameters, expected {expected_num_params:,}; "
                              f"wrong file or wrong model")
    if check_finite:
        bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            more = f" +{len(bad) - _SHOW_KEYS} more" if len(bad) > _SHOW_KEYS else ""
            raise CheckpointError(f"checkpoint {path} has NaN/Inf values in {len(bad)} tensors "
                                  f"({', '.join(bad[:_SHOW_KEYS])}{more}); re-download it")
    return num_tensors, num_params


def sha256_file(path, chunk_size=1 << 20):
    """SHA-256 hex digest of a file, read in chunks so a 2.2 GB file needs no 2.2 GB of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_status(path=DEFAULT_CHECKPOINT_PATH):
    """Cheap check without loading: 'missing', 'ok' (size matches or unknown), or 'wrong-size'."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.name == CHECKPOINT_FILENAME and EXPECTED_SIZE_BYTES and path.stat().st_size != EXPECTED_SIZE_BYTES:
        return "wrong-size"
    return "ok"


def main(argv=None):
    """`python -m guided_diffusion.checkpoint [PATH]`: structural check of a downloaded file.

    Exit status 0 when the file is the ADM checkpoint, 1 (with one line on stderr) when it is not,
    2 for bad arguments (argparse).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m guided_diffusion.checkpoint",
        description="Check a downloaded ADM checkpoint: loads it safely, counts tensors and parameters, "
                    "and looks for NaN/Inf values.")
    parser.add_argument("path", nargs="?", default=DEFAULT_CHECKPOINT_PATH, metavar="PATH",
                        help=f"checkpoint file (default: {DEFAULT_CHECKPOINT_PATH})")
    target = parser.parse_args(argv).path
    try:
        n_tensors, n_params = verify_checkpoint(target)
    except CheckpointError as err:
        print(f"error: {_one_line(err, limit=10_000)}", file=sys.stderr)
        return 1
    print(f"{target}: {n_tensors} tensors, {n_params:,} parameters, all finite: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
