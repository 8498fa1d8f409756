"""Every stage function in one namespace, for library callers and notebooks.

Each lives in its own module under `pipeline.runs` (a stage script imports only its own, so its dvc.yaml deps
stay exact); this module imports them all.
"""

from pipeline.runs.clean import run_clean
from pipeline.runs.detect import run_detect
from pipeline.runs.embed import _stored_images, run_embed
from pipeline.runs.evaluate import run_evaluate
from pipeline.runs.ingest import require_two_classes, run_ingest
from pipeline.runs.noise import run_noise
from pipeline.runs.retrain import RETRAIN_WARN_SHARE, run_retrain
from pipeline.runs.train import (
    SIMILARITY_SEED,
    decode_splits,
    load_estimate,
    load_training_data,
    run_train,
    train_method,
)
from pipeline.runs.weights import run_weights

__all__ = [
    "RETRAIN_WARN_SHARE",
    "SIMILARITY_SEED",
    "_stored_images",
    "decode_splits",
    "load_estimate",
    "load_training_data",
    "require_two_classes",
    "run_clean",
    "run_detect",
    "run_embed",
    "run_evaluate",
    "run_ingest",
    "run_noise",
    "run_retrain",
    "run_train",
    "run_weights",
    "train_method",
]
