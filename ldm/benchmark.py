"""Side-by-side speed measurement of sampling and training, the fast path against the plain reference path.

What is measured (``scripts/benchmark.py`` is the command line):

- **sampling**: ms per DDIM step of the config's sampler (the collaborative step: every expert and dynamic
  diffuser once; an LDM config: its one expert), median over the timed steps after a warm-up, and the
  images/s of 50-step sampling that this step time gives. Condition encoding and VAE decoding are outside
  the timed loop. eta = 0 and one x_T, so the two paths must give the same latents.
- **training**: images/s of one optimizer step of each stage (every expert, with its condition encoder;
  the dynamic diffusers over the frozen experts), through the LightningModules' own ``diffusion_loss``,
  median over the timed steps. The optimizer's learning rate is 0, so the weights never change between
  paths and the losses are comparable.
- **peak memory** of each measurement (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS,
  reset before each measurement where Linux allows it).
- **images/s at equal quality** (``equal_quality``): whole sampling runs, condition encoding and VAE decoding
  excluded, of the released sampler (DDIM 50, eta 1) and of the recommended fewer-step sampler
  (:data:`ldm.diffusion.samplers.RECOMMENDED`, the closest fewer-step setting to DDIM 50's quality on FaceWorld: docs/samplers.md),
  one after the other on the fast path with the same weights and x_T, and the speed-up of the second.
- **FLOPs** per image of one sampling step and of one training step, counted once per model with
  ``torch.utils.flop_counter.FlopCounterMode`` (eager, explicit attention, no recomputation), which gives the
  achieved FLOP/s and, with a stated peak, its fraction.
- **operations** dispatched by one sampling step at batch 1 on each path (aten operations, each a kernel launch
  or a view; not counted for a compiled path): where the step time does not grow with the batch, it is this
  count times the host's cost per operation (docs/performance.md).
- **profile** (``profile_batch``): ``torch.profiler`` over a few sampling steps of the fast path at one batch
  size: the top operations by their own device time (CUDA; CPU time elsewhere) and, on CUDA, how many ms of
  each step the GPU's kernels took, against the step time measured without the profiler.

The model is built from the config with random weights (no checkpoint is read). Layers initialised to zero
(every UNet's output convolution, the transformers' output projections, the residual branches' last conv)
are filled with small random values first, or every network would output 0 and the comparison would be empty.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.config import instantiate, load_config
from ldm.diffusion.ddim import ddim_sample, ddim_timesteps
from ldm.diffusion.samplers import RECOMMENDED, RELEASED, SamplerOptions
from ldm.errors import UserError
from ldm.models.common import step_generator
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.modules.encoders import MaskEncoder, TextEncoder
from ldm.pipeline import make_eps_fn
from ldm.profiling import count_flops, count_operations, profile_call
from ldm.speed import SpeedOptions, apply_speed_options, autocast, weights_in_precision

logger = logging.getLogger(__name__)

PAPER_STEPS = 50  # images/s are those of 50-step sampling, as in the paper
# Relative L2 distance of the final latents (fast vs reference) accepted as agreement, per fast precision.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 2e-2}


@dataclass
class BenchmarkSettings:
    config: str
    overrides: Sequence[str] = ()
    device: str = "cpu"
    batch_sizes: Sequence[int] = (1, 8, 32)
    steps: int = 50
    warmup: int = 2
    repeats: int = 1
    train: bool = False
    train_batch_sizes: Optional[Sequence[int]] = None  # default: batch_sizes
    train_steps: int = 3
    reference: bool = False
    speed: SpeedOptions = SpeedOptions(checkpointing=False)
    peak_tflops: Optional[float] = None
    count_flops: bool = True
    seed: int = 0
    equal_quality: bool = False  # also time the released and the recommended sampler, whole runs
    profile_batch: Optional[int] = None  # profile the fast path's sampling at this batch size
    profile_steps: int = 5


@dataclass
class Measurement:
    path: str  # "reference" or "fast"
    task: str  # "sampling" or a training stage ("train expert:text", "train diffusers")
    batch: int
    ms_per_step: Optional[float] = None
    images_per_s: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    tflops: Optional[float] = None  # achieved
    loss: Optional[float] = None  # training: the first step's loss
    error: Optional[str] = None


@dataclass
class Agreement:
    task: str
    batch: int
    relative_l2: float
    tolerance: float
    what: str

    @property
    def ok(self) -> bool:
        return self.relative_l2 <= self.tolerance


@dataclass
class EqualQuality:
    """Whole sampling runs of two samplers of equal measured quality, in the same run, at one batch size."""

    batch: int
    released: str  # e.g. "DDIM 50 steps, uniform spacing, eta 1"
    recommended: str
    released_images_per_s: float
    recommended_images_per_s: float

    @property
    def speedup(self) -> float:
        return self.recommended_images_per_s / self.released_images_per_s


@dataclass
class SamplingProfile:
    """``torch.profiler`` over ``steps`` sampling steps of the fast path at one batch size."""

    batch: int
    steps: int
    profiled_ms_per_step: float  # wall time under the profiler (which slows the host)
    kernel_ms_per_step: Optional[float]  # CUDA: the kernels' time per step (summed over streams); None elsewhere
    sorted_by: str
    table: str  # the top operations, torch's ``key_averages().table``


@dataclass
class BenchmarkReport:
    machine: dict[str, Any]
    config: str
    method: str
    fast: str
    reference: Optional[str]
    gflop_per_image: dict[str, float] = field(default_factory=dict)  # task -> GFLOP per image and step
    measurements: list[Measurement] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    peak_tflops: Optional[float] = None
    equal_quality: list[EqualQuality] = field(default_factory=list)
    operations_per_step: dict[str, int] = field(default_factory=dict)  # path -> aten operations, sampling, batch 1
    profile: Optional[SamplingProfile] = None

    @property
    def agree(self) -> bool:
        return all(a.ok for a in self.agreements)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["agree"] = self.agree
        out["speedups"] = speedups(self)
        for row, eq in zip(out["equal_quality"], self.equal_quality):
            row["speedup"] = eq.speedup
        return out


# ---------------------------------------------------------------------------------------------------------
# The model, its conditions, the machine
# ---------------------------------------------------------------------------------------------------------


def build_random_model(config: str, overrides: Sequence[str], device: torch.device, seed: int) -> nn.Module:
    """The config's model with random weights (no file read), zero-initialised layers made random, eval mode."""
    cfg = load_config(config, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, load_weights=False)
    if not hasattr(model, "experts"):
        raise UserError(f"{config} builds a {type(model).__name__}; benchmark an LDM or collaborative config")
    randomize_zero_init(model, torch.Generator().manual_seed(seed + 1))
    return model.to(device).eval()


