"""Speed options for sampling and training: mixed precision, channels_last, torch.compile, attention kernels.

Every option is off, or as the model was built, by default; the ones that change numerics (bf16/fp16,
compile) must be asked for. :class:`SpeedOptions` names them; two functions apply them:

- :func:`apply_speed_options` changes the model in place (attention backend, gradient checkpointing,
  memory format, compilation of its UNets). Idempotent; compilation is one-way.
- :func:`autocast` is the mixed-precision region for a network call; :func:`weights_in_precision` holds
  the UNets' convolution and linear weights in that precision while sampling, so autocast does not cast
  them again at every call. :func:`fast_network` wraps a bound
  network (an ``eps_fn`` or logit function) so that it runs under autocast and returns float32: the
  sampler's own arithmetic (x_T, the collaborative combination, the DDIM update) stays in float32.

:func:`concurrent_runner` evaluates the networks of one collaborative step (every expert and dynamic
diffuser reads the same x_t) on separate CUDA streams, so small networks do not wait for large ones; on
other devices it runs them one after another. Streams change no numerics.

The reference path of the issue (fp32, explicit softmax attention, checkpointing on, no compile) is
:meth:`SpeedOptions.reference`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from ldm.diffusion.collaborative import Runner
from ldm.modules.attention import ATTENTION_BACKENDS, set_attention_backend
from ldm.modules.unet import UNetModel

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The same choices in Lightning's vocabulary (``train.precision`` of a config).
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True)
class SpeedOptions:
    """How to run the networks.

    precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast around each network call.
    channels_last: NHWC memory format for the convolution weights (and so their outputs).
    compile: ``torch.compile`` every UNet (experts and dynamic diffusers); skipped with a warning where
        the compiler cannot run on this machine.
    attention: ``sdpa`` (fused kernels where available, the modules' default) or ``math`` (explicit
        softmax(QK^T/sqrt d)V, the reference).
    checkpointing: gradient checkpointing of every block during training; ``None`` leaves the config's
        ``use_checkpoint`` as it is. It never affects sampling (no gradients).
    streams: evaluate the networks of one collaborative step on separate CUDA streams (CUDA only).
    hold_weights: while sampling in bf16/fp16, hold the UNets' convolution and linear weights in that dtype
        (:func:`weights_in_precision`: the same outputs, fewer casts, a low-precision copy of those weights
        in memory beside the float32 ones); off: autocast casts them at every call.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    attention: str = "sdpa"
    checkpointing: Optional[bool] = None
    streams: bool = True
    hold_weights: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; use one of {', '.join(ATTENTION_BACKENDS)}")

    @classmethod
    def reference(cls) -> "SpeedOptions":
        """The plain path: fp32, explicit softmax attention, checkpointing on, no compile, one stream."""
        return cls(precision="fp32", channels_last=False, compile=False, attention="math", checkpointing=True, streams=False)

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def describe(self) -> str:
        parts = [self.precision + ("" if self.precision == "fp32" or self.hold_weights else " (weights cast per call)"),
                 f"attention={self.attention}"]
        parts += ["channels_last"] if self.channels_last else []
        parts += ["compile"] if self.compile else []
        if self.checkpointing is not None:
            parts.append(f"checkpointing={'on' if self.checkpointing else 'off'}")
        return ", ".join(parts)

    def with_(self, **changes) -> "SpeedOptions":
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------------------
# Model-side options (in place)
# ---------------------------------------------------------------------------------------------------------


def apply_speed_options(model: nn.Module, options: SpeedOptions) -> nn.Module:
    """Set the attention backend, checkpointing, memory format and compilation of ``model`` in place.

    Returns ``model``. Calling it again with other options switches attention, checkpointing and memory
    format back and forth; a compiled UNet stays compiled.
    """
    set_attention_backend(model, options.attention)
    if options.checkpointing is not None:
        for module in model.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = options.checkpointing
    model.to(memory_format=torch.channels_last if options.channels_last else torch.contiguous_format)
    if options.compile:
        compile_unets(model)
    return model


def compile_support(device: torch.device) -> Optional[str]:
    """``None`` if ``torch.compile`` works on ``device`` here, else why not (one line).

    Compiles and runs a two-op function once, so a missing compiler toolchain (a C++ compiler on CPU,
    Triton on CUDA) or an unsupported Python shows up here instead of inside the first sampling step.
    """
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        fn = torch.compile(lambda x: torch.sin(x) * 2.0 + 1.0)
        fn(torch.ones(8, device=device))
    except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{type(err).__name__}: {first_line[:200]}"
    return None


