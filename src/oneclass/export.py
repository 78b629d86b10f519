"""ONNX export of a fitted detector, with an onnxruntime parity check.

The exported graph takes a raw image batch ``(N, C, H, W)`` at the model's input size, uint8
(or float32 in 0..255), and returns ``score (N,)`` and ``anomaly_map (N, H, W)``. Scaling to
[0, 1] and the model's fitted input normalisation run inside the graph; resizing and channel
conversion (``Preprocess``) happen before, and their settings are stored in the model's
metadata together with the threshold (key ``oneclass``, a JSON object).

A method makes itself exportable with :meth:`Detector.export_module`, an ``nn.Module``
``x in [0, 1] -> (score, map)`` matching ``_score`` / ``_map``. Methods whose maps are input
gradients (Deep SVDD and its kin) use :func:`gradient_module`: the backward pass is traced
into plain forward operators (convolution backward becomes a transposed convolution), so the
exported map is the exact gradient map, not an approximation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .detector import Detector
from .errors import ConfigError, ModelFileError
from .heatmaps import default_sigma, gaussian_blur

log = logging.getLogger(__name__)

INPUT_DTYPES = ("uint8", "float32")


def _conv_input_grad(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                     output_padding, groups, mask):
    """``convolution_backward`` for the input only, as a transposed convolution (ONNX has no
    backward operators). Weight and bias gradients are never asked for here."""
    if transposed or len(stride) != 2 or mask[1] or mask[2]:
        raise ConfigError("export: only input gradients of 2-D convolutions can be exported")
    pad_out = []
    for i in range(2):
        full = ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        pad_out.append(inp.shape[2 + i] - full)
    return F.conv_transpose2d(grad_out, weight, None, stride, padding, pad_out, groups,
                              dilation), None, None


class _Traced(nn.Module):
    """A traced function of ``(tensors, x)`` with the tensors held as buffers."""

    def __init__(self, graph: nn.Module, tensors: list[torch.Tensor]):
        super().__init__()
        self.graph = graph
        self.n = len(tensors)
        for i, t in enumerate(tensors):
            self.register_buffer(f"t{i}", t.detach().clone())

    def forward(self, x: torch.Tensor):
        return self.graph([getattr(self, f"t{i}") for i in range(self.n)], x)


class GradientMap(nn.Module):
    """``x -> (score, map)`` with map = Gaussian-smoothed ``|d score / d x|`` summed over
    channels: the same as :func:`oneclass.heatmaps.gradient_map`, but as a forward graph."""

    def __init__(self, score: nn.Module, input_shape: tuple[int, int, int],
                 sigma: float | None = None):
        super().__init__()
        from torch.fx.experimental.proxy_tensor import make_fx

        score = score.eval()
        named = {**dict(score.named_parameters()), **dict(score.named_buffers())}
        names = list(named)
        tensors = [named[k].detach() for k in names]

        def fn(ts, x):
            state = dict(zip(names, ts))

            def total(x):
                s = torch.func.functional_call(score, state, (x,))
                return s.sum(), s

            grad, s = torch.func.grad(total, has_aux=True)(x)
            return s, grad.abs().sum(dim=1)

        example = torch.rand(2, *input_shape)
        aten = torch.ops.aten
        graph = make_fx(fn, tracing_mode="symbolic",
                        decomposition_table={aten.convolution_backward.default: _conv_input_grad})(
            tensors, example)
        self.traced = _Traced(graph, tensors)
        self.sigma = float(default_sigma(*input_shape[1:]) if sigma is None else sigma)

    def forward(self, x: torch.Tensor):
        score, grad = self.traced(x)
        return score, gaussian_blur(grad, self.sigma)


def gradient_module(score: nn.Module, input_shape, sigma: float | None = None) -> nn.Module:
    """Exportable ``(score, gradient map)`` for a score module ``x in [0, 1] -> (N,)``."""
    return GradientMap(score, tuple(int(s) for s in input_shape), sigma)


class RawInput(nn.Module):
    """The exported graph: raw 0..255 images -> ``(score, anomaly_map)`` in float32."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        score, amap = self.inner(x.float() / 255.0)
        return score.float(), amap.float()


