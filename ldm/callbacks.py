"""Lightning callbacks and plugins used by every training script."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ldm.checkpoints import atomic_torch_save
from ldm.config import save_config
from ldm.errors import UserError

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place: a crash mid-write never
    leaves a truncated checkpoint, and the previous good one survives."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        atomic_torch_save(checkpoint, path)


class SaveConfig(pl.Callback):
    """Saves the resolved config beside the checkpoints (``config.yaml``) and inside each checkpoint."""

    def __init__(self, cfg: DictConfig, directory: str | Path):
        self.cfg = cfg
        self.directory = Path(directory)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            save_config(self.cfg, self.directory / "config.yaml")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldm_config"] = OmegaConf.to_yaml(self.cfg, resolve=True)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class StopOnNonFiniteLoss(pl.Callback):
    """Stops training at the first NaN/inf loss, naming the step; no checkpoint of that state is written
    (this callback runs before the checkpoint callback), so the last good checkpoint is kept."""

    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # manual optimisation (the VAE): look at what the step logged
            losses = [v for k, v in trainer.callback_metrics.items() if k.startswith("train")]
            bad = [v for v in losses if isinstance(v, torch.Tensor) and not torch.isfinite(v).all()]
            loss = bad[0] if bad else None
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            last = sorted(self.checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {trainer.global_step}; {kept}. Lower the learning rate or "
                "check the data, then resume with --resume"
            )


class LogLearningRate(pl.Callback):
    """Logs the effective learning rate and how it was scaled, once at the start."""

    def __init__(self, message: str):
        self.message = message

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            logger.info(self.message)


def is_finite(value: float) -> bool:
    return math.isfinite(value)
