"""oneclass: deep one-class image anomaly detection with explainable heatmaps.

>>> import oneclass
>>> det = oneclass.create("deep_svdd", epochs=5)          # doctest: +SKIP
>>> det.fit(oneclass.data.load("mnist:3", split="train"))  # doctest: +SKIP
>>> det.score(images)                                      # higher = more anomalous
"""

__version__ = "0.1.0"

from .detector import Detector, Output  # noqa: E402
from .errors import OneclassError  # noqa: E402
from .registry import available, create, register  # noqa: E402


def load(path, device: str = "auto") -> Detector:
    """Load a model saved with ``Detector.save`` (weights + JSON, no pickle)."""
    return Detector.load(path, device=device)


__all__ = ["Detector", "Output", "OneclassError", "available", "create", "load", "register",
           "__version__"]
