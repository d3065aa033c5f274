"""Gaussian diffusion: the schedule tables, the processes q and p, and the model-free DDPM/DDIM step maths.

Ho et al. 2020 and Nichol & Dhariwal 2021, as OpenAI guided-diffusion's `GaussianDiffusion`
(reference/guided_diffusion.md §6-§8): schedules and every derived table are float64 numpy
arrays; a coefficient is indexed by the batch timesteps, cast to float32, then broadcast against
float32 tensors.

The step maths is exposed without a model (`split_model_output`, `ddpm_step`, `ddim_step`) so a
method such as DDFM can rectify the predicted x0 between the network call and the update.
The samplers that call the model (`p_sample`, `ddim_sample`, `sample_step` and the loops) live in
samplers.py, mixed into `GaussianDiffusion`.
"""
import math

import numpy as np
import torch

from .samplers import SAMPLERS, SamplingMixin

MEAN_TYPES = ("epsilon", "start_x", "previous_x")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
# The schedule tables a step indexes by timestep (see GaussianDiffusion.coef).
DEVICE_TABLES = (
    "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "recip_posterior_mean_coef1", "posterior_coef2_over_coef1", "log_betas",
    "fixed_large_variance", "fixed_large_log_variance",
)


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Betas [T] float64: "linear" (1e-4..0.02 scaled by 1000/T) or "cosine" (Nichol & Dhariwal)."""
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(f"unknown noise_schedule: {schedule_name!r} (expected 'linear' or 'cosine')")


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    """Betas [T] with beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def extract_into_tensor(arr, timesteps, broadcast_shape):
    """arr[timesteps] from a float64 table, cast to float32, shaped [N, 1, ...] to broadcast
    against `broadcast_shape`.

    Not expanded: an expanded view would make every sqrt or product of coefficients run over the
    whole image instead of over N numbers (the values are the same either way).
    """
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return res.reshape(-1, *([1] * (len(broadcast_shape) - 1)))


