"""EM rectification of x0 (DDFM, Zhao et al. ICCV 2023): the official step and the paper's Algorithm 1.

One call = one E-step and one HQS pass of the M-step, applied once per diffusion step on a
single-channel estimate f~ (N, 1, H, W). The state (F1, F2 = the HQS auxiliary u, and the two EM
scales) is created per image / batch by ``init_em_state`` and carried across diffusion steps.

Roles of the sources (ddfm_official.md §2.4, §4.3):
  official: em_step_official(f, I, V) with I = visible, V = infrared (the official swap);
  paper:    em_step_paper(f, i, v)    with i = infrared, v = visible.
``em_sources(variant, ir, vis)`` returns the pair in the order each step expects.

Naming: ``lamb`` is the TV weight psi and ``rho`` the HQS penalty eta, as in the official code
(lamb=0.5, rho=0.001). The EM scales are ``tau_a``, ``tau_b`` (the paper's gamma, rho).
"""
from dataclasses import dataclass, replace

import torch

from ddfm.color import official_luma_in, official_luma_out, paper_luma_in, paper_luma_out


@dataclass
class EMState:
    """EM state of one batch; every image has its own tau (official: one global scalar per image)."""

    F1: torch.Tensor      # (N, 1, H, W) horizontal HQS auxiliary u1, carried across steps
    F2: torch.Tensor      # (N, 1, H, W) vertical HQS auxiliary u2
    tau_a: torch.Tensor   # (N, 1, 1, 1) EM scale paired with C (official) / gamma (paper)
    tau_b: torch.Tensor   # (N, 1, 1, 1) EM scale paired with D (official) / rho (paper)
    fft_k1: torch.Tensor  # (H, W) complex OTF of the horizontal difference, acts as h[c+1] - h[c]
    fft_k2: torch.Tensor  # (H, W) complex OTF of the vertical difference, acts as h[r+1] - h[r]
    denom: torch.Tensor   # (H, W//2+1) real 1 + |K1|^2 + |K2|^2 on the rfft2 half-spectrum
    valid: torch.Tensor = None  # (N, 1, H, W) 1 on each image's own pixels, 0 on padding; None: all


@dataclass
class EMDiagnostics:
    """Intermediate quantities of one EM call, for tests and inspection."""

    C: torch.Tensor           # (N, 1, H, W) weight of the y term in the x-update
    D: torch.Tensor           # (N, 1, H, W) weight of the zero term, after the clip (official)
    D_preclip: torch.Tensor   # (N, 1, H, W) D before the clip
    H: torch.Tensor           # (N, 1, H, W) k-update (FFT solve)
    clip_mask: torch.Tensor   # (N, 1, H, W) bool, where the clip D <- 2C was applied
    num_clipped: torch.Tensor  # (N,) int64


