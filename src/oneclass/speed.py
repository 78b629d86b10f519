"""Throughput and efficiency of the networks on this machine: ``oneclass bench speed``.

Synthetic input tensors, so it measures the networks, not image decoding. Each rate is
images per second over at least ``seconds`` of repeated steps after one warm-up step.

Efficiency against the machine's limit: the floating-point operations of one step are
counted with :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
products; a multiply-add is 2 FLOPs; a training step counts forward and backward), so a
rate in images/s becomes achieved FLOP/s. The limit is a large matrix product timed in the
same run (:func:`matmul_peak`, fp32 and bf16); ``% peak`` is the achieved share of it for
the precision the row runs in. The limit is timed at the start and at the end of the run,
and every share is taken of the larger of the two: this shared machine's speed drifts by
up to a third within minutes.
"""

from __future__ import annotations

import functools
import time

import torch

from .heatmaps import receptive_upsample
from .methods.fcdd import chunked, pseudo_huber
from .nets import Decoder, Encoder, fcdd_nets
from .nets.receptive import receptive_field
from .train import autocast

#: Batch size of every scoring measurement (the default ``score_batch_size``).
SCORE_BATCH = 64


def _rate(fn, batch: int, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None) -> int:
    """Backward of a convolution: each of the input and weight gradients costs the forward's
    multiply-adds. (torch's own formula counts the weight gradient of a grouped convolution
    ``groups`` times over: a depthwise 3x3 conv with 32 channels came out at 34x its forward
    instead of 3x, and EfficientNet training above 100 % of the machine's peak.)"""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matrix product in ``dtype``: the machine's limit."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    calls = _rate(lambda: torch.mm(a, b, out=out), 1, seconds)
    return calls * 2.0 * n**3


def peaks(seconds: float = 2.0) -> dict[str, float]:
    """Matmul FLOP/s in fp32 and bf16."""
    return {"fp32": matmul_peak(torch.float32, seconds=seconds),
            "bf16": matmul_peak(torch.bfloat16, seconds=seconds)}


def peak_rows(peak: dict[str, float], when: str = "start of run") -> list[dict]:
    return [{"reference": f"matmul 2048x2048 {k} ({when})", "GFLOP/s": v / 1e9}
            for k, v in peak.items()]


def _efficiency(row: dict, kind: str, fn, batch: int, rate: float, peak: float) -> None:
    """Add ``kind`` GFLOP/img, GFLOP/s and % of peak to ``row`` for a step ``fn`` of ``batch``."""
    per_img = count_flops(fn) / batch
    row[f"{kind} GFLOP/img"] = round(per_img / 1e9, 4)
    row[f"{kind} GFLOP/s"] = rate * per_img / 1e9
    row[f"{kind} % peak"] = round(100 * rate * per_img / peak, 1)


def best_peak(peaks_seen: list[dict[str, float]]) -> dict[str, float]:
    """The largest matmul rate per precision measured in a run (the machine's speed drifts;
    the largest is the conservative limit)."""
    return {k: max(p[k] for p in peaks_seen) for k in ("fp32", "bf16")}


def against_best_peak(rows: list[dict], peaks_seen: list[dict[str, float]]) -> dict[str, float]:
    """Recompute every ``% peak`` of ``rows`` against the largest matmul rate measured in the
    run (the machine's speed drifts; the largest is the conservative limit). Rows whose
    ``variant`` ends in ``bf16`` use the bf16 limit. Returns the limits used."""
    best = best_peak(peaks_seen)
    for r in rows:
        p = best["bf16" if str(r.get("variant", "")).endswith("bf16") else "fp32"]
        for kind in ("train", "score"):
            if f"{kind} GFLOP/s" in r:
                r[f"{kind} % peak"] = round(100 * r[f"{kind} GFLOP/s"] * 1e9 / p, 1)
    return best


def lenet_rows(seconds: float = 3.0, peak: dict[str, float] | None = None) -> list[dict]:
    peak = peak or peaks()
    return [_lenet_row(shape, bs, seconds, peak)
            for shape, bs in [((1, 28, 28), 200), ((3, 32, 32), 200), ((1, 64, 64), 128)]]


def _lenet_row(shape, bs, seconds, peak):
    enc = Encoder(shape[0], shape[1:])
    dec = Decoder(enc, shape[0])
    x = torch.randn(bs, *shape)
    xs = torch.randn(SCORE_BATCH, *shape)
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
            enc(xs)

    enc.train()
    r_train, r_ae = _rate(svdd, bs, seconds), _rate(ae, bs, seconds)
    enc.eval()
    r_score = _rate(score, SCORE_BATCH, seconds)
    row = {"net": f"deep_svdd encoder {shape[1]}x{shape[2]}x{shape[0]}", "variant": "fp32",
           "train batch": bs, "train img/s": r_train, "AE pretrain img/s": r_ae,
           "score img/s": r_score}
    enc.train()
    _efficiency(row, "train", svdd, bs, r_train, peak["fp32"])
    enc.eval()
    _efficiency(row, "score", score, SCORE_BATCH, r_score, peak["fp32"])
    return row


