"""Running a model through a diffusion: one DDPM or DDIM step, and the loops from x_T to x_0.

`SamplingMixin` gives `GaussianDiffusion` (which it is mixed into) its model-calling samplers:
`p_sample`, `ddim_sample`, `ddim_reverse_sample`, the configured `sample_step`, and the loops
`sample_loop_progressive`, `p_sample_loop`, `ddim_sample_loop`, `sample_loop` (reference/
guided_diffusion.md §8). Each step is a thin composition of the model-free maths in
gaussian_diffusion.py (`run_model`, `split_model_output`, `ddpm_step`, `ddim_step`), so a method
such as DDFM can rectify the predicted x0 between the network call and the update (`rectify_fn`).
"""
import torch

SAMPLERS = ("ddpm", "ddim")


def draw_noise(x, noise=None, generator=None):
    """The step's one standard-normal draw shaped like x: given `noise`, else from `generator`
    (or the global RNG, like randn_like)."""
    if noise is not None:
        if generator is not None:
            raise ValueError("pass either noise or generator, not both")
        if noise.shape != x.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != sample shape {tuple(x.shape)}")
        return noise.to(device=x.device, dtype=x.dtype)
    if generator is not None:
        return torch.randn(x.shape, generator=generator, device=generator.device,
                           dtype=x.dtype).to(x.device)
    return torch.randn_like(x)


