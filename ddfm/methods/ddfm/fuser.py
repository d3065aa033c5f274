"""DDFM's fuser: luma pairs on [-1, 1] at the sampler's size -> ddfm_sample -> 8-bit images."""
import torch

from ddfm import io
from ddfm.color import rgb_to_luma
from ddfm.fusion import Fuser
from ddfm.methods.ddfm.sampling import StepFunction, ddfm_sample


class DDFMFuser(Fuser):
    """Fuses pairs with DDFM's EM-rectified sampler (ddfm.methods.ddfm.sampling) on the ADM prior.

    settings: DDFMSettings (variant, lamb, rho)."""
    sampler_bytes_per_pixel = 128  # sources, x_t, x0 and the EM state (ddfm.memory)

    def __init__(self, run, settings, prior):
        super().__init__(run, prior)
        self.settings = settings
        # Built once, so a compiled step ("compile: step" / "graph") is compiled once per size.
        self.step = StepFunction(self.model, self.diffusion, run.compile)

    def _fuse_together(self, pairs, step_callback=None, progress=False):
        """All pairs in one batch through the sampler (Fuser.fuse_batch calls it)."""
        a = torch.cat([self._to_tensor(src_a.luma) for src_a, _ in pairs])
        b = torch.cat([self._to_tensor(src_b.luma) for _, src_b in pairs])
        sizes = [self._out_hw(src_a) for src_a, _ in pairs]

        callback = None
        if step_callback is not None:
            def callback(info):
                luma = rgb_to_luma(info["x"].float())[:, 0].cpu().numpy()
                step_callback(info["i"], [io.progress_to_uint8(luma[k, :h, :w])
                                          for k, (h, w) in enumerate(sizes)])

        fused = ddfm_sample(self.model, self.diffusion, a, b, variant=self.settings.variant,
                            lamb=self.settings.lamb, rho=self.settings.rho, seed=self.seed,
                            valid_hw=sizes, callback=callback, progress=progress, step=self.step)
        fused = fused[:, 0].cpu().numpy()
        outputs = []
        for k, (src_a, src_b) in enumerate(pairs):
            h, w = sizes[k]
            grey = io.luma_to_uint8(fused[k, :h, :w], self.run.normalize)
            outputs.append(self._finish(grey, src_a, src_b))
        return outputs
