"""The app's Generate tab: one mask and one caption, every chosen method from the same seed, side by side,
and the influence maps of the collaborative run at every step.

Every method samples through :func:`ldm.pipeline.sample` with a fresh generator seeded with the same seed, so
the methods start from the same x_T and draw the same noise (what ``scripts/generate.py`` does): differences
between the pictures are the methods', not the seeds'.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ldm import ranges
from ldm.app.influence import influence_frames, write_frames
from ldm.data.masks import colorize, index_mask_to_onehot, onehot_to_index
from ldm.diffusion.collaborative import PRESETS, CollaborativeOptions
from ldm.diffusion.samplers import SamplerOptions, get_sampler, sampler_names
from ldm.errors import UserError
from ldm.images import resize_nearest, save_png, to_uint8
from ldm.pipeline import JOINT_METHODS, MODALITY_ALIASES, sample

METHODS = ("collaborative", "composable", "text", "mask")
METHOD_TITLES = {"collaborative": "collaborative", "composable": "composable", "text": "text only", "mask": "mask only"}
DISPLAY_SIZE = 256  # pictures smaller than this are enlarged (nearest) for the page
MAX_CAPTION = 500  # characters; the text encoder reads 77 tokens anyway


def available_methods(model: nn.Module) -> list[str]:
    """The methods this model can sample: the joint ones need two experts (collaborative also the diffusers)."""
    experts = set(model.experts)
    methods = []
    if len(experts) > 1:
        if set(getattr(model, "diffusers", {}) or {}) == experts:
            methods.append("collaborative")
        methods.append("composable")
    methods += [m for m in ("text", "mask") if MODALITY_ALIASES[m] in experts]
    return methods


def method_modalities(model: nn.Module, method: str) -> list[str]:
    """The modalities (batch keys) whose condition ``method`` reads."""
    return list(model.experts) if method in JOINT_METHODS else [MODALITY_ALIASES[method]]


def sampler_choices() -> list[tuple[str, str]]:
    """(title, name) of every registered sampler, for a menu."""
    return [(get_sampler(name).title, name) for name in sampler_names()]


@dataclass(frozen=True)
class GenerateRequest:
    """What the user asked for. ``eta`` is DDIM's (ignored for the other samplers)."""

    caption: str
    methods: tuple[str, ...]
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 1.0
    seed: int = 0
    preset: str = "paper"

    def sampler_options(self) -> SamplerOptions:
        try:
            eta = float(self.eta) if get_sampler(self.sampler).has_eta else None
            return SamplerOptions(self.sampler, int(self.steps), None, eta)
        except ValueError as err:
            raise UserError(f"sampler: {err}") from None

    def check(self, model: nn.Module) -> None:
        """Raise a UserError naming the first bad choice, in the page's words."""
        if not self.methods:
            raise UserError("no method chosen; tick at least one of collaborative, composable, text only, mask only")
        offered = available_methods(model)
        unknown = [m for m in self.methods if m not in offered]
        if unknown:
            raise UserError(f"method {unknown[0]!r} is not available with this model; choose from {', '.join(offered)}")
        if len(set(self.methods)) != len(self.methods):
            raise UserError(f"methods {list(self.methods)} repeat; tick each once")
        if any("text" in method_modalities(model, m) for m in self.methods):
            if not self.caption.strip():
                needing = [METHOD_TITLES[m] for m in self.methods if "text" in method_modalities(model, m)]
                raise UserError(f"empty caption; write one (the {', '.join(needing)} method needs it) or choose mask only")
            if len(self.caption) > MAX_CAPTION:
                raise UserError(f"caption is {len(self.caption)} characters; shorten it to at most {MAX_CAPTION}")
        ranges.check("seed", int(self.seed), ranges.SEED)
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose {' or '.join(sorted(PRESETS))}")
        self.sampler_options().timesteps(model.schedule)


class GenerateResult(NamedTuple):
    images: list[tuple[Path, str]]  # (display picture, caption) per method, in the requested order
    conditions: Path  # the mask as the model reads it (32x32), enlarged
    frames: list[Path]  # influence frames of the collaborative run (empty without it)
    animation: Optional[Path]  # the frames as a GIF
    summary: str  # one line: sampler, seed, time per method


def condition_picture(index: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The mask the model reads (the 32x32 nearest resize of the drawn one), enlarged to ``size``."""
    small = onehot_to_index(index_mask_to_onehot(index)).numpy()
    return resize_nearest(colorize(small), size)


def run_generate(
    model: nn.Module,
    request: GenerateRequest,
    index: np.ndarray,
    out_dir: str | Path,
    on_method: Optional[Callable[[int, int, str], None]] = None,
) -> GenerateResult:
    """Sample every method of ``request`` for the mask ``index`` (class ids, square) and write the pictures,
    the influence frames and ``settings.json`` into ``out_dir``. ``on_method(k, n, method)`` before each."""
    request.check(model)
    out = Path(out_dir)
    options = CollaborativeOptions.from_preset(request.preset)
    choice = request.sampler_options()
    conditions = {"seg_mask": index_mask_to_onehot(index).unsqueeze(0), "text": [request.caption.strip()]}
    images, frames, animation, timing = [], [], None, []
    for k, method in enumerate(request.methods):
        if on_method is not None:
            on_method(k, len(request.methods), method)
        given = {m: conditions[m] for m in method_modalities(model, method)}
        start = time.perf_counter()
        result = sample(
            model, given, method=method, steps=choice.steps, eta=choice.resolved_eta, sampler=choice.sampler,
            spacing=choice.resolved_spacing, generator=torch.Generator().manual_seed(int(request.seed)),
            options=options, record_trace=method == "collaborative",
        )
        timing.append(f"{METHOD_TITLES[method]} {time.perf_counter() - start:.1f} s")
        picture = to_uint8(result.images[0])
        save_png(picture, out / f"{method}_seed{request.seed}.png")
        display = out / f"{method}_display.png"
        save_png(resize_nearest(picture, DISPLAY_SIZE) if picture.shape[0] < DISPLAY_SIZE else picture, display)
        images.append((display, METHOD_TITLES[method]))
        if result.trace is not None:
            decode = lambda z: model.decode_latents(z.to(model.device)).float().cpu()  # noqa: E731
            frames, animation = write_frames(influence_frames(result.trace, decode), out / "influence")
    conditions_path = out / "conditions.png"
    save_png(condition_picture(index), conditions_path)
    settings = {**asdict(request), **choice.to_dict(), "methods": list(request.methods)}
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    summary = f"{choice.describe()}, seed {request.seed}, {request.preset} preset: " + ", ".join(timing)
    return GenerateResult(images, conditions_path, frames, animation, summary)


def parse_methods(values: Sequence[str]) -> tuple[str, ...]:
    """Menu values (method names or their titles) -> method names, in the canonical order."""
    by_title = {title: name for name, title in METHOD_TITLES.items()}
    names = {by_title.get(v, v) for v in values}
    return tuple(m for m in METHODS if m in names) + tuple(sorted(n for n in names if n not in METHODS))
