"""The diffusion prior: OpenAI's ADM UNet and Gaussian diffusion with timestep respacing.

Public entry points take the keys of the official DDFM YAML files:
`create_model(**model_config)` and `create_sampler(**diffusion_config)`.
"""
import torch

from .gaussian_diffusion import GaussianDiffusion, dynamic_threshold, get_named_beta_schedule
from .respace import SpacedDiffusion, space_timesteps
from .unet import UNetModel

__all__ = [
    "create_model", "create_sampler", "UNetModel", "GaussianDiffusion", "SpacedDiffusion",
    "space_timesteps", "get_named_beta_schedule", "dynamic_threshold",
    "default_channel_mult", "parse_attention_resolutions",
]

NUM_CLASSES = 1000  # ImageNet, for class-conditional checkpoints


def default_channel_mult(image_size):
    """The per-level width multipliers ADM uses for each supported image size."""
    defaults = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
    }
    if image_size not in defaults:
        raise ValueError(f"no default channel_mult for image_size {image_size}; pass channel_mult")
    return defaults[image_size]


def _parse_channel_mult(channel_mult, image_size):
    if channel_mult is None or channel_mult == "":
        return default_channel_mult(image_size)
    if isinstance(channel_mult, str):
        return tuple(int(m) for m in channel_mult.split(","))
    return tuple(channel_mult)


def parse_attention_resolutions(attention_resolutions, image_size):
    """Resolutions ("32,16,8", an int, or a list) -> downsample rates image_size // res."""
    if attention_resolutions is None or attention_resolutions == "":
        return ()
    if isinstance(attention_resolutions, str):
        resolutions = [int(r) for r in attention_resolutions.split(",")]
    elif isinstance(attention_resolutions, int):
        resolutions = [attention_resolutions]
    else:
        resolutions = [int(r) for r in attention_resolutions]
    return tuple(image_size // r for r in resolutions)


def create_model(*, image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False,
                 class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 dropout=0.0, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
                 model_path=None, **unknown):
    """Build the ADM UNetModel from the model YAML keys (in eval mode); load `model_path` if given.

    Defaults are the original `create_model`'s; unknown keys raise TypeError naming them.
    Works under `with torch.device("meta"):` (no weights are materialised).
    """
    if unknown:
        raise TypeError(f"create_model: unknown model config key(s): {', '.join(sorted(unknown))}")
    flags = dict(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=_parse_channel_mult(channel_mult, image_size),
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )
    if model_path:
        from .checkpoint import load_checkpoint
        # Only the layout on the meta device: every weight comes from the file, so a random
        # initialisation (2.2 GB and seconds for the real model) would be thrown away.
        with torch.device("meta"):
            model = UNetModel(**flags)
        load_checkpoint(model, model_path)
    else:
        model = UNetModel(**flags)
    if use_fp16:
        # As in the original sampling script: fp32 weights are loaded first, then halved.
        model.convert_to_fp16()
    return model.eval()


def create_sampler(*, sampler="ddim", steps=1000, noise_schedule="linear",
                   model_mean_type="epsilon", model_var_type="learned_range",
                   dynamic_threshold=False, clip_denoised=True, rescale_timesteps=False,
                   timestep_respacing="", eta=0.0, **unknown):
    """Build the (respaced) diffusion from the diffusion YAML keys; it remembers the sampler kind,
    clip_denoised, dynamic_threshold and eta for `sample_step` / `sample_loop`.

    timestep_respacing follows space_timesteps ("" or None: all `steps`). Unknown keys raise
    TypeError naming them.
    """
    if unknown:
        raise TypeError(f"create_sampler: unknown diffusion config key(s): {', '.join(sorted(unknown))}")
    betas = get_named_beta_schedule(noise_schedule, steps)
    return SpacedDiffusion(
        space_timesteps(steps, timestep_respacing),
        betas=betas,
        model_mean_type=model_mean_type,
        model_var_type=model_var_type,
        rescale_timesteps=rescale_timesteps,
        sampler=str(sampler).lower(),
        clip_denoised=clip_denoised,
        dynamic_threshold=dynamic_threshold,
        eta=eta,
    )
