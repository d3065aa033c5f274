"""The typed, frozen settings that a validated configuration becomes below the driver.

ddfm.config validates the YAML once at the door; the driver then hands these objects down (the
fuser, the methods, the determinism and memory plans never index the YAML dicts). A leaf: it
imports nothing of the project.
"""
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class FusionSettings:
    """The fusion keys every method shares (configs/fusion_config.yaml); a method's own keys
    become its own settings object (ddfm.methods.Method.settings)."""
    method: str = "ddfm"
    modalities: tuple = ("ir", "vi")
    size: str = "pad"
    color: str = "auto"
    normalize: str = "minmax"
    record: bool = False
    prior: str = "auto"
    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 1
    channels_last: bool = False
    compile: str = "none"
    threads: object = "auto"
    deterministic: bool = False

    @classmethod
    def from_fusion(cls, fusion):
        """From a validated fusion section (ddfm.config.validate_fusion)."""
        values = {f.name: fusion[f.name] for f in fields(cls) if f.name in fusion}
        if "modalities" in values:
            values["modalities"] = tuple(values["modalities"])
        return cls(**values)


@dataclass(frozen=True)
class Prior:
    """The prior a method samples with: the wrapped ADM UNet (ddfm.prior.wrap_unet), its respaced
    sampler, the diffusion seed and the device."""
    model: object
    diffusion: object
    seed: int
    device: object
