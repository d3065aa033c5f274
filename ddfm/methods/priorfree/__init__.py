"""The prior-free Bayesian fusion (bayesfusion.py: the BF release that DDFM's likelihood step
comes from), as `method: prior-free`, and the method that runs when one that needs the ADM prior
has none (`prior: none`, or `prior: auto` without the checkpoint; ddfm.methods.FALLBACK).

May import ddfm.common, ddfm.settings, ddfm.fusion and NumPy/SciPy; nothing of the driver or the
save folder. This file stays light (no torch): the registry reads it when a configuration is
loaded.
"""
from ddfm.methods.base import Method


class PriorFreeMethod(Method):
    name, label = "prior-free", "prior-free"
    summary = "the hierarchical-Bayesian fusion alone (no diffusion prior), on the CPU at the source size"
    needs_prior = False
    why_no_effect = ("the prior-free Bayesian fusion runs on the CPU at the source size with the BF "
                     "release's fixed parameters and rounding, without a UNet or a sampler")

    def build(self, run, settings, prior):
        from ddfm.methods.priorfree.fuser import PriorFreeFuser
        return PriorFreeFuser(run)


METHODS = [PriorFreeMethod()]
