"""Where the two modality folders of an input are: the one resolver of sample.py, evaluate.py and
figure.py.

Configured names are taken as spelled on disk, or case-insensitively when exactly one sub-folder
fits (`pet` finds `PET`). Failing that, the standard datasets' layouts are recognised on their own,
case-insensitively: `ir|inf|infrared` with `vi|vis|visible` (TNO, M3FD's `Ir/Vis`, LLVIP's
`infrared/visible`), RoadScene's `cropinfrared/crop_HR_visible`, and `CT|PET|SPECT` with `MRI`.
Whatever is taken is said in one line; two layouts in one folder are an error, not a guess.
`--dataset NAME` reads `<root>/NAME` (root: --data_root, $DDFM_DATA_ROOT or `data`).
"""
import os
from pathlib import Path

from ddfm.datasets.fetch import RECORD

ROOT_ENV = "DDFM_DATA_ROOT"
DEFAULT_ROOT = "data"
# (first role: intensity / function, second role: texture / anatomy), lower case, in order of preference
KNOWN_LAYOUTS = tuple((a, b) for a in ("ir", "inf", "infrared") for b in ("vi", "vis", "visible")) + (
    ("cropinfrared", "crop_hr_visible"), ("ct", "mri"), ("pet", "mri"), ("spect", "mri"))
# Configured names that stand for a role rather than one modality (`[ir, vi]` is the default): they
# accept any known layout. A named modality (ct, pet, spect, mri) only ever takes its own folder.
ROLE_NAMES = ({"ir", "inf", "infrared", "cropinfrared"}, {"vi", "vis", "visible", "crop_hr_visible"})


class InputFolderError(Exception):
    """The modality folders cannot be found: one line naming the folder and what is there."""


def data_root(root=None):
    """The folder that holds fetched datasets: the flag, else $DDFM_DATA_ROOT, else data/."""
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def dataset_folder(name, root=None):
    """<root>/<name> of a fetched dataset; when it is absent or incomplete, InputFolderError says
    the one command that fetches it."""
    root = data_root(root)
    folder = root / name
    if folder.is_dir() and ((folder / RECORD).is_file() or not _is_registered(name)):
        return folder  # a fetched split, or the user's own pairs placed under the root
    state = "is incomplete (no dataset.json)" if folder.is_dir() else "is not there"
    if not _is_registered(name):
        raise InputFolderError(f"{folder}: dataset '{name}' {state} and is not in the registry "
                               f"(python -m ddfm.datasets list)")
    flag = "" if str(root) == DEFAULT_ROOT else f" --root {root}"
    raise InputFolderError(f"{folder}: dataset '{name}' {state}; fetch it with: "
                           f"python -m ddfm.datasets fetch {name}{flag}")


def _is_registered(name):
    from ddfm.datasets.registry import RegistryError, load_registry
    try:
        return name in load_registry()
    except RegistryError:
        return False


def _subfolders(root):
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    except OSError as err:
        raise InputFolderError(f"{root}: input folder cannot be read ({err.strerror or err})") from None


def _match(name, subfolders):
    """The sub-folder spelled `name`, else the one equal to it without regard to case, else None."""
    if name in subfolders:
        return name
    matches = [s for s in subfolders if s.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _known_layouts(subfolders, modalities):
    """The known layouts present, as spelled on disk, that the configured names allow."""
    found = []
    for layout in KNOWN_LAYOUTS:
        pair = tuple(_match(name, subfolders) for name in layout)
        allowed = not modalities or all(
            asked.lower() in ROLE_NAMES[i] or asked.lower() == layout[i] for i, asked in enumerate(modalities))
        if None not in pair and allowed and pair not in found:
            found.append(pair)
    return found


def find_modality_folders(input_dir, modalities=None, log=print):
    """[first, second] sub-folder names of input_dir as spelled on disk (see the module's rules).

    modalities: the configured [first, second] names, or None to use the known layouts only.
    """
    root = Path(input_dir)
    subfolders = _subfolders(root)
    configured = [_match(name, subfolders) for name in modalities or ()]
    if modalities and None not in configured:
        respelled = [f"modality '{name}': using the folder {root / found}"
                     for name, found in zip(modalities, configured) if found != name]
        if respelled:
            log("; ".join(respelled))
        return configured
    layouts = _known_layouts(subfolders, modalities)
    if len(layouts) == 1:
        (a, b), asked = layouts[0], f" (no {', '.join(modalities)})" if modalities else ""
        log(f"{root}: modality folders {a} (first role) and {b} (second role), a known layout{asked}; "
            f"modalities=[A, B] (sample.py) or --ir/--vi choose others")
        return list(layouts[0])
    there = ", ".join(subfolders) if subfolders else "none"
    if len(layouts) > 1:
        choices = ", ".join(f"{a}/{b}" for a, b in layouts)
        raise InputFolderError(f"{root}: several known pairs of modality folders ({choices}); "
                               f"choose one with modalities=[A, B] (--ir/--vi in evaluate.py, figure.py)")
    where = f"sub-folders of {root}: {there}" if root.is_dir() else f"{root} does not exist"
    if modalities:
        missing = next(name for name, found in zip(modalities, configured) if found is None)
        raise InputFolderError(f"{root / missing}: input folder not found ({where})")
    raise InputFolderError(f"{root}: no known pair of modality folders ({where})")
