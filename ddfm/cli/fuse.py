"""`ddfm fuse` (and `python sample.py`): fuse every pair of two modality folders with a diffusion prior.

    ddfm fuse                                          # the default configs, input/ir + input/vi
    ddfm fuse --fusion_config fusion_official          # a shipped preset by name, or any YAML path
    ddfm fuse timestep_respacing=25 seed=0 record=true
"""
import argparse
import signal
import sys
from pathlib import Path

from ddfm import CONFIG_DIR as CONFIGS
from ddfm.savefolder.layout import Layout  # light: names the save folder's files

DESCRIPTION = "Fuse paired images (infrared/visible, CT|PET|SPECT/MRI) with DDFM."


def parse_args(argv):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--model_config", default=str(CONFIGS / "model_config_imagenet.yaml"))
    parser.add_argument("--diffusion_config", default=str(CONFIGS / "diffusion_config.yaml"))
    parser.add_argument("--fusion_config", default=str(CONFIGS / "fusion_config.yaml"),
                        help="a YAML file, or a preset shipped in the package by name: "
                        + ", ".join(sorted(p.stem for p in CONFIGS.glob("fusion_*.yaml"))))
    parser.add_argument("--save_dir", default="./output")
    parser.add_argument("--input_dir", help="folder holding the two modality folders")
    parser.add_argument("--dataset", metavar="NAME", help="a fetched test split: reads DATA_ROOT/NAME "
                        "(python -m ddfm.datasets list)")
    parser.add_argument("--data_root", help="where --dataset looks (default data, or $DDFM_DATA_ROOT)")
    parser.add_argument("--record", action="store_true", default=None, help="write every step")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--gpu", type=int, help="the official flag: same as --device cuda:N")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every pair; the images of recon/ it replaces, or that other settings made, "
                             "are set aside in recon/.replaced/ and removed once the new images are in place")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config key, e.g. timestep_respacing=25 seed=0")
    # Intermixed: overrides may stand before, between or after the flags.
    args = parser.parse_intermixed_args(argv)
    if args.dataset and args.input_dir:
        parser.error("give --input_dir or --dataset, not both")
    args.fusion_config = preset(args.fusion_config)
    return args


def preset(name):
    """A shipped preset by name (`fusion_mri_ct` -> CONFIGS/fusion_mri_ct.yaml); a path as given."""
    shipped = CONFIGS / f"{name}.yaml"
    if not Path(name).suffix and Path(name).name == name and shipped.is_file():
        return str(shipped)
    return name


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = list(args.overrides)
    if args.gpu is not None and args.device is None:
        args.device = f"cuda:{args.gpu}"
    if args.dataset:
        from ddfm.datasets.layouts import InputFolderError, dataset_folder
        try:
            args.input_dir = str(dataset_folder(args.dataset, args.data_root))
        except InputFolderError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    for key in ("input_dir", "device", "record"):
        value = getattr(args, key)
        if value is not None:  # flag values go in as they are, not through YAML
            overrides.append((key, value))

    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends a run like Ctrl-C
    try:
        return _run(args, overrides)
    except KeyboardInterrupt:  # also while torch is still loading
        _log(f"interrupted: the images written so far are kept and listed in {Layout(args.save_dir).record}; "
             f"run the same command again to resume")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args, overrides):
    # Imported after parsing so that --help is instant.
    from ddfm.common import USER_ERRORS, one_line
    from ddfm.config import load_config
    from ddfm.distributed import Rank0Failed
    from ddfm.run import run

    try:
        config = load_config(args.model_config, args.diffusion_config, args.fusion_config, overrides)
        outcome = run(config, save_dir=args.save_dir, overwrite=args.overwrite, log=_log,
                      progress=not args.quiet)
    except Rank0Failed:  # under torchrun: rank 0 has printed the reason, once
        return 2
    except USER_ERRORS as err:
        _log(f"error: {one_line(err)}")
        return 2
    if outcome.table:
        print(outcome.table)
    record, counts = outcome.record, outcome.record["counts"]
    _log(f"fused {counts['fused']}, skipped {counts['skipped']} (already fused), failed {counts['failed']} "
         f"pair(s); {Layout(args.save_dir).recon} holds {counts['in_folder']} image(s)")
    return 1 if counts["failed"] or "record_error" in record or outcome.report_failed else 0


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