@torch.no_grad()
def randomize_zero_init(model: nn.Module, generator: torch.Generator) -> int:
    """Fill every all-zero conv/linear weight with N(0, 1/fan_in); returns how many were filled."""
    filled = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any():
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * fan_in**-0.5)
            filled += 1
    return filled


WORDS = ["young", "old", "smiling", "bearded", "blond", "woman", "man", "glasses", "thirties", "teen"]


def random_conditions(model: nn.Module, batch: int, generator: torch.Generator) -> dict[str, Any]:
    """Raw conditions for every expert of ``model``: captions for text, random one-hot masks for masks."""
    conditions: dict[str, Any] = {}
    for m, expert in model.experts.items():
        encoder = expert.cond_encoder
        if isinstance(encoder, TextEncoder):
            idx = torch.randint(len(WORDS), (batch, 12), generator=generator)
            conditions[m] = ["this person is " + " ".join(WORDS[int(i)] for i in row) for row in idx]
        elif isinstance(encoder, MaskEncoder):
            labels = torch.randint(encoder.n_classes, (batch, encoder.n_pixels), generator=generator)
            conditions[m] = F.one_hot(labels, encoder.n_classes).transpose(1, 2).float()  # [B, 19, 1024]
        else:
            raise UserError(f"benchmark cannot make a condition for the {m} expert's {type(encoder).__name__}")
    return conditions


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------------


