"""CCF's condition bank (ccf_official.md §4): eight fusion losses of an estimate x given I and V.

Order of the loss vector (it matters for the top-k selection and for the always-on MSE term):
  0 ssim       -(SSIM(V, x) + SSIM(I, x)) / 2 on [0, 1]; 11x11 Gaussian window (sigma 1.5), zero pad
  1 mse        (mean((V - x)^2) + mean((I - x)^2)) / 2
  2 edge       mean((E(x) - E(V))^2), E = clipped Laplacian of the grey image (the released code
               averages the visible term with itself: I's edges are never used)
  3 low_freq   mean((yl(x) - (yl(I) + yl(V)) / 2)^2), yl the Haar approximation band (J = 1)
  4 high_freq  mean((yh(x) - max-abs(yh(I), yh(V)))^2) over the three Haar detail bands
  5 sf         -SF(x), spatial frequency of the grey image on the [-1, 1] scale
  6 ei         -EI(x), mean Sobel magnitude (typo kernel; detached: zero gradient as released)
  7 sd         -mean over channels of the unbiased standard deviation

I = infrared, V = visible, x the RGB estimate; all (N, 3, H, W) float32 on the [-1, 1] scale; each
loss is per image. Everything that depends only on I and V is computed once per image by
``ConditionBank``. Each quirk of the released code is a flag whose default is the released
behaviour.

No step copies host data to the device (on CUDA a pageable copy is a host sync): the filter taps
are device tensors built once per bank (``Filters``) and handed to the functions below.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CONDITION_NAMES = ("ssim", "mse", "edge", "low_freq", "high_freq", "sf", "ei", "sd")
MSE_INDEX = CONDITION_NAMES.index("mse")

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # the released code's grey conversion of RGB
LAPLACIAN = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))
SOBEL_H = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
SOBEL_V_RELEASED = ((-1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))  # first row: typo
SOBEL_V_FIXED = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
# A magnitude sqrt(h^2 + v^2) at 0 has no derivative: the differentiable EI adds this inside.
EI_SQRT_EPS = 1e-12
HAAR_TAP = 0.7071067811865476  # pywt's Haar dec_lo taps, 1/sqrt(2)
HAAR_TAPS = ((HAAR_TAP, HAAR_TAP), (HAAR_TAP, -HAAR_TAP))  # low-pass, high-pass rows


# --- building blocks -----------------------------------------------------------------------------

def per_image_mean(x):
    """Mean over every dimension but the first: (N, ...) -> (N,)."""
    return x.flatten(1).mean(dim=1)


def grey(x):
    """0.299 R + 0.587 G + 0.114 B, on the scale of x: (N, 3, H, W) -> (N, 1, H, W)."""
    r, g, b = GREY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """pytorch_ssim's 1-D window: exp(-(k - size//2)^2 / (2 sigma^2)) normalised to sum 1 (float32)."""
    taps = torch.tensor([math.exp(-((k - size // 2) ** 2) / (2 * sigma ** 2)) for k in range(size)],
                        dtype=torch.float32)
    return taps / taps.sum()


def gaussian_blur(x, taps):
    """Depthwise zero-padded Gaussian filter, as the separable pair of 1-D passes of the 2-D window
    outer(taps, taps) (same result up to float rounding, 5x fewer multiplies): (N, C, H, W)."""
    c, pad = x.shape[1], taps.numel() // 2
    row = taps.to(x.device).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    col = taps.to(x.device).view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(x, row, padding=(0, pad), groups=c)
    return F.conv2d(x, col, padding=(pad, 0), groups=c)


def _taps(values, like):
    """A constant as a tensor of like's dtype on its device: a tensor given is used as it is."""
    if torch.is_tensor(values):
        return values
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def filter3x3(x, kernel):
    """Cross-correlation of (N, 1, H, W) with a 3x3 kernel (nested tuple, or a tensor already on
    x's device: see Filters), zero pad 1 (F.conv2d)."""
    return F.conv2d(x, _taps(kernel, x).view(1, 1, 3, 3), padding=1)


@dataclass(frozen=True)
class Filters:
    """The conditions' fixed taps as float32 tensors on one device, built once (``on``) and kept:
    laplacian, sobel_h, sobel_v_released, sobel_v_fixed (3x3), haar (2x2: low, high), gauss (11)."""
    laplacian: torch.Tensor
    sobel_h: torch.Tensor
    sobel_v_released: torch.Tensor
    sobel_v_fixed: torch.Tensor
    haar: torch.Tensor
    gauss: torch.Tensor

    @classmethod
    def on(cls, device):
        host = (LAPLACIAN, SOBEL_H, SOBEL_V_RELEASED, SOBEL_V_FIXED, HAAR_TAPS)
        tensors = [torch.tensor(values, dtype=torch.float32).to(device) for values in host]
        return cls(*tensors, gaussian_window().to(device))


def clipped_response(g, kernel):
    """The released filters' 8-bit round trip: g on [-1, 1] -> [0, 255], filter, clip, back."""
    u = filter3x3((g + 1) * 127.5, kernel).clamp(0, 255)
    return u / 127.5 - 1


def haar_dwt(x, taps=HAAR_TAPS):
    """One level of the orthonormal Haar DWT as pytorch_wavelets' DWTForward(J=1, 'haar', 'zero').

    x: (N, C, H, W); an odd side is zero-padded at its end first, as that mode does. Returns
    yl (N, C, H/2, W/2) and yh (N, C, 3, H/2, W/2). Computed like the released wrapper, with the
    same float arithmetic: a stride-2 two-tap filter pair along the width, then along the height
    (pywt's reversed dec filters, c = 1/sqrt(2) in float32). The rounding matters: the high-band
    condition picks the larger of |yh(I)| and |yh(V)|, and 8-bit sources tie often.
    taps: HAAR_TAPS, or Filters.haar (already on x's device).
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2))
    c = x.shape[1]
    taps = _taps(taps, x)
    lohi = F.conv2d(x, taps.view(2, 1, 1, 2).repeat(c, 1, 1, 1), stride=(1, 2), groups=c)
    bands = F.conv2d(lohi, taps.view(2, 1, 2, 1).repeat(2 * c, 1, 1, 1), stride=(2, 1), groups=2 * c)
    bands = bands.reshape(bands.shape[0], c, 4, *bands.shape[-2:])
    return bands[:, :, 0], bands[:, :, 1:]


def spatial_frequency(g):
    """SF = sqrt(RF^2 + CF^2), RF / CF the RMS of vertical / horizontal neighbour differences;
    kept as sqrt(sqrt(a)^2 + sqrt(b)^2) like the released code. g: (N, 1, H, W) -> (N,)."""
    rf = per_image_mean((g[..., 1:, :] - g[..., :-1, :]) ** 2).sqrt()
    cf = per_image_mean((g[..., :, 1:] - g[..., :, :-1]) ** 2).sqrt()
    return (rf ** 2 + cf ** 2).sqrt()


def edge_intensity(g, kernel_typo=True, detached=True, filters=None):
    """EI = mean sqrt(h^2 + v^2) of the clipped Sobel responses of g (N, 1, H, W) -> (N,).

    detached (released): the input is cut from the graph, so EI has an exactly zero gradient.
    filters: a Filters on g's device (default: the taps are made from the constants).
    """
    if detached:
        g = g.detach()
    if filters is None:
        sobel_h, sobel_v = SOBEL_H, SOBEL_V_RELEASED if kernel_typo else SOBEL_V_FIXED
    else:
        sobel_h = filters.sobel_h
        sobel_v = filters.sobel_v_released if kernel_typo else filters.sobel_v_fixed
    h = clipped_response(g, sobel_h)
    v = clipped_response(g, sobel_v)
    squared = h ** 2 + v ** 2
    return per_image_mean(squared.sqrt() if detached else (squared + EI_SQRT_EPS).sqrt())


def channel_std(x):
    """Mean over channels of each channel's unbiased std: (N, C, H, W) -> (N,)."""
    return x.flatten(2).std(dim=2).mean(dim=1)


# --- the bank ------------------------------------------------------------------------------------

class _SourceTerms:
    """Everything the conditions need from one batch of I, V (N, 3, H, W), computed once."""

    def __init__(self, ir, vis, filters, edge_visible_twice):
        self.ir, self.vis = ir, vis
        self.filters = filters
        taps = filters.gauss
        # SSIM statistics of the sources: [V, I] stacked on the channel axis.
        pair01 = torch.cat([(vis + 1) / 2, (ir + 1) / 2], dim=1)
        self.src01 = pair01
        self.mu_src = gaussian_blur(pair01, taps)
        self.mu_src_sq = self.mu_src ** 2
        self.sigma_src_sq = gaussian_blur(pair01 * pair01, taps) - self.mu_src_sq
        self.edge_v = clipped_response(grey(vis), filters.laplacian)
        self.edge_i = self.edge_v if edge_visible_twice else clipped_response(grey(ir), filters.laplacian)
        yl_i, yh_i = haar_dwt(ir, filters.haar)
        yl_v, yh_v = haar_dwt(vis, filters.haar)
        self.low_target = 0.5 * yl_i + 0.5 * yl_v
        self.high_target = torch.where(yh_i.abs() > yh_v.abs(), yh_i, yh_v)


def _ssim_loss(x, src):
    """-(SSIM(V, x) + SSIM(I, x)) / 2 with pytorch_ssim's formula (img1 = source, img2 = x)."""
    x01 = (x + 1) / 2
    pair = torch.cat([x01, x01], dim=1)  # x against V (channels 0..2) and I (3..5)
    blurred = gaussian_blur(torch.cat([x01, x01 * x01, src.src01 * pair], dim=1), src.filters.gauss)
    mu_x, ex_sq, ex_src = blurred.split([3, 3, 6], dim=1)
    mu_x_sq = mu_x ** 2
    mu_x2, sigma_x_sq2 = torch.cat([mu_x, mu_x], 1), torch.cat([ex_sq - mu_x_sq] * 2, 1)
    mu_x_sq2 = torch.cat([mu_x_sq, mu_x_sq], 1)
    mu_both = src.mu_src * mu_x2
    sigma_both = ex_src - mu_both
    ssim_map = (((2 * mu_both + SSIM_C1) * (2 * sigma_both + SSIM_C2))
                / ((src.mu_src_sq + mu_x_sq2 + SSIM_C1) * (src.sigma_src_sq + sigma_x_sq2 + SSIM_C2)))
    ssim_v = per_image_mean(ssim_map[:, :3])
    ssim_i = per_image_mean(ssim_map[:, 3:])
    return -(ssim_v + ssim_i) / 2


def _mse_loss(x, src):
    return (per_image_mean((src.vis - x) ** 2) + per_image_mean((src.ir - x) ** 2)) / 2


def _edge_loss(x, src):
    edges = clipped_response(grey(x), src.filters.laplacian)
    return 0.5 * (per_image_mean((edges - src.edge_v) ** 2) + per_image_mean((edges - src.edge_i) ** 2))


def _low_freq_loss(x, src):
    return per_image_mean((haar_dwt(x, src.filters.haar)[0] - src.low_target) ** 2)


def _high_freq_loss(x, src):
    return per_image_mean((haar_dwt(x, src.filters.haar)[1] - src.high_target) ** 2)


class ConditionBank:
    """The eight losses of x for fixed sources I (infrared) and V (visible), (N, 3, H, W) float32.

    valid_hw: [(h, w)] per image when the batch was padded at the bottom/right: each image's
    conditions then see only its own top-left h x w pixels (the padding gets a zero gradient).
    Flags (default = released): edge_visible_twice, ei_kernel_typo, ei_detached.
    """

    def __init__(self, ir, vis, valid_hw=None, *, edge_visible_twice=True, ei_kernel_typo=True,
                 ei_detached=True):
        ir, vis = ir.float(), vis.float()
        n, _, h, w = ir.shape
        self.ei_kernel_typo, self.ei_detached = ei_kernel_typo, ei_detached
        filters = Filters.on(ir.device)  # every tap crosses to the device here, once per bank
        self.crops = None
        if valid_hw is not None and any(tuple(hw) != (h, w) for hw in valid_hw):
            self.crops = [tuple(int(v) for v in hw) for hw in valid_hw]
            self.sources = [_SourceTerms(ir[k:k + 1, :, :ch, :cw], vis[k:k + 1, :, :ch, :cw], filters,
                                         edge_visible_twice)
                            for k, (ch, cw) in enumerate(self.crops)]
        else:
            self.sources = _SourceTerms(ir, vis, filters, edge_visible_twice)

    def losses(self, x):
        """The (N, 8) loss matrix. x: one (N, 3, H, W) tensor, or a sequence of 8 such tensors
        (loss k is evaluated on x[k]: with 8 leaves one backward gives every per-condition
        gradient separately)."""
        leaves = [x] * len(CONDITION_NAMES) if torch.is_tensor(x) else list(x)
        if self.crops is None:
            return self._losses(leaves, self.sources)
        rows = []
        for k, (h, w) in enumerate(self.crops):
            crops = [leaf[k:k + 1, :, :h, :w] for leaf in leaves]
            rows.append(self._losses(crops, self.sources[k]))
        return torch.cat(rows, dim=0)

    def _losses(self, leaves, src):
        x_ssim, x_mse, x_edge, x_low, x_high, x_sf, x_ei, x_sd = [leaf.float() for leaf in leaves]
        return torch.stack([
            _ssim_loss(x_ssim, src),
            _mse_loss(x_mse, src),
            _edge_loss(x_edge, src),
            _low_freq_loss(x_low, src),
            _high_freq_loss(x_high, src),
            -spatial_frequency(grey(x_sf)),
            -edge_intensity(grey(x_ei), self.ei_kernel_typo, self.ei_detached, src.filters),
            -channel_std(x_sd),
        ], dim=1)

    def losses_and_grads(self, x):
        """Losses (N, 8) and the per-condition gradients dL_k/dx (N, 8, 3, H, W), by one backward
        pass over eight detached copies of x (exactly the eight separate gradients)."""
        leaves = [x.detach().float().requires_grad_(True) for _ in CONDITION_NAMES]
        with torch.enable_grad():
            losses = self.losses(leaves)
            grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
        return losses.detach(), torch.stack(grads, dim=1)


def condition_losses(x, ir, vis, valid_hw=None, **flags):
    """The (N, 8) losses of x given I = ir and V = vis (see ConditionBank for valid_hw, flags)."""
    return ConditionBank(ir, vis, valid_hw, **flags).losses(x)
