"""Lightning callbacks and plugins used by every training script."""

from __future__ import annotations

import logging
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
    """Stops training at the first NaN/inf loss, naming the step.

    It looks at every loss just before its backward pass (automatic and manual optimisation alike), so the
    bad gradients are never applied and no checkpoint of a diverged state is written: the last good one is
    kept. Under DDP the ranks agree on the decision, so one rank's bad batch stops them all together.
    """

    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        values = loss.detach().float().flatten()
        finite = bool(torch.isfinite(values).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        saved = sorted(self.checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", p.stat().st_mtime))
        kept = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint had been written yet"
        value = values[~torch.isfinite(values)][0].item() if not finite else "non-finite on another rank"
        raise TrainingDiverged(
            f"loss became {value} at training step {trainer.global_step}; {kept}. Lower the learning rate or "
            "check the data, then resume with --resume"
        )


class LogLearningRate(pl.Callback):
    """Logs the effective learning rate and how it was scaled, once at the start."""

    def __init__(self, message: str):
        self.message = message

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            logger.info(self.message)
