"""Throughput of the networks on this machine: ``oneclass bench speed``.

Synthetic input tensors, so it measures the networks, not image decoding. Each number is
images per second over at least ``seconds`` of repeated steps after one warm-up step.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from .heatmaps import receptive_upsample
from .methods.fcdd import pseudo_huber
from .nets import Decoder, Encoder, fcdd_nets
from .nets.receptive import receptive_field


def _rate(fn, batch: int, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def lenet_rows(seconds: float = 3.0) -> list[dict]:
    return [_lenet_row(shape, bs, seconds)
            for shape, bs in [((1, 28, 28), 200), ((3, 32, 32), 200), ((1, 64, 64), 128)]]


def _lenet_row(shape, bs, seconds):
    enc = Encoder(shape[0], shape[1:])
    dec = Decoder(enc, shape[0])
    x = torch.randn(bs, *shape)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-4)

    def svdd():
        opt.zero_grad()
        enc(x).pow(2).sum(1).mean().backward()
        opt.step()

    def ae():
        opt.zero_grad()
        (dec(enc(x)) - x).pow(2).mean().backward()
        opt.step()

    def score():
        with torch.no_grad():
            enc(x)

    enc.train()
    r_train, r_ae = _rate(svdd, bs, seconds), _rate(ae, bs, seconds)
    enc.eval()
    return {"net": f"deep_svdd encoder {shape[1]}x{shape[2]}x{shape[0]}", "batch": bs,
            "train img/s": r_train, "AE pretrain img/s": r_ae,
            "score img/s": _rate(score, bs, seconds)}


def fcdd_rows(seconds: float = 3.0) -> list[dict]:
    rows = []
    cases = [("cnn28", (1, 28, 28), 128), ("cnn32", (3, 32, 32), 128),
             ("cnn224", (3, 224, 224), 32), ("effnet", (3, 224, 224), 32)]
    for name, shape, bs in cases:
        for variant in ("fp32", "channels_last", "channels_last+bf16"):
            if name in ("cnn28", "cnn32") and variant != "fp32":
                continue
            rows.append(_fcdd_row(name, shape, bs, variant, seconds))
    return rows


def _fcdd_row(name, shape, bs, variant, seconds):
    net = fcdd_nets.build(name, shape[0], shape[1:], pretrained=False)
    rf = receptive_field(net, shape)
    x = torch.rand(bs, *shape)
    if variant.startswith("channels_last"):
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if variant.endswith("bf16")
           else nullcontext())
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)

    def train():
        opt.zero_grad()
        with amp:
            loss = pseudo_huber(net(x)).mean()
        loss.backward()
        opt.step()

    def heatmap():
        with torch.no_grad(), amp:
            a = pseudo_huber(net(x)[:, 0]).float()
        receptive_upsample(a, rf, shape[1:], 1.5 * rf.j[0])

    net.train()
    r_train = _rate(train, bs, seconds)
    net.eval()
    return {"net": f"fcdd {name} {shape[1]}x{shape[2]}x{shape[0]}", "variant": variant,
            "batch": bs, "train img/s": r_train,
            "heatmap img/s": _rate(heatmap, bs, seconds)}


def markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(
            (f"{r[k]:.0f}" if isinstance(r.get(k), float) else str(r.get(k, ""))) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def anogan_search_rows(steps: int = 100, batch: int = 64, single: int = 4,
                       shapes=((1, 28, 28), (1, 64, 64)),
                       precisions=("fp32", "bf16")) -> list[dict]:
    """Seconds per image of AnoGAN's latent search, batched vs one image at a time.

    The same search (``steps`` Adam steps from the best of the candidate codes) on the
    default AnoGAN networks for each shape, with untrained weights: the cost does not depend
    on what the networks learned. ``batch`` images are searched together, ``single`` one by
    one, in each precision (``precision`` parameter of AnoGAN).
    """
    from .methods.anogan import AnoGAN

    rows = []
    for shape, precision in [(s, p) for s in shapes for p in precisions]:
        det = AnoGAN(search_steps=steps, precision=precision)
        det.device_ = torch.device("cpu")
        det.input_shape_ = tuple(shape)
        det.model_ = det._build(tuple(shape)).eval()
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
        det.search(x[:2], steps=2)  # warm-up
        t0 = time.perf_counter()
        det.search(x)
        per_batched = (time.perf_counter() - t0) / batch
        t0 = time.perf_counter()
        for i in range(single):
            det.search(x[i:i + 1])
        per_single = (time.perf_counter() - t0) / single
        rows.append({"net": f"anogan search {shape[1]}x{shape[2]}x{shape[0]}",
                     "precision": precision, "steps": steps,
                     "batch": batch, "batched ms/img": f"{1000 * per_batched:.1f}",
                     "one-at-a-time ms/img": f"{1000 * per_single:.1f}",
                     "speed-up": f"{per_single / per_batched:.1f}x"})
    return rows
