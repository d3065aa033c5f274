"""The prior-free fuser: the Bayesian fusion at the source size, on the CPU, no sampler."""
from ddfm.fusion import Fuser
from ddfm.methods.priorfree.bayesfusion import bayes_fuse, to_uint8


class PriorFreeFuser(Fuser):
    """Fuses each pair with the BF release's fixed parameters (ddfm.methods.priorfree.bayesfusion)."""

    def fuse_prior_free(self, src_a, src_b):
        """Bayesian fusion at the source size (a: infrared role, b: visible role), [0,1] in."""
        fused = bayes_fuse(src_a.luma / 255.0, src_b.luma / 255.0)
        return self._finish(to_uint8(fused), src_a, src_b)

    def _fuse_together(self, pairs, step_callback=None, progress=False):
        return [self.fuse_prior_free(a, b) for a, b in pairs]
