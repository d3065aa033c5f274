"""A Fuser (DDFM or CCF) from a resolved configuration: the one entry shared by sample.py's
driver (ddfm.run) and the Python API (ddfm.load_fuser), so both give the same pixels."""
from ddfm import determinism
from ddfm.defaults import DEFAULT_SEED
from ddfm.distributed import local_device
from ddfm.fusion import Fuser
from ddfm.messages import ConfigError
from ddfm.methods.ccf.fuser import CCFFuser, settings_from_fusion
from ddfm.prior import build_diffusion, build_prior, resolve_device, resolve_prior


def build_fuser(config, log):
    """Resolve the prior and device, build model and sampler; returns (fuser, prior_info)."""
    fusion = config.fusion
    kind, reason = resolve_prior(fusion["prior"], config.model, fusion["method"])
    log(reason)
    device = local_device(resolve_device(fusion["device"]))
    determinism.prepare_device(fusion, device)
    seed = int(config.diffusion.get("seed", DEFAULT_SEED))
    if kind == "none":
        return Fuser(fusion, seed=seed, device=device), {"prior": "none", "reason": reason}
    try:
        model = build_prior(config.model, device, dtype=fusion["dtype"],
                            channels_last=fusion["channels_last"], compile_mode=fusion["compile"])
    except (TypeError, ValueError) as err:  # flags the UNet cannot be built from
        raise ConfigError(f"model config: {err}") from None
    diffusion = build_diffusion(config.diffusion)
    info = {"prior": "adm", "model_path": str(config.model.get("model_path")), "reason": reason,
            "device": str(device), "dtype": fusion["dtype"], "steps": int(diffusion.num_timesteps)}
    if fusion["method"] == "ccf":
        info["method"] = "ccf"
        return CCFFuser(fusion, settings_from_fusion(fusion), seed=seed, model=model,
                        diffusion=diffusion, device=device), info
    return Fuser(fusion, seed=seed, model=model, diffusion=diffusion, device=device), info