def fcdd_rows(seconds: float = 3.0, peak: dict[str, float] | None = None,
              score_batches: tuple[int, ...] = (SCORE_BATCH,)) -> list[dict]:
    """FCDD nets: training and heatmap scoring; one row per variant and scoring batch size
    (the training columns are on the row of the first batch size)."""
    peak = peak or peaks()
    rows = []
    cases = [("cnn28", (1, 28, 28), 128), ("cnn32", (3, 32, 32), 128),
             ("cnn224", (3, 224, 224), 32), ("effnet", (3, 224, 224), 32)]
    for name, shape, bs in cases:
        for variant in ("fp32", "channels_last", "channels_last+bf16"):
            if name in ("cnn28", "cnn32") and variant != "fp32":
                continue
            rows += _fcdd_rows(name, shape, bs, variant, seconds, peak, score_batches)
    return rows


def _fcdd_rows(name, shape, bs, variant, seconds, peak, score_batches):
    net = fcdd_nets.build(name, shape[0], shape[1:], pretrained=False)
    rf = receptive_field(net, shape)
    x = torch.rand(bs, *shape)
    channels_last = variant.startswith("channels_last")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    bf16 = variant.endswith("bf16")

    def amp():
        return autocast("cpu", "bf16" if bf16 else "fp32")

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)

    def train():
        opt.zero_grad()
        with amp():
            loss = pseudo_huber(net(x)).mean()
        loss.backward()
        opt.step()

    def heatmap(xs):  # as FCDD scores: in cache-sized chunks on a CPU
        with torch.no_grad(), amp():
            a = chunked(lambda c: pseudo_huber(net(c)[:, 0]), xs)
        receptive_upsample(a, rf, shape[1:], 1.5 * rf.j[0])

    p = peak["bf16" if bf16 else "fp32"]
    rows = []
    for i, sb in enumerate(score_batches):
        xs = torch.rand(sb, *shape)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        row = {"net": f"fcdd {name} {shape[1]}x{shape[2]}x{shape[0]}", "variant": variant}
        if i == 0:
            net.train()
            r_train = _rate(train, bs, seconds)
            row.update({"train batch": bs, "train img/s": r_train})
            _efficiency(row, "train", train, bs, r_train, p)
        net.eval()
        score = functools.partial(heatmap, xs)
        r_score = _rate(score, sb, seconds)
        row.update({"score batch": sb, "score img/s": r_score})
        _efficiency(row, "score", score, sb, r_score, p)
        rows.append(row)
    return rows


def patchcore_rows(seconds: float = 3.0, peak: dict[str, float] | None = None,
                   bank: int = 10000) -> list[dict]:
    """PatchCore scoring: trunk features and nearest-neighbour search in a bank of ``bank``."""
    from .methods.patchcore import PatchCoreModel, nearest

    peak = peak or peaks()
    return [_patchcore_row(PatchCoreModel, nearest, shape, bank, seconds, peak)
            for shape in [(3, 224, 224), (1, 352, 144)]]


def _patchcore_row(model_cls, nearest, shape, bank, seconds, peak):
    model = model_cls(shape, [2, 4], bank, 96).eval()
    model.bank.normal_()
    xs = torch.rand(SCORE_BATCH, *shape)

    def score():
        with torch.no_grad():
            f = model.features(xs)
            nearest(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), model.bank)

    r = _rate(score, SCORE_BATCH, seconds)
    row = {"net": f"patchcore trunk {shape[1]}x{shape[2]}x{shape[0]}, bank {bank}",
           "variant": "fp32", "score img/s": r}
    _efficiency(row, "score", score, SCORE_BATCH, r, peak["fp32"])
    return row


def markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v if v is not None else "")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def anogan_search_flops(det, steps: int) -> float:
    """FLOPs per image of ``det``'s latent search: ``steps`` times one step (G and D's
    features forward, their input gradients backward), convolutions and matrix products."""
    from .methods._gan import no_weight_grads
    from .methods.anogan import anogan_loss

    m = det.model_
    x = torch.zeros(2, *det.input_shape_)
    z = torch.zeros(2, int(det.z_dim), requires_grad=True)

    def step():
        with no_weight_grads(m.G, m.D):
            g = m.G(z)
            loss, _ = anogan_loss(x, g, m.D.features(x), m.D.features(g), float(det.lam))
            loss.sum().backward()

    step_flops = count_flops(step) - count_flops(lambda: m.D.features(x))  # fx: once
    return steps * step_flops / 2


