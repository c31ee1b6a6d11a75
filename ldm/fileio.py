"""Bottom-level file I/O: atomic writes and safe (restricted) ``torch.load``.

Every file the package writes goes through :func:`atomic_write_bytes`: a temporary file in the same
folder (created if missing), ``fsync``, then a rename, so an interrupted write never leaves a partial
file. Every pickle the package reads goes through :func:`safe_torch_load`: ``torch.load(weights_only=True)``
(PyTorch >= 2.6's default) and, for files that pickle other objects too (older Lightning checkpoints hold
hyper-parameter containers, optimizer and loop states), a restricted unpickler that rebuilds tensors and
plain containers only and replaces every other object by an inert placeholder, so no code from the file
is ever run.

This module imports nothing from ``ldm`` but :mod:`ldm.errors`; everything else may import it.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Writing


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Optional[dict] = None) -> None:
    """Save a state dict as safetensors (contiguous CPU copies; shared storage is cloned), atomically.

    A file that already holds exactly these tensors and metadata is left as it is: safetensors writes the metadata
    in no fixed order, so re-saving an unchanged model (a re-export) would otherwise change its bytes."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    text_metadata = {k: str(v) for k, v in (metadata or {}).items()}
    if _holds(path, tensors, text_metadata):
        return
    atomic_write_bytes(path, save(tensors, metadata=text_metadata))


def _holds(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Whether the safetensors file at ``path`` exists and holds exactly ``tensors`` and ``metadata``."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != dict(metadata) or set(f.keys()) != set(tensors):
                return False
            for key, value in tensors.items():
                stored = f.get_tensor(key)
                if stored.dtype != value.dtype or not torch.equal(stored, value):
                    return False
    except (SafetensorError, OSError):
        return False  # unreadable: overwrite it
    return True


# --------------------------------------------------------------------------------------------------
# Reading


class _Inert:
    """Stands in for any non-tensor object found in a checkpoint pickle; runs no code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch.nn.parameter", "Parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    dropped: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        # Storage classes and dtypes only: torch also holds functions such as set_default_dtype.
        if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        _RestrictedUnpickler.dropped.add(f"{module}.{name}")
        return _Inert


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    load = pickle.load
    __name__ = "ldm_restricted_pickle"


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` a file onto the CPU without running code from it (see the module docstring).

    Tensors, numbers, strings and plain containers come back as they are; any other pickled object is
    replaced by an inert placeholder (logged). Raises what ``torch.load`` raises on a corrupt file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    _RestrictedUnpickler.dropped = set()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    if _RestrictedUnpickler.dropped:
        logger.info("%s: ignored non-tensor objects %s", path, sorted(_RestrictedUnpickler.dropped)[:8])
    return obj
