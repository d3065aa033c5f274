"""Configuration: load the three YAML files, apply key=value overrides, validate once at the door.

The model and diffusion YAMLs keep the official DDFM keys (plus `seed` and `eta` in the diffusion
file); the fusion YAML holds everything about pairs, the method variant and the outputs. Every key
is known in advance, so a typo is an error that names the key instead of a silent default.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ddfm.defaults import DEFAULT_SEED  # noqa: F401  (also read from here)
from ddfm.messages import ConfigError, one_line  # noqa: F401  (ConfigError: raised and re-exported)

MODEL_KEYS = (
    "image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma", "class_cond",
    "use_checkpoint", "attention_resolutions", "num_heads", "num_head_channels",
    "num_heads_upsample", "use_scale_shift_norm", "dropout", "resblock_updown", "use_fp16",
    "use_new_attention_order", "model_path",
)
DIFFUSION_KEYS = (
    "sampler", "steps", "noise_schedule", "model_mean_type", "model_var_type",
    "dynamic_threshold", "clip_denoised", "rescale_timesteps", "timestep_respacing", "seed", "eta",
)

# Fusion keys with their defaults and, where the value is a choice, the allowed values.
FUSION_DEFAULTS = {
    "input_dir": "input",
    "modalities": ["ir", "vi"],
    "method": "ddfm",
    "variant": "official",
    "lamb": 0.5,
    "rho": 0.001,
    "size": "pad",
    "color": "auto",
    "normalize": "minmax",
    "record": False,
    "prior": "auto",
    "evaluate": False,
    "eval_protocol": "reference",
    "report": False,
    "device": "auto",
    "dtype": "fp32",
    "batch_size": 1,
    "channels_last": False,
    "compile": "none",
    "threads": "auto",
    "deterministic": False,
}
# CCF's own keys (method: ccf), as released; ddfm.methods.ccf.guidance's settings validate them (validate_ccf).
CCF_DEFAULTS = {
    "ccf_lr": 0.03,                 # Adam's step on x0 per diffusion step
    "ccf_topk": 3,                  # conditions selected per step (largest GradNorm weights)
    "ccf_alpha": 1.5,               # GradNorm's restoring force
    "ccf_conditions": ["ssim", "mse", "edge", "low_freq", "high_freq", "sf", "ei", "sd"],
    # One switch per released quirk (true = as released; see README "DDFM and CCF").
    "ccf_edge_visible_twice": True,
    "ccf_ei_kernel_typo": True,
    "ccf_ei_detached": True,
    "ccf_mse_per_slot": True,
    "ccf_eps_unguided": True,       # DDIM's eps' from the x0 before guidance
    "ccf_guided_unclamped": True,   # the guided x0 is not clamped to [-1, 1]
    "ccf_adam_persistent": True,    # Adam's moments and step count carry over the steps
    "ccf_portrait_resize": True,    # size: official, portrait images: height from w/h as released
}
FUSION_DEFAULTS.update(CCF_DEFAULTS)
FUSION_CHOICES = {
    "method": ("ddfm", "ccf"),
    "variant": ("official", "paper"),
    "size": ("pad", "crop", "official"),
    "color": ("auto", "grey", "rgb", "visible"),
    "normalize": ("minmax", "clip"),
    "prior": ("auto", "adm", "none"),
    "dtype": ("fp32", "tf32", "bf16", "fp16", "bf16-autocast", "fp16-autocast"),
    "compile": ("none", "unet", "step", "graph"),
    # ddfm.metrics.ALL_PROTOCOLS, its alias and "all" (not imported: configs load without SciPy)
    "eval_protocol": ("reference", "cddfuse", "corrected", "tang", "all"),
}
CCF_ONLY_CHOICES = {"size": ("official",), "color": ("rgb", "visible")}
BOOL_KEYS = ("record", "evaluate", "report", "channels_last", "deterministic")
DIFFUSION_BOOL_KEYS = ("dynamic_threshold", "clip_denoised", "rescale_timesteps")
TEXT_KEYS = ("input_dir", "device", "model_path", "modalities")
# What torch.Generator.manual_seed accepts (a signed or unsigned 64-bit integer).
SEED_RANGE = (-2**63, 2**64 - 1)
# Where the project lives: configs and a relative model_path are found from here as well.
PROJECT_ROOT = Path(__file__).resolve().parent.parent




@dataclass
class Config:
    """The resolved configuration, split as the official code splits it."""
    model: dict
    diffusion: dict
    fusion: dict = field(default_factory=lambda: dict(FUSION_DEFAULTS))

    def as_dict(self):
        return {"model": dict(self.model), "diffusion": dict(self.diffusion),
                "fusion": dict(self.fusion)}


def read_yaml(path):
    """Read one YAML mapping; a missing, unparsable or non-mapping file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: config file cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: config file is not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                          f"at offset {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({one_line(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def _check_keys(data, allowed, where):
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(allowed)})")