def untrained_anogan(shape: tuple[int, ...], **params):
    """An AnoGAN with ``params`` and untrained default networks for ``shape`` on the CPU,
    ready to search: a search costs the same whatever the networks learned."""
    from .methods.anogan import AnoGAN

    det = AnoGAN(**params)
    det.device_ = torch.device("cpu")
    det.input_shape_ = tuple(shape)
    det.model_ = det._build(tuple(shape)).eval()
    return det


def anogan_search_rows(steps: int = 100, batch: int | None = None, single: int = 8,
                       shapes=((1, 28, 28), (1, 64, 64)),
                       precisions=("fp32", "bf16"), flops: bool = False) -> list[dict]:
    """Seconds per image of AnoGAN's latent search, batched vs one image at a time.

    The same search (``steps`` Adam steps from the best of the candidate codes) on the
    default AnoGAN networks for each shape, with untrained weights: the cost does not depend
    on what the networks learned. ``batch`` images (default: AnoGAN's ``score_batch_size``,
    the batch its scoring searches together) are searched together, ``single`` one by one,
    in each precision (``precision`` parameter of AnoGAN). The batched search runs as AnoGAN
    scores (channels-last, in parts of ``search_part`` images, ``search_threads`` at once);
    the one-at-a-time figure searches one image on its own (not padded to a part: what a
    search of one image costs at best), the faster of both memory layouts. The last column
    divides by the fastest one-at-a-time search of either precision (one image in bf16 can be
    slower than in fp32, which would flatter the bf16 row). ``flops``: each row also gives the
    search's FLOPs per image (see :func:`search_limits`).
    """
    from .methods.anogan import AnoGAN

    batch = int(batch or AnoGAN().score_batch_size)
    single = min(int(single), batch)  # one-at-a-time searches of the batch's own images
    rows, raw = [], []  # raw: (batched, one-at-a-time) seconds per image, unrounded
    for shape, precision in [(s, p) for s in shapes for p in precisions]:
        det = untrained_anogan(shape, search_steps=steps, precision=precision)
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
        det.search(x[:2], steps=2)  # warm-up
        t0 = time.perf_counter()
        det.search(x)
        per_batched = (time.perf_counter() - t0) / batch
        per_single = {}  # the baseline gets its faster memory layout
        for cl in (True, False):
            det.search(x[:1], steps=2, channels_last=cl, fixed_parts=False)  # warm-up
            t0 = time.perf_counter()
            for i in range(single):
                det.search(x[i:i + 1], channels_last=cl, fixed_parts=False)
            per_single[cl] = (time.perf_counter() - t0) / single
        best = min(per_single.values())
        row = {"net": f"anogan search {shape[1]}x{shape[2]}x{shape[0]}",
               "precision": precision, "steps": steps, "batch": batch,
               "parts": -(-batch // det.search_part_size(det.device_)),
               "batched ms/img": f"{1000 * per_batched:.1f}",
               "one-at-a-time ms/img": f"{1000 * best:.1f}",
               "one-at-a-time layout": ("channels-last" if best == per_single[True]
                                        else "contiguous"),
               "speed-up": f"{best / per_batched:.1f}x"}
        if flops:
            row["GFLOP/img"] = round(anogan_search_flops(det, steps) / 1e9, 3)
        rows.append(row)
        raw.append((per_batched, best))
    for r, (batched, _) in zip(rows, raw):  # against the fastest single search, any precision
        fastest = min(s for q, (_, s) in zip(rows, raw) if q["net"] == r["net"])
        r["speed-up vs fastest one-at-a-time"] = f"{fastest / batched:.1f}x"
    return rows


def search_limits(rows: list[dict], peaks_seen: list[dict[str, float]]) -> dict[str, float]:
    """Add to each search row (with ``GFLOP/img``) the batched search's share of the
    machine's matmul limit (:func:`best_peak` of ``peaks_seen``) in its precision, and the
    speed-up over one image at a time that a search running at that limit would have: the
    most batching can give. Returns the limits used, as :func:`against_best_peak`."""
    peak = best_peak(peaks_seen)
    for r in rows:
        limit_s = r["GFLOP/img"] * 1e9 / peak[r["precision"]]
        r["batched % peak"] = round(100 * limit_s / (float(r["batched ms/img"]) / 1000), 1)
        r["speed-up at peak"] = f"{float(r['one-at-a-time ms/img']) / 1000 / limit_s:.1f}x"
    return peak
