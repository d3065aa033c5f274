"""DDFM (Zhao et al., ICCV 2023): the EM rectifier (em.py), its sampler loop (sampling.py) and
its fuser (fuser.py), behind the method interface of ddfm.methods.

May import ddfm.common, ddfm.settings, ddfm.color, ddfm.io, ddfm.fusion and guided_diffusion;
nothing of the driver or the save folder. This file stays light (no torch): the registry reads
it when a configuration is loaded.
"""
import math
from dataclasses import dataclass

from ddfm.common import ConfigError
from ddfm.methods.base import Method

VARIANTS = ("official", "paper")


@dataclass(frozen=True)
class DDFMSettings:
    """DDFM's own keys. variant: `official` (the released code's arithmetic) or `paper`
    (Algorithm 1: DDPM posterior step); lamb, rho: the EM model's weights (official 0.5, 0.001)."""
    variant: str = "official"
    lamb: float = 0.5
    rho: float = 0.001

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"fusion config: variant={self.variant!r} is not one of {', '.join(VARIANTS)}")
        for key in ("lamb", "rho"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"fusion config: {key} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"fusion config: {key} must be a finite number >= 0, got {value}")
        if 2 * self.lamb + self.rho == 0:
            raise ConfigError("fusion config: lamb and rho cannot both be 0 (the u-step divides by 2*lamb + rho)")


def _number(value, key):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"fusion config: {key} must be a number, got {value!r}") from None


class DDFMMethod(Method):
    name, label = "ddfm", "DDFM"
    summary = "DDFM: the ADM prior's x0 rectified by one EM step of the Bayesian fusion model per step"
    keys = {"variant": "official", "lamb": 0.5, "rho": 0.001}
    compile_modes = ("none", "unet", "step", "graph")
    sampler_bytes_per_pixel = 128

    def settings(self, fusion):
        return DDFMSettings(str(fusion["variant"]).lower(), _number(fusion["lamb"], "lamb"),
                            _number(fusion["rho"], "rho"))

    def prepare_diffusion(self, diffusion, fusion):
        if str(fusion["variant"]).lower() == "paper":
            # Algorithm 1 line 16 is the stochastic DDPM posterior step, whatever the YAML's sampler.
            diffusion["sampler"] = "ddpm"
            diffusion.pop("eta", None)

    def fingerprint(self, run, settings):
        return {"variant": settings.variant, "lamb": settings.lamb, "rho": settings.rho,
                "size": run.size, "normalize": run.normalize, "dtype": run.dtype}

    def run_fields(self, run, settings):
        return {"variant": settings.variant}

    def build(self, run, settings, prior):
        from ddfm.methods.ddfm.fuser import DDFMFuser
        return DDFMFuser(run, settings, prior)

    def report_rows(self, record):
        return [("variant", record.get("variant"))]


METHODS = [DDFMMethod()]
