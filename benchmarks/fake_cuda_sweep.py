"""The GPU path over many cases on simulated CUDA (tests/fakecuda), as an independent check would
run it: methods (DDFM official and paper, CCF) x sizes (256x256, 480x640) x batch (1, padded 2) x
dtype (fp32, bf16) x channels-last (off, on), the full ADM, two respaced steps each.

    python -m benchmarks.fake_cuda_sweep            # 48 cases, about 2 s each on one core

A case is clean when nothing raised (no device mismatch, no host read), no host sync happened in
the step loop, and the host->device copies per step are none (official, CCF) or at most one pinned
non-blocking noise copy (paper). Prints one line per case (with the simulated peak) and a count.
"""
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fakecuda  # noqa: E402  (the harness lives with the tests)

METHODS = {"official": [], "paper": ["variant=paper"], "ccf": ["method=ccf"]}


def run_case(method, size, batch, padded, dtype, channels_last):
    overrides = [*METHODS[method], f"dtype={dtype}", f"channels_last={str(channels_last).lower()}",
                 f"batch_size={batch}"]
    run = fakecuda.fake_run(fakecuda.full_adm_config(*overrides, steps=2),
                            fakecuda.source_pairs(batch=batch, size=size, padded=padded))
    if run.error is not None:
        return False, f"{type(run.error).__name__}: {run.error}"
    copies = [[(c.pinned, c.non_blocking) for c in step if c.host_to_device] for step in run.copies_per_step()]
    if method == "paper":
        copies_ok = all(len(step) <= 1 and all(p and nb for p, nb in step) for step in copies)
    else:
        copies_ok = not any(copies)
    syncs = run.loop_syncs()
    convs = sorted({f"{c.input_dtype}/{c.weight_dtype}".replace("torch.", "") for c in run.block_convs()})
    clean = copies_ok and not syncs and run.steps == 2
    return clean, (f"syncs {len(syncs)}, copies per step {[len(s) for s in copies]}, block convs "
                   f"{','.join(convs)}, peak {run.peak_bytes / 2**30:.2f} GiB")


def main():
    cases = itertools.product(METHODS, [(256, 256), (480, 640)], [(1, False), (2, True)],
                              ["fp32", "bf16"], [False, True])
    failures = total = 0
    for method, size, (batch, padded), dtype, channels_last in cases:
        clean, what = run_case(method, size, batch, padded, dtype, channels_last)
        total += 1
        failures += not clean
        print(f"{method:8s} {size[0]}x{size[1]} batch {batch}{' padded' if padded else ''} {dtype} "
              f"channels_last={channels_last}: {'clean' if clean else 'NOT CLEAN'}; {what}", flush=True)
    print(f"{total} cases, {failures} not clean")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
