"""The training driver shared by ``train_vae.py``, ``train_ldm.py`` and ``train_diffuser.py``.

It builds the model and data from a validated config, scales the learning rate as released
(base x batch x devices x nodes x accumulation), and runs a Lightning ``Trainer`` with atomic checkpoints,
the resolved config saved beside them, a NaN guard, and a data order that is a pure function of
(seed, step, rank) so that a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from ldm import seeding
from ldm.callbacks import EMA, AtomicCheckpointIO, LearningRateSchedule, ExactResume, LogLearningRate, SaveConfig, SaveFinalState, StopOnNonFiniteLoss
from ldm.checkpoints import load_state_dict
from ldm.config import instantiate, train_settings
from ldm.errors import ConfigError, UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchOptions:
    """What the command line adds to the config: where and how to run."""

    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    max_steps: Optional[int] = None
    resume: Optional[str] = None
    run_dir: Optional[str] = None


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for optimisation steps ``start_batch, start_batch + 1, ...``.

    Each pass over the data is a permutation drawn from (seed, pass number); rank r of W takes every W-th
    index of the global batch, so W processes with batch b see the same samples as one process with batch
    W*b. Resuming only needs ``start_batch``.

    Its length is ``total_batches`` however far it starts: Lightning treats the whole run as one epoch and,
    when it restarts mid-epoch, counts the batches already done as fetched (``fetched += ready``) and ends
    the epoch once ``fetched == len(loader)``. A length of ``total_batches - start_batch`` would end the
    resumed epoch early, and the next epoch would replay batches from ``start_batch``.
    """

    def __init__(self, num_samples: int, batch_size: int, total_batches: int, seed: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        if num_samples < batch_size * world_size:
            raise UserError(
                f"the dataset has {num_samples} samples, fewer than one global batch ({batch_size} x {world_size}); "
                "lower train.batch_size or add data"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.total_batches, self.start_batch = total_batches, start_batch
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.batches_per_pass = num_samples // self.global_batch

    def __len__(self) -> int:
        return self.total_batches

    def _permutation(self, pass_index: int) -> torch.Tensor:
        generator = seeding.generator(self.seed, "data-pass", pass_index)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        cached_pass, perm = -1, None
        for step in range(self.start_batch, self.total_batches):
            pass_index, within = divmod(step, self.batches_per_pass)
            if pass_index != cached_pass:
                cached_pass, perm = pass_index, self._permutation(pass_index)
            chunk = perm[within * self.global_batch:(within + 1) * self.global_batch]
            yield chunk[self.rank::self.world_size].tolist()


class DataModule(pl.LightningDataModule):
    """Builds loaders once the trainer knows its rank, world size and (restored) global step."""

    def __init__(self, train_set: Dataset, val_set: Optional[Dataset], batch_size: int, num_workers: int, seed: int, total_steps: int, accumulate: int):
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.total_steps, self.accumulate = total_steps, accumulate

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step * self.accumulate if trainer is not None else 0
        sampler = StepBatchSampler(
            len(self.train_set), self.batch_size, self.total_steps * self.accumulate, self.seed, start,
            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
        )
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers, persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []  # type: ignore[return-value]
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def world_size_of(devices: str, num_nodes: int) -> int:
    """How many processes ``devices`` means (for learning-rate scaling), without starting them."""
    if devices in ("auto", "-1"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 1
    elif "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            n = int(devices)
        except ValueError:
            raise UserError(f"--devices {devices!r} is not a number, a comma list of GPU ids, or 'auto'") from None
    return max(n, 1) * num_nodes


def effective_learning_rate(cfg: DictConfig, world: int) -> tuple[float, str]:
    s = train_settings(cfg)
    if not s.scale_lr:
        return s.base_learning_rate, f"learning rate {s.base_learning_rate:.3g} (not scaled)"
    lr = s.base_learning_rate * s.batch_size * world * s.accumulate_grad_batches
    return lr, (
        f"learning rate {lr:.3g} = {s.base_learning_rate:.3g} (base) x {s.batch_size} (batch) x {world} "
        f"(devices x nodes) x {s.accumulate_grad_batches} (accumulation)"
    )


def resolve_resume(resume: Optional[str], checkpoint_dir: Path) -> Optional[Path]:
    """``--resume last`` -> ``<run>/checkpoints/last.ckpt``; a path must exist and be readable."""
    if resume is None:
        return None
    path = checkpoint_dir / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise UserError(f"cannot resume: {path} does not exist; pass a checkpoint path or 'last' with --resume")
    load_state_dict(path)  # fails clearly on a truncated/corrupt file before anything starts
    return path


def train(cfg: DictConfig, name: str, launch: LaunchOptions) -> Path:
    """Train the model of ``cfg``; returns the checkpoint directory."""
    settings = train_settings(cfg)
    if launch.max_steps is not None:
        settings.max_steps = launch.max_steps
    if "data" not in cfg or "train" not in cfg.data:
        raise ConfigError("the config has no data.train node; training needs a dataset")
    keep = settings.keep_checkpoints
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigError(f"train.keep_checkpoints = {keep!r}; use a whole number >= 1, or null to keep every step checkpoint")
    run_dir = Path(launch.run_dir or Path(settings.run_dir) / name)
    checkpoint_dir = run_dir / "checkpoints"
    resume = resolve_resume(launch.resume, checkpoint_dir)

    pl.seed_everything(settings.seed, workers=True, verbose=False)
    world = world_size_of(launch.devices, launch.num_nodes)
    lr, lr_message = effective_learning_rate(cfg, world)

    train_set = instantiate(cfg.data.train)
    val_set = instantiate(cfg.data.validation) if "validation" in cfg.data else None
    model = instantiate(cfg.model, learning_rate=lr)
    if settings.cache_latents:
        train_set = cached_training_set(train_set, model)
    if settings.fused_optimizer:
        use_fused_optimizer(model)

    if settings.max_steps is None or settings.max_steps < 0:
        if settings.max_epochs is None:
            raise ConfigError("set train.max_steps (or train.max_epochs, or --max-steps) so training ends")
        per_epoch = math.ceil(len(train_set) / (settings.batch_size * world * settings.accumulate_grad_batches))
        settings.max_steps = settings.max_epochs * per_epoch
    data = DataModule(train_set, val_set, settings.batch_size, settings.num_workers, settings.seed, settings.max_steps, settings.accumulate_grad_batches)

    if settings.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        experiment_logger = TensorBoardLogger(str(run_dir), name="logs", version="")
    elif settings.logger == "csv":
        from pytorch_lightning.loggers import CSVLogger

        # one folder per launch (logs/version_N): a resumed run would otherwise delete the earlier metrics.csv
        experiment_logger = CSVLogger(str(run_dir), name="logs")
    else:
        raise ConfigError(f"train.logger = {settings.logger!r}; use 'tensorboard' or 'csv'")

    from pytorch_lightning.callbacks import ModelCheckpoint

    callbacks = [
        StopOnNonFiniteLoss(checkpoint_dir),
        SaveConfig(cfg, checkpoint_dir),
        LogLearningRate(lr_message),
        ExactResume(),
        SaveFinalState(checkpoint_dir / "last.ckpt"),
        ModelCheckpoint(
            dirpath=str(checkpoint_dir),
            filename="step{step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=max(settings.checkpoint_every_n_steps, 1),
            # the newest `keep` by step (Lightning deletes older ones as it writes), or all of them
            **({"save_top_k": -1} if keep is None else {"save_top_k": keep, "monitor": "step", "mode": "max"}),
            save_last=True,
            # overwrite (atomically) rather than write last-v1.ckpt beside a last.ckpt this callback did not
            # write itself (a resumed run whose checkpoint settings changed), which --resume last would then miss
            enable_version_counter=False,
        ),
    ]
    if settings.lr_schedule != "constant" or settings.warmup_steps:
        callbacks.insert(0, LearningRateSchedule(settings.lr_schedule, settings.max_steps, settings.warmup_steps, settings.lr_min_ratio))
    if settings.ema_decay is not None:
        callbacks.insert(0, EMA(settings.ema_decay))  # before ModelCheckpoint, so each checkpoint holds the average
    trainer = pl.Trainer(
        accelerator=launch.accelerator,
        devices=launch.devices if launch.devices == "auto" else _parse_devices(launch.devices),
        num_nodes=launch.num_nodes,
        strategy=launch.strategy,
        max_steps=settings.max_steps,
        max_epochs=-1,
        precision=settings.precision,
        accumulate_grad_batches=settings.accumulate_grad_batches,
        gradient_clip_val=settings.gradient_clip_val,
        log_every_n_steps=settings.log_every_n_steps,
        val_check_interval=settings.val_check_interval,
        check_val_every_n_epoch=None if settings.val_check_interval else 1,
        limit_val_batches=None if val_set is not None else 0,
        callbacks=callbacks,
        logger=experiment_logger,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=os.environ.get("LDM_PROGRESS", "1") != "0",
    )
    logger.info("run directory %s; %s", run_dir, lr_message)
    with warnings.catch_warnings():
        # Lightning warns on every mid-epoch resume that the loader cannot resume; StepBatchSampler does
        # (it restarts at global_step x accumulation), so the warning would only mislead.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume else None)
    return checkpoint_dir


def use_fused_optimizer(model: pl.LightningModule) -> None:
    """``train.fused_optimizer``: the model builds torch's fused Adam/AdamW (refused for a module that does not say how)."""
    from ldm.models.common import AdamOptions

    if not isinstance(model, AdamOptions):
        raise ConfigError(
            f"train.fused_optimizer is true but {type(model).__name__} builds its own optimiser; remove train.fused_optimizer from this config"
        )
    model.use_fused_optimizer()


def cached_training_set(train_set: Dataset, model: pl.LightningModule) -> Dataset:
    """``train.cache_latents``: the training set with sample indices, and the model told to cache its latents."""
    from ldm.models.common import LatentDiffusionBase
    from ldm.models.latent_cache import IndexedSamples, check_cacheable

    if not isinstance(model, LatentDiffusionBase):
        raise ConfigError(
            f"train.cache_latents is true but {type(model).__name__} does not encode its images with a frozen VAE "
            "(only the experts and the dynamic diffusers do); remove train.cache_latents from this config"
        )
    check_cacheable(train_set)
    model.use_latent_cache(len(train_set))
    return IndexedSamples(train_set)


def _parse_devices(devices: str) -> int | list[int]:
    if "," in devices:
        return [int(d) for d in devices.split(",") if d.strip()]
    return int(devices)


LAUNCH_EPILOG = """\
More:
  SCRIPT --config C train.batch_size=4 train.accumulate_grad_batches=2   # overrides (key=value)
  SCRIPT --config C --resume runs/NAME/checkpoints/step00005000.ckpt     # or --resume last
  # 2 nodes x 8 GPUs (run on every node; under SLURM use srun with the same flags):
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      SCRIPT_PATH --config C --devices 8 --num-nodes 2 --strategy ddp
Checkpoints go to <run-dir>/checkpoints/ (default runs/<config name>/) with the resolved config.yaml beside
them; logs to <run-dir>/logs/ (TensorBoard, or CSV in logs/version_N/ per launch; set by train.logger). The learning rate is
base x batch x devices x nodes x accumulation (train.scale_lr), logged at start.
"""


def add_launch_arguments(parser, default_steps_help: str = "") -> None:
    """The flags every training script shares."""
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.batch_size=4")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from, or 'last' for <run-dir>/checkpoints/last.ckpt")
    parser.add_argument("--devices", default="auto", help="number of devices, a comma list of GPU ids, or 'auto'")
    parser.add_argument("--num-nodes", type=int, default=1, help="number of nodes (torchrun or SLURM sets the rest)")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ddp_spawn, ...")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (overrides train.max_steps)")
    parser.add_argument("--run-dir", default=None, help="where logs and checkpoints go (default runs/<config name>)")


def launch_options(args) -> LaunchOptions:
    return LaunchOptions(
        devices=str(args.devices), num_nodes=args.num_nodes, strategy=args.strategy, accelerator=args.accelerator,
        max_steps=args.max_steps, resume=args.resume, run_dir=args.run_dir,
    )


def run_name(config_path: str | os.PathLike) -> str:
    return Path(config_path).stem


def main_for(argv: Optional[Sequence[str]], doc: str) -> int:
    """The whole of a training script: parse, load and validate the config, train."""
    from ldm.cli import make_parser, setup_logging
    from ldm.config import load_config

    parser = make_parser(doc)
    parser.epilog = LAUNCH_EPILOG.replace("SCRIPT_PATH", f"scripts/{parser.prog}").replace("SCRIPT", f"python scripts/{parser.prog}")
    add_launch_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may come before, between or after the flags
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    checkpoint_dir = train(cfg, run_name(args.config), launch_options(args))
    logger.info("checkpoints in %s", checkpoint_dir)
    return 0
