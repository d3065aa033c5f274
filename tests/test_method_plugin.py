"""A third method is one folder: a toy method registered from this file alone runs through
sample.py end to end (prior, resume, journal, run.json, per-step record), and the registry's
contract holds for every built-in method.

The toy samples with the tiny ADM prior of tests/golden and replaces every step's x0 by the mean
of the two sources, so DDIM (eta 0) ends exactly on that mean: its output is the mean image,
min-max normalised like DDFM's (`normalize: minmax`).
"""
import json
from dataclasses import FrozenInstanceError, dataclass

import numpy as np
import pytest
import torch

import sample
from ddfm import io, methods
from ddfm.common import ConfigError
from ddfm.fusion import Fuser
from helpers import TINY_MODEL_CONFIG, TINY_WEIGHTS, make_dataset, random_pair, read_png


@dataclass(frozen=True)
class ToySettings:
    """How much of the first source the toy's x0 takes (0.5: the plain mean)."""
    weight: float = 0.5

    def __post_init__(self):
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not 0 <= self.weight <= 1:
            raise ConfigError(f"fusion config: toy_weight must be a number in [0, 1], got {self.weight!r}")


class ToyFuser(Fuser):
    """DDIM on the prior with x0 replaced at every step by the weighted mean of the sources."""

    def __init__(self, run, settings, prior):
        super().__init__(run, prior)
        self.settings = settings

    def _fuse_together(self, pairs, step_callback=None, progress=False):
        a = torch.cat([self._to_tensor(src_a.luma) for src_a, _ in pairs])
        b = torch.cat([self._to_tensor(src_b.luma) for _, src_b in pairs])
        x0 = (self.settings.weight * a + (1 - self.settings.weight) * b).expand(-1, 3, -1, -1)
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.randn(x0.shape, generator=generator)
        self.diffusion.tables_to(self.device)
        for i in reversed(range(self.diffusion.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long)
            x = self.diffusion.sample_step(self.model, x, t, rectify_fn=lambda pred_xstart, t: x0,
                                           noise=torch.zeros_like(x))["sample"]
            if step_callback is not None:
                step_callback(i, [io.progress_to_uint8(x[k, 0].numpy()) for k in range(len(pairs))],
                              [{"i": i, "spread": float(x[k].std())} for k in range(len(pairs))])
        luma = x[:, 0].numpy()
        sizes = [self._out_hw(src_a) for src_a, _ in pairs]  # the sampler ran padded to /32
        return [self._finish(io.luma_to_uint8(luma[k, :h, :w], self.run.normalize), src_a, src_b)
                for k, ((src_a, src_b), (h, w)) in enumerate(zip(pairs, sizes))]


class ToyMethod(methods.Method):
    name, label = "toy-mean", "TOY"
    summary = "x0 replaced by the (weighted) mean of the sources at every step (a test's toy)"
    keys = {"toy_weight": 0.5}

    def settings(self, fusion):
        return ToySettings(fusion["toy_weight"])

    def prepare_diffusion(self, diffusion, fusion):
        diffusion["sampler"] = "ddim"
        diffusion.pop("eta", None)

    def fingerprint(self, run, settings):
        return {"method": self.name, "toy_weight": settings.weight, "normalize": run.normalize}

    def build(self, run, settings, prior):
        return ToyFuser(run, settings, prior)

    def write_step_record(self, path, stem, details):
        path.write_text(json.dumps({"stem": stem, "steps": details}))


@pytest.fixture
def toy():
    method = methods.register(ToyMethod())
    yield method
    methods.unregister(method.name)


def fuse(tmp_path, *args, save_dir="out"):
    return sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(tmp_path / save_dir), "--quiet",
                        "--model_config", str(TINY_MODEL_CONFIG), f"model_path={TINY_WEIGHTS}", "prior=adm",
                        "timestep_respacing=3", "device=cpu", "method=toy-mean", *args])