class SamplingMixin:
    """The samplers of a GaussianDiffusion; they use its tables (`coef`, `num_timesteps`,
    `timestep_map`), its step maths and its configuration (`sampler`, `clip_denoised`, `eta`)."""

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, rectify_fn=None,
                 noise=None, generator=None, model_kwargs=None):
        """One DDPM step x_t -> x_{t-1}; rectify_fn(pred_xstart, t) may replace x0 before the update.

        Draws exactly one normal sample (after rectify_fn), even at t=0.
        Returns dict(sample, pred_xstart, rectified_xstart, model_output, eps, mean, variance,
        log_variance); `mean` is the mean actually used.
        """
        model_output = self.run_model(model, x, t, model_kwargs)
        out = self.split_model_output(model_output, x, t, clip_denoised, denoised_fn,
                                      with_mean=rectify_fn is None)
        rectified = out["pred_xstart"] if rectify_fn is None else rectify_fn(out["pred_xstart"], t)
        noise = draw_noise(x, noise, generator)
        # Without rectification the model's own mean is used (it differs for previous_x models).
        step = self.ddpm_step(x, t, rectified, out["log_variance"], noise,
                              mean=out["mean"] if rectify_fn is None else None)
        return dict(out, sample=step["sample"], mean=step["mean"], rectified_xstart=rectified)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, rectify_fn=None,
                    eta=0.0, noise=None, generator=None, model_kwargs=None, eps_from_rectified=True,
                    fused=True):
        """One DDIM step x_t -> x_{t-1}; rectify_fn(pred_xstart, t) may replace x0 before the update.

        eps_from_rectified=False re-derives eps' from the (clipped) pred_xstart before
        rectification instead of from the rectified x0; fused as ddim_step.
        Draws exactly one normal sample (after rectify_fn), even when eta == 0 or t == 0.
        Returns dict(sample, pred_xstart, rectified_xstart, rectified_eps, model_output, eps, ...).
        """
        model_output = self.run_model(model, x, t, model_kwargs)
        out = self.split_model_output(model_output, x, t, clip_denoised, denoised_fn,
                                      with_posterior=False)
        rectified = out["pred_xstart"] if rectify_fn is None else rectify_fn(out["pred_xstart"], t)
        noise = draw_noise(x, noise, generator)
        step = self.ddim_step(x, t, rectified, eta, noise,
                              eps_xstart=None if eps_from_rectified else out["pred_xstart"], fused=fused)
        return dict(out, sample=step["sample"], rectified_xstart=rectified, rectified_eps=step["eps"])

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None,
                            model_kwargs=None):
        """Deterministic DDIM inversion x_t -> x_{t+1} (eta = 0) using abar_next."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = self.coef("alphas_cumprod_next", t, x.shape)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return dict(out, sample=sample)

    def sample_step(self, model, x, t, rectify_fn=None, noise=None, generator=None,
                    denoised_fn=None, model_kwargs=None):
        """One step of the configured sampler (ddim with self.eta, or ddpm) with self.clip_denoised."""
        if self.sampler == "ddim":
            return self.ddim_sample(model, x, t, self.clip_denoised, denoised_fn, rectify_fn,
                                    self.eta, noise, generator, model_kwargs)
        return self.p_sample(model, x, t, self.clip_denoised, denoised_fn, rectify_fn, noise,
                             generator, model_kwargs)

    # ----------------------------------------------------------------- full loops
    def sample_loop_progressive(self, step_fn, shape, noise=None, generator=None, step_noise=None,
                                callback=None, progress=False, device=None):
        """Yield each step's dict while running x_T -> x_0 with `step_fn(x, t, noise, generator)`.

        x_T is `noise` or a normal draw (from `generator` if given). Per-step noise: entry k of
        `step_noise` (a sequence, or a callable k -> tensor) at loop iteration k, i.e. index
        i = K-1-k; otherwise `generator` / the global RNG. The yielded dict adds i, k, t_orig
        and x (the step's input x_t); `callback` receives the same dict.
        """
        if noise is not None:
            x = noise.to(device) if device is not None else noise
        else:
            x = torch.randn(*shape, generator=generator,
                            device=generator.device if generator is not None else device)
            if device is not None:
                x = x.to(device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        with torch.no_grad():
            for k, i in enumerate(indices):
                t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
                nz = None
                if step_noise is not None:
                    nz = step_noise(k) if callable(step_noise) else step_noise[k]
                out = step_fn(x, t, nz, None if nz is not None else generator)
                out.update(i=i, k=k, t_orig=int(self.timestep_map[i]), x=x)
                if callback is not None:
                    callback(out)
                yield out
                x = out["sample"]

    def _run_loop(self, step_fn, shape, **loop_kwargs):
        final = None
        for out in self.sample_loop_progressive(step_fn, shape, **loop_kwargs):
            final = out["sample"]
        return final

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                      rectify_fn=None, model_kwargs=None, device=None, progress=False,
                      generator=None, step_noise=None, callback=None):
        """DDPM ancestral sampling from x_T to x_0; returns the final sample [shape]."""
        def step_fn(x, t, nz, gen):
            return self.p_sample(model, x, t, clip_denoised, denoised_fn, rectify_fn, nz, gen,
                                 model_kwargs)
        return self._run_loop(step_fn, shape, noise=noise, generator=generator,
                              step_noise=step_noise, callback=callback, progress=progress,
                              device=device)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                         rectify_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                         generator=None, step_noise=None, callback=None):
        """DDIM sampling from x_T to x_0; returns the final sample [shape]."""
        def step_fn(x, t, nz, gen):
            return self.ddim_sample(model, x, t, clip_denoised, denoised_fn, rectify_fn, eta, nz,
                                    gen, model_kwargs)
        return self._run_loop(step_fn, shape, noise=noise, generator=generator,
                              step_noise=step_noise, callback=callback, progress=progress,
                              device=device)

    def sample_loop(self, model, shape, noise=None, rectify_fn=None, generator=None,
                    step_noise=None, callback=None, progress=False, device=None,
                    denoised_fn=None, model_kwargs=None):
        """The configured sampler's full loop (see sample_step); returns the final sample."""
        def step_fn(x, t, nz, gen):
            return self.sample_step(model, x, t, rectify_fn, nz, gen, denoised_fn, model_kwargs)
        return self._run_loop(step_fn, shape, noise=noise, generator=generator,
                              step_noise=step_noise, callback=callback, progress=progress,
                              device=device)
