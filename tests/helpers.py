"""Small shared helpers for the tests: paths, the tiny-model config, writing image pairs."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
TINY_MODEL_CONFIG = GOLDEN / "tiny_model_config.yaml"
TINY_WEIGHTS = GOLDEN / "tiny_unet_state_dict.pt"
DIFFUSION_CONFIG = ROOT / "configs" / "diffusion_config.yaml"
MODEL_CONFIG = ROOT / "configs" / "model_config_imagenet.yaml"


def load_golden(name):
    return torch.load(GOLDEN / name, weights_only=True)


def write_png(path, array):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def read_png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def random_pair(seed, h, w, colour_b=False):
    """Two smooth-ish random uint8 images (b optionally colour)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    b = rng.integers(0, 256, (h, w, 3) if colour_b else (h, w), dtype=np.uint8)
    return a, b


def make_dataset(root, pairs, mods=("ir", "vi")):
    """Write {stem: (a, b)} into root/<mods[0]>/<stem>.png and root/<mods[1]>/<stem>.png."""
    for stem, (a, b) in pairs.items():
        write_png(Path(root) / mods[0] / f"{stem}.png", a)
        write_png(Path(root) / mods[1] / f"{stem}.png", b)
    return Path(root)