def test_a_toy_method_from_this_file_runs_through_sample_py_with_resume_and_run_json(tmp_path, toy, capsys):
    make_dataset(tmp_path / "in", {"p1": random_pair(80, 32, 32), "p2": random_pair(81, 40, 48)})
    assert fuse(tmp_path, "record=true") == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["prior"]["prior"] == "adm" and record["prior"]["method"] == "toy-mean"
    assert record["fingerprint"]["toy_weight"] == 0.5 and record["fingerprint"]["method"] == "toy-mean"
    assert record["configs"]["diffusion"]["sampler"] == "ddim" and set(record["fused"]) == {"p1", "p2"}
    for stem in ("p1", "p2"):
        a, b = (read_png(tmp_path / "in" / m / f"{stem}.png").astype(np.float64) for m in ("ir", "vi"))
        expected = io.luma_to_uint8((a + b) / 255.0 - 1.0, "minmax")
        fused = read_png(tmp_path / "out" / "recon" / f"{stem}.png")
        assert fused.shape == a.shape and np.abs(fused.astype(int) - expected.astype(int)).max() <= 1
        steps = json.loads((tmp_path / "out" / "progress" / f"{stem}.json").read_text())["steps"]
        assert [s["i"] for s in steps] == [2, 1, 0]  # the method's own per-step record
    # Resume: the same settings skip both pairs; another toy_weight is other settings.
    assert fuse(tmp_path) == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["skipped"] == ["p1", "p2"]
    capsys.readouterr()
    assert fuse(tmp_path, "toy_weight=0.25") == 2
    assert "toy_weight" in capsys.readouterr().err
    assert fuse(tmp_path, "toy_weight=0.25", "--overwrite") == 0


def test_a_toy_setting_out_of_range_is_one_line(tmp_path, toy, capsys):
    make_dataset(tmp_path / "in", {"p1": random_pair(82, 32, 32)})
    assert fuse(tmp_path, "toy_weight=2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: fusion config: toy_weight must be a number in [0, 1], got 2"]


def test_an_unknown_method_is_one_line_listing_the_names():
    with pytest.raises(ConfigError, match=r"method='nope' is not one of ") as info:
        methods.get("nope")
    listed = str(info.value).split("is not one of ")[1].split(", ")
    assert "\n" not in str(info.value) and {"ddfm", "ccf", "prior-free", "mean", "max"} <= set(listed)
    assert set(listed) == set(methods.names())


@pytest.mark.parametrize("name", ["ddfm", "ccf", "prior-free", "mean", "max"])
def test_every_builtin_method_states_the_interface(name):
    from ddfm.config import fusion_defaults
    from ddfm.settings import FusionSettings

    method = methods.get(name)
    assert method.name == name and method.summary and isinstance(method.needs_prior, bool)
    settings = method.settings(fusion_defaults())
    with pytest.raises(FrozenInstanceError):
        setattr(settings, "anything", 1)
    fingerprint = method.fingerprint(FusionSettings(), settings)
    json.dumps(fingerprint)  # it goes into the journal as JSON
    assert set(method.keys) <= set(fusion_defaults())


def test_keys_added_after_a_release_leave_the_fingerprint_at_their_released_value():
    """CCF's three sampler switches came after CCF save folders existed: at their released
    value they are not in the fingerprint (those folders still resume), otherwise they are."""
    from ddfm.config import load_config
    from ddfm.fingerprint import output_fingerprint
    from helpers import DIFFUSION_CONFIG, MODEL_CONFIG

    def fingerprint(*overrides):
        config = load_config(MODEL_CONFIG, DIFFUSION_CONFIG, None, ["method=ccf", *overrides])
        return output_fingerprint(config, {"prior": "adm", "method": "ccf"})

    later = methods.get("ccf").fingerprint_since
    assert set(later) == {"ccf_eps_unguided", "ccf_guided_unclamped", "ccf_adam_persistent"}
    released = fingerprint()
    assert not set(later) & set(released) and released["ccf_topk"] == 3
    changed = fingerprint("ccf_adam_persistent=false")
    assert changed["ccf_adam_persistent"] is False and changed != released
