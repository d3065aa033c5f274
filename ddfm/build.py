"""A fuser from a resolved configuration: the one entry shared by sample.py's driver (ddfm.run)
and the Python API (ddfm.load_fuser), so both give the same pixels.

The method comes from the registry (ddfm.methods) by name. A method that needs the ADM prior and
has none (`prior: none`, or `prior: auto` without the checkpoint) is replaced by
ddfm.methods.FALLBACK, the prior-free Bayesian fusion: announced, and recorded in prior_info.
"""
from ddfm import determinism, methods
from ddfm.common import DEFAULT_SEED, ConfigError
from ddfm.distributed import local_device
from ddfm.prior import build_diffusion, build_prior, resolve_device, resolve_prior
from ddfm.settings import Prior


def build_fuser(config, log):
    """Resolve the method, the prior and the device, build model and sampler and the method's
    fuser; returns (fuser, prior_info). prior_info["method"] names the method that runs."""
    run, settings = config.settings()
    method = config.method
    if not method.needs_prior:
        reason = f"method {method.name}, no prior: {method.summary}"
        log(reason)
        return method.build(run, settings, None), {"prior": "none", "reason": reason, "method": method.name}
    kind, reason = resolve_prior(run.prior, config.model, method.label)
    log(reason)
    if kind == "none":
        fallback = methods.get(methods.FALLBACK)
        return (fallback.build(run, fallback.settings(config.fusion), None),
                {"prior": "none", "reason": reason, "method": fallback.name})
    device = local_device(resolve_device(run.device))
    determinism.prepare_device(run, device)
    seed = int(config.diffusion.get("seed", DEFAULT_SEED))
    try:
        model = build_prior(config.model, device, dtype=run.dtype, channels_last=run.channels_last,
                            compile_mode=run.compile)
    except (TypeError, ValueError) as err:  # flags the UNet cannot be built from
        raise ConfigError(f"model config: {err}") from None
    diffusion = build_diffusion(config.diffusion)
    info = {"prior": "adm", "method": method.name, "model_path": str(config.model.get("model_path")),
            "reason": reason, "device": str(device), "dtype": run.dtype, "steps": int(diffusion.num_timesteps)}
    return method.build(run, settings, Prior(model, diffusion, seed, device)), info
