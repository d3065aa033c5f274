"""The official DDFM loop's costs, rewritten from reference/ddfm_official.md §3-§4 for timing.

Not a fusion method of this project: a stand-in for the released code on the same device, so
"x times faster than the official code" is measured. Per step it does what that code does:
- the fp32 UNet with the original attention arithmetic (q, k scaled by ch^-1/4, the [T, T] score
  matrix materialised, softmax in float32; guided_diffusion.md §4);
- the schedule coefficients copied from host tables at every use;
- x0's studio-swing YCbCr conversion on the host in NumPy (forward in float32, the inverse in
  float64) and back to the device;
- the EM step with three complex FFT2s and one inverse (§4.2);
- a noise draw multiplied by zero, and a progress PNG of the new latent.
"""
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import guided_diffusion.unet as unet_module
from ddfm import io
from ddfm.color import rgb_to_luma
from ddfm.methods.ddfm.em import psf2otf

YCBCR_FROM_RGB = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0],
                           [112.0, -93.786, -18.214]])
RGB_FROM_YCBCR = np.linalg.inv(YCBCR_FROM_RGB)
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def materialised_attention(qkv, num_heads, legacy_order=True):
    """The original QKV attention: explicit [T, T] weights per head. qkv [N, 3*H*ch, T] -> [N, H*ch, T]."""
    bs, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(bs * num_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(bs * num_heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


@contextmanager
def original_attention():
    """Run the project's UNet with the materialised attention while the block is active."""
    saved = unet_module.qkv_attention
    unet_module.qkv_attention = materialised_attention
    try:
        yield
    finally:
        unet_module.qkv_attention = saved


def host_luma_in(x0):
    """x0 (N,3,H,W) on the device -> (studio YCbCr/255 as a float32 host array NHWC, f~ on the device)."""
    arr = x0.permute(0, 2, 3, 1).cpu().numpy()
    ycc = ((arr @ YCBCR_FROM_RGB.T.astype(np.float32)) + YCBCR_OFFSET.astype(np.float32)) / 255
    return ycc, torch.from_numpy(np.ascontiguousarray(ycc[..., 0]))[:, None].to(x0.device)


def host_luma_out(ycc, F, device):
    """Put F in the Y channel, x255 in float32, invert in float64 on the host, back as float32."""
    ycc = ycc.copy()
    ycc[..., 0] = F[:, 0].cpu().numpy()
    rgb = ((ycc * 255).astype(np.float64) - YCBCR_OFFSET) @ RGB_FROM_YCBCR.T
    return torch.from_numpy(rgb.astype(np.float32)).permute(0, 3, 1, 2).contiguous().to(device)


def official_em_step(x0, em, I, V):
    """The official per-step work outside the UNet: x0's host colour round trip around em."""
    ycc, f_tilde = host_luma_in(x0)
    return host_luma_out(ycc, em(f_tilde, I, V), x0.device)


class OfficialEM:
    """The official EM state and call: complex OTFs, three forward FFT2s and one inverse per call."""

    def __init__(self, shape, device):
        h, w = shape[-2:]
        self.k1 = psf2otf(torch.tensor([[1.0, -1.0]], device=device), (h, w))
        self.k2 = psf2otf(torch.tensor([[1.0], [-1.0]], device=device), (h, w))
        self.den = 1 + torch.conj(self.k1) * self.k1 + torch.conj(self.k2) * self.k2
        self.F1 = torch.zeros(shape, device=device)
        self.F2 = torch.zeros(shape, device=device)
        self.tau_a, self.tau_b = 1.0, 1.0

    def __call__(self, f, I, V, lamb=0.5, rho=0.001):
        Y, X = I - V, f - V
        D = torch.sqrt(2 / (self.tau_b * (X ** 2 + 1e-6)))
        C = torch.sqrt(2 / (self.tau_a * (Y - X + 1e-6) ** 2))
        D = torch.where(D > 2 * C, 2 * C, D)
        self.tau_b = torch.mean(1 / (D + 1e-10) + self.tau_b / 2)
        self.tau_a = torch.mean(1 / (C + 1e-10) + self.tau_a / 2)
        num = (torch.fft.fft2(Y - X) + torch.conj(self.k1) * torch.fft.fft2(self.F1)
               + torch.conj(self.k2) * torch.fft.fft2(self.F2))
        H = torch.real(torch.fft.ifft2(num / self.den))
        a1, a2 = H.clone(), H.clone()
        a1[..., :, :-1] = H[..., :, :-1] - H[..., :, 1:]
        a2[..., :-1, :] = H[..., :-1, :] - H[..., 1:, :]
        self.F1, self.F2 = rho / (2 * lamb + rho) * a1, rho / (2 * lamb + rho) * a2
        X = (2 * C * Y + rho * (Y - H)) / (2 * C + 2 * D + rho)
        return I - X


def host_coef(table, t, device):
    """A schedule coefficient as the original extract_into_tensor: table copied to the device per use."""
    return torch.from_numpy(table).to(device)[t].float().view(-1, 1, 1, 1)


@torch.no_grad()
def official_like_sample(model, diffusion, a, b, x_T, png_dir, max_steps=None):
    """The official loop on a (infrared role) and b (visible role); returns the final luma (N,1,H,W).

    x_T is given (the same start as the other rows); max_steps stops early (warm-up).
    """
    device = a.device
    I, V = b, a  # the official swap: I = visible, V = infrared
    em = OfficialEM(a.shape, device)
    x = x_T
    indices = list(range(diffusion.num_timesteps))[::-1][:max_steps]
    for i in indices:
        t = torch.tensor([i] * x.shape[0], device=device)
        eps = diffusion.run_model(model, x, t)[:, :3]
        recip = host_coef(diffusion.sqrt_recip_alphas_cumprod, t, device)
        recipm1 = host_coef(diffusion.sqrt_recipm1_alphas_cumprod, t, device)
        x0 = (recip * x - recipm1 * eps).clamp(-1, 1)
        x0 = official_em_step(x0, em, I, V)
        eps = (recip * x - x0) / recipm1
        abar_prev = host_coef(diffusion.alphas_cumprod_prev, t, device)
        noise = torch.randn_like(x)
        x = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps + 0.0 * noise
        luma = rgb_to_luma(x)[:, 0].cpu().numpy()
        for k in range(x.shape[0]):
            Image.fromarray(io.progress_to_uint8(luma[k])).save(Path(png_dir) / f"{k}_x_{i:04d}.png")
    return rgb_to_luma(x)
