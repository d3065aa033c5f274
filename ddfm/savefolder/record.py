"""run.json: the journal's account of the folder, rebuilt at the end of every run (rank 0)."""
from pathlib import Path

from ddfm.savefolder.layout import write_json_atomic
from ddfm.savefolder.resume import FolderState


def build_record(layout, header, run_id, failed=None):
    """Every image in recon/ with its settings, seconds, sources and content hashes; skipped and
    failed are this run's (run_id; `failed` adds those the journal could not take); counts as the
    end-of-run line prints them."""
    state = FolderState(layout)
    fused = {Path(name).stem: {"seconds": e.get("seconds"), "settings": e["key"], "sources": e.get("sources"),
                               "source_hashes": e.get("source_hashes"), "hash": e.get("hash"),
                               "run": e.get("run"), "made_with": e.get("made_with")}
             for name, e in state.records.items()}
    now = [e for e in state.events if e.get("run") == run_id]
    keys = {image["settings"] for image in fused.values()} | {header["settings_key"]}
    record = dict(header)
    record["settings"] = {k: state.settings[k]["fingerprint"] for k in sorted(keys) if k in state.settings}
    record["fused"] = dict(sorted(fused.items()))
    unknown = state.unrecorded + sorted(state.changed)
    if unknown:
        record["unrecorded"] = unknown
    if state.aside:
        record["set_aside"] = [str(path.relative_to(layout.root)) for path, _ in state.aside]
    record["skipped"] = sorted({s for e in now if e["event"] == "skipped" for s in e["stems"]})
    record["failed"] = {e["stem"]: e.get("reason", "") for e in now if e["event"] == "failed"}
    record["failed"].update(failed or {})
    record["counts"] = {"fused": sum(image["run"] == run_id for image in fused.values()),
                        "skipped": len(record["skipped"]), "failed": len(record["failed"]),
                        "in_folder": len(fused)}
    return record


def write_record(layout, record):
    write_json_atomic(layout.record, record)
