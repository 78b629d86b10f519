"""Where AnoGAN's batched 64x64 latent search spends its time, and the transposed-convolution probe.

    PYTHONPATH=src python scripts/search_profile.py            # profile 10 search steps
    PYTHONPATH=src python scripts/search_profile.py --layers   # G's transposed convolutions

The profile runs the search as AnoGAN scores (batch 256, fp32, untrained default networks
for 64x64x1 images, 2 threads). ``--layers`` times each of G's transposed convolutions at
batch 256 on one thread, forward and forward + input gradient, against a plain convolution
of equal FLOPs and against an exact sub-pixel rewrite (a 3x3 convolution to 4x the channels
and a pixel shuffle), which it first checks against ``ConvTranspose2d``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

# phase a (output row 2m + a) and 3x3 tap r -> tap of the 4x4 transposed kernel (4: zero)
_TAPS = torch.tensor([[3, 1, 4], [4, 2, 0]])


def subpixel_conv_transpose(x: torch.Tensor, ct: nn.ConvTranspose2d) -> torch.Tensor:
    """``ct(x)`` for a kernel-4, stride-2, padding-1 ``ct``, as a 3x3 conv and a pixel shuffle."""
    cin, cout = ct.weight.shape[:2]
    wp = F.pad(ct.weight, (0, 1, 0, 1))
    k = wp[:, :, _TAPS[:, :, None, None], _TAPS[None, None, :, :]]  # (Cin, Cout, a, r, b, s)
    w = k.permute(1, 2, 4, 0, 3, 5).reshape(cout * 4, cin, 3, 3)
    b = ct.bias.repeat_interleave(4) if ct.bias is not None else None
    return F.pixel_shuffle(F.conv2d(x, w, b, padding=1), 2)


def _ms(f, n: int = 5) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1000


def _layer(cin: int, cout: int, hw: int) -> str:
    cl = torch.channels_last
    ct = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
    small = torch.randn(4, cin, hw, hw)
    diff = (ct(small) - subpixel_conv_transpose(small, ct)).abs().max().item()
    ct = ct.to(memory_format=cl).requires_grad_(False)
    x = torch.randn(256, cin, hw, hw).contiguous(memory_format=cl).requires_grad_(True)
    conv = nn.Conv2d(cout, cin, 4, 2, 1, bias=False).to(memory_format=cl).requires_grad_(False)
    y = torch.randn(256, cout, 2 * hw, 2 * hw).contiguous(memory_format=cl)

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(x, ct).sum(), x)

    with torch.no_grad():
        fwd, conv_fwd = _ms(lambda: ct(x)), _ms(lambda: conv(y))
    return (f"{cin:3d} -> {cout:2d} at {hw:2d} px: max diff {diff:.1e}; forward {fwd:.1f} ms "
            f"(conv of equal FLOPs {conv_fwd:.1f} ms); forward + backward "
            f"{_ms(fwd_bwd(lambda a, m: m(a))):.1f} ms, sub-pixel "
            f"{_ms(fwd_bwd(subpixel_conv_transpose)):.1f} ms")


def layers() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for cin, cout, hw in [(128, 64, 4), (64, 32, 8), (32, 16, 16), (16, 1, 32), (16, 3, 32)]:
        print(_layer(cin, cout, hw))


def profile() -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from oneclass.speed import untrained_anogan

    torch.set_num_threads(2)
    shape = (1, 64, 64)
    det = untrained_anogan(shape)
    x = torch.rand(256, *shape, generator=torch.Generator().manual_seed(0))
    det.search(x[:2], steps=2)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as p:
        det.search(x, steps=10)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", action="store_true", help="time G's transposed convolutions")
    layers() if ap.parse_args().layers else profile()