class StepTimer:
    """Marks between steps: CUDA events on CUDA (no synchronisation until :meth:`intervals_ms`), else the clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _sampling_inputs(model: nn.Module, contexts: dict[str, torch.Tensor], method: str, speed: SpeedOptions,
                     seed: int) -> tuple[Callable, torch.Tensor]:
    """The fast path's ``eps_fn`` bound to ``contexts`` and the x_T of ``seed`` on the model's device."""
    device = next(model.parameters()).device
    eps_fn = make_eps_fn(model, contexts, method=method, speed=speed)
    batch = next(iter(contexts.values())).shape[0]
    x_T = torch.randn((batch, *model.vae.latent_shape), generator=torch.Generator().manual_seed(seed)).to(device)
    return eps_fn, x_T


@torch.no_grad()
def sampling_operations(model: nn.Module, method: str, speed: SpeedOptions, seed: int) -> int:
    """Aten operations of one sampling step at batch 1 with ``speed`` (already applied to ``model``)."""
    device = next(model.parameters()).device
    one = encode_contexts(model, random_conditions(model, 1, torch.Generator().manual_seed(seed)))
    eps_fn = make_eps_fn(model, one, method=method, speed=speed)
    x = torch.zeros((1, *model.vae.latent_shape), device=device)
    t = torch.full((1,), model.schedule.num_timesteps - 1, device=device)
    with weights_in_precision(model, speed):
        return count_operations(lambda: eps_fn(x, t))


@torch.no_grad()
def profile_sampling(model: nn.Module, contexts: dict[str, torch.Tensor], method: str, speed: SpeedOptions,
                     steps: int, seed: int, rows: int = 25) -> SamplingProfile:
    """``torch.profiler`` over ``steps`` DDIM steps (eta 0) after a 2-step warm-up, with ``speed`` applied."""
    eps_fn, x_T = _sampling_inputs(model, contexts, method, speed, seed)
    schedule = model.schedule
    with weights_in_precision(model, speed):
        ddim_sample(eps_fn, x_T, schedule, ddim_timesteps(2, schedule.num_timesteps), eta=0.0)
        prof = profile_call(lambda: ddim_sample(eps_fn, x_T, schedule, ddim_timesteps(steps, schedule.num_timesteps), eta=0.0),
                            x_T.device, rows)
    busy = None if prof.kernel_ms is None else prof.kernel_ms / steps
    return SamplingProfile(x_T.shape[0], steps, prof.wall_ms / steps, busy, prof.sorted_by, prof.table)


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------


def sampler_method(model: nn.Module) -> str:
    """``collaborative`` for a model with dynamic diffusers, else its one expert's modality."""
    return "collaborative" if len(getattr(model, "diffusers", {})) else next(iter(model.experts))


