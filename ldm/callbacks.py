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

from ldm.fileio import atomic_torch_save
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



class ExactResume(pl.Callback):
    """Restores a checkpoint written at the end of a training batch as the state after that batch, on every
    Lightning release.

    ModelCheckpoint writes in ``on_train_batch_end``, before the loop marks the batch completed and before it
    increments the loggers' step count (``_batches_that_stepped``). Lightning 2.5 and later recognise such a
    checkpoint when they restore it and add the missing batch; Lightning 2.4 does not, so a run resumed at
    step k would log step k's loss at step k - 1, count micro-batches one short (with gradient accumulation
    its windows would start one batch early) and pick other batches for ``log_every_n_steps``. This callback
    completes the batch in the loaded checkpoint before the loops read it; both lines of releases then take it
    as a checkpoint written after the batch, which needs no correction.

    The loggers' count is set to ``global_step``: with one optimiser under automatic optimisation, as every
    module here has, the two are equal throughout an uninterrupted run.
    """

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        if fit_loop is None:
            return
        progress = fit_loop["epoch_loop.batch_progress"]
        total = progress["total"]
        if not (total["ready"] == total["started"] == total["processed"] == total["completed"] + 1):
            return  # written elsewhere than at the end of a training batch: nothing is missing
        for counts in (progress["total"], progress["current"]):
            counts["completed"] = counts["processed"]
        if pl_module.automatic_optimization and len(checkpoint.get("optimizer_states", [])) == 1:
            fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] = checkpoint["global_step"]


class EMA(pl.Callback):
    """An exponential moving average of the trained weights (``train.ema_decay``; off in the released configs).

    After every optimiser step ``ema = d * ema + (1 - d) * weights`` for each trained parameter, with
    d = min(decay, (1 + n) / (10 + n)) after n updates, so that early averages are not dominated by the
    random initialisation. Each checkpoint keeps the raw weights in ``state_dict`` (a resumed run continues
    from them, and restores the average bit for bit) and the averaged model in ``ema_state_dict``, which
    :func:`ldm.checkpoints.load_state_dict` reads for sampling, evaluation and export.
    """

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise UserError(f"train.ema_decay must lie in (0, 1), got {decay}; use e.g. 0.999, or null for no average")
        self.decay = decay
        self.updates = 0
        self.last_step = -1
        self.shadow: Optional[dict[str, torch.Tensor]] = None

    @staticmethod
    def trained(pl_module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.last_step:
            return  # a micro-batch of gradient accumulation: no optimiser step yet
        self.last_step = trainer.global_step
        params = self.trained(pl_module)
        if self.shadow is None:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for n, p in params.items():
                self.shadow[n].lerp_(p.detach(), 1.0 - decay)
        self.updates += 1

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.shadow is None:
            return
        averaged = dict(checkpoint["state_dict"])
        averaged.update({n: v.detach().clone() for n, v in self.shadow.items()})
        checkpoint["ema_state_dict"] = averaged
        checkpoint["ema_updates"] = self.updates

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "ema_state_dict" not in checkpoint:
            return
        ema = checkpoint["ema_state_dict"]
        device = pl_module.device
        self.shadow = {n: ema[n].to(device) for n in self.trained(pl_module)}
        self.updates = int(checkpoint.get("ema_updates", 0))
        self.last_step = int(checkpoint.get("global_step", -1))


class SaveFinalState(pl.Callback):
    """Writes ``last.ckpt`` at the end of a finished run unless a checkpoint of the final step exists.

    Lightning 2.4 rewrites ``last.ckpt`` at the end of the epoch (here the whole run is one epoch), 2.5 and
    later only when a periodic checkpoint is written at that step; without this, a run whose length is not a
    multiple of ``train.checkpoint_every_n_steps`` would end with a ``last.ckpt`` some steps short on newer
    releases. The file is written through the trainer, so it resumes like any other.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._saved_step: Optional[int] = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path)


LR_SCHEDULES = ("constant", "cosine")


class LearningRateSchedule(pl.Callback):
    """Sets every optimiser's learning rate before each step as a pure function of ``global_step``:
    ``peak x warm-up x shape``, where warm-up rises linearly over ``warmup_steps`` and the shape is 1
    (``constant``) or a cosine from 1 down to ``min_ratio`` at ``max_steps`` (``cosine``). The peak is each
    parameter group's configured learning rate, kept in the group as ``peak_lr`` (saved with the optimiser), so
    a resumed run continues the schedule exactly."""

    def __init__(self, kind: str, max_steps: int, warmup_steps: int = 0, min_ratio: float = 0.1):
        if kind not in LR_SCHEDULES:
            raise UserError(f"train.lr_schedule {kind!r} is not one of {list(LR_SCHEDULES)}")
        if warmup_steps < 0 or not 0.0 <= min_ratio <= 1.0:
            raise UserError(f"need train.warmup_steps >= 0 and 0 <= train.lr_min_ratio <= 1, got {warmup_steps} and {min_ratio}")
        if kind == "cosine" and max_steps <= warmup_steps:
            raise UserError(f"the cosine schedule needs train.max_steps ({max_steps}) above train.warmup_steps ({warmup_steps})")
        self.kind, self.max_steps, self.warmup_steps, self.min_ratio = kind, max_steps, warmup_steps, min_ratio

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "constant":
            return warm
        progress = min(max(step - self.warmup_steps, 0) / (self.max_steps - self.warmup_steps), 1.0)
        return warm * (self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        factor = self.factor(trainer.global_step)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("peak_lr", group["lr"])
                group["lr"] = group["peak_lr"] * factor
