"""The one interface every fusion method implements: a `Method` object, registered by name."""
from dataclasses import dataclass

# The fusion keys whose values only matter when a method samples with the prior (size rule,
# precision, batching, devices): a method that needs no prior runs on the CPU at the source size.
SAMPLER_KEYS = ("size", "normalize", "dtype", "batch_size", "channels_last", "compile", "device")


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method that has no keys of its own."""


class Method:
    """One fusion method as the driver sees it; subclass it and override what differs.

    name: the `method:` value; label: how messages and reports name it; summary: one line.
    needs_prior: whether it samples with the ADM prior. Without one (False, or `prior: none`, or
    no checkpoint under `prior: auto`) the model and diffusion configs, the seed and SAMPLER_KEYS
    decide nothing. keys: the fusion-config keys it owns, with their released defaults (the
    config loader knows them, so they are valid YAML keys and key=value overrides).
    fingerprint_since: keys added after a release, with the value that release behaved as: at
    that value they stay out of the fingerprint, so save folders made before them still resume.
    choices: values of shared keys that only this method accepts ({"size": ("official",)}).
    compile_modes: the `compile` values it supports. sampler_bytes_per_pixel: what its sampler
    holds per pixel besides the UNet's activations (ddfm.memory plans a batch with it).
    """
    name = ""
    label = ""
    summary = ""
    needs_prior = True
    keys: dict = {}
    fingerprint_since: dict = {}
    choices: dict = {}
    compile_modes = ("none", "unet")
    sampler_bytes_per_pixel = 0
    # Why the sampler's keys, the seed and the model/diffusion configs decide nothing without a prior.
    why_no_effect = "it runs on the CPU at the source size, without a UNet or a sampler"

    def settings(self, fusion):
        """Its own settings from a fusion section: a frozen dataclass, validated on creation
        (a bad value raises ddfm.common.ConfigError with one line naming the key)."""
        return NoSettings()

    def prepare_diffusion(self, diffusion, fusion):
        """Set the diffusion section (in place) to what the method samples with, or refuse a
        sampler it cannot use (ConfigError)."""

    def fingerprint(self, run, settings):
        """The settings that decide its pixels, besides prior, modalities and colour (and the
        model and diffusion configs when it uses the prior): {key: value}."""
        return {}

    def run_fields(self, run, settings):
        """What run.json states at its top level for this method ({"variant": ...})."""
        return {}

    def build(self, run, settings, prior):
        """Its fuser (a ddfm.fusion.Fuser): run is the ddfm.settings.FusionSettings, settings
        its own, prior a ddfm.settings.Prior (None when it needs none)."""
        raise NotImplementedError

    def write_step_record(self, path, stem, details):
        """With `record: true`: write the per-step details its fuser handed to the step
        callback (one list per image) beside the progress frames; nothing by default."""

    def report_rows(self, record):
        """(label, value) rows it adds to a report's run settings, from run.json."""
        return []

    def report_strips(self, progress_dir):
        """{stem: [per-step strip rows]} a report shows under each pair; none by default."""
        return {}

    def ignored_keys(self):
        """The keys a run without the prior does not read, when this method was asked for."""
        return tuple(self.keys) + SAMPLER_KEYS

    def __repr__(self):
        return f"<method {self.name}: {self.summary}>"