@torch.no_grad()
def encode_contexts(model: nn.Module, conditions: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {m: model.experts[m].encode(c) for m, c in conditions.items()}


@dataclass
class SamplingRun:
    step_ms: list[float]
    latents: torch.Tensor  # final latents, float32, CPU
    first_eps: torch.Tensor  # the sampler's eps at x_T, float32, CPU
    peak_memory_mb: float


@torch.no_grad()
def run_sampling(
    model: nn.Module, contexts: dict[str, torch.Tensor], method: str, speed: SpeedOptions,
    steps: int, warmup: int, repeats: int, seed: int,
) -> SamplingRun:
    """Time ``steps`` DDIM steps (eta 0) from the x_T of ``seed``, after ``warmup`` untimed steps."""
    eps_fn, x_T = _sampling_inputs(model, contexts, method, speed, seed)
    with weights_in_precision(model, speed):
        return _timed_sampling(eps_fn, x_T, model.schedule, steps, warmup, repeats, x_T.device)


def _timed_sampling(eps_fn: Callable, x_T: torch.Tensor, schedule, steps: int, warmup: int, repeats: int,
                    device: torch.device) -> SamplingRun:
    if warmup:
        ddim_sample(eps_fn, x_T, schedule, ddim_timesteps(min(warmup, schedule.num_timesteps), schedule.num_timesteps), eta=0.0)

    captured: list[torch.Tensor] = []

    def capturing_eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t)
        if not captured:
            captured.append(eps)
        return eps

    _reset_peak_memory(device)
    step_ms: list[float] = []
    latents = None
    for _ in range(repeats):
        timer = StepTimer(device)
        timer.mark()
        latents = ddim_sample(
            capturing_eps_fn, x_T, schedule, ddim_timesteps(steps, schedule.num_timesteps), eta=0.0,
            callback=lambda *_: timer.mark(),
        )
        step_ms += timer.intervals_ms()
    return SamplingRun(step_ms, latents.float().cpu(), captured[0].float().cpu(), _peak_memory_mb(device))


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def _training_mode(module: nn.Module, trainable: Optional[nn.Module] = None) -> Iterator[None]:
    """``module.train()`` (and ``trainable`` unfrozen) for the duration; restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    if trainable is not None:
        trainable.requires_grad_(True)
    module.train()
    if trainable is not None:
        trainable.train()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        module.eval()


@contextmanager
def training_stage(model: nn.Module, stage: str) -> Iterator[nn.Module]:
    """The LightningModule whose ``diffusion_loss`` one training step of ``stage`` runs, ready to train.

    ``expert:<m>`` trains expert m (UNet and condition encoder) as ``LatentDiffusion`` does; for a
    collaborative model the frozen expert is unfrozen for the measurement. ``diffusers`` trains the dynamic
    diffusers over the frozen experts.
    """
    if stage == "diffusers":
        with _training_mode(model):
            yield model
        return
    m = stage.split(":", 1)[1]
    if isinstance(model, LatentDiffusion):
        with _training_mode(model):
            yield model
        return
    expert = model.experts[m]
    module = LatentDiffusion(
        expert=expert, vae=model.vae, cond_key=m, scale_factor=model.scale_factor,
        num_timesteps=model.schedule.num_timesteps, linear_start=model.schedule.linear_start,
        linear_end=model.schedule.linear_end, seed=model.seed,
    )
    with _training_mode(module, trainable=expert):
        yield module


def training_stages(model: nn.Module) -> list[str]:
    stages = [f"expert:{m}" for m in model.experts]
    return stages + (["diffusers"] if len(getattr(model, "diffusers", {})) else [])


def random_batch(model: nn.Module, batch: int, seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    size = model.vae.resolution
    image = torch.rand((batch, 3, size, size), generator=generator) * 2 - 1
    device = next(model.parameters()).device
    conditions = {m: (c.to(device) if torch.is_tensor(c) else c) for m, c in random_conditions(model, batch, generator).items()}
    return {"image": image.to(device), **conditions}


def _loss_fn(module: nn.Module, batch: dict[str, Any], seed: int, speed: SpeedOptions) -> torch.Tensor:
    generator = step_generator(seed, 0, 0, batch["image"].device)
    with autocast(speed, batch["image"].device):
        return module.diffusion_loss(batch, generator)


@dataclass
class TrainingRun:
    step_ms: list[float]
    loss: float  # the first step's
    peak_memory_mb: float


def run_training(module: nn.Module, batch: dict[str, Any], speed: SpeedOptions, steps: int, warmup: int, seed: int) -> TrainingRun:
    """Time ``steps`` optimizer steps (AdamW at learning rate 0) after ``warmup`` untimed ones; every step
    draws the same t, noise and posterior sample, so the first loss is comparable across paths."""
    device = batch["image"].device
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)  # lr 0: the same work, the weights stay as they are
    scaler = torch.amp.GradScaler(device.type, enabled=speed.precision == "fp16")
    losses = []

    def step() -> None:
        loss = _loss_fn(module, batch, seed, speed)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    _reset_peak_memory(device)
    for _ in range(max(warmup, 1)):
        step()
    timer = StepTimer(device)
    timer.mark()
    for _ in range(steps):
        step()
        timer.mark()
    step_ms = timer.intervals_ms()
    peak = _peak_memory_mb(device)
    del optimizer
    return TrainingRun(step_ms, float(losses[0]), peak)


def training_flops(module: nn.Module, batch: dict[str, Any], seed: int) -> float:
    """FLOPs of one training step's forward and backward (no optimizer) at this batch."""
    speed = SpeedOptions()

    def forward_backward() -> None:
        _loss_fn(module, batch, seed, speed).backward()

    flops = count_flops(forward_backward)
    for p in module.parameters():
        p.grad = None
    return flops


