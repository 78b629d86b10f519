"""The Detector contract shared by every method.

``fit(train, val=None)`` learns from normal (and optionally labeled) images; ``score(x)``
returns one number per image, **higher = more anomalous**; ``anomaly_map(x)`` returns a map
per image at the input resolution of the model (after preprocessing); ``predict(x)`` compares
scores with ``threshold_``; ``save(dir)`` / ``load(dir)`` write and read weights
(safetensors) plus a JSON description that rebuilds the model, never a pickle.

Parameters are keyword-only and stored unchanged by ``__init__`` (scikit-learn style); every
parameter has a default in the ``defaults`` of the class or one of its bases, and an unknown
parameter is an error listing the valid ones. Fitted state ends in ``_``.

The threshold: given explicitly (``threshold=...``), or the lowest one that flags at most a
``contamination`` fraction of the normal images held back from training (``holdout``), or of
``val``'s normal images when ``val`` is given (:func:`holdout_threshold`). It never uses
anomalies, and tied scores never straddle it, so it cannot collapse to "everything
anomalous" when none are labeled or when a model gives every image the same score.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from . import __version__
from .data.base import (
    NORMAL,
    ImageSet,
    Prepared,
    Preprocess,
    collate,
    materialize,
    same_files,
)
from .device import parse_device, preserved_rng, resolve_device, seed_everything
from .errors import ConfigError, DataError, ModelFileError, TrainingError
from .io import atomic_dir, json_default, write_json
from .model_files import (
    DESCRIPTION_ERRORS,
    FORMAT,
    FORMAT_VERSION,
    check_description,
    check_save_target,
    check_weights,
    damaged,
    fit_weights,
    is_number,
    read_saved,
)
from .train import LoopConfig, is_main_process, show_progress

log = logging.getLogger(__name__)


class Output(NamedTuple):
    """What a model returns for a batch: image scores ``(N,)`` and maps ``(N, H, W)``."""

    score: torch.Tensor
    anomaly_map: torch.Tensor


def holdout_threshold(scores: np.ndarray, contamination: float) -> float:
    """A threshold at which ``score >= threshold`` flags at most ``floor(contamination * n)``
    of ``n`` scores of normal images (``k``), placed in the middle of the gap between the
    highest score it leaves normal and the lowest it flags; with none flagged, above the
    highest score by half the mean spacing of the upper half of the scores (about the gap to
    the next; a stray low score does not widen it).

    The margin keeps an image's label where its score moves in the last digits: the same
    image scored alone or in a batch of others differs by up to about 1e-4 of its score
    (BLAS sums in another order), and a threshold one float32 step above a held-back score
    flipped that image's label between ``predict`` and ``serve``. Tied scores land on the
    same side, so a model whose scores collapsed to one value flags none of its normal
    images, and ``contamination=0`` flags none; with few images fewer than the fraction are
    flagged, never more. The threshold is a float32 value, so it compares the same in
    float32 and float64."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if len(s) == 0:
        raise ValueError("no scores to set a threshold from")
    k = min(len(s) - 1, int(np.floor(float(contamination) * len(s) + 1e-9)))
    top = np.float32(s[len(s) - k - 1])  # the highest score left normal
    above = float(np.nextafter(top, np.float32(np.inf)))  # the lowest threshold that does
    higher = s[s > float(top)]
    if len(higher):  # the lowest score flagged, or past a tie at the boundary
        t = (float(top) + float(higher[0])) / 2
    elif len(s) > 1:
        m = (len(s) - 1) // 2
        t = float(top) + 0.5 * (s[-1] - s[m]) / (len(s) - 1 - m)
    else:
        t = above
    return max(float(np.float32(t)), above)


def gcn_l1(x: torch.Tensor) -> torch.Tensor:
    """Global contrast normalisation of each image with the l1 norm (Ruff et al. 2018):
    subtract the image mean, divide by the mean absolute deviation. ``(N, C, H, W)``."""
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return x / x.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