def metadata(det: Detector, input_dtype: str, model_id: str | None) -> dict[str, Any]:
    """What a consumer of the ONNX file needs besides the graph (stored as JSON)."""
    c, h, w = det.input_shape_
    return {
        "format": "oneclass-onnx",
        "method": det.name,
        "model_id": model_id,
        "threshold": det.threshold_,
        "threshold_source": det.threshold_source_,
        "label_rule": "anomalous (label 1) when score >= threshold, else normal (label 0)",
        "map_scale": getattr(det, "map_scale_", None),
        "input": {"name": "image", "layout": "NCHW", "shape": ["N", c, h, w], "dtype": input_dtype,
                  "range": "0..255"},
        "outputs": {"score": "(N,) higher = more anomalous",
                    "anomaly_map": f"(N, {h}, {w}) at the input resolution"},
        "preprocess": {**det.preprocess_.to_json(),
                       # In the order oneclass applies them, before the graph:
                       "decoding": "EXIF orientation applied; alpha and PNG colour-key "
                                   "transparency composited on black; 16-bit and 32-bit integer "
                                   "images scaled to 8 bit",
                       "channels_conversion": "on the uint8 image: RGB -> 1 as round(0.299 R + "
                                              "0.587 G + 0.114 B), 1 -> 3 by replicating gray",
                       "resize": "then x / 255 in float, bilinear with antialiasing "
                                 "(align_corners=False) to size (H, W), clipped to [0, 1]; a "
                                 "float32 graph takes that times 255 unrounded, a uint8 graph "
                                 "its rounding (at most 0.5/255 off a pixel)",
                       "inside_graph": "x / 255, then the model's fitted input normalisation"},
        "params": det.get_params(),
        # The graph is float32; a model scored in bf16 got its threshold from bf16 scores,
        # which differ from float32 ones by up to about 0.5 % of the score range.
        "threshold_precision": getattr(det, "precision", "fp32"),
    }


def model_id(model_dir: Path) -> str | None:
    """Short id of a saved model: the first 12 hex digits of its weights' sha256. For a
    loaded model use :func:`loaded_model_id`: the folder may hold another model by now."""
    p = Path(model_dir) / "model.json"
    try:
        digest = json.loads(p.read_text()).get("weights_sha256")
    except (OSError, json.JSONDecodeError):
        return None
    return digest[:12] if digest else None


