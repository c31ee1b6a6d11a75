"""Figures: sample grids and the supplementary's influence-function figures (A4/A5)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from ldm.fileio import atomic_torch_save
from ldm.data.masks import colorize, onehot_to_index
from ldm.images import grid, save_png, text_tile, to_uint8, unit_to_uint8
from ldm.pipeline import Trace

GRID_TILE = 96  # smallest tile of a sample grid, in pixels (small images are enlarged, nearest)


def condition_tiles(conditions: Mapping[str, object], index: int, size: int) -> list[np.ndarray]:
    """Pictures of one sample's conditions: the coloured mask and/or the caption."""
    tiles = []
    if "seg_mask" in conditions:
        tiles.append(colorize(onehot_to_index(conditions["seg_mask"][index].cpu()).numpy()))
    if "text" in conditions:
        tiles.append(text_tile(conditions["text"][index], size))
    return tiles


def save_influence_figures(
    trace: Trace,
    decode: Callable[[torch.Tensor], torch.Tensor],
    conditions: Mapping[str, object],
    final_image: torch.Tensor,
    out_dir: str | Path,
    index: int = 0,
    per_row: int = 10,
    tile: int = 64,
) -> list[Path]:
    """Write, for sample ``index``: each modality's influence map at every sampler step, the decoded x_t at the
    same steps, the final image and the conditions (PNG grids), and the raw tensors (``influence.pt``)."""
    out_dir = Path(out_dir)
    written = []
    steps = len(trace.timesteps)

    def rows(pictures: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [pictures[i:i + per_row] for i in range(0, len(pictures), per_row)]

    for modality, maps in trace.weights.items():
        pictures = [unit_to_uint8(maps[s][index]) for s in range(steps)]
        path = out_dir / f"influence_{modality}.png"
        save_png(grid(rows(pictures), tile), path)
        written.append(path)
    decoded = [to_uint8(decode(trace.x_t[s][index:index + 1])[0]) for s in range(steps)]
    path = out_dir / "x_t.png"
    save_png(grid(rows(decoded), tile), path)
    written.append(path)
    path = out_dir / "final_and_conditions.png"
    save_png(grid([[to_uint8(final_image[index]), *condition_tiles(conditions, index, tile)]], tile), path)
    written.append(path)
    raw = {
        "timesteps": torch.tensor(trace.timesteps),
        "x_t": torch.stack([x[index] for x in trace.x_t]),
        **{f"influence_{m}": torch.stack([w[index] for w in maps]) for m, maps in trace.weights.items()},
    }
    path = out_dir / "influence.pt"
    atomic_torch_save(raw, path)
    written.append(path)
    return written


def sample_grid(rows_by_label: Mapping[str, torch.Tensor], conditions: Mapping[str, object], tile: int, condition_index: int = 0) -> np.ndarray:
    """A first row with the conditions, then one row per method with its samples."""
    rows = {"conditions": condition_tiles(conditions, condition_index, tile)}
    rows.update({label: [to_uint8(img) for img in images] for label, images in rows_by_label.items()})
    return grid(list(rows.values()), tile, labels=list(rows))


def write_comparison(
    model,
    conditions: Mapping[str, object],
    methods: list[str],
    out_dir: str | Path,
    *,
    steps: int,
    eta: Optional[float],
    seed: int,
    options,
    sampler: str = "ddim",
    spacing: Optional[str] = None,
    save_influence: bool = False,
    progress: bool = True,
    grid_name: Optional[str] = "grid.png",
    speed=None,
) -> list[Path]:
    """Sample every method from the same seed, write each image, a grid (``grid_name``: conditions, then one
    row per method; none if ``None``) and, with ``save_influence``, the influence figures of the collaborative
    sampler. ``sampler``, ``spacing``, ``eta``: see :class:`ldm.diffusion.samplers.SamplerOptions` (``eta=None``:
    1 for DDIM). ``speed``: :class:`ldm.speed.SpeedOptions` for :func:`ldm.pipeline.sample` (default none)."""
    from ldm.pipeline import sample

    out_dir = Path(out_dir)
    rows, written = {}, []
    for method in methods:
        generator = torch.Generator().manual_seed(seed)
        result = sample(
            model, conditions, method=method, steps=steps, eta=eta, sampler=sampler, spacing=spacing,
            generator=generator, options=options,
            record_trace=save_influence and method == "collaborative", progress=progress, speed=speed,
        )
        rows[method] = result.images
        for i, image in enumerate(result.images):
            path = out_dir / f"{method}_seed{seed}_{i:03d}.png"
            save_png(to_uint8(image), path)
            written.append(path)
        if result.trace is not None:
            written += save_influence_figures(result.trace, lambda z: model.decode_latents(z.to(model.device)).cpu(), conditions, result.images, out_dir / "influence")
    if grid_name is None:
        return written
    path = out_dir / grid_name
    save_png(sample_grid(rows, conditions, max(GRID_TILE, rows[methods[0]].shape[-1])), path)
    return written + [path]
