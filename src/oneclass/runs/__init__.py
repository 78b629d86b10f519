"""A run directory: what `oneclass train` writes and `eval` / `predict` / `report` read.

    RUN/config.json        method, data spec, data root and the effective parameters
    RUN/train_log.jsonl    one JSON line per epoch (losses, seconds) of the saved model
    RUN/checkpoints/       while training: per-phase checkpoints, the configuration and the
                           log so far (moved beside the model, or removed, when it finishes)
    RUN/model/             the saved model (model.json + weights.safetensors)
    RUN/metrics.json       written by `oneclass eval`
    RUN/scores.csv         per-image test scores written by `oneclass eval`
    RUN/report.html        written by `oneclass report`

The package is split by command: `inputs` (the images a run trains and is tested on),
`training`, `evaluation`, `prediction` and `reporting`, over `layout` (the run folder
itself). The names below are its public interface.
"""

from .evaluation import check_threshold, evaluate, format_metrics, image_notes, maps_and_masks
from .inputs import anomalies_missing, anomaly_images, pick_anomalies, test_set, training_data
from .layout import DERIVED, RUN_RECORD, load_model, model_dir, read_config
from .prediction import HEATMAP_SIZES, PREDICTION_COLUMNS, predict
from .reporting import report
from .training import RunLock, train

__all__ = ["DERIVED", "HEATMAP_SIZES", "PREDICTION_COLUMNS", "RUN_RECORD", "RunLock",
           "anomalies_missing", "anomaly_images", "check_threshold", "evaluate",
           "format_metrics", "image_notes", "load_model", "maps_and_masks", "model_dir",
           "pick_anomalies", "predict", "read_config", "report", "test_set", "train",
           "training_data"]
