"""The fuser every method shares: decoded source pairs -> the method's sampler -> 8-bit images.

Size rule (pad / crop to /32), colour recombination, batching, thread count, determinism and the
memory plan are here; what happens between the sources and the fused luma is the method's
(`_fuse_together`, in ddfm.methods.<name>). Shared by the CLI (`ddfm.run`) and the Python API
(`ddfm.fuse`), so both give the same pixels.
"""
import numpy as np
import torch

from ddfm import determinism, io, memory
from ddfm.color import to_signed


def chroma_source(src_a, src_b, color_mode):
    """The colour source whose chroma the fused luma gets: the visible-role one first."""
    if color_mode != "auto":
        return None
    for src in (src_b, src_a):
        if src.rgb is not None:
            return src.rgb
    return None


class Fuser:
    """Fuses pairs of SourceImage with one fixed configuration; a method subclasses it.

    run: the shared settings (ddfm.settings.FusionSettings); prior: a ddfm.settings.Prior, or
    None for a method that needs none. sampler_bytes_per_pixel: what the method's sampler holds
    per pixel besides the UNet (ddfm.memory plans each batch on CUDA with it).
    """
    sampler_bytes_per_pixel = memory.DEFAULT_SAMPLER_BYTES

    def __init__(self, run, prior=None):
        self.run = run
        self.model = None if prior is None else prior.model
        self.diffusion = None if prior is None else prior.diffusion
        self.seed = None if prior is None else prior.seed
        self.device = torch.device("cpu" if prior is None else prior.device)
        self.threads = determinism.resolved_threads(run)
        self.deterministic = bool(run.deterministic)

    @property
    def prior_free(self):
        return self.model is None

    def fused_shape(self, src):
        """The (H, W) the sampler works at for a source: padded or cropped to /32."""
        h, w = src.luma.shape
        if self.run.size == "crop":
            return io.cropped_size(h, w)
        ph, pw = io.pad_amounts(h, w)
        return h + ph, w + pw

    def _to_tensor(self, luma):
        """[0,255] luma -> (1,1,H,W) float32 on [-1,1] at the sampler's size."""
        luma = io.crop_top_left(luma) if self.run.size == "crop" else io.pad_reflect(luma)
        x = to_signed(torch.from_numpy((luma / 255.0).astype(np.float32)))
        return x[None, None].to(self.device)

    def _out_hw(self, src):
        """The (H, W) of the written image: the source's, or the official crop's."""
        return io.cropped_size(*src.luma.shape) if self.run.size == "crop" else src.luma.shape

    def _finish(self, grey_u8, src_a, src_b):
        """Recombine with a colour source's chroma when asked for; crop it like the output."""
        rgb = chroma_source(src_a, src_b, self.run.color)
        if rgb is None:
            return grey_u8
        h, w = grey_u8.shape
        return io.recombine_chroma(grey_u8, rgb[:h, :w])

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
            # (model, H, W, images at once, sampler bytes, device): what ddfm.memory plans it with
            plan = None if self.prior_free else (
                self.model, *self.fused_shape(pairs[0][0]), 1 if self.deterministic else len(pairs),
                self.sampler_bytes_per_pixel, self.device)
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
        """The method's part: all pairs of one sampler size in one batch -> uint8 images."""
        raise NotImplementedError

    def fuse(self, a, b):
        """Fuse one pair given as arrays or tensors; returns the uint8 image (H,W) or (H,W,3)."""
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().numpy()
        src_a, src_b = io.source_from_array(a, "a"), io.source_from_array(b, "b")
        io.check_pair("array", src_a, src_b)
        return self.fuse_batch([(src_a, src_b)], progress=False)[0]
