"""Device choice, seeding and CPU thread sharing."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device is None or str(device) == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = _checked_device(device)
    if dev.type == "cuda":
        full_fp32_on_cuda()
    return dev


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device (spelling only, not whether this machine has it)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a valid torch device: {exc}") from None


def _checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has, or a ConfigError saying why not."""
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "cuda" and dev.index is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"device {device!r}: under torchrun each process takes the GPU of its "
                          "LOCAL_RANK; pass --device cuda (or auto), not one GPU for all")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available here (no Apple GPU, or this "
                          "torch was built without MPS)")
    if dev.type == "meta":  # shapes only, no data: nothing can be trained or scored there
        raise ConfigError(f"device {device!r} holds no data; use cpu, cuda or auto")
    if dev.type not in ("cpu", "cuda"):
        try:  # mps, xpu, ...: a tensor there says whether this torch and machine have it
            torch.zeros(1, device=dev).cpu()
        except Exception as exc:  # RuntimeError, AssertionError, ModuleNotFoundError (hpu)...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = first if len(first) <= 200 else first[:200] + " ..."
            raise ConfigError(f"device {device!r} is not available here: {first}") from None
    return dev


def full_fp32_on_cuda() -> None:
    """Turn off TF32 (10-bit mantissa) for float32 convolutions and matrix products on CUDA.

    torch allows TF32 convolutions by default on Ampere and newer GPUs, so ``precision="fp32"``
    would give scores and thresholds with errors around 1e-3 instead of float32's; bf16 is the
    explicit choice for speed. Process-wide, as torch's setting is.
    """
    # the flags torch has long had (mixing them with the newer fp32_precision ones makes
    # torch refuse to read either)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


#: Values of ``ONECLASS_DETERMINISTIC`` that leave it off (anything else turns it on).
_OFF = ("", "0", "false", "no", "off")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. CPU runs are then bit-for-bit reproducible.

    On CUDA some kernels (atomics in convolution backward, scatter) are not deterministic,
    so GPU runs can differ in the last digits from run to run. Setting the environment
    variable ``ONECLASS_DETERMINISTIC=1`` asks torch for deterministic algorithms (slower;
    operations without one warn instead of failing; ``0``, ``false``, ``no``, ``off`` or
    unset leave them off). Once on, it stays on for the rest of the process (torch's setting
    is process-wide); see docs/reliability.md.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if os.environ.get("ONECLASS_DETERMINISTIC", "").strip().lower() not in _OFF:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def preserved_rng():
    """Restore Python's, NumPy's and torch's global generators on exit: :meth:`Detector.fit`
    seeds them (:func:`seed_everything`), which would otherwise reset the caller's random
    streams to the same state after every fit. CUDA generators are kept when CUDA was
    already started (saving them would start it)."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def shared_threads(workers: int):
    """A pool of ``workers`` Python threads that share the process's intra-op CPU threads.

    Inside, torch runs each op on ``get_num_threads() // workers`` threads (at least one), so
    independent parts of a batch run side by side instead of one op at a time on every
    thread. Small convolutions, with their backward passes, keep two cores busier this way
    (AnoGAN's latent search: 1.1-1.2x on the development machine). The intra-op setting is
    process-wide in torch, so it is restored on leaving, and one pool runs at a time.
    """
    with _THREADS_LOCK:
        saved = torch.get_num_threads()
        torch.set_num_threads(max(1, saved // max(1, int(workers))))
        try:
            with ThreadPoolExecutor(max_workers=int(workers)) as pool:
                yield pool
        finally:
            torch.set_num_threads(saved)