# ---------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def benchmark(settings: BenchmarkSettings, log: Callable[[str], None] = logger.info) -> BenchmarkReport:
    """Measure the fast path (``settings.speed``) and, with ``settings.reference``, the reference path in
    the same process on the same weights, inputs and noise; see the module docstring."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    model = build_random_model(settings.config, settings.overrides, device, settings.seed)
    method = sampler_method(model)
    fast, reference = settings.speed, SpeedOptions.reference()
    report = BenchmarkReport(
        machine=machine_info(device), config=settings.config, method=method, fast=fast.describe(),
        reference=reference.describe() if settings.reference else None, peak_tflops=settings.peak_tflops,
    )
    train_batches = list(settings.train_batch_sizes or settings.batch_sizes)
    stages = training_stages(model) if settings.train else []
    cond_gen = torch.Generator().manual_seed(settings.seed + 2)
    contexts = {b: encode_contexts(model, random_conditions(model, b, cond_gen)) for b in settings.batch_sizes}
    batches = {b: random_batch(model, b, settings.seed + 3) for b in train_batches} if stages else {}
    if settings.count_flops:
        report.gflop_per_image = model_gflops(model, method, stages, settings.seed)
        log("GFLOP per image and step: " + ", ".join(f"{k} {v:.4g}" for k, v in report.gflop_per_image.items()))

    paths = ([("reference", reference)] if settings.reference else []) + [("fast", fast)]
    outputs: dict[tuple[str, str, int], Any] = {}  # (path, task, batch) -> SamplingRun | TrainingRun
    for name, speed in paths:  # the reference first: compilation is one-way
        apply_speed_options(model, speed)
        if not speed.compile:  # a compiled network's kernels are not aten operations
            report.operations_per_step[name] = sampling_operations(model, method, speed, settings.seed)
        jobs = [("sampling", b, b / PAPER_STEPS, partial(
            run_sampling, model, contexts[b], method, speed, settings.steps, settings.warmup, settings.repeats, settings.seed,
        )) for b in settings.batch_sizes]
        jobs += [(f"train {stage}", b, b, partial(_run_stage, model, stage, batches[b], speed, settings))
                 for stage in stages for b in train_batches]
        for task, batch, images_per_step, job in jobs:
            row = Measurement(name, task, batch)
            result = _measure(row, job, images_per_step, report.gflop_per_image.get(task), device)
            if result is not None:
                outputs[(name, task, batch)] = result
            report.measurements.append(row)
            log(_row_line(row))
    if settings.reference:
        report.agreements = agreements(outputs, TOLERANCE[fast.precision])
    if settings.profile_batch is not None:  # the fast path's options are applied (the last path measured)
        b = settings.profile_batch
        ctx = contexts.get(b) or encode_contexts(model, random_conditions(model, b, cond_gen))
        report.profile = profile_sampling(model, ctx, method, fast, settings.profile_steps, settings.seed)
        log(f"profiled {settings.profile_steps} sampling steps at batch {b}")
    if settings.equal_quality:  # the fast path's options are applied (the last path measured)
        for b in settings.batch_sizes:
            row = run_equal_quality(model, contexts[b], method, fast, settings.seed)
            report.equal_quality.append(row)
            log(f"equal quality, batch {b}: {row.released} {row.released_images_per_s:.3f} img/s, "
                f"{row.recommended} {row.recommended_images_per_s:.3f} img/s ({row.speedup:.2f}x)")
    return report


@torch.no_grad()
def time_sampler(eps_fn: Callable, x_T: torch.Tensor, schedule, options: SamplerOptions, seed: int) -> float:
    """Seconds of one whole sampling run with ``options`` (synchronised on CUDA)."""
    device = x_T.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    options.run(eps_fn, x_T, schedule, generator=torch.Generator().manual_seed(seed))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_equal_quality(model: nn.Module, contexts: dict[str, torch.Tensor], method: str, speed: SpeedOptions,
                      seed: int, released: SamplerOptions = RELEASED, recommended: SamplerOptions = RECOMMENDED) -> EqualQuality:
    """Images/s of whole runs of ``released`` and ``recommended`` from the same x_T, after one untimed
    2-step run of each (warm-up, compilation)."""
    eps_fn, x_T = _sampling_inputs(model, contexts, method, speed, seed)
    batch = x_T.shape[0]
    with weights_in_precision(model, speed):
        for options in (released, recommended):
            warm = SamplerOptions(options.sampler, 2, options.spacing, options.eta)
            time_sampler(eps_fn, x_T, model.schedule, warm, seed)
        seconds = [time_sampler(eps_fn, x_T, model.schedule, options, seed) for options in (released, recommended)]
    return EqualQuality(batch, released.describe(), recommended.describe(), batch / seconds[0], batch / seconds[1])


def model_gflops(model: nn.Module, method: str, stages: Sequence[str], seed: int) -> dict[str, float]:
    """GFLOP per image of one sampling step and of one training step of each stage, counted eagerly at
    batch 1 with explicit attention and no recomputation (the model's options are left so)."""
    device = next(model.parameters()).device
    apply_speed_options(model, SpeedOptions.reference().with_(checkpointing=False))
    one = encode_contexts(model, random_conditions(model, 1, torch.Generator().manual_seed(seed)))
    t = torch.full((1,), model.schedule.num_timesteps - 1, device=device)
    x = torch.zeros((1, *model.vae.latent_shape), device=device)
    eps_fn = make_eps_fn(model, one, method=method)
    with torch.no_grad():
        gflops = {"sampling": count_flops(lambda: eps_fn(x, t)) / 1e9}
    for stage in stages:
        with training_stage(model, stage) as module:
            gflops[f"train {stage}"] = training_flops(module, random_batch(model, 1, seed), seed) / 1e9
    return gflops


def _run_stage(model: nn.Module, stage: str, batch: dict[str, Any], speed: SpeedOptions, settings: BenchmarkSettings) -> TrainingRun:
    with training_stage(model, stage) as module:
        return run_training(module, batch, speed, settings.train_steps, 1, settings.seed)


def _measure(row: Measurement, job: Callable[[], Any], images_per_step: float, gflop_per_image: Optional[float],
             device: torch.device) -> Optional[Any]:
    """Run ``job`` (a SamplingRun or TrainingRun maker) and fill ``row``; an out-of-memory error fills
    ``row.error`` instead and returns None."""
    try:
        result = job()
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        if not _is_oom(err):
            raise
        row.error = "out of memory"
        _free(device)
        return None
    row.ms_per_step = _median(result.step_ms)
    row.images_per_s = images_per_step * 1e3 / row.ms_per_step
    row.peak_memory_mb = result.peak_memory_mb
    row.tflops = _achieved(gflop_per_image, row.batch, row.ms_per_step)
    row.loss = getattr(result, "loss", None)
    return result


def agreements(outputs: dict[tuple[str, str, int], Any], tolerance: float) -> list[Agreement]:
    """Fast against reference for every (task, batch) both measured: sampling by the relative L2 distance
    of the final latents and of eps at x_T, training by the relative difference of the first loss."""
    out = []
    for (path, task, batch), got in outputs.items():
        ref = outputs.get(("reference", task, batch))
        if path != "fast" or ref is None:
            continue
        if isinstance(got, SamplingRun):
            out.append(Agreement(task, batch, _relative_l2(got.latents, ref.latents), tolerance, "final latents"))
            out.append(Agreement(task, batch, _relative_l2(got.first_eps, ref.first_eps), tolerance, "eps at x_T"))
        else:
            out.append(Agreement(task, batch, abs(got.loss - ref.loss) / max(abs(ref.loss), 1e-30), tolerance, "first loss"))
    return out


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _achieved(gflop_per_image: Optional[float], batch: int, ms: float) -> Optional[float]:
    return None if gflop_per_image is None else gflop_per_image * batch / ms  # GFLOP/ms = TFLOP/s


def _row_line(row: Measurement) -> str:
    if row.error:
        return f"{row.path:>9} {row.task:<24} batch {row.batch:>3}: {row.error}"
    return (f"{row.path:>9} {row.task:<24} batch {row.batch:>3}: {row.ms_per_step:10.1f} ms/step "
            f"{row.images_per_s:9.3f} img/s  peak {row.peak_memory_mb:8.0f} MiB")


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def speedups(report: BenchmarkReport) -> list[dict[str, Any]]:
    """fast / reference images/s for every (task, batch) measured on both paths."""
    rows = {(m.path, m.task, m.batch): m for m in report.measurements if m.error is None}
    out = []
    for (path, task, batch), fast in rows.items():
        ref = rows.get(("reference", task, batch))
        if path == "fast" and ref is not None:
            out.append({"task": task, "batch": batch, "speedup": fast.images_per_s / ref.images_per_s})
    return out


def profile_summary(report: BenchmarkReport) -> str:
    """One line on the profile: the profiled step time and, on CUDA, the GPU kernels' time per step."""
    pr = report.profile
    line = (f"profile (fast path, sampling, batch {pr.batch}, {pr.steps} steps): {pr.profiled_ms_per_step:.1f} ms/step "
            f"under the profiler")
    if pr.kernel_ms_per_step is not None:
        measured = [m.ms_per_step for m in report.measurements
                    if m.path == "fast" and m.task == "sampling" and m.batch == pr.batch and m.error is None]
        line += f"; GPU kernels {pr.kernel_ms_per_step:.1f} ms/step"
        if measured:
            line += f" = {100 * pr.kernel_ms_per_step / measured[0]:.0f}% of the {measured[0]:.1f} ms measured without it"
    return line + f"; top operations by {pr.sorted_by} in the JSON report (profile.table) or --profile-out"


def format_report(report: BenchmarkReport) -> str:
    """The report as plain-text tables (the script prints it)."""
    m = report.machine
    lines = [
        f"config {report.config} ({report.method} sampler); device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "") + f"; CPU {m['cpu']}, {m['cpu_count']} cores, "
        f"{m['torch_threads']} torch threads; torch {m['torch']}",
        f"fast path: {report.fast}",
    ]
    if report.reference:
        lines.append(f"reference: {report.reference}")
    if report.gflop_per_image:
        lines.append("FLOPs per image and step: " + ", ".join(f"{k} {v:.4g} GFLOP" for k, v in report.gflop_per_image.items()))
    if report.operations_per_step:
        lines.append("aten operations per sampling step (batch 1): "
                     + ", ".join(f"{path} {n:,}" for path, n in report.operations_per_step.items()))
    peak = report.peak_tflops
    header = f"{'path':<9} {'task':<24} {'batch':>5} {'ms/step':>10} {'img/s':>9} {'TFLOP/s':>8}"
    header += f" {'of peak':>7}" if peak else ""
    header += f" {'peak MiB':>9} {'loss':>9}"
    lines += ["", header, "-" * len(header)]
    for r in report.measurements:
        if r.error:
            lines.append(f"{r.path:<9} {r.task:<24} {r.batch:>5} {r.error}")
            continue
        tf = f"{r.tflops:8.3f}" if r.tflops is not None else f"{'-':>8}"
        line = f"{r.path:<9} {r.task:<24} {r.batch:>5} {r.ms_per_step:10.1f} {r.images_per_s:9.3f} {tf}"
        if peak:
            line += f" {100 * r.tflops / peak:6.1f}%" if r.tflops is not None else f" {'-':>7}"
        line += f" {r.peak_memory_mb:9.0f} " + (f"{r.loss:9.4f}" if r.loss is not None else f"{'':>9}")
        lines.append(line)
    lines.append(f"(sampling img/s: {PAPER_STEPS}-step sampling at the median step time, condition encoding and VAE "
                 f"decoding excluded; training img/s: one optimizer step)")
    ups = speedups(report)
    if ups:
        lines += ["", "speed-up of the fast path (img/s fast / reference):"]
        lines += [f"  {u['task']:<24} batch {u['batch']:>3}: {u['speedup']:.2f}x" for u in ups]
    if report.equal_quality:
        lines += ["", "images/s at equal quality (whole sampling runs, fast path; quality: docs/samplers.md):"]
        for eq in report.equal_quality:
            lines.append(f"  batch {eq.batch:>3}: {eq.released}: {eq.released_images_per_s:.3f} img/s; {eq.recommended}: "
                         f"{eq.recommended_images_per_s:.3f} img/s; speed-up {eq.speedup:.2f}x")
    if report.profile is not None:
        lines += ["", profile_summary(report)]
    if report.agreements:
        lines += ["", "agreement of the fast path with the reference (relative L2; losses: relative difference):"]
        for a in report.agreements:
            lines.append(f"  {a.task:<24} batch {a.batch:>3} {a.what:<14} {a.relative_l2:.2e} "
                         f"(tolerance {a.tolerance:.0e}) {'ok' if a.ok else 'DISAGREE'}")
    return "\n".join(lines)
