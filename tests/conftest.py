"""Shared fixtures: tiny synthetic data made on the fly (no files from ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# of one process starve the other (the same-seed test of all methods: 55-93 s spinning, 8 s
# passive, while a benchmark ran). Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from oneclass.data.synthetic import make_defects, write_mvtec  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def defects_train():
    """120 normal 24x24 grayscale texture images."""
    return make_defects(120, 0, size=24, seed=1)


@pytest.fixture(scope="session")
def defects_test():
    """30 normal and 30 anomalous images with masks."""
    return make_defects(30, 30, size=24, seed=2)


@pytest.fixture(scope="session")
def mvtec_dir(tmp_path_factory):
    """A tiny MVTec-layout folder shared by the session. No command may write into a data
    folder: the teardown fails when any file below it was added, removed or changed."""
    root = tmp_path_factory.mktemp("mvtec")
    path = write_mvtec(root / "toy", n_train=60, n_test_good=10, n_test_defect=12, size=24,
                       seed=3)
    before = _tree(path)
    yield path
    after = _tree(path)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"files below the shared data folder changed: {changed[:5]}"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def fast_params(name: str) -> dict:
    """Small settings for a method so the contract tests stay quick."""
    import oneclass

    params = {"epochs": 3, "batch_size": 32, "seed": 0}
    small = {"pretrain_epochs": 2, "width": 16, "search_steps": 20, "net_size": 64,
             "trainable_blocks": 2}
    defaults = oneclass.registry.get(name).all_defaults()
    params.update({k: v for k, v in small.items() if k in defaults})
    return params


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def fake_classic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST-like 28x28 images in shuffled classes 0-9, class y a flat gray of 20 y."""
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = np.repeat(y.astype(np.uint8)[:, None, None] * 20, 28, 1).repeat(28, 2)
    return x, y.astype(np.uint8)


def write_fake_mnist(root: Path, n_train: int, n_test: int, noise: int = 0) -> Path:
    """Write ``root/mnist.npz`` from :func:`fake_classic` (seed 0); ``noise``: uniform integer
    noise up to this value added to the training images, so a network has something to fit."""
    rng = np.random.default_rng(0)
    x_train, y_train = fake_classic(rng, n_train)
    x_test, y_test = fake_classic(rng, n_test)
    if noise:
        x_train = np.clip(x_train + rng.integers(0, noise, x_train.shape), 0, 255).astype(np.uint8)
    np.savez(root / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root


@pytest.fixture
def classic_root(tmp_path: Path) -> Path:
    """A data root holding a tiny fake ``mnist.npz`` (50 training, 30 test images)."""
    root = tmp_path / "bench"
    root.mkdir()
    return write_fake_mnist(root, 50, 30)


def cli(*argv) -> int:
    """Run the CLI in-process; arguments may be paths."""
    from oneclass.cli import main

    return main([str(a) for a in argv])


def one_line_error(err: str, *words: str) -> str:
    """The single ``oneclass: error:`` line of ``err`` (no traceback), containing ``words``."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("oneclass: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]