def parse_override(text):
    """Split `key=value`; the value is parsed as YAML so `true` and `25` get types.

    Folder and device names stay the text as typed: YAML would turn `007` into 7 and `yes` into
    True. `modalities` stays text too and is split on commas by validate_fusion.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if key in TEXT_KEYS:
        return key, value.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(config, overrides):
    """Put each override into the one section that owns its key.

    overrides: `key=value` strings (the CLI) or (key, value) pairs (the Python API).
    """
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        if key in MODEL_KEYS:
            config.model[key] = value
        elif key in DIFFUSION_KEYS:
            config.diffusion[key] = value
        elif key in FUSION_DEFAULTS:
            config.fusion[key] = value
        else:
            raise ConfigError(f"override '{item}': unknown key '{key}'")
    return config


def validate_fusion(fusion):
    """Type- and choice-check the fusion section in place; returns it."""
    if isinstance(fusion["compile"], bool):  # the earlier true/false form: true compiled the UNet
        fusion["compile"] = "unet" if fusion["compile"] else "none"
    for key, choices in FUSION_CHOICES.items():
        value = str(fusion[key]).lower()
        if value not in choices:
            raise ConfigError(f"fusion config: {key}={fusion[key]!r} is not one of {', '.join(choices)}")
        fusion[key] = value
    for key in BOOL_KEYS:
        if not isinstance(fusion[key], bool):
            raise ConfigError(f"fusion config: {key} must be true or false, got {fusion[key]!r}")
    mods = fusion["modalities"]
    if isinstance(mods, str):  # "[ct, mri]" or "ct,mri" from the command line
        mods = [m.strip().strip("'\"") for m in mods.strip().strip("[]").split(",")]
    if not (isinstance(mods, (list, tuple)) and len(mods) == 2 and all(mods) and mods[0] != mods[1]):
        raise ConfigError(f"fusion config: modalities must name two different folders, got {mods!r}")
    fusion["modalities"] = [str(m) for m in mods]
    for key in ("lamb", "rho"):
        try:
            fusion[key] = float(fusion[key])
        except (TypeError, ValueError):
            raise ConfigError(f"fusion config: {key} must be a number, got {fusion[key]!r}") from None
        if not math.isfinite(fusion[key]) or fusion[key] < 0:
            raise ConfigError(f"fusion config: {key} must be a finite number >= 0, got {fusion[key]}")
    if 2 * fusion["lamb"] + fusion["rho"] == 0:
        raise ConfigError("fusion config: lamb and rho cannot both be 0 (the u-step divides by 2*lamb + rho)")
    batch = fusion["batch_size"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"fusion config: batch_size must be a positive integer, got {fusion['batch_size']!r}")
    threads = fusion["threads"]
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"fusion config: threads must be auto or a positive integer, got {threads!r}")
    fusion["input_dir"] = str(fusion["input_dir"])
    fusion["device"] = str(fusion["device"])
    validate_method(fusion)
    if fusion["device"] != "auto":
        import torch
        try:
            torch.device(fusion["device"])
        except RuntimeError:
            raise ConfigError(f"fusion config: device={fusion['device']!r} is not a torch device "
                              f"(auto, cpu, cuda, cuda:N, ...)") from None
    return fusion


def validate_method(fusion):
    """method ddfm | ccf: the choices only CCF has need method ccf; the ccf_ keys are checked by
    ddfm.methods.ccf.guidance's own settings validation (one line naming the key)."""
    if fusion["method"] != "ccf":
        for key, values in CCF_ONLY_CHOICES.items():
            if fusion[key] in values:
                raise ConfigError(f"fusion config: {key}={fusion[key]} is CCF's (needs method: ccf)")
        return fusion
    if fusion["compile"] in ("step", "graph"):
        raise ConfigError(f"fusion config: compile={fusion['compile']} compiles DDFM's step; "
                          f"method: ccf compiles the UNet only (compile: unet)")
    for key, default in CCF_DEFAULTS.items():
        if isinstance(default, bool) and not isinstance(fusion[key], bool):
            raise ConfigError(f"fusion config: {key} must be true or false, got {fusion[key]!r}")
    from ddfm.methods.ccf.guidance import settings_from_fusion
    try:
        settings_from_fusion(fusion)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"fusion config: {err}") from None
    return fusion


