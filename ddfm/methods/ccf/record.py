"""CCF's per-step record: which conditions were selected, their losses and weights, per image.

With `record: true` a CCF run writes `progress/<stem>.json` beside the per-step frames:

    {"stem": "01", "conditions": ["ssim", ...],        # the bank, in loss-vector order
     "steps": [{"i": 9, "t": 999, "selected": [6, 5, 4], "losses": [...8],
                "w_before": [...8], "w_after": [...8]}, ...]}   # in sampling order (i = S-1 .. 0)

`selected` are indices into `conditions`, in the sampler's top-k order. The report reads it back
(condition_strip) to show which conditions were active at each step.
"""
import json
import math
from pathlib import Path

from ddfm.files import write_atomic


def _floats(row):
    return [float(v) for v in row.detach().float().cpu().tolist()] if hasattr(row, "detach") else [float(v) for v in row]


def step_details(info, k):
    """Image k's part of one ccf_sample callback dict, as plain JSON values."""
    return {"i": int(info["i"]), "t": int(info["t"]),
            "selected": [int(v) for v in _floats(info["topk"][k])],
            "losses": _floats(info["losses"][k]),
            "w_before": _floats(info["w_before"][k]), "w_after": _floats(info["w_after"][k])}


def _json_number(value):
    """NaN/inf (GradNorm's r^alpha can go NaN, ccf_official.md §5) as null: strict JSON."""
    return value if math.isfinite(value) else None


def write_step_record(path, stem, steps, names=None):
    """Write the per-image JSON atomically; names: the conditions in loss order (the bank's)."""
    if names is None:
        from ddfm.methods.ccf.conditions import CONDITION_NAMES
        names = list(CONDITION_NAMES)
    clean = [{key: [_json_number(v) for v in value] if key in ("losses", "w_before", "w_after") else value
              for key, value in step.items()} for step in steps]
    text = json.dumps({"stem": stem, "conditions": list(names), "steps": clean}, indent=1)
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def read_step_record(path):
    """The JSON of write_step_record, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        return None
    return data


def condition_strip(record):
    """For the report: one row per condition, one cell per step (sampling order), marked when the
    condition was selected at that step; the cell's title gives i, t and the weight after it."""
    names, steps = record.get("conditions", []), record["steps"]
    rows = []
    for c, name in enumerate(names):
        cells = []
        for step in steps:
            weight = step.get("w_after", [None] * len(names))[c]
            shown = "nan" if weight is None else f"{weight:.3f}"
            cells.append({"on": c in step.get("selected", []),
                          "title": f"{name} i={step['i']} t={step['t']} w={shown}"})
        rows.append({"name": name, "cells": cells, "count": sum(cell["on"] for cell in cells)})
    return {"rows": rows, "steps": len(steps),
            "first": steps[0]["i"] if steps else None, "last": steps[-1]["i"] if steps else None}


def condition_strips(progress_dir):
    """{stem: condition_strip} of every CCF step record in a save folder's progress/."""
    strips = {}
    for path in sorted(Path(progress_dir).glob("*.json")):
        record = read_step_record(path)
        if record is not None:
            strips[path.stem] = condition_strip(record)
    return strips
