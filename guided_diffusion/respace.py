"""Timestep respacing: run a T-step diffusion with a subset of its timesteps.

Reproduces OpenAI guided-diffusion's `space_timesteps` / `SpacedDiffusion`
(reference/guided_diffusion.md §6): the kept timesteps tau_0 < ... < tau_{K-1} define a K-step
process with beta'_k = 1 - abar(tau_k) / abar(tau_{k-1}), so abar'_k = abar(tau_k) exactly.
"""
import numpy as np

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The set of original timesteps to keep out of range(num_timesteps).

    section_counts: "ddimN" (first integer stride giving exactly N steps: 0, s, 2s, ...),
    a comma list "10,15,20" / a single count "100" / an int / a list of ints (the range is cut
    into equal sections, each spaced by a float stride), or ""/None for every step.
    Raises ValueError naming the spec when it cannot be honoured or keeps fewer than 2 steps.
    """
    spec = section_counts
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return set(range(num_timesteps))
    if isinstance(spec, str) and spec.startswith("ddim"):
        try:
            desired_count = int(spec[len("ddim"):])
        except ValueError:
            raise ValueError(f"timestep_respacing {spec!r}: expected 'ddimN' with an integer N") from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired_count:
                return _at_least_two(set(range(0, num_timesteps, stride)), spec)
        raise ValueError(f"timestep_respacing {spec!r}: no integer stride gives exactly "
                         f"{desired_count} steps out of {num_timesteps}")
    counts = _parse_counts(spec)

    # The first (T mod len) sections get one extra step.
    size_per, extra = divmod(num_timesteps, len(counts))
    start_idx = 0
    all_steps = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"timestep_respacing {spec!r}: cannot divide a section of {size} "
                             f"steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # Repeated float addition plus Python's round-half-to-even is what the original does;
        # k * stride would round differently for some counts.
        cur_idx = 0.0
        for _ in range(count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return _at_least_two(set(all_steps), spec)


def _parse_counts(spec):
    """Section counts as a list of non-negative ints from a str, int or sequence of ints."""
    try:
        if isinstance(spec, str):
            counts = [int(part) for part in spec.split(",")]
        elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            counts = [int(spec)]
        else:
            counts = [int(c) for c in spec]
            if any(isinstance(c, bool) for c in spec):
                raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"timestep_respacing {spec!r}: expected 'ddimN', a comma list of "
                         f"counts, an int, a list of ints, or ''") from None
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"timestep_respacing {spec!r}: counts must be non-negative")
    return counts


def _at_least_two(steps, spec):
    # The clipped posterior log-variance needs two steps, so a 1-step process cannot be built.
    if len(steps) < 2:
        raise ValueError(f"timestep_respacing {spec!r} keeps {len(steps)} step(s); at least 2 are needed")
    return steps


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion over the kept timesteps `use_timesteps` of the process `betas`.

    Sampling indices are 0..K-1; the model is called with timestep_map[k] (the original timestep).
    Other keyword arguments are GaussianDiffusion's.
    """

    def __init__(self, use_timesteps, *, betas, **kwargs):
        self.use_timesteps = set(int(t) for t in use_timesteps)
        self.original_num_steps = len(betas)
        alphas_cumprod = np.cumprod(1.0 - np.array(betas, dtype=np.float64), axis=0)
        last_alpha_cumprod = 1.0
        new_betas = []
        timestep_map = []
        for i, alpha_cumprod in enumerate(alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        super().__init__(betas=np.array(new_betas, dtype=np.float64), **kwargs)
        self.timestep_map = np.array(timestep_map, dtype=np.int64)

    def scale_timesteps(self, t):
        # Scaling is done by the wrapper, after the index -> original timestep mapping.
        return t

    def wrap_model(self, model):
        """`model` as a function of the respaced index: wrapped(x, k) = model(x, timestep_map[k])."""
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.device_table, self.rescale_timesteps, self.original_num_steps)

    def run_model(self, model, x, t, model_kwargs=None):
        return self.wrap_model(model)(x, t, **(model_kwargs or {}))


class _WrappedModel:
    """Calls model(x, timestep_map[t]) (optionally *1000/T as float) for respaced indices t.

    The map is read through `device_table`, so it crosses to the device once, not every step.
    """

    def __init__(self, model, device_table, rescale_timesteps, original_num_steps):
        self.model = model
        self.device_table = device_table
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps

    def __call__(self, x, ts, **kwargs):
        new_ts = self.device_table("timestep_map", ts.device)[ts].to(ts.dtype)
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)
