"""What a comparison runs: the datasets (source folders) and the methods (config overrides).

A dataset is a fetched registry split (`tno-cddfuse`, read from the data root) or `NAME=FOLDER`
for one's own pairs. A method is `[LABEL=]BASE[:key=value[:key=value ...]]`; BASE is a preset of
configs/ (`official` -> fusion_official.yaml, `ccf` -> fusion_ccf.yaml), `prior-free` (prior=none)
or a registered method (ddfm.methods: ddfm, mean, max, ...). A method that needs the
diffusion prior runs with `prior=adm`, so a missing checkpoint fails its cells in one line instead
of giving prior-free images under its name.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from ddfm import CONFIG_DIR
from ddfm.datasets.layouts import InputFolderError, dataset_folder

PRIOR_FREE = "prior-free"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a folder name and a table row


class PlanError(ValueError):
    """A --datasets or --methods entry that cannot be used: one line naming it."""


@dataclass
class Dataset:
    name: str
    folder: Path = None
    problem: str = ""  # why it cannot be used (missing: the fetch command)


@dataclass
class Method:
    label: str
    fusion_config: str  # a YAML path
    overrides: list = field(default_factory=list)  # ["key=value", ...], applied after the global ones
    needs_prior: bool = True


def split_list(values):
    """--methods/--datasets values (repeatable, comma-separated) -> entries, each once."""
    entries = [part.strip() for value in values for part in value.split(",")]
    return list(dict.fromkeys(e for e in entries if e))


def resolve_dataset(spec, root=None):
    """`NAME` (a fetched split under the data root) or `NAME=FOLDER` -> Dataset (problem set when
    it cannot be read: the caller reports it and goes on)."""
    name, sep, folder = spec.partition("=")
    name = name.strip()
    if not _LABEL.match(name):
        raise PlanError(f"dataset '{spec}': expected NAME or NAME=FOLDER (NAME: letters, digits, . _ + -)")
    if sep:
        path = Path(folder.strip())
        return Dataset(name, path, "" if path.is_dir() else f"{path}: dataset folder not found")
    try:
        return Dataset(name, dataset_folder(name, root))
    except InputFolderError as err:
        return Dataset(name, problem=str(err))


def _preset(name):
    path = CONFIG_DIR / f"fusion_{name.replace('-', '_')}.yaml"
    return path if path.is_file() and name != "config" else None


def _registered(name):
    """(known, needs_prior) of a method name in the registry (ddfm.methods)."""
    from ddfm import methods
    if name not in methods.names():
        return False, True
    return True, bool(methods.get(name).needs_prior)


def _known_names():
    from ddfm import methods
    presets = [p.stem[len("fusion_"):] for p in sorted(CONFIG_DIR.glob("fusion_*.yaml"))
               if p.name != "fusion_config.yaml"]  # the defaults, not a preset
    return list(dict.fromkeys(list(methods.names()) + [PRIOR_FREE] + presets))


def resolve_method(spec):
    """`[LABEL=]BASE[:key=value...]` -> Method; PlanError (one line) for an unknown BASE."""
    label, sep, rest = spec.partition("=")
    if not sep or ":" in label:  # `ddfm:seed=0` has no label of its own
        label, rest = "", spec
    base, *overrides = [part.strip() for part in rest.split(":")]
    label = label.strip() or base
    if not _LABEL.match(label):
        raise PlanError(f"method '{spec}': '{label}' cannot name a folder (letters, digits, . _ + -)")
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise PlanError(f"method '{spec}': expected key=value after ':', got '{bad[0]}'")
    default = str(CONFIG_DIR / "fusion_config.yaml")
    if base == PRIOR_FREE:
        return Method(label, default, ["prior=none"] + overrides, needs_prior=False)
    preset = _preset(base)
    known, needs_prior = _registered(base)
    if preset is not None:
        if not known:  # a preset's method is the one it sets (default ddfm)
            import yaml
            given = yaml.safe_load(preset.read_text()) or {}
            known, needs_prior = _registered(str(given.get("method", "ddfm")))
        return Method(label, str(preset), (["prior=adm"] if needs_prior else []) + overrides, needs_prior)
    if not known:
        raise PlanError(f"unknown method '{base}' in '{spec}'; choose from {', '.join(_known_names())}")
    return Method(label, default, [f"method={base}"] + (["prior=adm"] if needs_prior else []) + overrides,
                  needs_prior)
