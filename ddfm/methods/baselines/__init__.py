"""The pixel baselines `mean` and `max` of the two sources' luma (pixels.py): honest, trivially
reproducible methods to put beside a real one, through sample.py (`method: mean`) or as a folder
tool (`python -m ddfm.methods.baselines`).

May import ddfm.common, ddfm.settings, ddfm.fusion, ddfm.io and ddfm.metrics; nothing of the
driver or the save folder. This file stays light (no torch): the registry reads it when a
configuration is loaded.
"""
from ddfm.methods.base import Method


class PixelMethod(Method):
    """One pixel rule of ddfm.methods.baselines.pixels.BASELINES, at the source size."""
    needs_prior = False

    def __init__(self, name, summary):
        self.name = self.label = name
        self.summary = summary

    def fingerprint(self, run, settings):
        return {"method": self.name}

    def build(self, run, settings, prior):
        from ddfm.methods.baselines.pixels import PixelFuser
        return PixelFuser(run, self.name)


METHODS = [PixelMethod("mean", "the pixel mean of the two sources' luma, rounded down (a baseline)"),
           PixelMethod("max", "the pixel maximum of the two sources' luma (a baseline)")]
