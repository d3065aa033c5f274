"""CCF (Cao et al., NeurIPS 2024) on the ADM prior: the condition bank (conditions.py), GradNorm +
Adam guidance and its DDIM loop (guidance.py), the released resize and outputs (io.py), the fuser
(fuser.py) and the per-step record a report reads back (record.py), behind the method interface
of ddfm.methods.

May import ddfm.common, ddfm.settings, ddfm.color, ddfm.io, ddfm.files, ddfm.fusion,
ddfm.methods.ddfm.sampling (the seeded noise) and guided_diffusion; nothing of the driver or the
save folder. This file stays light (no torch): the registry reads it when a configuration is
loaded.
"""
from dataclasses import dataclass

from ddfm.common import ConfigError
from ddfm.methods.base import Method

# CCF's own fusion keys, as released (true = the released quirk; see README "DDFM and CCF").
KEYS = {
    "ccf_lr": 0.03,                 # Adam's step on x0 per diffusion step
    "ccf_topk": 3,                  # conditions selected per step (largest GradNorm weights)
    "ccf_alpha": 1.5,               # GradNorm's restoring force
    "ccf_conditions": ["ssim", "mse", "edge", "low_freq", "high_freq", "sf", "ei", "sd"],
    "ccf_edge_visible_twice": True,
    "ccf_ei_kernel_typo": True,
    "ccf_ei_detached": True,
    "ccf_mse_per_slot": True,
    "ccf_eps_unguided": True,       # DDIM's eps' from the x0 before guidance
    "ccf_guided_unclamped": True,   # the guided x0 is not clamped to [-1, 1]
    "ccf_adam_persistent": True,    # Adam's moments and step count carry over the steps
    "ccf_portrait_resize": True,    # size: official, portrait images: height from w/h as released
}
# Keys that io.py uses rather than the sampler's settings (guidance.CCFSettings).
IO_KEYS = ("ccf_portrait_resize",)
# Switches added after CCF save folders existed: at these (the released) values they stay out of
# the fingerprint, so those folders still resume.
ADDED_LATER = {"ccf_eps_unguided": True, "ccf_guided_unclamped": True, "ccf_adam_persistent": True}


@dataclass(frozen=True)
class CCFRunSettings:
    """CCF's settings: the sampler's (guidance.CCFSettings) and the released resize's switch."""
    guidance: object
    portrait_resize: bool = True


class CCFMethod(Method):
    name, label = "ccf", "CCF"
    summary = "CCF: DDIM on the ADM prior, x0 guided by top-k fusion conditions (GradNorm + Adam)"
    keys = KEYS
    fingerprint_since = ADDED_LATER
    choices = {"size": ("official",), "color": ("rgb", "visible")}
    compile_modes = ("none", "unet")
    sampler_bytes_per_pixel = 256

    def settings(self, fusion):
        for key, default in KEYS.items():
            if isinstance(default, bool) and not isinstance(fusion[key], bool):
                raise ConfigError(f"fusion config: {key} must be true or false, got {fusion[key]!r}")
        from ddfm.methods.ccf.guidance import settings_from_fusion
        try:
            guidance = settings_from_fusion(fusion)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"fusion config: {err}") from None
        return CCFRunSettings(guidance, fusion["ccf_portrait_resize"])

    def prepare_diffusion(self, diffusion, fusion):
        """CCF samples with DDIM, eta 0 (its guidance replaces the noise): a sampler or eta that
        says otherwise is refused rather than ignored."""
        eta = diffusion.pop("eta", 0.0)
        if eta not in (0, 0.0):
            raise ConfigError(f"diffusion config: eta={eta!r} does not apply to method: ccf (DDIM, eta 0)")
        if str(diffusion.get("sampler", "ddim")).lower() != "ddim":
            raise ConfigError(f"diffusion config: sampler={diffusion['sampler']!r} does not apply to "
                              f"method: ccf (DDIM, eta 0)")

    def fingerprint(self, run, settings):
        """Method, size, colour rules, precision and every ccf_ key; none of DDFM's own."""
        values = {"method": self.name, "size": run.size, "normalize": run.normalize, "dtype": run.dtype}
        for key in KEYS:
            if key in IO_KEYS:
                values[key] = settings.portrait_resize
            else:
                value = getattr(settings.guidance, key[len("ccf_"):])
                values[key] = list(value) if isinstance(value, tuple) else value
        return values

    def build(self, run, settings, prior):
        from ddfm.methods.ccf.fuser import CCFFuser
        return CCFFuser(run, settings, prior)

    def write_step_record(self, path, stem, details):
        from ddfm.methods.ccf.record import write_step_record
        write_step_record(path, stem, details)

    def report_strips(self, progress_dir):
        from ddfm.methods.ccf.record import condition_strips
        return condition_strips(progress_dir)


METHODS = [CCFMethod()]
