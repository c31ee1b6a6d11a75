"""Parameter counts per component, computed on the meta device (no memory, no files read)."""

from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from ldm.config import instantiate

# The networks a summary lists (the named parts of the paper's Table A2 and FACTS.md).
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.discriminator import NLayerDiscriminator
from ldm.modules.dynamic_diffuser import DynamicDiffuser
from ldm.modules.encoders import MaskEncoder, TextEncoder
from ldm.modules.lpips import LPIPS
from ldm.modules.unet import UNetModel

COMPONENTS = (UNetModel, DynamicDiffuser, TextEncoder, MaskEncoder, AutoencoderKL, LPIPS, NLayerDiscriminator)


def summarize(cfg: DictConfig) -> list[dict]:
    """One row per component (its path in the model, class and parameter count), plus the total."""
    with torch.device("meta"):
        model = instantiate(cfg.model, load_weights=False)
    rows = []

    def visit(module: nn.Module, path: str) -> None:
        if isinstance(module, COMPONENTS):
            rows.append({"component": path or "model", "class": type(module).__name__, "params": count(module)})
            return
        for name, child in module.named_children():
            visit(child, f"{path}.{name}" if path else name)

    visit(model, "")
    rows.append({"component": "total", "class": type(model).__name__, "params": count(model)})
    return rows


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