def compile_unets(model: nn.Module) -> int:
    """``torch.compile`` every :class:`UNetModel` of ``model`` in place (state-dict keys unchanged).

    Returns how many were compiled; 0 with a warning where compilation is unavailable on this machine.
    """
    unets = [m for m in model.modules() if isinstance(m, UNetModel)]
    todo = [m for m in unets if getattr(m, "_compiled_call_impl", None) is None]
    if not todo:
        return 0
    device = next(model.parameters()).device
    reason = compile_support(device)
    if reason is not None:
        logger.warning("torch.compile is unavailable on %s (%s); running the networks eagerly", device, reason)
        return 0
    for unet in todo:
        unet.compile(dynamic=False)  # one graph per batch size: no slower dynamic-shape kernels
    logger.info("compiled %d UNet(s) with torch.compile (the first calls are slow while it compiles)", len(todo))
    return len(todo)


# ---------------------------------------------------------------------------------------------------------
# Per-call options: autocast, float32 outputs, streams
# ---------------------------------------------------------------------------------------------------------


def autocast(options: Optional[SpeedOptions], device: torch.device | str) -> contextlib.AbstractContextManager:
    """The mixed-precision region of ``options`` on ``device`` (a no-op for fp32 or ``None``)."""
    device_type = torch.device(device).type
    if options is None or options.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=options.dtype)


@contextlib.contextmanager
def weights_in_precision(model: nn.Module, options: Optional[SpeedOptions]) -> Iterator[None]:
    """Hold the weights and biases of every convolution and linear layer of ``model``'s UNets (experts and
    dynamic diffusers) in ``options.dtype`` while inside; restore the originals on exit.

    For inference under :func:`autocast` only: autocast casts these to the same dtype at every call anyway
    (its cast cache keeps nothing for frozen weights), so the outputs are bit-identical, but a collaborative
    step of the paper configuration dispatches about 1,900 fewer cast kernels (docs/performance.md: on a GPU
    at small batches the step time is the number of dispatched operations times the host's cost per
    operation). Normalisation layers keep their float32 parameters, as autocast runs them in float32.
    A no-op for fp32, ``None`` or ``options.hold_weights`` off.
    """
    if options is None or options.precision == "fp32" or not options.hold_weights:
        yield
        return
    dtype = options.dtype
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    params = {id(p): p for unet in model.modules() if isinstance(unet, UNetModel)
              for layer in unet.modules() if isinstance(layer, layers)
              for p in layer.parameters(recurse=False) if p.is_floating_point() and p.dtype != dtype}
    originals = {key: p.data for key, p in params.items()}
    try:
        with torch.no_grad():
            for p in params.values():
                p.data = p.data.to(dtype)
        yield
    finally:
        for key, p in params.items():
            p.data = originals[key]


def fast_network(fn: Callable[..., Tensor], options: SpeedOptions, device: torch.device | str) -> Callable[..., Tensor]:
    """``fn`` run under :func:`autocast`, its output cast to float32 (a no-op in fp32)."""
    if options.precision == "fp32":
        return fn

    def wrapped(*args, **kwargs) -> Tensor:
        with autocast(options, device):
            out = fn(*args, **kwargs)
        return out.float()

    return wrapped


def concurrent_runner(device: torch.device | str) -> Optional[Runner]:
    """A runner evaluating independent calls on one CUDA stream each; ``None`` (one after another) off CUDA.

    Every side stream first waits for the work already queued on the current stream (which produced the
    inputs); the current stream then waits for every side stream, and each output is marked as used on
    the current stream so the caching allocator does not hand its memory to a side stream too early.
    No host synchronisation happens.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    streams: list[torch.cuda.Stream] = []

    def run(calls: Mapping[str, Callable[[], Tensor]]) -> dict[str, Tensor]:
        if len(calls) < 2:
            return {name: call() for name, call in calls.items()}
        while len(streams) < len(calls):
            streams.append(torch.cuda.Stream(device=device))
        current = torch.cuda.current_stream(device)
        outputs = {}
        for stream, (name, call) in zip(streams, calls.items()):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                outputs[name] = call()
        for stream in streams[: len(calls)]:
            current.wait_stream(stream)
        for out in outputs.values():
            out.record_stream(current)
        return outputs

    return run