def psf2otf(psf, shape):
    """MATLAB-style psf2otf: zero-pad bottom/right to ``shape``, roll by -floor(size/2), FFT2.

    psf: (h, w) real tensor; shape: (H, W). Returns the complex (H, W) OTF. The imaginary part is
    kept (for the difference kernels it is never negligible).
    """
    padded = psf.new_zeros(shape)
    padded[: psf.shape[0], : psf.shape[1]] = psf
    shifts = (-(psf.shape[0] // 2), -(psf.shape[1] // 2))
    return torch.fft.fft2(torch.roll(padded, shifts=shifts, dims=(0, 1)))


def init_em_state(shape, device=None, dtype=torch.float32, valid_hw=None):
    """Official EM_Initial (ddfm_official.md §4.1): F1 = F2 = 0, tau_a = tau_b = 1, OTFs at image size.

    shape: (N, 1, H, W). C, D, H of the official state are recomputed before use, so they are not kept.
    valid_hw: optional [(h, w)] per image when the images were padded at the bottom/right to (H, W):
    the tau updates then average over each image's own pixels only, not over the padding.
    """
    n, _, h, w = shape
    k1 = torch.tensor([[1.0, -1.0]], device=device, dtype=dtype)    # 1x2 horizontal difference
    k2 = torch.tensor([[1.0], [-1.0]], device=device, dtype=dtype)  # 2x1 vertical difference
    fft_k1 = psf2otf(k1, (h, w))
    fft_k2 = psf2otf(k2, (h, w))
    # |K|^2 as conj(K) K (complex, zero imaginary part) and the sum in that order, as the official code.
    # |K|^2 = conj(K) K is real; the spectrum of a real image is Hermitian, so the half kept by
    # rfft2 is all the solve needs.
    denom = (1 + torch.conj(fft_k1) * fft_k1 + torch.conj(fft_k2) * fft_k2).real[:, : w // 2 + 1]
    return EMState(
        F1=torch.zeros(shape, device=device, dtype=dtype),
        F2=torch.zeros(shape, device=device, dtype=dtype),
        tau_a=torch.ones((n, 1, 1, 1), device=device, dtype=dtype),
        tau_b=torch.ones((n, 1, 1, 1), device=device, dtype=dtype),
        fft_k1=fft_k1,
        fft_k2=fft_k2,
        denom=denom,
        valid=_valid_mask(shape, valid_hw, device, dtype),
    )


def _valid_mask(shape, valid_hw, device, dtype):
    """(N, 1, H, W) ones on the top-left (h, w) of each image; None when nothing is padded."""
    n, _, h, w = shape
    if valid_hw is None or all(tuple(hw) == (h, w) for hw in valid_hw):
        return None
    mask = torch.zeros(shape, device=device, dtype=dtype)
    for k, (vh, vw) in enumerate(valid_hw):
        mask[k, :, :vh, :vw] = 1
    return mask


def _image_mean(x, valid=None):
    """Mean over the pixels of each image (its valid ones if a mask is given): (N,1,H,W) -> (N,1,1,1)."""
    if valid is None:
        return x.reshape(x.shape[0], -1).mean(dim=1).view(-1, 1, 1, 1)
    return (x * valid).sum(dim=(1, 2, 3), keepdim=True) / valid.sum(dim=(1, 2, 3), keepdim=True)


def _fft_solve(rhs, state):
    """k-update (Eq. 25): Re IFFT2[(FFT2(rhs) + conj(K1) FFT2(F1) + conj(K2) FFT2(F2)) / (1+|K1|^2+|K2|^2)].

    conj(K) FFT2(F) is the spectrum of the adjoint difference K^T F (g[c-1] - g[c], circular), so
    the numerator is one real FFT of rhs + K1^T F1 + K2^T F2: one rfft2/irfft2 pair instead of
    three complex forward FFTs and one inverse (equal to float32 rounding, ~1e-7).
    """
    spatial = rhs - state.F1 - state.F2
    # + F[c-1] (circular) for both differences, written as slices: torch.roll would copy twice.
    spatial[..., :, 1:] += state.F1[..., :, :-1]
    spatial[..., :, :1] += state.F1[..., :, -1:]
    spatial[..., 1:, :] += state.F2[..., :-1, :]
    spatial[..., :1, :] += state.F2[..., -1:, :]
    return torch.fft.irfft2(torch.fft.rfft2(spatial) / state.denom, s=rhs.shape[-2:])


def _zero_boundary_backward_diff(h):
    """Official u-step differences: a1[.., c] = h[.., c] - h[.., c+1], a1[.., W-1] = h[.., W-1]; a2 on rows."""
    a1 = h.clone()
    a1[..., :, :-1] -= h[..., :, 1:]
    a2 = h.clone()
    a2[..., :-1, :] -= h[..., 1:, :]
    return a1, a2


def _circular_forward_diff(h):
    """The difference operators of the OTFs: (K1 h)[.., c] = h[.., c+1] - h[.., c], wrapping around."""
    return torch.roll(h, -1, dims=-1) - h, torch.roll(h, -1, dims=-2) - h


def em_step_official(f_tilde, I, V, state, lamb=0.5, rho=0.001, diagnostics=False):
    """Official EM_onestep (ddfm_official.md §4.2) in float32, equal to the golden calls to ~3e-7.

    f_tilde: (N, 1, H, W) studio-swing luma of x0 (see color.official_luma_in); I, V: (N, 1, H, W) in
    [-1, 1], I = visible, V = infrared. Returns (F, new_state), F = I - X (N, 1, H, W), not clamped;
    with diagnostics=True returns (F, new_state, EMDiagnostics).
    """
    Y = I - V
    X = f_tilde - V
    R = Y - X  # = I - f~, the variable x' whose M-step the code really solves (§4.3)
    # E-step with the previous scales. Note the eps: inside the square for D, before squaring for C.
    # sqrt(a/b) is evaluated as sqrt(a)*rsqrt(b) and sqrt(a/(r+e)^2) as sqrt(a)/|r+e|: the same
    # values to float32 rounding in half the passes over the image.
    # In-place ops below only touch fresh temporaries: fewer passes and allocations per step.
    D = (X * X).add_(1e-6).rsqrt_().mul_(torch.sqrt(2 / state.tau_b))
    C = (R + 1e-6).abs_().reciprocal_().mul_(torch.sqrt(2 / state.tau_a))
    # The clip D <= 2C is not in the paper; it bounds the infrared weight C/(C+D) below by 1/3.
    two_c = 2 * C
    D_preclip = D
    D = torch.minimum(D, two_c)
    # Scale update E[m] = 1/E[1/m] + tau/2 with the old tau; used from the next call on.
    tau_b = _image_mean((D + 1e-10).reciprocal_(), state.valid) + state.tau_b / 2
    tau_a = _image_mean((C + 1e-10).reciprocal_(), state.valid) + state.tau_a / 2
    # M-step, one HQS pass: k (FFT solve with the carried F1/F2), u, then x.
    H = _fft_solve(R, state)
    F1, F2 = _zero_boundary_backward_diff(H * (rho / (2 * lamb + rho)))
    # x-update (2C Y + rho (Y - H)) / (2C + 2D + rho).
    X = (Y - H).mul_(rho).addcmul_(two_c, Y).div_(two_c.add(D, alpha=2).add_(rho))
    F = I - X
    new_state = replace(state, F1=F1, F2=F2, tau_a=tau_a, tau_b=tau_b)
    if not diagnostics:
        return F, new_state
    clip_mask = D_preclip > two_c
    diag = EMDiagnostics(C=C, D=D, D_preclip=D_preclip, H=H, clip_mask=clip_mask,
                         num_clipped=clip_mask.flatten(1).sum(dim=1))
    return F, new_state, diag


def em_step_paper(f_tilde, i, v, state, lamb=0.5, rho=0.001, eps=1e-6, diagnostics=False):
    """Paper Algorithm 1, lines 3-4: E-step (Eq. 16, 31), M-step k (Eq. 25) -> u (Eq. 27) -> x (Eq. 29).

    f_tilde: (N, 1, H, W) estimate of f in [-1, 1]; i: infrared, v: visible, (N, 1, H, W) in [-1, 1].
    Returns (f_hat, new_state) with f_hat = x + v (Eq. 30); with diagnostics=True also EMDiagnostics
    (C = E[1/m], D = E[1/n], H = k; no clip, so clip_mask is all False).
    eps is a numerical guard added to the squared residuals (not in the paper): x = 0 happens
    wherever f~ equals v exactly, e.g. on saturated background.
    """
    y = i - v
    x = f_tilde - v
    gamma, rho_hyper = state.tau_a, state.tau_b
    # E-step (Eq. 16): inverse-Gaussian posterior means of the inverse mixing variances.
    m_bar = torch.sqrt(2 / (gamma * ((y - x) ** 2 + eps)))   # E[1/m], likelihood |y - x|
    n_bar = torch.sqrt(2 / (rho_hyper * (x ** 2 + eps)))     # E[1/n], prior |x|
    # Eq. 31: gamma = mean E[m], rho = mean E[n], with E[m] = 1/E[1/m] + gamma/2.
    new_gamma = _image_mean(1 / m_bar + gamma / 2, state.valid)
    new_rho_hyper = _image_mean(1 / n_bar + rho_hyper / 2, state.valid)
    # M-step. Eq. 25: k from x and the carried u.
    k = _fft_solve(x, state)
    # Eq. 27: u = eta / (2 psi + eta) * grad k, with the same (circular) differences as the OTFs.
    g1, g2 = _circular_forward_diff(k)
    u1 = rho / (2 * lamb + rho) * g1
    u2 = rho / (2 * lamb + rho) * g2
    # Eq. 29.
    x = (2 * m_bar * y + rho * k) / (2 * m_bar + 2 * n_bar + rho)
    f_hat = x + v  # Eq. 30
    new_state = replace(state, F1=u1, F2=u2, tau_a=new_gamma, tau_b=new_rho_hyper)
    if not diagnostics:
        return f_hat, new_state
    no_clip = torch.zeros_like(m_bar, dtype=torch.bool)
    diag = EMDiagnostics(C=m_bar, D=n_bar, D_preclip=n_bar, H=k, clip_mask=no_clip,
                         num_clipped=no_clip.flatten(1).sum(dim=1))
    return f_hat, new_state, diag


# --- selection by config name ------------------------------------------------------------------------

EM_STEPS = {"official": em_step_official, "paper": em_step_paper}

# (luma_in, luma_out) around the EM step: f, aux = luma_in(x0); x0_rect = luma_out(x0, aux, F).
LUMA_IO = {
    "official": (official_luma_in, official_luma_out),
    "paper": (paper_luma_in, paper_luma_out),
}


def em_sources(variant, ir, vis):
    """The two sources in the order ``EM_STEPS[variant]`` takes them: official (vis, ir), paper (ir, vis)."""
    if variant == "official":
        return vis, ir
    if variant == "paper":
        return ir, vis
    raise ValueError(f"unknown EM variant {variant!r}; expected one of {sorted(EM_STEPS)}")


def em_step(variant, f_tilde, a, b, state, lamb=0.5, rho=0.001, diagnostics=False):
    """Dispatch one EM call by variant name; (a, b) as returned by ``em_sources``."""
    if variant not in EM_STEPS:
        raise ValueError(f"unknown EM variant {variant!r}; expected one of {sorted(EM_STEPS)}")
    return EM_STEPS[variant](f_tilde, a, b, state, lamb=lamb, rho=rho, diagnostics=diagnostics)
