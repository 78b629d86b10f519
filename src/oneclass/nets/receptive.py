"""Receptive fields, read off the network itself.

:func:`receptive_field` runs one forward pass with hooks on every convolution and pooling
layer, in the order they execute, and composes the standard recurrences per axis
(jump j, extent r, centre of the first output unit s):

    j' = j * stride,   r' = r + (k_eff - 1) * j,   s' = s + ((k_eff - 1) / 2 - padding) * j

with ``k_eff = dilation * (k - 1) + 1``. Element-wise layers (activations, batch norm) and
identity shortcuts do not change the field of the main path. A convolution or pooling on a
shortcut would be chained in as if it were the next layer, so nets with such shortcuts are not
supported; every shipped net is checked against a brute-force gradient probe
(:func:`probe_receptive_field`) in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (height, width): extent ``r``, jump ``j`` and first centre ``s`` in pixels.

    Output unit ``(i, k)`` sees the input window centred at ``(s[0] + i * j[0], s[1] + k * j[1])``
    of size ``r``.
    """

    r: tuple[int, int]
    j: tuple[int, int]
    s: tuple[float, float]

    def to_json(self) -> dict:
        return {"r": list(self.r), "j": list(self.j), "s": list(self.s)}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def receptive_field(net: nn.Module, input_shape: tuple[int, int, int]) -> ReceptiveField:
    """Compose the receptive field of ``net`` for inputs of shape ``(C, H, W)``."""
    layers: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: layers.append(mod))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            p = next(net.parameters(), None)
            net(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    r, j, s = [1, 1], [1, 1], [0.0, 0.0]
    for m in layers:
        if isinstance(m.padding, str):
            raise ValueError(f"{m}: string padding is not supported for receptive fields")
        k, st, pad = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
        dil = _pair(getattr(m, "dilation", 1))
        for a in range(2):
            ke = dil[a] * (k[a] - 1) + 1
            s[a] = s[a] + ((ke - 1) / 2 - pad[a]) * j[a]
            r[a] = r[a] + (ke - 1) * j[a]
            j[a] = j[a] * st[a]
    return ReceptiveField((r[0], r[1]), (j[0], j[1]), (s[0], s[1]))


def probe_receptive_field(net: nn.Module, input_shape: tuple[int, int, int], trials: int = 3,
                          ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Brute force: the input pixels whose gradient reaches one central output unit.

    Returns the bounding box ``((top, bottom), (left, right))`` (inclusive) of the union of
    non-zero input gradients over a few random inputs, for the output unit at the centre of
    the map. Used to test :func:`receptive_field`.
    """
    training = net.training
    net.eval()  # no batch statistics (they would mix pixels); restored below
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(input_shape[1:], dtype=torch.bool)
    try:
        for _ in range(trials):
            x = torch.randn(1, *input_shape, generator=g).requires_grad_(True)
            out = net(x)
            u, v = out.shape[-2] // 2, out.shape[-1] // 2
            (grad,) = torch.autograd.grad(out[0, 0, u, v], x)  # parameters' .grad untouched
            seen |= (grad[0].abs().sum(0) > 0)
    finally:
        net.train(training)
    rows = torch.nonzero(seen.any(1)).flatten()
    cols = torch.nonzero(seen.any(0)).flatten()
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))
