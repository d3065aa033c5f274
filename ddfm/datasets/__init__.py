"""Verified test splits of the fusion field, and fetching them.

`registry.yaml` names each split (e.g. `tno-cddfuse`, `roadscene-221`, `m3fd-300`): its two
modality roles, the public GitHub repository and the pinned commit its files come from, and for
every file its path, size and SHA-256 computed from the repository's real bytes, with the
licence/terms and the citation its authors ask for. `python -m ddfm.datasets fetch NAME` downloads
a split from GitHub's raw-file address (or a mirror of the same `<owner>/<repo>/<commit>/<path>`
scheme), checks every byte and lays it out as `sample.py` reads it: `<root>/<NAME>/<a>/` and
`<root>/<NAME>/<b>/`, plus `<root>/<NAME>/dataset.json` recording where it came from. This
package may import `ddfm.common`, `ddfm.files`, PyYAML and tqdm; the driver reads its layouts, nothing
here imports the driver, the methods or torch.
"""
from ddfm.datasets.registry import RegistryError, Split, load_registry

__all__ = ["RegistryError", "Split", "load_registry"]
