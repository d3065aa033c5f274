"""Configuration: load the three YAML files, apply key=value overrides, validate once at the door.

The model and diffusion YAMLs keep the official DDFM keys (plus `seed` and `eta` in the diffusion
file); the fusion YAML holds everything about pairs, the method variant and the outputs. Every key
is known in advance, so a typo is an error that names the key instead of a silent default.
"""
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ddfm import methods
from ddfm.common import DEFAULT_SEED, ConfigError, one_line  # noqa: F401  (ConfigError: re-exported)
from ddfm.settings import FusionSettings

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

# The fusion keys every method shares, with their defaults; each method adds its own keys
# (ddfm.methods: DDFM's variant, lamb, rho; CCF's own), so every key is known in advance.
FUSION_DEFAULTS = {
    "input_dir": "input",
    "modalities": ["ir", "vi"],
    "method": "ddfm",
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
# Allowed values of the shared keys; a method may accept more (Method.choices, e.g. a size rule).
FUSION_CHOICES = {
    "size": ("pad", "crop"),
    "color": ("auto", "grey"),
    "normalize": ("minmax", "clip"),
    "prior": ("auto", "adm", "none"),
    "dtype": ("fp32", "tf32", "bf16", "fp16", "bf16-autocast", "fp16-autocast"),
    "compile": ("none", "unet", "step", "graph"),
    # ddfm.metrics.ALL_PROTOCOLS, its alias and "all" (not imported: configs load without SciPy)
    "eval_protocol": ("reference", "cddfuse", "corrected", "tang", "all"),
}
BOOL_KEYS = ("record", "evaluate", "report", "channels_last", "deterministic")
DIFFUSION_BOOL_KEYS = ("dynamic_threshold", "clip_denoised", "rescale_timesteps")
TEXT_KEYS = ("input_dir", "device", "model_path", "modalities")
# What torch.Generator.manual_seed accepts (a signed or unsigned 64-bit integer).
SEED_RANGE = (-2**63, 2**64 - 1)
# Where the project lives: configs and a relative model_path are found from here as well.
PROJECT_ROOT = Path(__file__).resolve().parent.parent




def fusion_defaults():
    """Every fusion key with its default: the shared ones and each registered method's own."""
    return {**FUSION_DEFAULTS, **methods.all_keys()}


@dataclass
class Config:
    """The resolved configuration, split as the official code splits it (the YAML as validated,
    for the driver and run.json); `settings()` gives the typed, frozen objects handed below."""
    model: dict
    diffusion: dict
    fusion: dict = field(default_factory=fusion_defaults)

    def as_dict(self):
        return {"model": dict(self.model), "diffusion": dict(self.diffusion),
                "fusion": dict(self.fusion)}

    @property
    def method(self):
        """The configured method (ddfm.methods.get)."""
        return methods.get(self.fusion["method"])

    def settings(self):
        """(FusionSettings, the method's own settings): what the driver hands down."""
        return FusionSettings.from_fusion(self.fusion), self.method.settings(self.fusion)


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
        elif key in FUSION_DEFAULTS or key in methods.all_keys():
            config.fusion[key] = value
        else:
            raise ConfigError(f"override '{item}': unknown key '{key}'")
    return config


def validate_fusion(fusion):
    """Type- and choice-check the fusion section in place; returns it."""
    if isinstance(fusion["compile"], bool):  # the earlier true/false form: true compiled the UNet
        fusion["compile"] = "unet" if fusion["compile"] else "none"
    method = methods.get(fusion["method"])  # an unknown method is one line listing the names
    fusion["method"] = method.name
    for key, choices in FUSION_CHOICES.items():
        value = str(fusion[key]).lower()
        if value in method.choices.get(key, ()):
            fusion[key] = value
            continue
        if value not in choices:
            owner = next((m for m in map(methods.get, methods.names()) if value in m.choices.get(key, ())), None)
            if owner is not None:
                raise ConfigError(f"fusion config: {key}={fusion[key]} is {owner.label}'s "
                                  f"(needs method: {owner.name})")
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
    batch = fusion["batch_size"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"fusion config: batch_size must be a positive integer, got {fusion['batch_size']!r}")
    threads = fusion["threads"]
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"fusion config: threads must be auto or a positive integer, got {threads!r}")
    fusion["input_dir"] = str(fusion["input_dir"])
    fusion["device"] = str(fusion["device"])
    validate_method(fusion, method)
    if fusion["device"] != "auto":
        import torch
        try:
            torch.device(fusion["device"])
        except RuntimeError:
            raise ConfigError(f"fusion config: device={fusion['device']!r} is not a torch device "
                              f"(auto, cpu, cuda, cuda:N, ...)") from None
    return fusion


def validate_method(fusion, method):
    """The method's own keys, checked by its settings (one line naming the key), and the compile
    modes it supports."""
    if fusion["compile"] not in method.compile_modes:
        raise ConfigError(f"fusion config: compile={fusion['compile']} is not available for method: "
                          f"{method.name} (choose from {', '.join(method.compile_modes)})")
    method.settings(fusion)
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
    fusion = fusion_defaults()
    if fusion_path is not None:
        given = read_yaml(fusion_path)
        _check_keys(given, tuple(fusion) + DIFFUSION_KEYS, fusion_path)
        # A preset may also set diffusion keys (CCF's respacing 200): the command line still wins.
        diffusion.update({k: given.pop(k) for k in DIFFUSION_KEYS if k in given})
        fusion.update(given)
    config = apply_overrides(Config(model, diffusion, fusion), overrides)
    config.model["model_path"] = locate_model_path(config.model.get("model_path"))
    validate_fusion(config.fusion)
    config.method.prepare_diffusion(config.diffusion, config.fusion)  # e.g. the sampler it needs
    validate_diffusion(config.diffusion)
    return config
