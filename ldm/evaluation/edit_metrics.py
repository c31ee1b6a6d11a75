"""Measuring Imagic edits on FaceWorld: did the edit reach its target, and did everything else stay?

FaceWorld can render any test face again with chosen factors changed and the same render noise
(:func:`ldm.data.faceworld.render_sample`), so every edit has an exact target:

* **text** edits change the caption-only factors: the age moves two levels (mod 5) and, for men, the beard
  two levels (mod 4); the target caption is the face's own caption template with the new levels.
* **mask** edits change one mask-only factor: glasses toggled (even cases) or the hair length moved one level
  (odd cases); the target mask is the re-rendered face's mask.
* **collaborative** edits do both at once.

Metrics per edited image (the evaluators: a face parser ``[B, 19, H, W]`` logits and an attribute classifier
``{"age", "beard", "gender"}`` logits, both on images in [-1, 1] at the model's resolution):

==================  ===========================================================================================
target age / beard  the classifier's age (beard: men only) equals the target level (text, collaborative)
target mask         parser pixel accuracy against the target mask inside the edited region (the 32x32 pixels
                    where the target mask differs from the input's), as mask accuracy is measured at 32x32;
                    also split by the change: (glasses) on the glasses edits, (hair) on the hair-length edits
kept mask           parser pixel accuracy against the input's mask outside the edited region (all pixels for
                    text edits: their mask must not change)
kept attributes     the classifier's predictions of the factors the edit did not ask to change equal the input's
                    (gender for text edits; age, beard and gender for mask edits; gender for collaborative)
PSNR outside        PSNR (dB) between the input and the edited image over the pixels outside the edited region:
                    the changed mask pixels (mask edits) and the pixels of the classes the caption's factors
                    paint (``TEXT_EDIT_CLASSES``: skin, nose, brows, ears, hair, neck; text edits)
LPIPS outside       LPIPS between the input and the edited image with the edited region pasted back from the
                    input (optional: needs the LPIPS weights)
==================  ===========================================================================================

The same metrics on the unedited input (row ``input``) show how far the targets are from the start and
what the evaluators score on real FaceWorld images. The rows ``<mode>: target via VAE`` score FaceWorld's exact
render of each mode's target (the same face with only the edited factors changed) after the VAE: the most an
edit decoded by this VAE can reach (e.g. the VAE blurs thin glasses frames, which the parser then misses).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ldm.fileio import atomic_write_bytes
from ldm.data import faceworld, masks
from ldm.data.celeba import image_to_tensor, read_image, read_meta, split_names
from ldm.editing import MODES, EditOptions, EditResult, encode_input, run_edit
from ldm.errors import DataError, UserError
from ldm.evaluation.metrics import resize_index_masks

logger = logging.getLogger(__name__)

TEXT_EDIT_CLASSES = (faceworld.SKIN, faceworld.NOSE, faceworld.L_BROW, faceworld.R_BROW, faceworld.L_EAR,
                     faceworld.R_EAR, faceworld.HAIR, faceworld.NECK)  # fmt: skip
EDIT_MODES = ("text", "mask", "collaborative")
METRICS = ("target_age", "target_beard", "target_mask", "target_glasses", "target_hair", "kept_mask", "kept_attributes",
           "psnr_outside", "lpips_outside")
CEILING = "target via VAE"  # the rows of FaceWorld's exact targets passed through the VAE


@dataclass(frozen=True)
class EditCase:
    """One FaceWorld test face and its edit targets."""

    name: str
    image: Image.Image  # the data set's image (the input)
    source_mask: np.ndarray  # [H, W] class ids of the input
    target_mask: np.ndarray  # [H, W] class ids after the mask edit
    target_caption: str
    source_labels: Mapping[str, int]  # age, beard, gender of the input
    target_labels: Mapping[str, int]  # after the text edit
    mask_change: str  # "glasses" or "hair_length"
    target_images: Mapping[str, Image.Image] = field(default_factory=dict)  # {mode: FaceWorld's render of its target}


def faceworld_case(seed: int, index: int, size: int, supersample: Optional[int] = None, mask_change: str = "glasses",
                   version: int = faceworld.VERSION) -> EditCase:
    """FaceWorld face ``index`` of the world ``seed`` (renderer ``version``), rendered at ``size`` (the input image
    is the render), with its edit targets (module docstring); ``mask_change`` is "glasses" (toggled) or
    "hair_length" (one level longer)."""
    if mask_change not in ("glasses", "hair_length"):
        raise ValueError(f"mask_change must be 'glasses' or 'hair_length', got {mask_change!r}")
    f = faceworld.sample_factors(seed, index)
    age = (f.age + 2) % len(faceworld.AGE_LEVELS)
    beard = (f.beard + 2) % len(faceworld.BEARD_LEVELS) if f.gender == 1 else 0  # women have no beard
    change = {"glasses": 1 - f.glasses} if mask_change == "glasses" else {"hair_length": (f.hair_length + 1) % 3}
    source = faceworld.render_sample(seed, index, size, supersample, version=version)
    caption_change = {"age": age, "beard": beard}
    renders = {mode: faceworld.render_sample(seed, index, size, supersample, version=version, **changes)
               for mode, changes in (("text", caption_change), ("mask", change), ("collaborative", {**caption_change, **change}))}
    return EditCase(
        name=str(index), image=Image.fromarray(source.image), source_mask=source.mask, target_mask=renders["mask"].mask,
        target_caption=faceworld.make_caption(replace(f, age=age, beard=beard)),
        source_labels={"age": f.age, "beard": f.beard, "gender": f.gender},
        target_labels={"age": age, "beard": beard, "gender": f.gender}, mask_change=mask_change,
        target_images={mode: Image.fromarray(r.image) for mode, r in renders.items()},
    )


def faceworld_cases(root: str | Path, num: int, resolution: int, offset: int = 0) -> list[EditCase]:
    """``num`` faces of a FaceWorld's test split from its ``offset``-th on (0: the first ``num``), with their edit
    targets (module docstring); the input images are the data set's files. A face's mask change (glasses or hair
    length) depends on its position in the split, not on ``offset``, so the same face gets the same edit."""
    root = Path(root)
    meta = read_meta(root)
    if meta.get("kind") != "faceworld":
        raise DataError(f"{root} is not a FaceWorld (its meta.json has no kind 'faceworld'); make one with scripts/make_faceworld.py")
    seed, size, supersample = int(meta["seed"]), int(meta["size"]), int(meta["supersample"])
    version = int(meta.get("version", 1))  # worlds made before versions were recorded are version 1
    if size != resolution:
        raise DataError(f"{root} holds {size}x{size} faces but the model works at {resolution}x{resolution}; use a FaceWorld of that size")
    names = split_names([str(i) for i in range(int(meta["num"]))], "test", int(meta["test_size"]), str(root / "meta.json"))
    if offset < 0 or offset + num > len(names):
        raise UserError(f"--offset {offset} --num {num} asks for test faces {offset}..{offset + num - 1}, but {root} has "
                        f"{len(names)} (0..{len(names) - 1}); give offset >= 0 and offset + num <= {len(names)}")
    cases = []
    for k, name in enumerate(names[offset:offset + num], start=offset):
        case = faceworld_case(seed, int(name), size, supersample, "glasses" if k % 2 == 0 else "hair_length", version)
        cases.append(replace(case, image=read_image(faceworld.sample_paths(root, name, size).image, resolution)))
    return cases


# ------------------------------------------------------------------------------------------------
# Metrics


def to_32(mask: np.ndarray) -> np.ndarray:
    """An index mask [H, W] at 32x32, nearest at pixel centres, as the mask condition is made."""
    return resize_index_masks(torch.from_numpy(np.asarray(mask, dtype=np.int64))[None])[0].numpy()


def psnr(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> Optional[float]:
    """PSNR in dB between images in [-1, 1] ([3, H, W]) over the pixels where ``keep`` [H, W] is true."""
    if not bool(keep.any()):
        return None
    mse = ((a - b) ** 2)[:, keep].mean().item() / 4.0  # (x / 2)² : the range [-1, 1] has width 2
    return 99.0 if mse == 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def image_metrics(
    case: EditCase, image: torch.Tensor, mode: str, parser: nn.Module, classifier: nn.Module,
    lpips: Optional[nn.Module] = None,
) -> dict[str, Optional[float]]:
    """The metrics of one edited (or, with mode "input", unedited) image [3, H, W] in [-1, 1]; None = not defined."""
    device = next(parser.parameters()).device
    x = image.unsqueeze(0).to(device)
    pred_mask = parser(x).argmax(dim=1)[0].cpu().numpy()  # [H, W]
    attributes = {k: int(v.argmax(dim=-1)[0]) for k, v in classifier(x).items()}
    text = mode in ("text", "collaborative")
    mask = mode in ("mask", "collaborative")
    out: dict[str, Optional[float]] = dict.fromkeys(METRICS)

    if text:
        out["target_age"] = float(attributes["age"] == case.target_labels["age"])
        if case.target_labels["gender"] == 1:
            out["target_beard"] = float(attributes["beard"] == case.target_labels["beard"])
    src32, tgt32, pred32 = to_32(case.source_mask), to_32(case.target_mask), to_32(pred_mask)
    edited32 = (src32 != tgt32) if mask else np.zeros_like(src32, dtype=bool)
    if mask and edited32.any():
        out["target_mask"] = float((pred32 == tgt32)[edited32].mean())
        out["target_glasses" if case.mask_change == "glasses" else "target_hair"] = out["target_mask"]
    out["kept_mask"] = float((pred32 == src32)[~edited32].mean())
    kept = ["gender"] if text else ["age", "beard", "gender"]
    out["kept_attributes"] = float(all(attributes[k] == case.source_labels[k] for k in kept))

    edited = np.zeros(case.source_mask.shape, dtype=bool)
    if mask:
        edited |= case.source_mask != case.target_mask
    if text:
        edited |= np.isin(case.source_mask, TEXT_EDIT_CLASSES)
    edited_t = torch.from_numpy(edited)
    source = image_to_tensor(case.image)
    out["psnr_outside"] = psnr(source, image.cpu().float(), ~edited_t)
    if lpips is not None:
        composite = torch.where(edited_t, source, image.cpu().float())
        out["lpips_outside"] = float(lpips(source.unsqueeze(0).to(device), composite.unsqueeze(0).to(device)).mean())
    return out


def mean_metrics(rows: Sequence[Mapping[str, Optional[float]]]) -> dict[str, Optional[float]]:
    """Per metric, the mean over the images where it is defined (None where it never is)."""
    out = {}
    for k in METRICS:
        values = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(values)) if values else None
    return out


# ------------------------------------------------------------------------------------------------
# The measurement


def run_edit_modes(
    model: nn.Module,
    image: Image.Image,
    targets: Mapping[str, Any],
    run_dirs: Mapping[str, Path],
    options: EditOptions,
    provenance: Optional[Mapping[str, Any]] = None,
    *,
    progress: bool = False,
) -> dict[str, EditResult]:
    """Edit one ``image`` in every mode of ``run_dirs`` (``{mode: run directory}``; modes of ``EDIT_MODES``), each
    mode taking the targets of its modalities from ``targets`` (``{"text": [caption], "seg_mask": [1, 19, 1024]}``).

    The collaborative edit runs first, stages A and B for both modalities; the text and mask edits take those
    stages' files (a modality's stages draw the same numbers alone or together), so each expert is fine-tuned
    once. The experts' weights are restored before every edit and after the last. Returns ``{mode: EditResult}``.
    """
    unknown = [m for m in run_dirs if m not in EDIT_MODES]
    if unknown:
        raise UserError(f"unknown edit modes {unknown}; choose from {list(EDIT_MODES)}")
    originals = {m: {k: v.detach().clone() for k, v in e.unet.state_dict().items()} for m, e in model.experts.items()}
    results = {}
    try:
        for mode in [m for m in ("collaborative", "text", "mask") if m in run_dirs]:
            wanted = MODES[mode]
            run_dir, shared = Path(run_dirs[mode]), run_dirs.get("collaborative")
            if mode != "collaborative" and shared is not None and Path(shared).is_dir():
                for m in wanted:  # stages A and B already run by the collaborative edit
                    for stem in (f"embedding_{m}", f"expert_{m}"):
                        src, dst = Path(shared) / f"{stem}.safetensors", run_dir / f"{stem}.safetensors"
                        if src.is_file() and not dst.exists():
                            run_dir.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(src, dst)
            for m, state in originals.items():
                model.experts[m].unet.load_state_dict(state)
            results[mode] = run_edit(model, image, {m: targets[m] for m in wanted}, run_dir, options,
                                     {**(provenance or {}), "mode": mode}, progress=progress)
    finally:
        for m, state in originals.items():
            model.experts[m].unet.load_state_dict(state)
    return results


@torch.no_grad()
def vae_reconstruction(model: nn.Module, image: Image.Image) -> torch.Tensor:
    """D(E(image)) [3, H, W] in [-1, 1] on the CPU: the best any edit decoded by this VAE can give of ``image``."""
    return model.decode_latents(encode_input(model, image)).clamp(-1, 1)[0].float().cpu()


def evaluate_edits(
    model: nn.Module,
    cases: Sequence[EditCase],
    parser: nn.Module,
    classifier: nn.Module,
    out_dir: str | Path,
    options: EditOptions,
    *,
    modes: Sequence[str] = EDIT_MODES,
    lpips: Optional[nn.Module] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Edit every case in every mode (``out_dir/<name>_<mode>/``, resumable run directories) and measure.

    Returns rows ``{"mode", "alpha", "n", "row", <metric>: mean}``: one ``input`` row, one row per mode of its
    exact targets (FaceWorld's renders of the edited face) passed through the VAE (``row`` :data:`CEILING`: what
    an edit decoded by this VAE can score at best), then one per (mode, α) (``row`` "edit").
    The collaborative edit runs stages A and B for both modalities; the text and mask edits take those stages'
    files (a modality's stages draw the same numbers alone or together), so each expert is fine-tuned once.
    """
    unknown = [m for m in modes if m not in EDIT_MODES]
    if unknown:
        raise UserError(f"unknown edit modes {unknown}; choose from {list(EDIT_MODES)}")
    out = Path(out_dir)
    per_image: dict[tuple[str, float], list[dict]] = {}
    input_rows, ceiling_rows = [], {mode: [] for mode in modes}
    for case in cases:
        input_rows.append(image_metrics(case, image_to_tensor(case.image), "input", parser, classifier, lpips))
        for mode in modes:
            if mode in case.target_images:
                ceiling_rows[mode].append(image_metrics(case, vae_reconstruction(model, case.target_images[mode]), mode,
                                                        parser, classifier, lpips))
        targets = {"text": [case.target_caption], "seg_mask": masks.index_mask_to_onehot(case.target_mask).unsqueeze(0)}
        run_dirs = {mode: out / f"{case.name}_{mode}" for mode in modes}
        results = run_edit_modes(model, case.image, targets, run_dirs, options,
                                 {**(provenance or {}), "case": case.name}, progress=progress)
        for mode, result in results.items():
            for alpha, image in zip(options.alphas, result.images):
                per_image.setdefault((mode, alpha), []).append(image_metrics(case, image, mode, parser, classifier, lpips))
    rows = [{"mode": "input", "alpha": None, "n": len(input_rows), "row": "input", **mean_metrics(input_rows)}]
    rows += [{"mode": mode, "alpha": None, "n": len(values), "row": CEILING, **mean_metrics(values)}
             for mode, values in ceiling_rows.items() if values]
    for mode in EDIT_MODES:
        for alpha in options.alphas:
            if (mode, alpha) in per_image:
                values = per_image[(mode, alpha)]
                rows.append({"mode": mode, "alpha": alpha, "n": len(values), "row": "edit", **mean_metrics(values)})
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table (accuracies in %, PSNR in dB, '–' where a metric does not apply)."""
    head = ["edit", "α", "N", "target age", "target beard", "target mask", "(glasses)", "(hair)", "kept mask",
            "kept attributes", "PSNR outside (dB)", "LPIPS outside"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        name = f"{r['mode']}: {CEILING}" if r.get("row") == CEILING else r["mode"]
        cells = [name, "–" if r["alpha"] is None else f"{r['alpha']:g}", str(r["n"])]
        for k in METRICS:
            v = r.get(k)
            if v is None:
                cells.append("–")
            elif k.startswith("psnr"):
                cells.append(f"{v:.2f}")
            elif k.startswith("lpips"):
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{100 * v:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, settings: Mapping[str, Any]) -> tuple[Path, Path]:
    """``results.json`` (rows and settings) and ``results.md`` (the table)."""
    out = Path(out_dir)
    json_path, md_path = out / "results.json", out / "results.md"
    atomic_write_bytes(json_path, json.dumps({"settings": dict(settings), "rows": list(rows)}, indent=2).encode())
    atomic_write_bytes(md_path, (markdown_table(rows) + "\n").encode())
    return json_path, md_path
