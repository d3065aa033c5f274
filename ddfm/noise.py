"""The samplers' randomness: one seeded CPU generator per image, drawn per image, so a batch
equals single runs and a GPU run starts from the same x_T as a CPU run. Shared by the methods
(DDFM's and CCF's loops); imports only torch.
"""
import torch


def seeded_generators(seed, count):
    """One CPU generator per image, each seeded alike (the official code re-seeds per image).

    Drawing per image on the CPU makes a batch equal to single runs and a GPU run start from
    the same x_T as a CPU run.
    """
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in range(count)]


def per_image_noise(generators, shape, device):
    """Standard normal noise (N, *shape): row k from generators[k]."""
    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


class StepNoise:
    """Each step's noise from the per-image CPU generators (so results stay device-independent),
    drawn one step ahead: on CUDA into pinned memory with a non-blocking copy, so the draw and the
    copy overlap the step running on the GPU instead of stalling it.

    Loop use: noise = take(); launch the step; prefetch(). The draws are those of
    ``per_image_noise`` once per step, in order.
    """

    def __init__(self, generators, shape, device, steps):
        self.generators, self.shape, self.device = generators, tuple(shape), torch.device(device)
        self.left = steps
        self.pending = None
        self.prefetch()

    def _draw(self):
        pinned = self.device.type == "cuda"
        buffer = torch.empty((len(self.generators), *self.shape), pin_memory=pinned)
        for k, generator in enumerate(self.generators):
            torch.randn(self.shape, generator=generator, out=buffer[k])
        return buffer.to(self.device, non_blocking=pinned)

    def prefetch(self):
        if self.pending is None and self.left > 0:
            self.pending = self._draw()
            self.left -= 1

    def take(self):
        self.prefetch()
        noise, self.pending = self.pending, None
        return noise
