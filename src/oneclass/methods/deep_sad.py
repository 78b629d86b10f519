"""Deep SAD: Ruff et al., "Deep Semi-Supervised Anomaly Detection", ICLR 2020.

Deep SVDD's bias-free network phi and centre c, trained on unlabeled samples and a few
labeled ones (Eq. 4 of the paper, without weight decay):

    mean over n unlabeled:  ||phi(x) - c||^2
    mean over m labeled:    eta * (||phi(x) - c||^2 + eps)^(y),  y = +1 normal, -1 anomaly

so labeled anomalies are pushed away from c (the inverse distance is minimised). Both sums
are averaged over the batch together, as in the reference implementation.

Training labels of an ImageSet map to y as: 0 (normal) -> +1 known normal, 1 (anomalous)
-> -1 known anomaly, -1 (unlabeled) -> unlabeled. With ``eta = 1`` a known normal costs what
an unlabeled sample costs (plus eps), so with no labeled anomalies Deep SAD is Deep SVDD.

Score: ||phi(x) - c||^2. Map: smoothed absolute input gradient of the score. phi is
initialised by autoencoder pretraining and c is the mean embedding of the non-anomalous
training images (labeled anomalies are kept out of both unless ``init_with_anomalies``).
"""

from __future__ import annotations

import torch

from ..data.base import ANOMALOUS, UNLABELED
from ..errors import ConfigError
from ..registry import register
from ..train import LoopConfig, run
from .deep_svdd import DeepSVDD, _SVDDTask


def semi_targets(labels: torch.Tensor) -> torch.Tensor:
    """ImageSet labels (0 normal, 1 anomalous, -1 unlabeled) -> Deep SAD's y (+1, -1, 0)."""
    y = torch.ones_like(labels)
    y[labels == ANOMALOUS] = -1
    y[labels == UNLABELED] = 0
    return y


def deep_sad_loss(dist: torch.Tensor, y: torch.Tensor, eta: float, eps: float) -> torch.Tensor:
    """Per-sample Deep SAD loss: ``dist`` if unlabeled (y = 0), else eta * (dist + eps)^y."""
    labeled = eta * (dist + eps) ** y.to(dist.dtype)
    return torch.where(y == 0, dist, labeled)


class _SADTask(_SVDDTask):
    def loss(self, batch):
        x, y = batch
        dist = self.dist(x)
        per = deep_sad_loss(dist, y.to(dist.device), float(self.det.eta), float(self.det.eps))
        return dist, per.mean()


@register("deep_sad")
class DeepSAD(DeepSVDD):
    """Deep SAD: Deep SVDD with labeled normals and anomalies (see module docstring)."""

    uses_anomalies = True

    fitted_json = ("n_labeled_anomalies_", "n_labeled_normals_")

    defaults = {
        "eta": 1.0,  # weight of the labeled samples
        "eps": 1e-6,  # keeps the inverse distance of labeled anomalies finite
        # autoencoder pretraining and the centre c also see the labeled anomalies (the
        # reference code's trainers read every training image); default: they are kept out
        "init_with_anomalies": False,
    }

    def _check_params(self) -> None:
        super()._check_params()
        if self.objective != "one-class":
            raise ConfigError(f"deep_sad: objective must be 'one-class', got {self.objective!r} "
                              "(the soft-boundary objective is Deep SVDD only)")
        if float(self.eta) <= 0:
            raise ConfigError(f"eta must be positive, got {self.eta}")
        if float(self.eps) <= 0:
            raise ConfigError(f"eps must be positive, got {self.eps}")

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        self._pretrain_and_centre(x if self.init_with_anomalies else x[y != ANOMALOUS], loop)
        self.n_labeled_anomalies_ = int((y == ANOMALOUS).sum())
        self.n_labeled_normals_ = int((y == 0).sum())
        task = _SADTask(self, self.model_)
        run(task, [x, semi_targets(y)], epochs=int(self.epochs), batch_size=int(self.batch_size),
            seed=int(self.seed), phase="train", loop=loop)

