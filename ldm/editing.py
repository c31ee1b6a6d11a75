"""Imagic editing of a real image, per modality, and the collaborative combination of the edits.

For each modality m with a target condition (a caption, a mask), over its expert ε_θm and the frozen VAE and
schedule (supplementary §A.2):

    A  e_opt   = argmin_e E_{t,ε} ‖ε − ε_θm(x_t, t, e)‖²      e initialised at the target tokens e_target (Adam on e)
    B  θ_opt   = argmin_θ E_{t,ε} ‖ε − ε_θ(x_t, t, e_opt)‖²   the expert's UNet fine-tuned, e_opt frozen
    C  e(α)    = α·e_target + (1 − α)·e_opt                   sampled with the fine-tuned expert over an α sweep
                                                              (DDIM 50, eta 1 as released, or any sampler of
                                                              ldm.diffusion.samplers), from pure noise as
                                                              released, or (``strength`` < 1) from x0 noised
                                                              to t < strength·T (SDEdit's start)

with x_t = q_sample(x0, t, ε) and x0 the latent of the input image. The condition encoder is not used after
it has given e_target: the UNet reads the embedding directly. ``collaborative`` runs A and B for every
modality, then samples the collaborative model (the fine-tuned experts with the dynamic diffusers) with the
same α for all modalities; the diffusers read the interpolated tokens too.

:func:`run_edit` does all of it in a resumable run directory::

    settings.json                    every setting (a resumed run must match it)
    input.png                        the input at the model's resolution
    embedding_<m>.safetensors        stage A: e_opt, e_target, losses
    expert_<m>.safetensors           stage B: the fine-tuned UNet's weights (UNet keys), losses in the metadata
    alpha_<i>_<α>.png                stage C: one image per α
    grid.png                         input, its VAE reconstruction and the targets, then the α sweep

Every file is written atomically when its stage ends; a stage whose file exists is skipped (an interrupted
run resumes from the last finished stage, and each α image is a stage of its own).
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ldm import ranges, seeding
from ldm.checkpoints import load_state_dict, load_strict
from ldm.config import edit_settings
from ldm.data.celeba import image_to_tensor
from ldm.diffusion.collaborative import CollaborativeOptions
from ldm.diffusion.samplers import SamplerOptions, get_sampler, partial_timesteps
from ldm.diffusion.schedule import NoiseSchedule
from ldm.errors import UserError
from ldm.fileio import atomic_write_bytes, save_safetensors
from ldm.figures import GRID_TILE, condition_tiles
from ldm.images import grid, resize_nearest, save_png, to_uint8
from ldm.modules.expert import Expert
from ldm.pipeline import sample_from_contexts
from ldm.ranges import ParameterError

logger = logging.getLogger(__name__)

# The released α sweeps (editing/imagic_edit_{text,mask}.py and editing/collaborative_edit.py).
UNIMODAL_ALPHAS = (-1.0, -0.5, 0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
COLLABORATIVE_ALPHAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5, 1.625,
                        1.75, 1.875, 2.0, 2.5)  # fmt: skip
MODES = {"text": ("text",), "mask": ("seg_mask",), "collaborative": ("text", "seg_mask")}


# ------------------------------------------------------------------------------------------------
# Stages A and B: the denoising loss on one image, optimised over the embedding or the UNet


def denoising_loss(
    expert: Expert, x0: torch.Tensor, context: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator
) -> torch.Tensor:
    """‖ε − ε_θ(x_t, t, c)‖² at one random t per row, t and ε drawn from ``generator`` (float32)."""
    t = schedule.sample_timesteps(x0.shape[0], generator, x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
    return F.mse_loss(expert(schedule.q_sample(x0, t, noise), t, context).float(), noise.float())


@contextmanager
def only_trainable(module: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Within the block, of ``module``'s parameters only ``params`` require gradients; the flags are restored after."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    wanted = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class EmbeddingFit(NamedTuple):
    embedding: torch.Tensor  # e_opt, detached, same shape as the target tokens [1, N, D]
    losses: list[float]  # the loss at every step


def adam_steps(params: list, loss_fn: Callable[[], torch.Tensor], *, steps: int, lr: float, desc: str, progress: bool,
               on_step: Optional[Callable[[int, int], None]]) -> list[float]:
    """``steps`` Adam steps on ``params`` minimising ``loss_fn()``; the loss at every step. ``on_step(done,
    steps)`` after each (it may raise to stop)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            on_step(len(losses), steps)
    return losses


