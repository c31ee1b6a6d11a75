"""What one call costs: the aten operations it dispatches, its FLOPs, and ``torch.profiler``'s view of its kernels.

Plain functions over a zero-argument callable, used by :mod:`ldm.benchmark` and usable on their own::

    count_operations(lambda: eps_fn(x, t))      # 6,803 for a bf16 collaborative step of the paper config
    count_flops(lambda: eps_fn(x, t))           # 435.3e9 per image for the same step (fp32, explicit attention)
    profile_call(lambda: sampler(...), device)  # wall time, the GPU kernels' time, the top operations

On a GPU at small batches the host dispatching the operations can take longer than the kernels it launches; the
operation count times the host's cost per operation is then the step time (docs/performance.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _OperationCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operations(fn: Callable[[], Any]) -> int:
    """How many aten operations one call of ``fn`` dispatches (casts and views included)."""
    counter = _OperationCounter()
    with counter:
        fn()
    return counter.count


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention), by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _device_time_us(event: Any) -> float:
    """An averaged profiler event's own device time in µs (``self_cuda_time_total`` before torch 2.4's rename)."""
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else getattr(event, "self_cuda_time_total", 0.0))


def kernel_time_ms(events: Sequence[Any]) -> float:
    """The CUDA kernels' own time in profiler ``events``, in ms: the events on the device, as torch's own table
    totals them (the CPU-side operators that launched them also carry their time, and are left out)."""
    return sum(_device_time_us(e) for e in events
               if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)) / 1e3


@dataclass
class Profile:
    """``torch.profiler`` over one call."""

    wall_ms: float  # under the profiler, which slows the host
    kernel_ms: Optional[float]  # CUDA: the kernels' own time, summed over streams; None elsewhere
    sorted_by: str
    table: str  # the top operations, torch's ``key_averages().table``


def profile_call(fn: Callable[[], Any], device: torch.device, rows: int = 25) -> Profile:
    """Profile one call of ``fn`` on ``device`` (CPU activity, and CUDA's on a CUDA device; synchronised)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3
    averages = prof.key_averages()
    if cuda:
        kernels = kernel_time_ms(averages)
        sort_by = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
    else:
        kernels, sort_by = None, "self_cpu_time_total"
    return Profile(wall_ms, kernels, sort_by, averages.table(sort_by=sort_by, row_limit=rows))
