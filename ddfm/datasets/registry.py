"""The dataset registry: ddfm/datasets/registry.yaml read and checked field by field.

Each split names a repository, a pinned commit and its files as '<sha256> <size> <path>' lines
(the path in the repository). A file belongs to one of the split's two role folders; it lands in
`<root>/<split>/<folder>/<path below the role's source folder>`. A malformed registry is one
RegistryError line; nothing downstream ever sees an unchecked entry.
"""
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

REGISTRY_FILE = Path(__file__).resolve().parent / "registry.yaml"
VERSION = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_COMMIT = re.compile(r"[0-9a-f]{40}\Z")
_FILE = re.compile(r"([0-9a-f]{64}) (\d+) (\S.*)\Z")
_FIELDS = {"description", "repository", "commit", "verified", "pairs", "roles", "licence", "citation", "files"}


class RegistryError(Exception):
    """A registry that cannot be used as it is: one line naming the file and the problem."""


@dataclass(frozen=True)
class Role:
    role: str  # what the folder holds: infrared, visible, ct, mri, ...
    source: str  # folder in the repository
    folder: str  # folder under <root>/<split>/


@dataclass(frozen=True)
class DataFile:
    sha256: str
    size: int
    path: str  # in the repository
    target: str  # relative to <root>/<split>/


@dataclass(frozen=True)
class Split:
    name: str
    description: str
    repository: str  # owner/name on GitHub
    commit: str  # 40 hex digits, or None when not verified
    verified: bool
    reason: str  # why not verified ('' when verified)
    pairs: int
    roles: tuple  # two Role
    licence: str
    citation: str
    files: tuple  # DataFile, sorted by path

    @property
    def size(self):
        return sum(f.size for f in self.files)


def _safe_relative(path):
    """True for a plain relative POSIX path without '.', '..' or empty parts."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts) \
        and "\\" not in path


def _roles(value, where):
    if not isinstance(value, list) or len(value) != 2:
        raise RegistryError(f"{where}: roles must list exactly two modality roles")
    roles = []
    for i, role in enumerate(value):
        if not isinstance(role, dict) or set(role) != {"role", "source", "folder"}:
            raise RegistryError(f"{where}: role {i + 1} must have the fields role, source, folder")
        role = Role(*(str(role[k]) for k in ("role", "source", "folder")))
        if not _safe_relative(role.source) or not _safe_relative(role.folder) or "/" in role.folder:
            raise RegistryError(f"{where}: role {role.role!r} has an unsafe source or folder name")
        roles.append(role)
    if roles[0].folder.lower() == roles[1].folder.lower():
        raise RegistryError(f"{where}: both roles use the folder {roles[0].folder!r}")
    return tuple(roles)


def _files(value, roles, where):
    if not isinstance(value, list):
        raise RegistryError(f"{where}: files must be a list of '<sha256> <size> <path>' lines")
    files, seen = [], set()
    for line in value:
        match = _FILE.match(line) if isinstance(line, str) else None
        if match is None:
            raise RegistryError(f"{where}: file line {line!r} is not '<sha256> <size> <path>'")
        sha, size, path = match.group(1), int(match.group(2)), match.group(3)
        role = next((r for r in roles if path.startswith(r.source + "/")), None)
        if role is None or not _safe_relative(path):
            raise RegistryError(f"{where}: {path} is not a safe path inside a role's source folder")
        if path in seen:
            raise RegistryError(f"{where}: {path} is listed twice")
        seen.add(path)
        files.append(DataFile(sha, size, path, role.folder + path[len(role.source):]))
    return tuple(sorted(files, key=lambda f: f.path))


def _pair_count(files, roles):
    stems = [{PurePosixPath(f.target).stem for f in files if f.target.startswith(r.folder + "/")} for r in roles]
    return len(stems[0] & stems[1])


def _split(name, entry, where):
    where = f"{where}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected a mapping of fields")
    missing = sorted(_FIELDS - set(entry))
    if missing:
        raise RegistryError(f"{where}: missing field(s) {', '.join(missing)}")
    verified, pairs, commit = entry["verified"], entry["pairs"], entry["commit"]
    if not isinstance(verified, bool):
        raise RegistryError(f"{where}: verified must be true or false")
    if not isinstance(pairs, int) or isinstance(pairs, bool) or pairs < 1:
        raise RegistryError(f"{where}: pairs must be a whole number >= 1")
    if not _REPOSITORY.match(str(entry["repository"])):
        raise RegistryError(f"{where}: repository must be 'owner/name'")
    if (verified or commit is not None) and not _COMMIT.match(str(commit)):
        raise RegistryError(f"{where}: commit must be the full 40-hex-digit commit")
    roles = _roles(entry["roles"], where)
    files = _files(entry["files"], roles, where)
    reason = str(entry.get("reason") or "")
    if verified and (not files or _pair_count(files, roles) != pairs):
        raise RegistryError(f"{where}: its files make {_pair_count(files, roles)} pairs, the entry says {pairs}")
    if not verified and (files or not reason):
        raise RegistryError(f"{where}: an unverified split lists no files and says why (reason)")
    return Split(name, str(entry["description"]), str(entry["repository"]), commit, verified, reason,
                 pairs, roles, str(entry["licence"]), str(entry["citation"]), files)


def load_registry(path=REGISTRY_FILE):
    """{name: Split} of a registry file, checked; a bad file raises one RegistryError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as err:
        raise RegistryError(f"{path}: cannot read the dataset registry ({err.strerror or err})") from None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise RegistryError(f"{path}: not a valid YAML registry ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("datasets"), dict):
        raise RegistryError(f"{path}: expected 'version: {VERSION}' and a 'datasets' mapping")
    splits = {}
    for name, entry in data["datasets"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise RegistryError(f"{path}: dataset name {name!r} must be lower-case letters, digits, '_', '.', '-'")
        splits[name] = _split(name, entry, path)
    return splits


def select(splits, names):
    """The splits of the given names, in order; an unknown name is one RegistryError line."""
    unknown = [n for n in names if n not in splits]
    if unknown:
        raise RegistryError(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(splits)}")
    return [splits[n] for n in names]
