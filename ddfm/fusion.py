"""From decoded source pairs to fused 8-bit images: size rule, sampling (or prior-free), colour.

Shared by the CLI (`ddfm.run`) and the Python API (`ddfm.fuse`), so both give the same pixels.
"""
import numpy as np
import torch

from ddfm import determinism, io, memory
from ddfm.defaults import DEFAULT_SEED
from ddfm.color import rgb_to_luma, to_signed
from ddfm.methods.priorfree.bayesfusion import bayes_fuse, to_uint8 as bayes_to_uint8
from ddfm.methods.ddfm.sampling import StepFunction, ddfm_sample


def chroma_source(src_a, src_b, color_mode):
    """The colour source whose chroma the fused luma gets: the visible-role one first."""
    if color_mode != "auto":
        return None
    for src in (src_b, src_a):
        if src.rgb is not None:
            return src.rgb
    return None


class Fuser:
    """Fuses pairs of SourceImage with one fixed configuration.

    fusion: the validated fusion section of the config; seed: the diffusion seed;
    model/diffusion: the prior (None for the prior-free mode).
    """

    def __init__(self, fusion, seed=DEFAULT_SEED, model=None, diffusion=None, device="cpu"):
        self.fusion = fusion
        self.seed = seed
        self.model = model
        self.diffusion = diffusion
        self.device = torch.device(device)
        self.threads = determinism.resolved_threads(fusion)
        self.deterministic = bool(fusion.get("deterministic", False))
        # Built once, so a compiled step ("compile: step" / "graph") is compiled once per size.
        self.step = None if model is None else StepFunction(model, diffusion, fusion.get("compile", "none"))

    @property
    def prior_free(self):
        return self.model is None

    def fused_shape(self, src):
        """The (H, W) the sampler works at for a source: padded or cropped to /32."""
        h, w = src.luma.shape
        if self.fusion["size"] == "crop":
            return io.cropped_size(h, w)
        ph, pw = io.pad_amounts(h, w)
        return h + ph, w + pw

    def _to_tensor(self, luma):
        """[0,255] luma -> (1,1,H,W) float32 on [-1,1] at the sampler's size."""
        luma = io.crop_top_left(luma) if self.fusion["size"] == "crop" else io.pad_reflect(luma)
        x = to_signed(torch.from_numpy((luma / 255.0).astype(np.float32)))
        return x[None, None].to(self.device)

    def _out_hw(self, src):
        """The (H, W) of the written image: the source's, or the official crop's."""
        return io.cropped_size(*src.luma.shape) if self.fusion["size"] == "crop" else src.luma.shape

    def _finish(self, grey_u8, src_a, src_b):
        """Recombine with a colour source's chroma when asked for; crop it like the output."""
        rgb = chroma_source(src_a, src_b, self.fusion["color"])
        if rgb is None:
            return grey_u8
        h, w = grey_u8.shape
        return io.recombine_chroma(grey_u8, rgb[:h, :w])

    def fuse_prior_free(self, src_a, src_b):
        """Bayesian fusion at the source size (a: infrared role, b: visible role), [0,1] in."""
        fused = bayes_fuse(src_a.luma / 255.0, src_b.luma / 255.0)
        return self._finish(bayes_to_uint8(fused), src_a, src_b)

    def fuse_batch(self, pairs, step_callback=None, progress=False):
        """Fuse a list of (src_a, src_b) of one sampler size; returns uint8 images.

        step_callback(i, frames) gets, after every step, the official progress frame (uint8,
        cropped like the output) of each image of the batch. Runs with the configured thread
        count; `deterministic` fuses each pair alone (see ddfm.determinism).

        On CUDA a batch whose predicted peak memory (ddfm.memory) exceeds the free memory is
        refused before it starts, and an out-of-memory error mid-batch is turned into the same
        kind of line after its memory is released: DeviceMemoryError, one line, and the caller
        goes on with other pairs.
        """
        with determinism.run_settings(self.threads, self.deterministic):
            # (model, H, W, images at once, method, device): what ddfm.memory plans the batch with
            plan = None if self.prior_free else (
                self.model, *self.fused_shape(pairs[0][0]), 1 if self.deterministic else len(pairs),
                "ccf" if self.fusion.get("method") == "ccf" else "ddfm", self.device)
            if plan:
                memory.check_fits(*plan)
            try:
                if self.deterministic and len(pairs) > 1:
                    return determinism.one_at_a_time(self._fuse_together, pairs, step_callback, progress)
                return self._fuse_together(pairs, step_callback, progress)
            except RuntimeError as err:
                if not plan or not memory.is_out_of_memory(err):
                    raise
                line = memory.out_of_memory_line(err, *plan)
            raise memory.DeviceMemoryError(line)  # outside the except: the error's frames are gone

    def provenance(self, batch_size):
        """What makes an image of a batch of batch_size: threads, device, torch version."""
        with determinism.run_settings(self.threads, self.deterministic):
            return determinism.provenance(self.device, batch_size, self.deterministic)

    def _fuse_together(self, pairs, step_callback=None, progress=False):
        """All pairs in one batch through the sampler (or the prior-free fusion)."""
        if self.prior_free:
            return [self.fuse_prior_free(a, b) for a, b in pairs]
        a = torch.cat([self._to_tensor(src_a.luma) for src_a, _ in pairs])
        b = torch.cat([self._to_tensor(src_b.luma) for _, src_b in pairs])
        sizes = [self._out_hw(src_a) for src_a, _ in pairs]

        callback = None
        if step_callback is not None:
            def callback(info):
                luma = rgb_to_luma(info["x"].float())[:, 0].cpu().numpy()
                step_callback(info["i"], [io.progress_to_uint8(luma[k, :h, :w])
                                          for k, (h, w) in enumerate(sizes)])

        fused = ddfm_sample(self.model, self.diffusion, a, b, variant=self.fusion["variant"],
                            lamb=self.fusion["lamb"], rho=self.fusion["rho"], seed=self.seed,
                            valid_hw=sizes, callback=callback, progress=progress, step=self.step)
        fused = fused[:, 0].cpu().numpy()
        outputs = []
        for k, (src_a, src_b) in enumerate(pairs):
            h, w = sizes[k]
            grey = io.luma_to_uint8(fused[k, :h, :w], self.fusion["normalize"])
            outputs.append(self._finish(grey, src_a, src_b))
        return outputs

    def fuse(self, a, b):
        """Fuse one pair given as arrays or tensors; returns the uint8 image (H,W) or (H,W,3)."""
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().numpy()
        src_a, src_b = io.source_from_array(a, "a"), io.source_from_array(b, "b")
        io.check_pair("array", src_a, src_b)
        return self.fuse_batch([(src_a, src_b)], progress=False)[0]
