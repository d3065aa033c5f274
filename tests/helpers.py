"""Small shared helpers for the tests: paths, the tiny-model config, writing image pairs, child
processes, a loopback HTTP server."""
import contextlib
import http.server
import signal
import subprocess
import threading
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


@contextlib.contextmanager
def loopback_server(handler, join_timeout=5.0):
    """A ThreadingHTTPServer on 127.0.0.1 (port chosen by the OS) serving from a background thread;
    shut down and joined on exit, whatever the test did."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(join_timeout)


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


# Every child a test starts with start_child; conftest's end_children kills those still running
# when the test ends, whatever happened in it.
CHILDREN = []


def _default_signals():
    """In the child, before exec: SIGINT as a terminal would deliver it. A shell that starts the
    suite in the background (`pytest &` in a script) ignores SIGINT, and an ignored signal stays
    ignored across exec: the child would never stop on the test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_child(args, **kwargs):
    """subprocess.Popen with default SIGINT handling, ended when the test ends."""
    proc = subprocess.Popen(args, preexec_fn=_default_signals, **kwargs)
    CHILDREN.append(proc)
    return proc


def end_children():
    """Kill and reap every child started with start_child that is still running."""
    while CHILDREN:
        proc = CHILDREN.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