def optimize_embedding(
    expert: Expert,
    x0_latent: torch.Tensor,
    target_context: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    steps: int = 500,
    lr: float = 1e-3,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "embedding",
    on_step: Optional[Callable[[int, int], None]] = None,
) -> EmbeddingFit:
    """Stage A (eq. 5): Adam on the condition tokens only, from the target's, so the expert reconstructs x0.

    The expert's weights are untouched (no gradients reach them) and it runs in eval mode. ``on_step(done,
    steps)`` after every step (a progress display; it may raise to stop the stage).
    """
    e = target_context.detach().clone().to(x0_latent).requires_grad_(True)
    was_training = expert.training
    expert.eval()
    try:
        with only_trainable(expert, []), torch.enable_grad():
            losses = adam_steps([e], lambda: denoising_loss(expert, x0_latent, e, schedule, generator),
                                steps=steps, lr=lr, desc=desc, progress=progress, on_step=on_step)
    finally:
        expert.train(was_training)
    return EmbeddingFit(e.detach(), losses)


def finetune_expert(
    expert: Expert,
    x0_latent: torch.Tensor,
    embedding: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    steps: int = 1000,
    lr: float = 1e-6,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "fine-tune",
    on_step: Optional[Callable[[int, int], None]] = None,
) -> list[float]:
    """Stage B (eq. 6): Adam on the expert's UNet, in place, with ``embedding`` (e_opt) frozen and fed to the
    UNet directly; the condition encoder is neither used nor changed. Returns the loss at every step.
    ``on_step(done, steps)`` as in :func:`optimize_embedding`."""
    params = list(expert.unet.parameters())
    embedding = embedding.detach().to(x0_latent)
    was_training = expert.unet.training
    expert.unet.train()
    try:
        with only_trainable(expert, params), torch.enable_grad():
            return adam_steps(params, lambda: denoising_loss(expert, x0_latent, embedding, schedule, generator),
                              steps=steps, lr=lr, desc=desc, progress=progress, on_step=on_step)
    finally:
        expert.unet.train(was_training)


