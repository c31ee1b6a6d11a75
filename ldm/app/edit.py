"""The app's Edit tab: an Imagic edit of an uploaded face in the run directory ``scripts/edit.py`` uses.

The run directory holds the inputs (``inputs/face.png``, ``inputs/mask.png``) and everything
:func:`ldm.editing.run_edit` writes; its ``settings.json`` records the same provenance ``edit.py`` does, so

- pressing Run again with the same face, targets and settings resumes from the last finished stage (after a
  cancel, or a restart of the app within the session), and
- the ``edit.py`` command the page shows resumes (or repeats) the same run from a shell.

The folder is named by a hash of all of it: other settings give another folder, never a clash. The experts an
edit fine-tunes are private copies (:func:`model_for_edit`), so other users' generations and edits keep
sampling the shipped weights while it runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch.nn as nn
from PIL import Image

from ldm import ranges
from ldm.app.sessions import Cancelled
from ldm.data.masks import index_mask_to_onehot, save_index_png
from ldm.diffusion.samplers import SamplerOptions, get_sampler
from ldm.config import load_config
from ldm.editing import MODES, EditOptions, EditResult, edit_defaults, edit_provenance, fit_to_resolution, parse_alphas, run_edit
from ldm.errors import UserError
from ldm.face_parsing import as_rgb, check_photo
from ldm.images import save_png

EDIT_MODES = ("collaborative", "text", "mask")
MODE_TITLES = {"collaborative": "collaborative (text and mask)", "text": "text only", "mask": "mask only"}
# Small enough for a CPU (the released 500 / 1000 steps take hours there at paper scale); the page says so.
APP_EMBED_STEPS = 100
APP_FINETUNE_STEPS = 200
APP_ALPHAS = "0,0.5,1,1.5"


@dataclass(frozen=True)
class EditRequest:
    """The Edit tab's choices; ``alphas`` as typed (a comma list). ``eta`` is DDIM's (ignored otherwise)."""

    mode: str
    caption: str = ""
    embed_steps: int = APP_EMBED_STEPS
    finetune_steps: int = APP_FINETUNE_STEPS
    alphas: str = APP_ALPHAS
    seed: int = 0
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 1.0
    preset: str = "paper"

    def options(self, model_defaults: Optional[Mapping[str, Any]] = None) -> EditOptions:
        """The run's :class:`EditOptions`, every value resolved as ``edit.py`` resolves its flags; checked.
        ``model_defaults`` (:func:`ldm.editing.edit_defaults` of the model's config) gives the learning rates and
        the stage C strength, which the page does not set; without it, the released values."""
        ranges.check("seed", int(self.seed), ranges.SEED)
        try:
            eta = float(self.eta) if get_sampler(self.sampler).has_eta else None
            sampling = SamplerOptions(self.sampler, int(self.steps), None, eta)
        except ValueError as err:
            raise UserError(f"sampler: {err}") from None
        model = {k: v for k, v in (model_defaults or {}).items() if k in ("embed_lr", "finetune_lr", "strength")}
        options = EditOptions(
            embed_steps=int(self.embed_steps), finetune_steps=int(self.finetune_steps), **model,
            alphas=parse_alphas(self.alphas), seed=int(self.seed), steps=sampling.steps, eta=sampling.resolved_eta,
            preset=self.preset, sampler=sampling.sampler, spacing=sampling.resolved_spacing,
        )
        options.check()
        return options


def edit_targets(mode: str, caption: str, mask: Optional[np.ndarray]) -> dict:
    """The raw targets of ``mode`` (``{"text": [caption]}``, ``{"seg_mask": [1, 19, 1024]}``), or a UserError
    naming what is missing."""
    if mode not in MODES:
        raise UserError(f"unknown edit mode {mode!r}; choose {', '.join(EDIT_MODES)}")
    targets = {}
    if "text" in MODES[mode]:
        if not caption.strip():
            raise UserError(f"empty target caption; the {MODE_TITLES[mode]} edit needs one")
        targets["text"] = [caption.strip()]
    if "seg_mask" in MODES[mode]:
        if mask is None:
            raise UserError(f"no target mask; the {MODE_TITLES[mode]} edit needs one: parse the face and paint on it")
        targets["seg_mask"] = index_mask_to_onehot(mask).unsqueeze(0)
    return targets


class ModelSource(NamedTuple):
    """How the app's model was loaded (what ``edit.py`` needs to load the same one)."""

    config: str
    ckpt: str
    overrides: tuple[str, ...] = ()
    device: str = "cpu"


class EditRun(NamedTuple):
    out_dir: Path
    image: Path  # inputs/face.png
    mask: Optional[Path]  # inputs/mask.png (modes mask and collaborative)
    targets: dict
    options: EditOptions
    provenance: dict
    command: str  # the edit.py command that resumes this run


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_run(
    root: str | Path, photo: Image.Image, mask: Optional[np.ndarray], request: EditRequest, source: ModelSource,
) -> EditRun:
    """Check the request, write its inputs into the run directory under ``root`` named by their hash, and
    return the run (``run_edit``'s arguments and the equivalent ``edit.py`` command)."""
    check_photo(photo, "face")
    options = request.options(edit_defaults(load_config(source.config, list(source.overrides)), request.mode))
    targets = edit_targets(request.mode, request.caption, mask)
    face = np.asarray(as_rgb(photo), dtype=np.uint8)
    uses_mask = "seg_mask" in MODES[request.mode]
    text = request.caption.strip() if "text" in MODES[request.mode] else None
    key = json.dumps({"face": _sha256(face.tobytes() + str(face.shape).encode()),
                      "mask": _sha256(np.ascontiguousarray(mask).tobytes() + str(mask.shape).encode()) if uses_mask else None,
                      "text": text, "mode": request.mode, "options": asdict(options), "model": list(source[:3])},
                     sort_keys=True)
    out = Path(root).resolve() / f"{request.mode}_{_sha256(key.encode())[:16]}"
    image_path, mask_path = out / "inputs" / "face.png", out / "inputs" / "mask.png" if uses_mask else None
    image_path.parent.mkdir(parents=True, exist_ok=True)
    if not image_path.is_file():
        save_png(face, image_path)
    if mask_path is not None and not mask_path.is_file():
        save_index_png(mask, mask_path)
    provenance = edit_provenance(source.config, list(source.overrides), Path(source.ckpt), request.mode, image_path,
                                 text, mask_path)
    return EditRun(out, image_path, mask_path, targets, options, provenance,
                   edit_command(source, request.mode, image_path, text, mask_path, options, out))


def edit_command(source: ModelSource, mode: str, image: Path, text: Optional[str], mask: Optional[Path],
                 options: EditOptions, out: Path) -> str:
    """The ``scripts/edit.py`` command line of this run (run from the app's working directory)."""
    args = ["python", "scripts/edit.py", "--config", source.config, "--ckpt", source.ckpt, "--image", str(image),
            "--mode", mode]
    if text is not None:
        args += ["--text", text]
    if mask is not None:
        args += ["--mask", str(mask)]
    args += ["--embed-steps", str(options.embed_steps), "--finetune-steps", str(options.finetune_steps),
             "--embed-lr", f"{options.embed_lr:g}", "--finetune-lr", f"{options.finetune_lr:g}",
             "--alphas", ",".join(f"{a:g}" for a in options.alphas), "--strength", f"{options.strength:g}", "--seed", str(options.seed),
             "--sampler", options.sampler, "--steps", str(options.steps), "--spacing", str(options.spacing)]
    if options.eta is not None:
        args += ["--eta", f"{options.eta:g}"]
    args += ["--preset", options.preset, "--device", source.device, "--out", str(out), *source.overrides]
    return " ".join(shlex.quote(a) for a in args)


def model_for_edit(model: nn.Module, modalities: Sequence[str]) -> nn.Module:
    """A copy of ``model`` whose experts' UNets for ``modalities`` are private (an edit fine-tunes them in
    place); everything else (VAE, condition encoders, the other experts, the diffusers) is shared."""
    shared = [module for module in model.modules()]
    private = {id(m) for name in modalities for m in model.experts[name].unet.modules()}
    private |= {id(p) for name in modalities for p in model.experts[name].unet.parameters()}
    private |= {id(b) for name in modalities for b in model.experts[name].unet.buffers()}
    memo = {id(m): m for m in shared if id(m) not in private}
    memo.update({id(p): p for p in model.parameters() if id(p) not in private})
    memo.update({id(b): b for b in model.buffers() if id(b) not in private})
    memo.pop(id(model), None)
    for name in modalities:  # the Expert and the containers leading to its UNet are new objects too
        memo.pop(id(model.experts[name]), None)
    memo.pop(id(model.experts), None)
    return copy.deepcopy(model, memo)


def execute(
    model: nn.Module, run: EditRun, on_step: Optional[Callable[[str, int, int], None]] = None,
    cancel: Optional[threading.Event] = None, progress: bool = False,
) -> EditResult:
    """Run (or resume) ``run`` on a private copy of the experts it edits. ``on_step(stage, done, total)`` after
    every optimisation step and α image; when ``cancel`` is set the run stops at the next step with
    :class:`Cancelled` (the stages finished so far stay on disk)."""

    def step(stage: str, done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(stage)
        if on_step is not None:
            on_step(stage, done, total)

    private = model_for_edit(model, list(run.targets))
    resolution = private.vae.resolution
    with Image.open(run.image) as saved:
        face = fit_to_resolution(saved.convert("RGB"), resolution)
    return run_edit(private, face, run.targets, run.out_dir, run.options, run.provenance, progress=progress, on_step=step)


def alpha_gallery(result: EditResult, alphas: Sequence[float]) -> list[tuple[Path, str]]:
    """(picture, "α = a") for every image of the sweep, in order."""
    files = sorted(result.out_dir.glob("alpha_*.png"))
    by_index = {int(p.name.split("_")[1]): p for p in files}
    return [(by_index[k], f"α = {a:g}") for k, a in enumerate(alphas) if k in by_index]

