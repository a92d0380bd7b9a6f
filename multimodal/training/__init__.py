"""Training: the loop every worker runs (``loop.py``) and its parts; see ``docs/training.md``.

``train_loop_per_worker`` is what Ray Train runs (``multimodal/launch.py``);
``local.train_local`` runs the same loop in one plain process on local shards.
"""

from multimodal.training.loop import Trainer, run_training, train_loop_per_worker
from multimodal.training.position import TRAIN, TRAIN_RESUME, VAL
from multimodal.training.schedule import lr_factor

__all__ = ["train_loop_per_worker", "run_training", "Trainer", "lr_factor", "TRAIN", "TRAIN_RESUME", "VAL"]