def interpolate(e_target: torch.Tensor, e_opt: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. (7): α·e_target + (1 − α)·e_opt (α = 0 is the input's embedding, 1 the target's; beyond extrapolates)."""
    return alpha * e_target + (1.0 - alpha) * e_opt


# ------------------------------------------------------------------------------------------------
# Stage C: sampling an α sweep


def sample_alpha(
    model: nn.Module,
    targets: Mapping[str, torch.Tensor],
    optimized: Mapping[str, torch.Tensor],
    alpha: float,
    *,
    steps: int = 50,
    eta: Optional[float] = 1.0,
    sampler: str = "ddim",
    spacing: Optional[str] = None,
    seed: int = 0,
    options: CollaborativeOptions = CollaborativeOptions(),
    progress: bool = False,
    x0: Optional[torch.Tensor] = None,
    strength: float = 1.0,
):
    """One image for one α: every modality's tokens interpolated with the same α; one modality samples its
    (fine-tuned) expert alone, several the collaborative model. x_T and the sampler's noise come from ``seed``,
    the same for every α. ``eta`` is DDIM's (None for the other samplers). ``strength`` < 1 starts from the
    input's latent ``x0`` noised to t < strength·T instead of pure noise (SDEdit). Returns
    :class:`ldm.pipeline.Samples`."""
    contexts = {m: interpolate(targets[m], optimized[m], alpha) for m in targets}
    method = "collaborative" if len(contexts) > 1 else next(iter(contexts))
    return sample_from_contexts(
        model, contexts, method=method, steps=steps, eta=eta, sampler=sampler, spacing=spacing,
        generator=torch.Generator().manual_seed(seed),
        options=options, progress=progress, x_start=x0, strength=strength,
    )


# ------------------------------------------------------------------------------------------------
# Input image


def fit_to_resolution(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (bicubic), then crop the centre square."""
    w, h = image.size
    if (w, h) == (resolution, resolution):
        return image
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


@torch.no_grad()
def encode_input(model: nn.Module, image: Image.Image) -> torch.Tensor:
    """x0 = E(image)·scale_factor, the posterior mean (the released script draws a posterior sample; with the
    VAE's tiny variance this is the same image, and x0 then does not depend on the seed). [1, C, h, w]."""
    device = next(model.parameters()).device
    x = image_to_tensor(image).unsqueeze(0).to(device)
    return model.vae.encode(x).mean * model.scale_factor


# ------------------------------------------------------------------------------------------------
# The run directory


@dataclass(frozen=True)
class EditOptions:
    """The hyperparameters of an edit (released defaults at 256², FACTS.md "Editing"). Stage C samples with
    ``sampler`` (``ddim`` as released; ``spacing`` None: the sampler's own); ``eta`` is DDIM's and must be
    None for the other samplers."""

    embed_steps: int = 500
    embed_lr: float = 1e-3
    finetune_steps: int = 1000
    finetune_lr: float = 1e-6
    alphas: tuple[float, ...] = UNIMODAL_ALPHAS
    strength: float = 1.0  # stage C starts at t < strength·T from the input's noised latent (SDEdit); 1: pure noise
    seed: int = 0
    steps: int = 50
    eta: Optional[float] = 1.0
    preset: str = "paper"
    sampler: str = "ddim"
    spacing: Optional[str] = None

    def validate(self) -> None:
        """Raise a :class:`~ldm.ranges.ParameterError` naming the parameter of the first bad value."""
        ranges.check_edit(self.embed_steps, self.embed_lr, self.finetune_steps, self.finetune_lr, self.alphas, self.strength)
        ranges.check("steps", self.steps, ranges.STEPS)
        try:
            has_eta = get_sampler(self.sampler).has_eta
        except ValueError as err:
            raise ParameterError("sampler", f": {err}", sep="") from None
        if self.eta is not None and not has_eta:
            raise ParameterError("eta", f"applies to @sampler ddim only; {self.sampler} has no eta (drop @eta or use @sampler ddim)",
                                 refs=("sampler", "eta"))
        if self.eta is not None:
            ranges.check("eta", self.eta, ranges.ETA)
        try:
            self.sampler_options()
        except ValueError as err:
            raise UserError(f"stage C sampler: {err}") from None
        try:
            CollaborativeOptions.from_preset(self.preset)
        except ValueError as err:
            raise ParameterError("preset", f": {err}", sep="") from None

    def check(self) -> None:
        """:meth:`validate`, the error naming the scripts' flag of the parameter (what edit.py and the app show)."""
        try:
            self.validate()
        except ParameterError as err:
            raise err.renamed(ranges.FLAGS) from None

    def sampler_options(self) -> SamplerOptions:
        """Stage C's sampler (raises ValueError for a bad choice)."""
        return SamplerOptions(self.sampler, self.steps, self.spacing, self.eta)


EDIT_KEYS = ("embed_steps", "embed_lr", "finetune_steps", "finetune_lr", "alphas", "strength")  # what a config's edit: sets


def released_alphas(mode: str) -> tuple[float, ...]:
    """The released α sweep of an edit mode."""
    return COLLABORATIVE_ALPHAS if mode == "collaborative" else UNIMODAL_ALPHAS


def edit_defaults(cfg: Optional[DictConfig], mode: str) -> dict[str, Any]:
    """The defaults of :data:`EDIT_KEYS` for a model: :class:`EditOptions`' released values (the mode's released
    α sweep), each overridden by the config's ``edit:`` section where it sets the key. Flags override these."""
    released = EditOptions()
    values = {key: getattr(released, key) for key in EDIT_KEYS}
    values["alphas"] = released_alphas(mode)
    section = edit_settings(cfg)
    for key in EDIT_KEYS:
        if getattr(section, key) is not None:
            values[key] = tuple(float(a) for a in section.alphas) if key == "alphas" else getattr(section, key)
    return values


def parse_alphas(text: str) -> tuple[float, ...]:
    """'-1,-0.5,0,0.5' -> (-1.0, -0.5, 0.0, 0.5), or a UserError."""
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise ParameterError("alphas", f"{text!r} is not a comma list of numbers; e.g. @alphas 0,0.5,1,1.5",
                             refs=("alphas",)).renamed(ranges.FLAGS) from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the run's settings name its inputs by content, not only by path)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def edit_provenance(config: str, overrides: Sequence[str], ckpt: str | Path, mode: str, image: str | Path,
                    text: Optional[str], mask: Optional[str | Path]) -> dict[str, Any]:
    """What ``settings.json`` records of an edit's model and inputs besides its options (``scripts/edit.py``
    and the app write the same, so either resumes the other's run): paths as given, files also by content."""
    return {
        "config": config, "overrides": list(overrides), "ckpt": str(ckpt), "mode": mode,
        "image": str(image), "image_sha256": file_sha256(image), "text": text,
        "mask": None if mask is None else str(mask), "mask_sha256": file_sha256(mask) if mask else None,
    }