def validate_diffusion(diffusion):
    """Check the seed, the respacing string and the sampler keys early, before any work."""
    import guided_diffusion
    from guided_diffusion.respace import space_timesteps

    seed = diffusion.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"diffusion config: seed must be an integer, got {seed!r}")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"diffusion config: seed={seed} is outside the range of torch's generator "
                          f"({SEED_RANGE[0]} .. {SEED_RANGE[1]})")
    eta = diffusion.get("eta", 0.0)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ConfigError(f"diffusion config: eta must be a number in [0, 1] (0: deterministic DDIM), "
                          f"got {eta!r}")
    for key in DIFFUSION_BOOL_KEYS:
        if key in diffusion and not isinstance(diffusion[key], bool):
            raise ConfigError(f"diffusion config: {key} must be true or false, got {diffusion[key]!r}")
    try:
        space_timesteps(int(diffusion.get("steps", 1000)), diffusion.get("timestep_respacing", ""))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"diffusion config: timestep_respacing={diffusion.get('timestep_respacing')!r}"
                          f" is invalid ({err})") from None
    try:  # the sampler is a few float64 tables: building it checks every other value too
        guided_diffusion.create_sampler(**{k: v for k, v in diffusion.items() if k != "seed"})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"diffusion config: {err}") from None
    return diffusion


def set_ccf_sampler(diffusion):
    """CCF samples with DDIM, eta 0 (its guidance replaces the noise): a sampler or eta that says
    otherwise is refused rather than ignored."""
    eta = diffusion.pop("eta", 0.0)
    if eta not in (0, 0.0):
        raise ConfigError(f"diffusion config: eta={eta!r} does not apply to method: ccf (DDIM, eta 0)")
    if str(diffusion.get("sampler", "ddim")).lower() != "ddim":
        raise ConfigError(f"diffusion config: sampler={diffusion['sampler']!r} does not apply to "
                          f"method: ccf (DDIM, eta 0)")


def locate_model_path(path):
    """A relative model_path is taken from the working directory, else from the project folder
    (so `models/...` works wherever sample.py is started from); absent everywhere, it is kept."""
    if not path:
        return path
    path = Path(str(path)).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        return str(PROJECT_ROOT / path)
    return str(path)


def load_config(model_path, diffusion_path, fusion_path=None, overrides=()):
    """Read, merge and validate the three configs; returns a Config."""
    model = read_yaml(model_path)
    _check_keys(model, MODEL_KEYS, model_path)
    diffusion = read_yaml(diffusion_path)
    _check_keys(diffusion, DIFFUSION_KEYS, diffusion_path)
    fusion = dict(FUSION_DEFAULTS)
    if fusion_path is not None:
        given = read_yaml(fusion_path)
        _check_keys(given, tuple(FUSION_DEFAULTS) + DIFFUSION_KEYS, fusion_path)
        # A preset may also set diffusion keys (CCF's respacing 200): the command line still wins.
        diffusion.update({k: given.pop(k) for k in DIFFUSION_KEYS if k in given})
        fusion.update(given)
    config = apply_overrides(Config(model, diffusion, fusion), overrides)
    config.model["model_path"] = locate_model_path(config.model.get("model_path"))
    validate_fusion(config.fusion)
    if config.fusion["method"] == "ccf":
        set_ccf_sampler(config.diffusion)
    elif config.fusion["variant"] == "paper":
        # Algorithm 1 line 16 is the stochastic DDPM posterior step, whatever the YAML's sampler.
        config.diffusion["sampler"] = "ddpm"
        config.diffusion.pop("eta", None)
    validate_diffusion(config.diffusion)
    return config
