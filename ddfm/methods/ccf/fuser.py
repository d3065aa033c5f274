"""The CCF fuser: source pairs -> [-1,1] RGB at the sampler's size -> ccf_sample -> 8-bit images.

A ddfm.fusion.Fuser (the CLI and the Python API cannot tell the methods apart); the
condition-guided sampler itself is ddfm.methods.ccf.guidance. Roles as released: the first modality is I
(infrared role), the second V (visible role). Sizes:
- pad: reflect-pad to /32; the conditions see only the source's pixels; cropped back.
- crop: the top-left crop to /32.
- official: the released resize (ddfm.methods.ccf.io.official_size), outputs resized back except `rgb`.
Colours (`color`):
- rgb: the released `recon`: the RGB sample, global min-max, truncated (at the sampled size).
- visible: the released `recon_color`: the sample's Y (min-max, truncated) with the visible Cr/Cb.
- auto / grey: the sample's BT.601 luma, normalised like DDFM's (`normalize`), with the chroma of
  a colour source kept exactly as ddfm.io.recombine_chroma does (auto) or grey.
"""
import numpy as np
import torch

from ddfm import io
from ddfm.color import LUMA_WEIGHTS
from ddfm.fusion import Fuser
from ddfm.methods.ccf import guidance as ccf, io as ccf_io, record as ccf_record

UNIT = np.float32(255)


def pad_reflect_rgb(rgb):
    """Reflect-pad an (H,W,3) array at the bottom/right to /32, as io.pad_reflect does a luma."""
    ph, pw = io.pad_amounts(*rgb.shape[:2])
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else rgb


class CCFFuser(Fuser):
    """Fuses pairs with CCF's condition-guided DDIM (ddfm.methods.ccf.guidance) on the ADM prior.

    settings: CCFRunSettings (ddfm.methods.ccf): the sampler's CCFSettings (lr, top-k, alpha,
    conditions, quirk switches) and the released resize's portrait switch.
    """
    sampler_bytes_per_pixel = 256  # sources, x_t, x0, Adam's moments, the conditions' grads (ddfm.memory)

    def __init__(self, run, settings, prior):
        super().__init__(run, prior)
        self.settings, self.step = settings, None

    def _portrait_quirk(self):
        return self.settings.portrait_resize

    def fused_shape(self, src):
        h, w = src.luma.shape
        if self.run.size == "official":
            return ccf_io.official_size(h, w, self._portrait_quirk())
        return super().fused_shape(src)

    def _to_tensor_rgb(self, src):
        """A source as (1,3,H,W) float32 on [-1,1] at the sampler's size (the released /255*2-1)."""
        rgb = ccf_io.source_rgb(src)
        size = self.run.size
        if size == "official":
            rgb = ccf_io.official_resize(rgb, self._portrait_quirk())
        elif size == "crop":
            rgb = io.crop_top_left(rgb)
        else:
            rgb = pad_reflect_rgb(rgb)
        signed = (rgb / UNIT) * np.float32(2) - np.float32(1)
        return torch.from_numpy(np.ascontiguousarray(signed.transpose(2, 0, 1)))[None].to(self.device)

    def _valid_hw(self, src):
        """The part of the sampled image that is the source's (pad: the unpadded size)."""
        return src.luma.shape if self.run.size == "pad" else self.fused_shape(src)

    def _image(self, sample, src_a, src_b):
        """One (H,W,3) float sample (the valid part) -> the uint8 image of the `color` mode."""
        mode, src_hw = self.run.color, src_b.luma.shape
        if mode == "rgb":
            return ccf_io.recon_rgb_uint8(sample)
        resized = self.run.size == "official" and sample.shape[:2] != src_hw
        if mode == "visible":
            grey = ccf_io.recon_luma_uint8(sample)
            if resized:  # the released code resizes its 8-bit grey back to the source size
                grey = np.rint(ccf_io.resize_linear(grey, *src_hw)).astype(np.uint8)
            vis = ccf_io.source_rgb(src_b)[:grey.shape[0], :grey.shape[1]]
            return ccf_io.recon_color_uint8(grey, vis)
        luma = sample.astype(np.float32) @ np.array(LUMA_WEIGHTS, dtype=np.float32)
        if resized:
            luma = ccf_io.resize_linear(luma, *src_hw)
        return self._finish(io.luma_to_uint8(luma, self.run.normalize), src_a, src_b)

    def _fuse_together(self, pairs, step_callback=None, progress=False):
        """Fuse (src_a, src_b) pairs of one sampler size in one batch (Fuser.fuse_batch calls it,
        with the thread count and `deterministic`); returns uint8 images.

        step_callback(i, frames, details) gets after every step each image's progress frame (the
        released one: the new latent's Y, min-max, truncated) and its per-step record (ddfm.methods.ccf.guidance
        step_details: selected conditions, losses, weights).
        """
        ir = torch.cat([self._to_tensor_rgb(a) for a, _ in pairs])
        vis = torch.cat([self._to_tensor_rgb(b) for _, b in pairs])
        valid = [tuple(self._valid_hw(a)) for a, _ in pairs]

        callback = None
        if step_callback is not None:
            def callback(info):
                x = info["x"].detach().float().cpu().numpy().transpose(0, 2, 3, 1)
                frames = [ccf_io.recon_luma_uint8(x[k, :h, :w]) for k, (h, w) in enumerate(valid)]
                details = [ccf_record.step_details(info, k) for k in range(len(pairs))]
                step_callback(info["i"], frames, details)

        sample = ccf.ccf_sample(self.model, self.diffusion, ir, vis, settings=self.settings.guidance,
                                seed=self.seed, valid_hw=valid, callback=callback,
                                progress=progress, step=self.step)
        sample = sample.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
        return [self._image(sample[k, :h, :w], a, b) for k, ((a, b), (h, w)) in enumerate(zip(pairs, valid))]
