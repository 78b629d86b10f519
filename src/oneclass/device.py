"""Device choice and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a valid torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. CPU runs are then bit-for-bit reproducible.

    On CUDA some kernels (atomics in convolution backward, scatter) are not deterministic,
    so GPU runs can differ in the last digits from run to run. Setting the environment
    variable ``ONECLASS_DETERMINISTIC=1`` asks torch for deterministic algorithms (slower;
    operations without one warn instead of failing); see docs/reliability.md.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if os.environ.get("ONECLASS_DETERMINISTIC", "").strip() not in ("", "0"):
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