def dynamic_threshold(x, percentile=0.995):
    """Imagen dynamic thresholding: s = max(1, percentile of |x| per sample); x -> clamp(x, -s, s) / s."""
    s = torch.quantile(x.abs().reshape(x.shape[0], -1).float(), percentile, dim=1)
    s = torch.clamp(s, min=1.0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.maximum(torch.minimum(x, s), -s) / s


def _nonzero_mask(t, x):
    """1 where t != 0, 0 at the last step (its noise is drawn but unused); shaped [N, 1, ...]."""
    return (t != 0).float().reshape(-1, *([1] * (x.dim() - 1)))


class GaussianDiffusion(SamplingMixin):
    """The forward process q and the learned reverse process p over `len(betas)` steps.

    betas: 1-D float64 array. model_mean_type: epsilon | start_x | previous_x.
    model_var_type: fixed_small | fixed_large | learned | learned_range.
    sampler / clip_denoised / dynamic_threshold / eta configure `sample_step` and `sample_loop`.
    """

    def __init__(self, *, betas, model_mean_type="epsilon", model_var_type="learned_range",
                 rescale_timesteps=False, sampler="ddpm", clip_denoised=True,
                 dynamic_threshold=False, eta=0.0):
        self.model_mean_type = str(model_mean_type).lower()
        self.model_var_type = str(model_var_type).lower()
        if self.model_mean_type not in MEAN_TYPES:
            raise ValueError(f"unknown model_mean_type: {model_mean_type!r} (expected one of {MEAN_TYPES})")
        if self.model_var_type not in VAR_TYPES:
            raise ValueError(f"unknown model_var_type: {model_var_type!r} (expected one of {VAR_TYPES})")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler: {sampler!r} (expected one of {SAMPLERS})")
        if sampler == "ddpm" and eta != 0.0:
            raise ValueError(f"eta={eta} only applies to the ddim sampler")
        self.rescale_timesteps = rescale_timesteps
        self.sampler = sampler
        self.clip_denoised = bool(clip_denoised)
        self.dynamic_threshold = bool(dynamic_threshold)
        self.eta = float(eta)

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"need a 1-D schedule of at least 2 betas, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        # Index k of the process runs the network at original timestep timestep_map[k].
        self.timestep_map = np.arange(self.num_timesteps, dtype=np.int64)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t=0, so its log is clipped by repeating entry 1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        # Derived tables the steps index, computed once (same float64 arithmetic as inline).
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.log_betas = np.log(betas)
        self.recip_posterior_mean_coef1 = 1.0 / self.posterior_mean_coef1
        self.posterior_coef2_over_coef1 = self.posterior_mean_coef2 / self.posterior_mean_coef1
        # fixed_large: beta_t, except at t=0 where the posterior variance gives a better likelihood.
        self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        # (table name, device) -> float64 tensor: each table crosses to a device once, not per step.
        self._device_tables = {}

    def device_table(self, name, device):
        """The table `name` as a tensor on `device`, copied there once and then reused: a sampling
        step indexes it without a host->device copy (and a compiled step sees a constant)."""
        key = (name, device)
        table = self._device_tables.get(key)
        if table is None:
            table = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(device)
            self._device_tables[key] = table
        return table

    def coef(self, name, t, broadcast_shape):
        """Table `name` at the batch's timesteps t, as ``extract_into_tensor``: float32 [N, 1, ...]."""
        res = self.device_table(name, t.device)[t].float()
        return res.reshape(-1, *([1] * (len(broadcast_shape) - 1)))

    def tables_to(self, device):
        """Copy every table a step may index to `device` now (before a loop or a compile)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        for name in DEVICE_TABLES + ("timestep_map",):
            self.device_table(name, device)
        return self

    # ----------------------------------------------------------------- forward process q
    def q_mean_variance(self, x_start, t):
        """Mean, variance, log-variance of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        mean = self.coef("sqrt_alphas_cumprod", t, x_start.shape) * x_start
        variance = self.coef("one_minus_alphas_cumprod", t, x_start.shape)
        log_variance = self.coef("log_one_minus_alphas_cumprod", t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (self.coef("sqrt_alphas_cumprod", t, x_start.shape) * x_start
                + self.coef("sqrt_one_minus_alphas_cumprod", t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)."""
        mean = (self.coef("posterior_mean_coef1", t, x_t.shape) * x_start
                + self.coef("posterior_mean_coef2", t, x_t.shape) * x_t)
        variance = self.coef("posterior_variance", t, x_t.shape)
        log_variance = self.coef("posterior_log_variance_clipped", t, x_t.shape)
        return mean, variance, log_variance

    # ----------------------------------------------------------------- conversions
    def predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        scale_x = self.coef("sqrt_recip_alphas_cumprod", t, x_t.shape)
        scale_eps = self.coef("sqrt_recipm1_alphas_cumprod", t, x_t.shape)
        # One fused multiply-add pass over the image instead of three.
        return torch.addcmul(scale_x * x_t, scale_eps, eps, value=-1)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)."""
        scale_x = self.coef("sqrt_recip_alphas_cumprod", t, x_t.shape)
        return ((scale_x * x_t).sub_(pred_xstart)
                / self.coef("sqrt_recipm1_alphas_cumprod", t, x_t.shape))

    def predict_xstart_from_xprev(self, x_t, t, xprev):
        """Invert the posterior mean: x_0 = (x_{t-1} - coef2 x_t) / coef1."""
        return (self.coef("recip_posterior_mean_coef1", t, x_t.shape) * xprev
                - self.coef("posterior_coef2_over_coef1", t, x_t.shape) * x_t)

    # ----------------------------------------------------------------- reverse process p
    def scale_timesteps(self, t):
        """Timesteps as the network expects them: unchanged, or *1000/T when rescale_timesteps."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    def run_model(self, model, x, t, model_kwargs=None):
        """The raw network output for x_t at process index t [N]."""
        return model(x, self.scale_timesteps(t), **(model_kwargs or {}))

    def split_model_output(self, model_output, x, t, clip_denoised=True, denoised_fn=None,
                           with_posterior=True, with_mean=True):
        """Interpret a raw network output as p(x_{t-1} | x_t) (original p_mean_variance minus the call).

        Returns dict(model_output, eps, pred_xstart, mean, variance, log_variance); pred_xstart is
        after denoised_fn, dynamic thresholding (if configured) and the [-1, 1] clamp.
        `eps` is the noise estimate implied by the unprocessed prediction.
        with_posterior=False skips mean and variance (None): DDIM never uses them, and at large
        image sizes they cost as much as the rest of the step outside the network.
        with_mean=False skips only the mean: a rectified step recomputes it from its own x0.
        """
        n, c = x.shape[:2]
        if not with_posterior:
            variance = log_variance = None
            model_output_mean = model_output[:, :c] if model_output.shape[1] == 2 * c else model_output
        elif self.model_var_type in ("learned", "learned_range"):
            assert model_output.shape[1] == 2 * c, "learned variance needs 2*C output channels"
            model_output_mean, model_var_values = torch.split(model_output, c, dim=1)
            if self.model_var_type == "learned":
                log_variance = model_var_values
            else:
                # v in [-1, 1] interpolates between the posterior (min) and beta_t (max) log-variance;
                # it is not clamped, so values outside extrapolate, like the original.
                min_log = self.coef("posterior_log_variance_clipped", t, x.shape)
                max_log = self.coef("log_betas", t, x.shape)
                frac = (model_var_values + 1) / 2
                log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            model_output_mean = model_output
            if self.model_var_type == "fixed_large":
                var_table, log_table = "fixed_large_variance", "fixed_large_log_variance"
            else:
                var_table, log_table = "posterior_variance", "posterior_log_variance_clipped"
            variance = self.coef(var_table, t, x.shape)
            log_variance = self.coef(log_table, t, x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            if self.dynamic_threshold:
                x0 = dynamic_threshold(x0)
            if clip_denoised:
                x0 = x0.clamp(-1, 1)
            return x0

        if self.model_mean_type == "previous_x":
            raw_xstart = self.predict_xstart_from_xprev(x, t, model_output_mean)
            pred_xstart = process_xstart(raw_xstart)
            mean = model_output_mean
            eps = self.predict_eps_from_xstart(x, t, raw_xstart)
        else:
            if self.model_mean_type == "start_x":
                raw_xstart = model_output_mean
                eps = self.predict_eps_from_xstart(x, t, raw_xstart)
            else:
                eps = model_output_mean
                raw_xstart = self.predict_xstart_from_eps(x, t, eps)
            pred_xstart = process_xstart(raw_xstart)
            wanted = with_posterior and with_mean
            mean = self.q_posterior_mean_variance(pred_xstart, x, t)[0] if wanted else None
        return dict(model_output=model_output, eps=eps, pred_xstart=pred_xstart, mean=mean,
                    variance=variance, log_variance=log_variance)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Run the model on x_t [N, C, ...] at index t [N]; return split_model_output's dict."""
        model_output = self.run_model(model, x, t, model_kwargs)
        return self.split_model_output(model_output, x, t, clip_denoised, denoised_fn)

    # ----------------------------------------------------------------- pure step maths
    def ddpm_step(self, x_t, t, pred_xstart, log_variance, noise, mean=None):
        """Ancestral step x_{t-1} = mu(x_0, x_t) + [t != 0] exp(log_var / 2) noise.

        mu is the posterior mean of (pred_xstart, x_t) unless `mean` is given (previous_x models).
        Returns dict(sample, mean).
        """
        if mean is None:
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        sample = mean + _nonzero_mask(t, x_t) * torch.exp(0.5 * log_variance) * noise
        return dict(sample=sample, mean=mean)

    def ddim_step(self, x_t, t, pred_xstart, eta=0.0, noise=None, eps_xstart=None, fused=True):
        """DDIM step (Song et al. eq. 12): x0 sqrt(abar') + sqrt(1 - abar' - s^2) eps' + [t != 0] s noise.

        eps' is re-derived from pred_xstart, or from eps_xstart when given (a rectified step that
        keeps the noise direction of the unrectified x0); s = eta sqrt((1-abar')/(1-abar))
        sqrt(1 - abar/abar'). noise may be None only when eta == 0. fused=False sums the two
        products separately like the original code (bit-exact to it; the fused addcmul can differ
        from it by an ulp). Returns dict(sample, eps).
        """
        eps = self.predict_eps_from_xstart(x_t, t, pred_xstart if eps_xstart is None else eps_xstart)
        # Unlike the other coefficients, abar and abar' are cast to float32 before the square roots.
        alpha_bar = self.coef("alphas_cumprod", t, x_t.shape)
        alpha_bar_prev = self.coef("alphas_cumprod_prev", t, x_t.shape)
        sigma = (eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                 * torch.sqrt(1 - alpha_bar / alpha_bar_prev))
        eps_coef = torch.sqrt(1 - alpha_bar_prev - sigma ** 2)
        if fused:
            sample = torch.addcmul(eps_coef * eps, pred_xstart, torch.sqrt(alpha_bar_prev))
        else:
            sample = torch.sqrt(alpha_bar_prev) * pred_xstart + eps_coef * eps
        if eta != 0.0:
            if noise is None:
                raise ValueError("ddim_step with eta != 0 needs noise")
            sample = sample + _nonzero_mask(t, x_t) * sigma * noise
        # With eta == 0, sigma is exactly 0: adding 0 * noise would change nothing, so skip it.
        return dict(sample=sample, eps=eps)
