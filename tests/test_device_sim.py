"""Every method on a simulated GPU (tests/simgpu.py): a CPU tensor combined with one on the
device, a CPU generator for a device tensor, or (as on Apple's MPS) a float64 tensor on the
device raises, as it would on real hardware, which this machine lacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oneclass
import oneclass.detector as D
from oneclass.data.base import ArraySet
from oneclass.data.synthetic import make_defects

from .conftest import fast_params
from .simgpu import GPU, DeviceMismatch, SimGPU

CASES = [(name, {}) for name in oneclass.available()] + [
    ("fcdd", {"map_norm": "position"}), ("deep_svdd", {"objective": "soft-boundary"})]


@pytest.fixture(scope="module")
def tiny():
    train = make_defects(12, 2, size=16, seed=1)  # two labeled anomalies, with masks
    test = make_defects(3, 3, size=16, seed=2)
    rng = np.random.default_rng(0)
    outliers = ArraySet((rng.random((6, 16, 16)) * 255).astype(np.uint8))
    return train, test, outliers


def _params(name: str) -> dict:
    p = {**fast_params(name), "epochs": 1, "batch_size": 8}
    if name == "anogan":
        p["search_steps"] = 2
    if name in ("doc", "patchcore"):
        p["pretrained"] = False
    return p


@pytest.mark.parametrize("name, extra", CASES, ids=[f"{n}{'-' if e else ''}{'-'.join(e.values())}"
                                                    for n, e in CASES])
def test_a_method_trains_scores_saves_and_loads_on_a_gpu(name, extra, tiny, tmp_path,
                                                         monkeypatch):
    train, test, outliers = tiny
    monkeypatch.setattr(D, "resolve_device", lambda device="auto": GPU)
    det = oneclass.create(name, **_params(name), **extra)
    with SimGPU(mps=True):
        det.fit(train, outliers=outliers)
        assert next(det.model_.parameters()).device == GPU  # it did run on the device
        scores, maps = det.score(test), det.anomaly_map(test)
        det.report_figures(torch.from_numpy(test.images[:2]).permute(0, 3, 1, 2).contiguous())
        loaded = oneclass.load(det.save(tmp_path / "m"))
        np.testing.assert_array_equal(loaded.score(test), scores)
        np.testing.assert_array_equal(loaded.anomaly_map(test), maps)
    assert np.isfinite(scores).all() and maps.shape == (6, 16, 16)


def test_the_simulated_gpu_catches_a_cpu_tensor_on_the_device():
    """The check above can fail: a CPU matrix used with a device tensor raises."""
    with SimGPU():
        x = torch.ones(2, 3, device=GPU)
        with pytest.raises(DeviceMismatch):
            x @ torch.ones(3, 2)
        with pytest.raises(DeviceMismatch):
            torch.randn(3, device=GPU, generator=torch.Generator())
        assert float((x + torch.tensor(1.0)).sum()) == 12.0  # CPU scalars are allowed, as on CUDA
    with SimGPU(mps=True), pytest.raises(DeviceMismatch, match="float64"):
        torch.ones(2, device=GPU).double()


def test_input_normalisation_sums_in_float64_off_the_device():
    norm = D.InputNorm(1)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    ref = D.InputNorm(1)
    ref.fit(x)
    with SimGPU(mps=True):
        norm.to(GPU)
        norm.fit(x)  # MPS has no float64: the sums are taken on the CPU
        mean, std = norm.mean.cpu(), norm.std.cpu()
    torch.testing.assert_close(mean, ref.mean, rtol=0, atol=0)
    torch.testing.assert_close(std, ref.std, rtol=0, atol=0)