def stage_generator(seed: int, modality: str, stage: str) -> torch.Generator:
    """The CPU generator of one stage, a function of (seed, modality, stage) only: a modality's stages draw the
    same t and ε whether it is edited alone or as part of a collaborative edit."""
    return seeding.generator(seed, "edit-stage", modality, stage)


def alpha_image_name(index: int, alpha: float) -> str:
    return f"alpha_{index:02d}_{alpha:g}.png"


class EditResult(NamedTuple):
    out_dir: Path
    images: torch.Tensor  # [A, 3, H, W] in [-1, 1], one per α
    skipped: list[str]  # the stages found finished on disk
    grid: Path


def _check_settings(path: Path, settings: Mapping[str, Any]) -> None:
    """Write ``settings.json`` or, when it exists, require the same settings (else a UserError)."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as the file holds them
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is unreadable; delete it (and the run directory) or choose another --out") from None
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff[:4])
            raise UserError(
                f"{path.parent} holds an edit with other settings ({shown}); resume with the same settings "
                "or choose another --out"
            )
        return
    atomic_write_bytes(path, json.dumps(settings, indent=2).encode())


def _alpha_tile(image: torch.Tensor, alpha: float, tile: int) -> np.ndarray:
    pic = Image.fromarray(resize_nearest(to_uint8(image), tile))
    draw = ImageDraw.Draw(pic)
    text = f"a={alpha:g}"
    draw.rectangle((0, 0, 6 * len(text) + 3, 11), fill=(255, 255, 255))
    draw.text((2, 0), text, fill=(0, 0, 0))
    return np.asarray(pic)


def edit_grid(
    input_image: torch.Tensor, reconstruction: torch.Tensor, conditions: Mapping[str, Any], images: torch.Tensor,
    alphas: Sequence[float], per_row: int = 9,
) -> np.ndarray:
    """First row: the input, its VAE reconstruction and the targets; then the α sweep, labelled."""
    tile = max(GRID_TILE, images.shape[-1])
    sweep = [_alpha_tile(img, a, tile) for img, a in zip(images, alphas)]
    rows = [[to_uint8(input_image), to_uint8(reconstruction), *condition_tiles(conditions, 0, tile)]]
    rows += [sweep[i:i + per_row] for i in range(0, len(sweep), per_row)]
    labels = ["input, VAE rec., targets"] + [f"alpha sweep {k + 1}" for k in range(len(rows) - 1)]
    return grid(rows, tile, labels=labels)


def tenths(losses: Sequence[float]) -> tuple[float, float]:
    """Means of the first and the last tenth of a loss curve (single steps at random t are too noisy to compare)."""
    k = max(len(losses) // 10, 1)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def run_edit(
    model: nn.Module,
    image: Image.Image,
    targets: Mapping[str, Any],
    out_dir: str | Path,
    options: EditOptions = EditOptions(),
    provenance: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    on_step: Optional[Callable[[str, int, int], None]] = None,
) -> EditResult:
    """Edit ``image`` toward ``targets`` (raw conditions keyed by modality: ``{"text": [caption]}``,
    ``{"seg_mask": onehot[1, 19, 1024]}``, or both for the collaborative edit) in the run directory ``out_dir``.

    ``image`` must already be at the model's resolution (:func:`fit_to_resolution`). ``provenance`` (config,
    checkpoint, input files, ...) is stored in ``settings.json`` with ``options`` and must match on resume.
    The model's experts are fine-tuned in place (or loaded from the run's files). ``on_step(stage, done,
    total)`` after every step of stages A and B and every α image (e.g. a progress bar; raising in it stops
    the run, and the stages finished before stay on disk).
    """

    def hook(stage: str) -> Optional[Callable[[int, int], None]]:
        return None if on_step is None else (lambda done, total: on_step(stage, done, total))

    options.check()
    out = Path(out_dir)
    modalities = list(targets)
    missing = [m for m in modalities if m not in model.experts]
    if missing:
        raise UserError(f"this model has no {missing} expert (it has {list(model.experts)}); use a model with one")
    if len(modalities) > 1 and set(getattr(model, "diffusers", {}) or {}) != set(modalities):
        raise UserError("a collaborative edit needs a collaborative checkpoint with a dynamic diffuser per modality")
    resolution = model.vae.resolution
    if image.size != (resolution, resolution):
        raise ValueError(f"run_edit needs the image at {resolution}x{resolution}; use fit_to_resolution first")
    try:  # before stages A and B, not after them
        timesteps = options.sampler_options().timesteps(model.schedule)
        partial_timesteps(timesteps, options.strength, model.schedule.num_timesteps)
    except ValueError as err:
        raise UserError(f"stage C sampler: {err}") from None
    _check_settings(out / "settings.json", {**(provenance or {}), **asdict(options), "modalities": modalities,
                                             "resolution": resolution})
    save_png(np.asarray(image), out / "input.png")

    x0 = encode_input(model, image)
    schedule = model.schedule
    skipped: list[str] = []
    e_target, e_opt = {}, {}
    for m in modalities:
        expert = model.experts[m]
        emb_path, expert_path = out / f"embedding_{m}.safetensors", out / f"expert_{m}.safetensors"
        # ---- stage A
        if emb_path.is_file():
            saved = load_state_dict(emb_path)
            e_target[m], e_opt[m] = saved["e_target"].to(x0), saved["e_opt"].to(x0)
            skipped.append(f"embedding_{m}")
        else:
            with torch.no_grad():
                e_target[m] = expert.encode(targets[m]).to(x0)  # [1, N, D]
            fit = optimize_embedding(
                expert, x0, e_target[m], schedule, steps=options.embed_steps, lr=options.embed_lr,
                generator=stage_generator(options.seed, m, "A"), progress=progress,
                desc=f"A: embedding ({m})", on_step=hook(f"A: embedding ({m})"),
            )
            e_opt[m] = fit.embedding
            save_safetensors({"e_opt": e_opt[m], "e_target": e_target[m], "losses": torch.tensor(fit.losses)}, emb_path,
                             metadata={"modality": m, "stage": "A"})
            if fit.losses:
                logger.info("stage A (%s): loss %.4f -> %.4f (means of the first and last tenth) over %d steps", m, *tenths(fit.losses), len(fit.losses))
        # ---- stage B
        if expert_path.is_file():
            load_strict(expert.unet, load_state_dict(expert_path), source=str(expert_path))
            skipped.append(f"expert_{m}")
        else:
            losses = finetune_expert(
                expert, x0, e_opt[m], schedule, steps=options.finetune_steps, lr=options.finetune_lr,
                generator=stage_generator(options.seed, m, "B"), progress=progress,
                desc=f"B: fine-tune ({m})", on_step=hook(f"B: fine-tune ({m})"),
            )
            save_safetensors(expert.unet.state_dict(), expert_path,
                             metadata={"modality": m, "stage": "B", "losses": json.dumps(losses)})
            if losses:
                logger.info("stage B (%s): loss %.4f -> %.4f (means of the first and last tenth) over %d steps", m, *tenths(losses), len(losses))

    # ---- stage C: one image per α (each a stage of its own), then the grid
    preset = CollaborativeOptions.from_preset(options.preset)
    images = []
    bar = tqdm(list(enumerate(options.alphas)), desc="C: alpha sweep", disable=not progress)
    for k, alpha in bar:
        if on_step is not None:
            on_step("C: alpha sweep", k, len(options.alphas))
        path = out / alpha_image_name(k, alpha)
        if path.is_file():
            with Image.open(path) as saved:
                images.append(image_to_tensor(saved.convert("RGB")))
            skipped.append(path.stem)
            continue
        result = sample_alpha(model, e_target, e_opt, alpha, steps=options.steps, eta=options.eta, sampler=options.sampler,
                              spacing=options.spacing, seed=options.seed, options=preset, x0=x0, strength=options.strength)
        save_png(to_uint8(result.images[0]), path)
        images.append(image_to_tensor(Image.fromarray(to_uint8(result.images[0]))))  # what the file holds
    if on_step is not None:
        on_step("C: alpha sweep", len(options.alphas), len(options.alphas))
    images = torch.stack(images)
    reconstruction = model.decode_latents(x0).clamp(-1, 1)[0].float().cpu()
    grid_path = out / "grid.png"
    save_png(edit_grid(image_to_tensor(image), reconstruction, targets, images, options.alphas), grid_path)
    return EditResult(out, images, skipped, grid_path)