def loaded_model_id(det, model_dir: Path | None = None) -> str | None:
    """:func:`model_id` of the model ``det`` was loaded from (or last saved as), read from
    ``det`` itself: a run retrained after the load has another model on disk. Falls back to
    ``model_dir`` for a model that was neither loaded nor saved."""
    digest = getattr(det, "weights_sha256_", None)
    if digest:
        return str(digest)[:12]
    return model_id(model_dir) if model_dir is not None else None


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Raise the level of logger ``name`` to ``level`` inside the block."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def export_onnx(det: Detector, out: str | Path, *, input_dtype: str = "float32",
                model_id: str | None = None, opset: int = 18) -> Path:
    """Write ``det`` as an ONNX model to ``out`` (a single file, weights inside).

    ``input_dtype`` float32 (the default) takes the resized image unrounded, as oneclass
    scores it, so scores match ``predict``; uint8 takes it rounded to whole values, which moves
    scores of resized images by about 1 % (2.6 % at most on a 300x200 colour set), enough to
    flip images near the threshold."""
    import onnx

    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"input dtype must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}")
    det._check_fitted()
    out = Path(out)
    if out.is_dir():  # before the export: the file is written to the name given
        from .io import WriteError

        raise WriteError(f"{out}: is a folder; give the file to write, e.g. "
                         f"{out / 'model.onnx'}; nothing was written")
    cpu = torch.device("cpu")
    if det.device_ != cpu:  # the graph is traced on the CPU; the model is moved back after
        det.model_.to(cpu)
    try:
        wrapper = RawInput(det.export_module()).eval()
        example = torch.randint(0, 256, (2, *det.input_shape_), dtype=torch.uint8)
        if input_dtype == "float32":
            example = example.float()
        out.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings(), quiet_logger("torch.onnx._internal.exporter._registration"):
            warnings.simplefilter("ignore")  # and the exporter's "torchvision is not installed"
            prog = torch.onnx.export(
                wrapper, (example,), dynamo=True, verbose=False, opset_version=opset,
                input_names=["image"], output_names=["score", "anomaly_map"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                external_data=False)
        model = prog.model_proto
    finally:
        det.model_.to(det.device_)
    meta = metadata(det, input_dtype, model_id)
    entries = {"oneclass": json.dumps(meta), "threshold": repr(float(det.threshold_)),
               "method": det.name}
    for k, v in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    model.doc_string = (f"oneclass {det.name}: raw {input_dtype} images NCHW 0..255 -> score, "
                        "anomaly_map; see metadata 'oneclass'")
    try:  # checked before it is written: a bad graph must not replace a good earlier file
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelFileError(f"{out}: the exported ONNX graph does not validate ({exc}); "
                             "nothing was written") from None
    from .io import write_bytes

    write_bytes(out, model.SerializeToString())
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``oneclass`` metadata of an exported model."""
    import onnx

    if not Path(path).is_file():
        raise ModelFileError(f"{path}: file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelFileError(f"{path}: not an ONNX model ({exc})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "oneclass" not in props:
        raise ModelFileError(f"{path}: no 'oneclass' metadata (not exported by oneclass)")
    try:
        meta = json.loads(props["oneclass"])
    except ValueError as exc:
        raise ModelFileError(f"{path}: its 'oneclass' metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its 'oneclass' metadata is not a JSON object")
    return meta


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def parity(det: Detector, path: str | Path, images: torch.Tensor | np.ndarray,
           batch_size: int = 16) -> dict[str, float]:
    """Run torch and onnxruntime on the same raw images; max abs differences and rates.

    Args:
        images: uint8 ``(N, C, H, W)`` at the model's input size.
    """
    x = torch.as_tensor(np.asarray(images))
    meta = read_metadata(path)
    # The graph is float32 whatever the model's inference precision: compare like with like.
    saved = getattr(det, "precision", None)
    if saved is not None:
        det.precision = "fp32"
    feed = x.numpy() if meta["input"]["dtype"] == "uint8" else x.float().numpy()
    sess = session(path)
    # no warm-up run: onnxruntime's first run is the one compared (its later runs of DOC's
    # gradient graph differ from the first by up to ~3e-4 here, which can flip a ReLU6 or a
    # nearest neighbour past the map tolerance); deploybench times warm sessions itself
    t0 = time.perf_counter()
    got_s, got_m = [], []
    for i in range(0, len(x), batch_size):
        s, m = sess.run(None, {"image": feed[i:i + batch_size]})
        got_s.append(s)
        got_m.append(m)
    t_onnx = time.perf_counter() - t0
    try:
        det.score(x[:1])  # warm-up: the torch rate is of a warm model
        det.anomaly_map(x[:1])
        t0 = time.perf_counter()
        ref_s = det.score(x)
        ref_m = det.anomaly_map(x)
    finally:
        if saved is not None:
            det.precision = saved
    t_torch = time.perf_counter() - t0
    got_s, got_m = np.concatenate(got_s), np.concatenate(got_m)
    return {
        "images": int(len(x)),
        "score_max_abs_diff": float(np.abs(got_s - ref_s).max()),
        "map_max_abs_diff": float(np.abs(got_m - ref_m).max()),
        "score_range": float(np.ptp(ref_s)),
        "score_max": float(np.abs(ref_s).max()),
        "map_max": float(np.abs(ref_m).max()),
        "labels_agree": float(np.mean(det.flags(got_s) == det.flags(ref_s))),
        "onnx_images_per_s": len(x) / max(t_onnx, 1e-9),
        "torch_images_per_s": len(x) / max(t_torch, 1e-9),
    }


#: Tolerated difference between onnxruntime and torch, relative to the score range (at least
#: 1) and to the largest map value: float32 kernels agree to about 1e-6 of that scale.
PARITY_TOL = 1e-4


def parity_problems(r: dict[str, float], rel_tol: float = PARITY_TOL,
                    map_rel_tol: float | None = None) -> list[str]:
    """What is wrong with a :func:`parity` result; empty when the export matches torch.

    Labels may differ only for images within the tolerance of the threshold, which the
    score test already bounds. ``map_rel_tol`` (default ``rel_tol``) is the model's own
    (``Detector.map_parity_tol``) where float32 itself cannot hold maps to ``rel_tol``.
    """
    out = []
    # relative to the scores' spread, or to their size when they barely spread (one image)
    score_tol = rel_tol * max(r["score_range"], 1e-3 * r.get("score_max", 0.0), 1.0)
    if not r["score_max_abs_diff"] <= score_tol:
        out.append(f"scores differ by up to {r['score_max_abs_diff']:.3g} (tolerance {score_tol:.3g})")
    map_tol = (rel_tol if map_rel_tol is None else map_rel_tol) * r["map_max"]
    if not r["map_max_abs_diff"] <= map_tol:
        out.append(f"maps differ by up to {r['map_max_abs_diff']:.3g} (tolerance {map_tol:.3g})")
    return out
