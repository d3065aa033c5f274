"""What gpu_check.py measures with: the machine, the UNet weights, FLOPs, card peaks, sources.

The UNet is built on the target device (no slow CPU initialisation of 552.8 M parameters), every
parameter is re-drawn from a fixed seed (the ADM's zero-initialised output convs would otherwise
make a fresh network output exactly 0), and the weights are kept once on the host so each
configuration gets a fresh copy and its peak memory holds only its own weights.
"""
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import guided_diffusion
from ddfm import io
from ddfm.color import to_signed
from ddfm.config import locate_model_path, read_yaml

ROOT = Path(__file__).resolve().parent.parent

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched in
# order against torch.cuda.get_device_name(); --peak-tflops overrides.
BF16_DENSE_PEAK_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("RTX 4090", 165.2),
    ("L4", 121.0),
)


def card_peak(name):
    for key, peak in BF16_DENSE_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def nvidia_driver():
    """The NVIDIA driver version from nvidia-smi, or the CUDA driver API version torch sees."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # a private call: any failure only costs the header's driver field
        version = torch._C._cuda_getDriverVersion() if torch.cuda.is_available() else 0
    except (AttributeError, RuntimeError):
        version = 0
    return f"CUDA driver API {version // 1000}.{version % 1000 // 10}" if version else "n/a"


def c_compiler():
    """The host C compiler Triton needs to build its launcher (torch.compile on CUDA), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


def environment(device):
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    driver=nvidia_driver(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}",
                    c_compiler=c_compiler() or "none (torch.compile rows will fail)")
    else:
        info.update(name=f"CPU ({platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads)")
    return info


def topk_ties(device, n=8, k=3):
    """torch.topk's indices among n equal values on `device` and on the CPU: CCF's top-k of its
    8 condition weights at the first step, when all are 1 (its golden holds the CPU order)."""
    return {"device": torch.topk(torch.ones(n, device=device), k).indices.tolist(),
            "cpu": torch.topk(torch.ones(n), k).indices.tolist()}


def measured_matmul_tflops(device, n=8192, repeats=10):
    """bf16 matmul throughput of this card (one large square product), for scale."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def model_config(path):
    """The model YAML's keys without model_path (returned apart)."""
    config = read_yaml(path)
    return {k: v for k, v in config.items() if k != "model_path"}, config.get("model_path")


def randomise_(unet, seed=0):
    """Re-draw every parameter from a fixed seed on its own device: weights N(0,1)/sqrt(fan_in),
    GroupNorm weights 1 + 0.1 N, biases 0.05 N. No zero-initialised layer is left."""
    device = next(unet.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.normal_(generator=gen)
            if p.dim() > 1:
                p.div_(math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.mul_(0.1).add_(1.0)
            else:
                p.mul_(0.05)
    return unet


def host_weights(config, model_path, device, seed=0):
    """The UNet's float32 state dict on the host and a line saying where it came from."""
    model_path = locate_model_path(model_path)
    if model_path and Path(model_path).is_file():
        unet = guided_diffusion.create_model(**config, model_path=model_path)
        source = f"checkpoint {model_path} (real weights)"
    else:
        with torch.device(device):
            unet = guided_diffusion.create_model(**config)
        randomise_(unet, seed)
        source = f"random weights (seed {seed}, every parameter re-drawn on {device}; no checkpoint)"
    pin = device.type == "cuda"  # pinned host memory: each row's copy to the GPU is faster
    weights = {k: (v.detach().cpu().pin_memory() if pin else v.detach().cpu())
               for k, v in unet.state_dict().items()}
    return weights, source


def fresh_unet(config, weights, device):
    """A UNet with `weights`, allocated directly on `device` (no initialisation pass)."""
    with torch.device("meta"):
        unet = guided_diffusion.create_model(**config)
    unet = unet.to_empty(device=device)
    unet.load_state_dict(weights)
    return unet.eval().requires_grad_(False)


def flops_per_forward(config, h, w):
    """FLOPs of one UNet forward at batch 1 (FlopCounterMode on the meta device, 2 per MAC)."""
    with torch.device("meta"):
        unet = guided_diffusion.create_model(**config)
        x, t = torch.empty(1, 3, h, w), torch.full((1,), 999)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t)
    return counter.get_total_flops()


def demo_sources(h, w, batch, device, stem="07"):
    """The demo pair input/{ir,vi}/<stem>.png resized to (h, w), [-1,1], (batch,1,h,w) each."""
    tensors = []
    for folder in ("ir", "vi"):
        luma = io.read_image(ROOT / "input" / folder / f"{stem}.png").luma
        image = Image.fromarray(np.round(luma).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        x = to_signed(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
        tensors.append(x[None, None].repeat(batch, 1, 1, 1).to(device))
    return tensors
