"""How far apart runs that differ only in float order are: batch size, thread count, ranks.

    python -m benchmarks.determinism                  # demo pairs + ../shared/data TNO and MRI_CT
    python -m benchmarks.determinism --sets input --crop 64x96

Each pair is cut to a centred crop (the tiny test UNet's attention is quadratic in the pixels), all
pairs are fused with the tiny UNet of tests/golden (prior adm, respacing 10, CPU) once as the
reference (batch 1, 1 thread) and again under each other setting; the table counts the uint8
values that differ and the largest difference. It also times the deterministic mode against the
batched fast path. Numbers for benchmarks/README.md and the README's determinism contract.
"""
import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import ddfm
from ddfm import io

ROOT = Path(__file__).resolve().parent.parent
SETS = {"input": (ROOT / "input", ("ir", "vi")), "input/MRI_CT": (ROOT / "input" / "MRI_CT", ("ct", "mri")),
        "TNO": (ROOT.parent / "shared" / "data" / "TNO", ("ir", "vi")),
        "MRI_CT": (ROOT.parent / "shared" / "data" / "MRI_CT", ("ct", "mri"))}
TINY = {"model_config": ROOT / "tests" / "golden" / "tiny_model_config.yaml",
        "model_path": str(ROOT / "tests" / "golden" / "tiny_unet_state_dict.pt"),
        "prior": "adm", "timestep_respacing": 10, "device": "cpu"}
# name -> (batch size, threads, deterministic); compared with the reference (1, 1, False).
SETTINGS = {"batch 3, 1 thread": (3, 1, False), "batch 1, 2 threads": (1, 2, False),
            "batch 3, 2 threads": (3, 2, False), "deterministic, batch 3, 2 threads": (3, 2, True)}


def centred_crop(src, h, w):
    top, left = (src.luma.shape[0] - h) // 2, (src.luma.shape[1] - w) // 2
    cut = (slice(top, top + h), slice(left, left + w))
    return replace(src, luma=src.luma[cut], rgb=None if src.rgb is None else src.rgb[cut])


def load_set(root, modalities, h, w):
    pairs, _ = io.find_pairs(root, modalities)
    out = []
    for pair in pairs:
        a, b = io.read_image(pair.a), io.read_image(pair.b)
        if min(a.luma.shape) >= max(h, w) or (a.luma.shape[0] >= h and a.luma.shape[1] >= w):
            out.append((pair.stem, centred_crop(a, h, w), centred_crop(b, h, w)))
    return out


def fuse_all(items, batch, threads, deterministic):
    fuser = ddfm.load_fuser(log=lambda message: None, threads=threads, deterministic=deterministic, **TINY)
    start, images = time.perf_counter(), []
    for k in range(0, len(items), batch):
        images += fuser.fuse_batch([(a, b) for _, a, b in items[k:k + batch]])
    return images, time.perf_counter() - start


def compare(reference, images):
    diffs = [np.abs(r.astype(int) - i.astype(int)) for r, i in zip(reference, images)]
    values = sum(d.size for d in diffs)
    differing = sum(int((d > 0).sum()) for d in diffs)
    return differing, values, max(int(d.max()) for d in diffs), sum(bool(d.any()) for d in diffs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="input,input/MRI_CT,TNO,MRI_CT", help=f"of {', '.join(SETS)}")
    parser.add_argument("--crop", default="96x128", help="HxW of the centred crop")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.crop.split("x"))
    print(f"tiny UNet, respacing 10, CPU, centred {h}x{w} crops; reference: batch 1, 1 thread")
    print("set | pairs | setting | values differing | fraction | max |diff| | images differing | s")
    totals = {}
    for name in args.sets.split(","):
        items = load_set(*SETS[name], h, w)
        reference, ref_s = fuse_all(items, 1, 1, False)
        for setting, (batch, threads, deterministic) in SETTINGS.items():
            images, seconds = fuse_all(items, batch, threads, deterministic)
            differing, values, worst, images_differing = compare(reference, images)
            total = totals.setdefault(setting, [0, 0, 0, 0])
            total[0] += differing
            total[1] += values
            total[2] = max(total[2], worst)
            total[3] += seconds
            print(f"{name} | {len(items)} | {setting} | {differing} / {values} | {differing / values:.2e} | "
                  f"{worst} | {images_differing} | {seconds:.1f}", flush=True)
        print(f"{name} | {len(items)} | reference | - | - | - | - | {ref_s:.1f}", flush=True)
    for setting, (differing, values, worst, seconds) in totals.items():
        print(f"all | - | {setting} | {differing} / {values} | {differing / values:.2e} | {worst} | - | {seconds:.1f}")
    fast, slow = totals["batch 3, 2 threads"][3], totals["deterministic, batch 3, 2 threads"][3]
    print(f"deterministic / fast path (batch 3, 2 threads): {slow / fast:.2f}x the time")


if __name__ == "__main__":
    main()
