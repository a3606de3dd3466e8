"""The training loop as hooks (normal, vanilla AT, VAFT), at the root where the paper's code release has it.

The code lives in :mod:`training.trainer`; this module hands its names on unchanged.
"""

from training.trainer import (BEST, CHECKPOINT_FORMAT, LATEST, METRICS_FILE, TRAINERS, AdversarialTrainer,  # noqa: F401
                              Trainer, TrainerConfig, TrainingResult, VAFTTrainer, read_metrics_rows)