class InputNorm(nn.Module):
    """Input normalisation fitted on the training images; part of the model (and its export).

    With ``gcn`` the paper protocol of Deep SVDD is applied first: global contrast
    normalisation of each image with the l1 norm (subtract the image mean, divide by the
    mean absolute deviation). Then per-channel standardisation with the training statistics.
    """

    def __init__(self, channels: int, gcn: bool = False):
        super().__init__()
        self.gcn = gcn
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, batch: int = 1024) -> None:
        """Fit mean and std on uint8 or float images ``(N, C, H, W)``."""
        s = torch.zeros(self.mean.shape, dtype=torch.float64)
        s2 = torch.zeros_like(s)
        n = 0
        for xb in torch.split(x, batch):
            xb = xb.to(self.mean.device)
            xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb.float()
            if self.gcn:
                xb = gcn_l1(xb)
            xb = xb.cpu().double()  # float64 sums on the CPU: MPS has no float64
            s += xb.sum(dim=(0, 2, 3))
            s2 += (xb**2).sum(dim=(0, 2, 3))
            n += xb.shape[0] * xb.shape[2] * xb.shape[3]
        mean = s / n
        std = (s2 / n - mean**2).clamp_min(0).sqrt().clamp_min(1e-3)
        self.mean.copy_(mean.float().to(self.mean.device))
        self.std.copy_(std.float().to(self.std.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gcn:
            x = gcn_l1(x)
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


#: Parts of torch's errors for an input smaller than a network's layers can take.
_TOO_SMALL = ("Output size is too small", "Kernel size can't be greater than actual input size")


def _fitted_attr(name: str) -> bool:
    """Attributes a fit sets end in an underscore (``model_``, ``threshold_``)."""
    return name.endswith("_") and not name.startswith("_")


def as_float(v: Any) -> float:
    """``v`` as a float for a range check: NaN (fails every range) for what is not a number."""
    if isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` as one truth value (arrays set as attributes compare elementwise)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _param_type_cast(default: Any, value: Any, name: str) -> Any:
    """Parse a ``--set key=value`` string by the type of the parameter's default."""
    if isinstance(value, (np.generic, np.ndarray)):  # plain Python values, as JSON saves them
        value = value.tolist()
    if not isinstance(value, str) or isinstance(default, str):
        return value
    v = value.strip()
    try:
        if default is None:  # JSON when it parses (numbers, lists, null), else the text
            try:
                return json.loads(v) if v[:1] in "[{0123456789-" or v in ("true", "false", "null") \
                    else v
            except ValueError:
                return v  # e.g. size=32,32 or 32x32, which the parameter's own check reads
        if isinstance(default, bool):
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(v)
        if isinstance(default, int):
            return int(v)
        if isinstance(default, float):
            return float(v)
        if isinstance(default, (list, tuple)):
            if v.startswith("["):
                return json.loads(v)
            return [json.loads(p) for p in v.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"parameter {name}: cannot read {value!r} as {type(default).__name__}") from None
    return value


# parameters without a numeric default that are counts when set
_COUNTS = ("epochs", "bank_size", "rep_dim", "search_part", "width", "channels")
#: "load" while :meth:`Detector.load` rebuilds a saved model, "scoring" while scoring
#: parameters change: the training parameters are then history, not checked as new values.
_SAVED_PARAMS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "oneclass_saved_params", default=None)


@contextlib.contextmanager
def _saved_params(mode: str):
    """Check parameters as :data:`_SAVED_PARAMS` ``mode`` says inside the block."""
    token = _SAVED_PARAMS.set(mode)
    try:
        yield
    finally:
        _SAVED_PARAMS.reset(token)


def _shared_files(ours: ImageSet, theirs: ImageSet, what: str) -> str | None:
    """Where images of ``theirs`` are training images of ``ours`` that are not labeled
    anomalous (the same file, links resolved, or a byte-identical copy): "N of M (first: X,
    the same as Y)"; None when none is, and for sets that are not files."""
    pa, pb = getattr(ours, "paths", None), getattr(theirs, "paths", None)
    if not pa or not pb:
        return None
    hit = same_files([p for p, lab in zip(pa, ours.labels) if lab != 1], pb)
    if not hit:
        return None
    i = min(hit)
    return (f"{len(hit)} of its {len(pb)} {what}; first: {pb[i]}, the same file as or a copy "
            f"of {hit[i]}")


# torch's unsigned types wider than 8 bits (torch 2.3 and later)
_WIDE_UNSIGNED = tuple(t for t in (getattr(torch, f"uint{b}", None) for b in (16, 32, 64)) if t)


def _image_divisor(x: torch.Tensor) -> float:
    """What to divide ``x`` (as float) by for images in [0, 1]: 255 for uint8 or other integer
    images in 0..255, 1 for float images in [0, 1]; other values are a DataError (an int64
    array in 0..255 used to be scored as if it were in [0, 1], giving scores 10^5 times too
    large without a warning). Only min and max are read: batches are converted one by one."""
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"cannot score a tensor of dtype {x.dtype}: images are uint8 (0..255) "
                        "or float (0..1)")
    if x.numel() == 0:
        return 1.0
    lo, hi = float(x.min()), float(x.max())
    if not x.is_floating_point():
        if lo < 0 or hi > 255:
            raise DataError(f"integer images must lie in 0..255, got values in [{lo:g}, {hi:g}]")
        return 255.0
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError("float images contain NaN or infinite values")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataError(f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                        "pass images in 0..255 as uint8")
    return 1.0


class Detector:
    """Base class of all methods. Subclasses set ``defaults`` and implement the hooks."""

    name: ClassVar[str] = ""
    #: Default parameter values; merged over the class hierarchy.
    defaults: ClassVar[dict[str, Any]] = {
        "seed": 0,
        "device": "auto",
        "epochs": 50,
        "batch_size": 128,
        "lr": 1e-4,
        "weight_decay": 5e-7,
        "size": None,  # int, [H, W] or None (keep small images, else default_size)
        "channels": None,  # 1, 3 or None (from the training images)
        "holdout": 0.1,
        "contamination": 0.05,
        "threshold": None,
        "score_batch_size": 64,
    }
    #: Parameters that only change how a fitted model scores, never its weights:
    #: :meth:`set_scoring_params` may change them after fit or load.
    scoring_params: ClassVar[tuple[str, ...]] = ("score_batch_size",)
    #: Parameters that only set how long training runs: a model saved before one of them
    #: existed loads without a warning (its value cannot change the trained model).
    schedule_params: ClassVar[tuple[str, ...]] = ()
    #: True while :meth:`load` builds the model: ``_build`` then skips reading pretrained
    #: weights, which the saved ones replace.
    _restoring: bool = False
    #: Relative tolerance of ``oneclass export --check`` for maps (None: the default 1e-4).
    map_parity_tol: ClassVar[float | None] = None
    #: Whether images labeled anomalous in ``fit`` are learned from (semi-supervised);
    #: the others train on the normal images alone.
    uses_anomalies: ClassVar[bool] = False
    #: Whether the pixel masks of labeled anomalies are learned from (the CLI reads the masks
    #: of ``--anomalies`` only then).
    uses_masks: ClassVar[bool] = False
    #: Whether ``fit(outliers=...)`` is used (outlier exposure).
    uses_outliers: ClassVar[bool] = False
    #: Side used for images larger than 64 pixels when ``size`` is None.
    default_size: ClassVar[int] = 128
    #: With ``keep_aspect``, larger images keep their aspect ratio at about default_size^2 pixels.
    keep_aspect: ClassVar[bool] = False

    # ------------------------------------------------------------------ parameters
    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "defaults", {}) or {})
        return copy.deepcopy(merged)  # the class's own lists stay as they are

    def __init__(self, **params: Any):
        defaults = self.all_defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(defaults))}"
            )
        for k, v in {**defaults, **params}.items():
            # stored as given (scikit-learn's clone checks identity); the defaults are fresh
            # copies (all_defaults), so a list default changed in one detector stays there
            setattr(self, k, _param_type_cast(defaults[k], v, k))
        self._validate()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, the objects themselves as in scikit-learn (whose
        ``clone`` checks that the constructor stores them unchanged); ``deep`` changes
        nothing: no parameter is an estimator."""
        return {k: getattr(self, k) for k in self.all_defaults()}

    def set_params(self, **params: Any) -> Detector:
        """Change constructor parameters before :meth:`fit`, validated as by the constructor
        (unknown names and invalid values raise ConfigError and change nothing). On a fitted
        or loaded model only the scoring parameters can change (:meth:`set_scoring_params`):
        the others describe the trained weights."""
        if hasattr(self, "model_"):
            return self.set_scoring_params(**params)
        checked = type(self)(**{**self.get_params(), **params})  # raises before any change
        for k in params:
            setattr(self, k, getattr(checked, k))
        return self

    def set_scoring_params(self, **params: Any) -> Detector:
        """Change parameters of the scoring alone (``scoring_params``, e.g. AnoGAN's
        ``search_steps``) on a fitted or loaded model, without training again.

        Other parameters raise ConfigError, as do invalid values (the old ones are then
        kept). ``threshold_`` stays the one derived at fit with the former settings; if the
        change moves the scale of the scores, derive a new one before :meth:`predict`.
        """
        fixed = sorted(set(params) - set(self.scoring_params))
        if fixed:
            raise ConfigError(f"{self.name}: {', '.join(fixed)} cannot change after training; "
                              f"the scoring parameters are {', '.join(self.scoring_params)}")
        defaults = self.all_defaults()
        old = {k: getattr(self, k) for k in params}
        new = {k: _param_type_cast(defaults[k], v, k) for k, v in params.items()}  # may raise
        for k, v in new.items():
            setattr(self, k, v)
        try:
            with _saved_params("scoring"):
                self._validate()
        except ConfigError:
            for k, v in old.items():
                setattr(self, k, v)
            raise
        self._scoring_changed()
        if getattr(self, "threshold_source_", "explicit") != "explicit" and any(
                old[k] != getattr(self, k) for k in params if k != "score_batch_size"):
            log.warning("%s: threshold_ %.6g was derived with the former scoring settings",
                        self.name, self.threshold_)
        return self

    def _scoring_changed(self) -> None:
        """Hook after :meth:`set_scoring_params`: drop anything cached from the old settings."""

    def _validate(self) -> None:
        """:meth:`_check_params`, with a value of the wrong type (``--set batch_size=null``,
        ``--set size=abc``) reported as a ConfigError naming the odd parameters."""
        try:
            self._check_params()
        except ConfigError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            odd = [f"{k}={getattr(self, k)!r}" for k, d in self.all_defaults().items()
                   if is_number(d) and not (is_number(getattr(self, k))
                                             and math.isfinite(getattr(self, k)))
                   or k == "size" and isinstance(getattr(self, k), str)]
            which = f" ({', '.join(odd)})" if odd else ""
            raise ConfigError(f"{self.name}: a parameter has a value of the wrong type{which}: "
                              f"{exc}") from None
        unsaved = []  # found now, not when save() writes model.json after the training
        for k, v in self.get_params().items():
            try:
                json.dumps(v, allow_nan=False, default=json_default)
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                unsaved.append(f"{k}={v!r} ({exc})")
        if unsaved:
            raise ConfigError(f"{self.name}: parameter(s) that model.json cannot hold: "
                              f"{'; '.join(unsaved)}; give finite numbers, strings, lists "
                              "or null")

    def _check_params(self) -> None:
        if not (0.0 <= float(self.contamination) < 1.0):
            raise ConfigError(f"contamination must be in [0, 1), got {self.contamination}")
        if not (0.0 <= float(self.holdout) < 1.0):
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.epochs is None and self.all_defaults().get("epochs", 0) is not None:
            raise ConfigError(f"{self.name}: epochs must be a number")
        if self.epochs is not None and int(self.epochs) < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        for k in ("batch_size", "score_batch_size"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        for k, v in self.get_params().items():  # every learning rate and weight decay
            if k == "lr" or k.endswith("_lr"):
                if not 0 < as_float(v) < math.inf:
                    raise ConfigError(f"{k} must be a positive number, got {v!r}")
            elif k.endswith("weight_decay") and not 0 <= as_float(v) < math.inf:
                raise ConfigError(f"{k} must be a number >= 0, got {v!r}")
        if self.threshold is not None and not np.isfinite(float(self.threshold)):
            raise ConfigError(f"threshold must be a finite number (or unset), got {self.threshold}")
        if self.size is not None:
            self._size_tuple()
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or not 0 <= int(self.seed) < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if isinstance(self.device, str) and self.device != "auto":  # spelling now; whether
            parse_device(self.device)  # this machine has it, at fit (set up for another one)
        saved = _SAVED_PARAMS.get()
        for k, d in self.all_defaults().items():  # counts: 2.5 epochs would train 2 silently
            v = getattr(self, k)
            count = isinstance(d, int) and not isinstance(d, bool) or d is None and k in _COUNTS
            if not count or v is None or saved == "scoring" and k not in self.scoring_params:
                continue  # a trained model's training parameters are its history
            if isinstance(v, bool) or isinstance(v, float) and not v.is_integer():
                if saved == "load" and k not in self.scoring_params:  # saved before this
                    log.warning("%s: %s=%r in the saved model is not a whole number (it "
                                "trained with %d)", self.name, k, v, int(v))
                    continue
                raise ConfigError(f"{k} must be a whole number, got {v!r}")
        sigma = getattr(self, "heatmap_sigma", None)
        if sigma is not None and (not is_number(sigma) or not 0 <= sigma < math.inf):
            raise ConfigError(f"heatmap_sigma must be a number >= 0 or unset (null), got {sigma!r}")

    def _size_tuple(self) -> tuple[int, int] | None:
        s = self.size
        if s is None:
            return None
        if isinstance(s, str):
            s = [int(p) for p in s.replace("x", ",").split(",")]
        if isinstance(s, int):
            s = [s, s]
        if len(s) == 1:
            s = [s[0], s[0]]
        if len(s) != 2 or min(s) < 8:
            raise ConfigError(f"size must be N or H,W with sides >= 8, got {self.size!r}")
        return int(s[0]), int(s[1])

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items()
                   if not _equal(v, self.all_defaults()[k])}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # ------------------------------------------------------------------ hooks
    def _build(self, input_shape: tuple[int, int, int]) -> nn.Module:
        """Create the (unfitted) model for inputs of shape ``(C, H, W)``."""
        raise NotImplementedError

    def _fit(self, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None,
             loop: LoopConfig) -> None:
        """Train ``self.model_`` on uint8 images ``x`` (N, C, H, W) with labels ``y``."""
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` for float images in [0, 1] on the model's device."""
        raise NotImplementedError

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``(N, H, W)`` for float images in [0, 1] on the model's device."""
        raise NotImplementedError

    def _score_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and maps of one batch (batch scoring, the service); methods whose score and
        map share a forward pass override this to run it once."""
        with torch.no_grad():
            score = self._score(x)
        return score, self._map(x)

    def export_module(self) -> nn.Module:
        """``x -> (score, anomaly_map)`` for float images in [0, 1] on the CPU, matching
        ``_score`` and ``_map`` and traceable by ``torch.export`` (for ONNX, see
        :mod:`oneclass.export`). Methods that can be exported override this."""
        raise ConfigError(f"{self.name}: not exportable to ONNX (the method defines no "
                          "export_module()); score it with oneclass predict / serve instead")

    #: JSON-able fitted attributes (names ending in ``_``) that model.json keeps as they
    #: are (without the ``_``) and ``load`` restores
    fitted_json: ClassVar[tuple[str, ...]] = ()

    def _fitted_extra(self) -> dict[str, Any]:
        """JSON-able fitted values besides the weights (saved in model.json)."""
        return {a.rstrip("_"): getattr(self, a, None) for a in self.fitted_json}

    def _load_fitted_extra(self, extra: dict[str, Any]) -> None:
        for a in self.fitted_json:
            setattr(self, a, extra.get(a.rstrip("_")))

    # ------------------------------------------------------------------ fit
    def _resolve_preprocess(self, train: ImageSet) -> Preprocess:
        channels = self.channels
        if not channels:
            colour, gray, n_colour = train.colour_survey()
            channels = 1 if colour is None else 3
            # a few colour strays make a colour model (one gray image in a colour set, as
            # natural photo sets have, is not worth a word)
            if colour is not None and len(gray) >= 2:
                strays = "colour" if len(gray) > n_colour else "gray"
                log.warning("%s: the training images mix colour and gray ones (colour: %d or "
                            "more, first %s; gray: %d or more, first %s): the model takes colour "
                            "images and repeats gray ones in three channels; if the %s images "
                            "are strays, remove them%s",
                            train.description or "training set", n_colour, train.names[colour],
                            len(gray), train.names[gray[0]], strays,
                            ", or set channels=1 for a gray model" if strays == "colour" else "")
        size = self._size_tuple()
        sizes = train.sample_sizes()  # one header read each, for both uses
        (h, w), kinds = train.typical_size(sizes=sizes)
        self.train_image_size_ = [h, w]  # predict warns of images far from it
        far, looked = train.far_sizes((h, w), sizes=sizes) if kinds > 1 else ([], 0)
        if far:  # strays (thumbnails, another camera's shots) among the training images
            i, fh, fw = far[0]
            log.warning("%s: %d of %d training images differ much in size from their median "
                        "%dx%d (first: %s, %dx%d); each is resized to the model's input, so "
                        "what it shows changes scale: do they belong with the others?",
                        train.description or "training set", len(far), looked, h, w,
                        train.names[i], fh, fw)
        if size is None:
            d = self.default_size
            if max(h, w) <= 64 and max(h, w) <= 4 * min(h, w):
                size = (h, w)
            elif max(h, w) <= 64:  # a strip (1x64, say): squeezed to 4:1 like larger images
                size = (max(h, math.ceil(w / 4)), max(w, math.ceil(h / 4)))
            elif self.keep_aspect:  # about d*d pixels, sides multiples of 16
                # Aspect ratio capped at 4: a 3x3000 strip would otherwise become a 16x7088
                # input that trains 80 times slower; beyond 4:1 images are squeezed instead.
                a = min(max(h / w, 0.25), 4.0) ** 0.5
                size = (max(16, round(d * a / 16) * 16), max(16, round(d / a / 16) * 16))
            else:
                size = (d, d)
            if kinds > 1:
                log.info("%s: the training images come in %d sizes, median %dx%d; every image "
                         "is resized to the model's input, %dx%d (height x width)",
                         train.description or "training set", kinds, h, w, *size)
        return Preprocess(size=size, channels=int(channels))

    def _split_holdout(self, train: ImageSet, val: ImageSet | None):
        if val is not None:
            normals = val.where(label=NORMAL)
            if not len(normals):
                raise DataError(f"{val.description or 'val'}: no normal images (label 0) to "
                                f"set the threshold with ({len(val)} images); pass normal "
                                "images as val, or no val to hold back training images")
            return train, val.subset(normals)
        normal = train.where(label=NORMAL)
        n_hold = int(round(len(normal) * float(self.holdout)))
        if n_hold < 2 or len(normal) - n_hold < 2:
            return train, None
        rng = np.random.default_rng(int(self.seed))
        held = np.sort(rng.choice(normal, size=n_hold, replace=False))
        keep = np.setdiff1d(np.arange(len(train)), held)
        return train.subset(keep), train.subset(held)

    def fit(self, train: ImageSet, val: ImageSet | None = None, *,
            outliers: ImageSet | None = None, loop: LoopConfig | None = None) -> Detector:
        """Train on ``train`` (labels 0 normal, 1 anomalous, -1 unlabeled).

        Args:
            train: training images; methods that cannot use labels train on normal and
                unlabeled images only.
            val: optional images whose normal ones set the threshold (instead of a holdout).
            outliers: optional outlier-exposure images (other data; methods that use outlier
                exposure treat them as anomalies, the others ignore them).
            loop: run-time options (checkpoints, resume, progress, epoch callback).
        """
        self._validate()  # attributes set directly (d.holdout = 2.0) are checked here too
        for what, images in (("train", train), ("val", val), ("outliers", outliers)):
            if images is not None and not isinstance(images, ImageSet):
                raise DataError(
                    f"{self.name}.fit: {what} must be an ImageSet, got {type(images).__name__}; "
                    "use oneclass.data.load(SPEC) or oneclass.data.ArraySet(images) with uint8 "
                    "images (N, H, W) or (N, H, W, C)")
        if len(train) == 0:
            raise DataError(f"{train.description or 'training set'}: no training images")
        for what, images in (("training", train), ("val", val)):
            odd = sorted(set(np.unique(images.labels).tolist()) - {-1, 0, 1}) \
                if images is not None else []
            if odd:  # e.g. class indices: a 2 would otherwise train as a known normal
                raise DataError(f"{images.description or what + ' set'}: labels must be 0 "
                                f"(normal), 1 (anomalous) or -1 (unlabeled), got {odd[:5]}; map "
                                "class indices or other codes to these first")
        shared = None if outliers is None else \
            "the same set" if outliers is train else _shared_files(train, outliers, "images")
        if shared:
            raise DataError(f"{self.name}.fit: the outliers hold training images ({shared}): "
                            "they would be trained as anomalies; give images of something else")
        anomalous = np.flatnonzero(train.labels == 1)
        if len(anomalous) and np.any(train.labels != 1):
            shared = _shared_files(train, train.subset(anomalous), "labeled anomalies")
            if shared:
                raise DataError(f"{self.name}.fit: labeled anomalies (label 1) are normal "
                                f"training images too ({shared}): they would be trained as both; "
                                "take them out of the normal images or the anomalies")
        if not np.any(train.labels != 1):
            raise DataError(f"{train.description or 'training set'}: no normal training images")
        loop = loop or LoopConfig()
        # A fit that fails or is interrupted leaves the detector as it was (fitted or not):
        # never new half-trained weights beside the former threshold, which save() would keep.
        before = {k: v for k, v in vars(self).items() if _fitted_attr(k)}
        try:
            with preserved_rng():  # fit seeds the global generators; the caller's come back
                self._fit_all(train, val, outliers, loop)
        except BaseException:
            for k in [k for k in vars(self) if _fitted_attr(k)]:
                delattr(self, k)
            self.__dict__.update(before)
            self._outliers = None
            raise
        return self

    def _fit_all(self, train: ImageSet, val: ImageSet | None, outliers: ImageSet | None,
                 loop: LoopConfig) -> None:
        # a LoopConfig given again (a retry, a second resume) keeps what earlier fits added;
        # this fit's history and resumed seconds are what it adds
        h0, r0 = len(loop.history), loop.resumed_seconds
        seed_everything(int(self.seed))
        self.device_ = resolve_device(self.device)
        anomalous = train.labels == 1
        normal = train.subset(np.flatnonzero(~anomalous)) if anomalous.any() else train
        if not self.uses_anomalies:  # the anomalies are not trained on: not counted either
            train = normal
        # the model's channels and size come from the normal images: a few labeled anomalies
        # in colour, or larger, are converted to fit them, not the other way round
        self.preprocess_ = self._resolve_preprocess(normal)
        fit_set, hold_set = self._split_holdout(train, val)
        t0 = time.perf_counter()
        show = show_progress(loop.progress) and is_main_process()
        x, y, masks = materialize(fit_set, self.preprocess_, progress=show,
                                  desc="loading images")
        self.input_shape_ = tuple(int(s) for s in x.shape[1:])
        self._outliers = None
        if outliers is not None and self.uses_outliers:
            self._outliers = materialize(outliers, self.preprocess_, progress=show,
                                         desc="loading outliers")[0]
        try:
            self.model_ = self._build(self.input_shape_).to(self.device_)
            self.weights_sha256_ = None  # new weights: no saved model's id is theirs
            norm = getattr(self.model_, "norm", None)
            if isinstance(norm, InputNorm):
                keep = y != 1
                norm.fit(x[keep])
            self._fit(x, y, masks, loop)
        except RuntimeError as exc:  # torch's words for an input its layers cannot shrink
            if not any(w in str(exc) for w in _TOO_SMALL):
                raise
            h, w = self.input_shape_[1:]
            raise ConfigError(
                f"{self.name}: images of {h}x{w} pixels are too small for its network "
                f"({str(exc).splitlines()[0]}); give larger images, or enlarge them with "
                f"--set size=HxW (e.g. size={max(h, 32)}x{max(w, 32)})") from None
        self._outliers = None
        self.model_.eval()
        # a resumed training counts the epochs its checkpoints hold too
        self.train_seconds_ = time.perf_counter() - t0 + loop.resumed_seconds - r0
        self.n_train_ = int(len(fit_set))
        self.history_ = list(loop.history[h0:])
        self._set_threshold(hold_set, fit_set, progress="threshold" if show else None)

    def _set_threshold(self, hold_set: ImageSet | None, fit_set: ImageSet,
                       progress: str | None = None) -> None:
        if hold_set is not None and len(hold_set):
            ref, what = hold_set, f"{len(hold_set)} held-back normal images"
            few = math.ceil(1.0 / float(self.contamination)) if float(self.contamination) > 0 \
                else 20
            if self.threshold is None and len(hold_set) < few:
                log.warning("%s: the threshold comes from only %d held-back normal images, too "
                            "few to hold false alarms near contamination %g (that needs %d or "
                            "more): expect more false alarms on new normal images (give more "
                            "training images, hold back more of them with --set holdout=F, or "
                            "pass val= to fit() in Python)", self.name,
                            len(hold_set), float(self.contamination), few)
        else:
            # Read again as predict reads them: the training tensors hold the resized images
            # rounded to uint8, which moves some methods' scores by several percent (a
            # threshold from them flagged the very training images it was set on).
            ref = fit_set.subset(np.flatnonzero(fit_set.labels != 1))
            what = f"{len(ref)} training images (too few to hold back)"
            if not bool((fit_set.labels == 0).any()):  # semi-supervised sets: unlabeled, maybe polluted
                what = (f"{len(ref)} unlabeled training images (none is labeled normal to hold "
                        "back)")
                if self.threshold is None:
                    log.info("%s: no training image is labeled normal; the threshold comes from "
                             "the unlabeled training images, which may hold anomalies; pass "
                             "val= (or set threshold) for a threshold from known normals",
                             self.name)
            elif self.threshold is None and float(self.holdout) > 0:
                log.warning("%s: too few normal images to hold back %g of them; the threshold "
                            "comes from the training images, which tend to score lower than "
                            "new normal images, so expect more false alarms (give more "
                            "images, or pass val= to fit() in Python)", self.name, float(self.holdout))
        # The colour scale of heatmap overlays: from the median to the maximum of the maps
        # of normal images, so normal regions look cold and anomalies saturate.
        few = ref.subset(np.arange(min(len(ref), 64)))
        maps = self.anomaly_map(few)
        scores = self.score(ref, progress=progress)  # read again: it can take a while
        for name, v in (("scores", scores), ("heatmaps", maps)):
            if not np.isfinite(v).all():
                raise TrainingError(
                    f"{self.name}: {int(np.size(v) - np.isfinite(v).sum())} of {np.size(v)} "
                    f"values of the {name} of {what} are not finite (NaN or inf): the trained "
                    f"model is unusable; train again with a lower learning rate or another seed")
        self.map_scale_ = [float(np.median(maps)), float(maps.max())]
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
            self.threshold_source_ = "explicit"
            if len(scores) and self.threshold_ <= float(scores.min()):
                log.warning("%s: threshold %.6g is at or below the score of every normal "
                            "reference image (lowest %.6g): every image will be predicted "
                            "anomalous", self.name, self.threshold_, float(scores.min()))
            return
        self.threshold_ = holdout_threshold(scores, float(self.contamination))
        k = int(np.sum(self.flags(scores)))
        self.threshold_source_ = (f"flags {k} of {what}, at most contamination "
                                  f"{float(self.contamination):g}")

    # ------------------------------------------------------------------ inference
    def _check_fitted(self, doing: str = "scoring") -> None:
        if not hasattr(self, "model_"):
            raise ConfigError(f"{self.name}: call fit() or load() before {doing}")

    def batches(self, x, batch_size: int | None = None,
                progress: str | None = None) -> Iterator[torch.Tensor]:
        """Float batches on the model's device from an ImageSet, tensor or array.

        Tensors and arrays must be ``(N, C, H, W)`` in [0, 1] (float) or 0..255 (uint8) with
        the model's channels and size. ``progress``: the label of a progress bar over an
        ImageSet (None: no bar).
        """
        self._check_fitted()
        bs = int(batch_size or self.score_batch_size)
        if isinstance(x, ImageSet):
            from tqdm.auto import tqdm

            dl = torch.utils.data.DataLoader(Prepared(x, self.preprocess_), batch_size=bs,
                                             collate_fn=collate)
            with tqdm(total=len(x), desc=progress, disable=progress is None, leave=False) as bar:
                for xb, *_ in dl:
                    yield xb.to(self.device_)
                    bar.update(len(xb))
            return
        if isinstance(x, np.ndarray):
            if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer)
                                       or np.issubdtype(x.dtype, np.floating)):
                raise DataError(f"cannot score an array of dtype {x.dtype}: images are uint8 "
                                "(0..255) or float (0..1)")
            if not x.dtype.isnative:  # big-endian data: torch reads native byte order only
                x = x.astype(x.dtype.newbyteorder("="))
            if x.dtype.kind == "f" and x.dtype.itemsize > 8:  # long double: torch has none
                x = x.astype(np.float64)
            if x.dtype.kind == "u" and x.dtype.itemsize > 1:  # uint16..64: torch lacks (or,
                hi = int(x.max()) if x.size else 0  # before 2.3, has no) min/max for them
                if hi > 255:
                    raise DataError(f"integer images must lie in 0..255, got values in "
                                    f"[{int(x.min())}, {hi}]")
                x = x.astype(np.uint8)
            x = torch.from_numpy(np.ascontiguousarray(x))  # flipped views have negative strides
        if not isinstance(x, torch.Tensor):
            raise DataError(f"cannot score an object of type {type(x).__name__}")
        x = x.detach()
        if x.dtype in _WIDE_UNSIGNED:  # min/max lack these types
            x = x.to(torch.int64)
        divisor = _image_divisor(x)
        if x.ndim == 3:  # one (C, H, W) image or N gray (H, W) ones: not guessed
            raise DataError(
                f"input of shape {tuple(x.shape)}: arrays are (N, C, H, W), the model's "
                f"(N, {', '.join(map(str, self.input_shape_))}); one image is x[None], N gray "
                "images (N, H, W) are x[:, None]; or pass an ImageSet")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape_):
            raise DataError(
                f"input of shape {tuple(x.shape)} does not match the model's input "
                f"(N, {', '.join(map(str, self.input_shape_))}); pass an ImageSet to resize "
                "and convert channels automatically"
            )
        for xb in torch.split(x, bs):
            xb = xb.float() / divisor if divisor != 1.0 else xb.float()
            yield xb.to(self.device_)

    def score(self, x, progress: str | None = None) -> np.ndarray:
        """Anomaly scores ``(N,)``, higher = more anomalous (``progress``: see :meth:`batches`)."""
        self._check_fitted()
        self.model_.eval()
        out = []
        with torch.no_grad():
            for xb in self.batches(x, progress=progress):
                out.append(self._score(xb).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def anomaly_map(self, x, progress: str | None = None) -> np.ndarray:
        """Anomaly maps ``(N, H, W)`` at the model's input resolution."""
        self._check_fitted()
        self.model_.eval()
        out = [self._map(xb).detach().float().cpu() for xb in self.batches(x, progress=progress)]
        return torch.cat(out).numpy() if out else np.zeros((0, *self.input_shape_[1:]), np.float32)

    def report_figures(self, x) -> dict[str, np.ndarray]:
        """Optional pictures for the HTML report: name -> uint8 image (H, W[, C]).

        ``x`` is a few test images (anything :meth:`batches` accepts). Methods with a
        generator show samples and reconstructions here; the default shows nothing.
        """
        return {}

    def flags(self, scores) -> np.ndarray:
        """True where a score is at or above ``threshold_``.

        Compared in float64: float32 scores against the Python float ``threshold_`` would
        round the threshold to float32 first (NumPy 2), so a score just below an explicit
        threshold such as 113.653 would count as at or above it.
        """
        return np.asarray(scores, dtype=np.float64) >= float(self.threshold_)

    def predict(self, x) -> np.ndarray:
        """1 where the score is at or above ``threshold_``, else 0."""
        return self.flags(self.score(x)).astype(np.int64)

    # ------------------------------------------------------------------ persistence
    def describe(self) -> dict[str, Any]:
        """The JSON description saved next to the weights."""
        self._check_fitted("saving or describing it")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "oneclass_version": __version__,
            "method": self.name,
            "params": self.get_params(),
            "preprocess": self.preprocess_.to_json(),
            "input_shape": list(self.input_shape_),
            "fitted": {
                "threshold": self.threshold_,
                "threshold_source": self.threshold_source_,
                "map_scale": getattr(self, "map_scale_", None),
                "n_train": getattr(self, "n_train_", None),
                "train_seconds": round(getattr(self, "train_seconds_", 0.0), 3),
                "train_image_size": getattr(self, "train_image_size_", None),
                **self._fitted_extra(),
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write ``model.json`` and ``weights.safetensors`` to the directory ``path``.

        The directory is built beside the target and renamed into place, so an interrupted
        save never leaves a half-written model. It replaces the whole directory: a directory
        that holds other files (or a file at ``path``) is refused, not deleted.
        """
        from safetensors.torch import save_file

        from .registry import get

        path = Path(os.path.abspath(path))  # "." has no name to build a sibling from
        try:
            registered = get(self.name)
        except ConfigError:
            registered = None
        if registered is not type(self):  # load() would rebuild another class, silently
            raise ConfigError(
                f"{type(self).__name__}: saved models are rebuilt by their method name, and "
                f"{self.name!r} names {getattr(registered, '__name__', 'no method')}; register "
                "this class under a name of its own (@oneclass.registry.register('NAME')) "
                "to save it")
        check_save_target(path)
        desc = self.describe()
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}

        digests = []

        def fill(tmp: Path) -> None:
            save_file(state, str(tmp / "weights.safetensors"))
            digests.append(hashlib.sha256((tmp / "weights.safetensors").read_bytes()).hexdigest())
            write_json(tmp / "model.json", {**desc, "weights_sha256": digests[-1]})

        out = atomic_dir(path, fill)
        self.weights_sha256_ = digests[-1]
        return out

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """Rebuild a saved model (see :func:`oneclass.load`)."""
        from safetensors.torch import load as safetensors_load

        from .registry import get

        path, meta_path, meta, raw = read_saved(path)
        try:
            klass = get(str(meta.get("method")))
        except ConfigError as exc:
            raise ModelFileError(f"{meta_path}: {exc}") from None
        if cls is not Detector and not issubclass(klass, cls):
            raise ModelFileError(f"{path}: holds a {meta['method']} model, not {cls.name}")
        check_description(meta, meta_path, klass.all_defaults())
        wpath = path / "weights.safetensors"
        check_weights(meta, meta_path, raw, wpath)
        device_ = resolve_device(device)
        defaults = klass.all_defaults()
        params = meta.get("params")
        unknown = sorted(set(params) - set(defaults)) if isinstance(params, dict) else []
        if unknown and meta.get("oneclass_version") != __version__:
            raise ModelFileError(
                f"{meta_path}: parameter(s) {', '.join(unknown)} unknown to this oneclass "
                f"({__version__}); the model was written by oneclass "
                f"{meta.get('oneclass_version')}: load it with that version, or retrain")
        missing = sorted(set(defaults) - set(params or {}) - {"device", *klass.schedule_params})
        if missing:  # a model saved before a parameter existed, or an edited description
            log.warning("%s: no saved value for %s; using the current default(s)", meta_path,
                        ", ".join(f"{k}={defaults[k]!r}" for k in missing))
        try:  # a damaged or hand-edited description: one clear error, not a KeyError
            with _saved_params("load"):
                det = klass(**{**dict(meta["params"]), "device": device})
            det.device_ = device_
            det.preprocess_ = Preprocess.from_json(meta["preprocess"])
            det.input_shape_ = tuple(int(v) for v in meta["input_shape"])
            c, h, w = det.input_shape_
            if c not in (1, 3) or not (1 <= h <= 16384 and 1 <= w <= 16384):
                raise ValueError(f"input_shape {list(det.input_shape_)} is not a (C, H, W) image shape")
            pre = det.preprocess_
            if pre.channels != c or pre.size is not None and tuple(pre.size) != (h, w):
                raise ValueError(f"preprocess (channels {pre.channels}, size {pre.size}) does not "
                                 f"match input_shape {list(det.input_shape_)}")
            fitted = meta["fitted"]
            det.threshold_ = float(fitted["threshold"])
            if not math.isfinite(det.threshold_):
                raise ValueError(f"threshold {fitted['threshold']} is not a finite number")
            det.threshold_source_ = fitted["threshold_source"]
            det.n_train_ = fitted.get("n_train")
            det.map_scale_ = fitted.get("map_scale")
            scale = det.map_scale_
            if scale is not None and not (isinstance(scale, list) and len(scale) == 2 and all(
                    is_number(v) and math.isfinite(v) for v in scale)):
                raise ValueError(f"map_scale must be two finite numbers, got {scale!r}")
            det.train_seconds_ = fitted.get("train_seconds", 0.0)
            size = fitted.get("train_image_size")  # the training images' median (h, w)
            det.train_image_size_ = [int(v) for v in size] if isinstance(size, list) and \
                len(size) == 2 and all(is_number(v) and v >= 1 for v in size) else None
            det._load_fitted_extra(fitted)
        except DESCRIPTION_ERRORS as exc:
            raise damaged(meta_path, exc) from None
        try:  # the bytes checked above, not the file again: a save may have replaced it since
            state = safetensors_load(raw)
        except Exception as exc:  # safetensors raises its own error types
            why = " ".join(str(exc).split())
            raise ModelFileError(f"{wpath}: cannot load weights ({why[:600]})") from None
        det._restoring = True  # the saved weights replace every pretrained one: not read
        try:  # first on the meta device: the sizes the description asks for cost no memory
            with torch.device("meta"):  # until the weights are known to fit them
                misfit = fit_weights(det._build(det.input_shape_), state)
            if misfit:
                raise ModelFileError(f"{wpath}: cannot load weights: they do not fit the "
                                     f"network model.json describes ({misfit[:600]})")
            det.model_ = det._build(det.input_shape_)
        except DESCRIPTION_ERRORS as exc:
            raise damaged(meta_path, exc) from None
        finally:
            det._restoring = False
        det.weights_sha256_ = meta["weights_sha256"]
        try:
            det.model_.load_state_dict(state, strict=True)
        except Exception as exc:  # e.g. a tensor whose dtype cannot be copied in
            # torch's first line is only a header ("Error(s) in loading state_dict for X:"):
            # the lines after it name the tensors
            why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise ModelFileError(f"{wpath}: cannot load weights ({why[:600]})") from None
        det.model_.to(det.device_).eval()
        return det
