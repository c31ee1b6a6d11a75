"""The paper's figure kinds, regenerated from a trained collaborative model (``make figures`` runs
``scripts/figures.py``; ``docs/figures.md`` shows them):

================  ==============================================================  ====================================
file              what                                                            in the paper
================  ==============================================================  ====================================
teaser.png        mask + caption -> faces, several conditions, the collaborative  Fig. 1(a); the slides' "Visual
                  sampler only                                                    Results: Generation"
comparison.png    collaborative, composable, text only, mask only on the same     the qualitative generation
                  conditions, x_T and sampler noise (one row per condition),      comparison; supp. Fig. A1/A2
                  beside the test image the conditions come from
influence_a.png   each modality's influence map (its softmax weight at every      supplementary Fig. A4 (a)-(f)
influence_b.png   latent pixel) at selected sampler steps, with the decoded x_t   supplementary Fig. A5
editing.png       α sweeps of the text, mask and collaborative Imagic edits of     Fig. 1(b), supp. Fig. A3, and the
                  one face (e(α) = α·e_target + (1 − α)·e_opt)                    α interpolation of supp. §A.2
figures.json      for every figure: file, paper figure, rows, columns, panel boxes, settings
================  ==============================================================  ====================================

Every panel is labelled: method (row or column header), condition (the mask as its 32x32 picture and the
caption's text beside the samples), timestep or α on the axis, a colour bar for influence maps.

Conditions come from FaceWorld's test split (rendered on the fly, :func:`faceworld_pairs`), or from any
folder in the preprocessed layout (:func:`dataset_pairs`, e.g. real CelebA test pairs). The edit input is a
FaceWorld test face with exact re-rendered targets (:func:`faceworld_edit_input`), a data set's test face
edited toward another's caption and mask, or given files (:func:`file_edit_input`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from PIL import Image

from ldm.fileio import atomic_write_bytes
from ldm.config import load_config
from ldm.data import faceworld
from ldm.data.celeba import PreprocessedFaces, read_meta
from ldm.data.masks import colorize, index_mask_to_onehot, load_mask_condition, onehot_to_index
from ldm.diffusion.collaborative import CollaborativeOptions
from ldm.diffusion.samplers import SamplerOptions
from ldm.editing import EditOptions, EditResult, file_sha256
from ldm.errors import DataError, UserError
from ldm.images import save_png, to_uint8
from ldm.pipeline import Samples, Trace, sample
from ldm.plotting import Figure, colormap, panel_grid, text_height, text_panel

FIGURES = ("teaser", "comparison", "influence", "editing")  # what --only chooses from
METHODS = ("collaborative", "composable", "text", "mask")
METHOD_LABELS = {"collaborative": "collaborative (ours)", "composable": "composable", "text": "text only", "mask": "mask only"}
EDIT_ROWS = ("text", "mask", "collaborative")
MODALITY_LABELS = {"seg_mask": "mask", "text": "text"}
PAPER = {
    "teaser": "Fig. 1(a) (multi-modal face generation); the slides' \"Visual Results: Generation\"",
    "comparison": "the qualitative comparison of multi-modal generation (ours beside Composable and the uni-modal "
                  "experts); more generation results in supplementary Fig. A1/A2",
    "influence_a": "supplementary Fig. A4 (influence functions over the DDIM steps, first condition)",
    "influence_b": "supplementary Fig. A5 (the same for a second condition)",
    "editing": "Fig. 1(b) and supplementary Fig. A3 (multi-modal editing), with the α interpolation of "
               "supplementary §A.2 (Imagic per modality)",
}
MANIFEST = "figures.json"


# ------------------------------------------------------------------------------------------------
# Conditions and the edit input


@dataclass(frozen=True)
class Pair:
    """One (mask, caption) condition."""

    name: str
    text: str
    seg_mask: torch.Tensor  # one-hot [19, 1024]
    image: Optional[np.ndarray] = None  # the test image the condition comes from, uint8 [H, W, 3], when known


FACEWORLD_RESOLUTION = 64  # the shipped FaceWorld models' image size


def faceworld_test_split(num: int, test_size: Optional[int] = None) -> range:
    """The indices of a FaceWorld's test split: the last ``test_size`` (default a tenth, as make_faceworld)."""
    return range(num - (max(1, num // 10) if test_size is None else test_size), num)


def faceworld_pairs(seed: int, num: int, count: int, test_size: Optional[int] = None) -> list[Pair]:
    """``count`` test-split pairs of the FaceWorld (seed, num), rendered on their own (FaceWorld samples are pure
    functions of (seed, index)); greedily chosen so that their (gender, age, beard) differ where possible."""
    test = faceworld_test_split(num, test_size)
    chosen, seen = [], set()
    for strict in (True, False):
        for i in test:
            f = faceworld.sample_factors(seed, i)
            key = (f.gender, f.age, f.beard)
            if len(chosen) < count and i not in chosen and (key not in seen or not strict):
                chosen.append(i)
                seen.add(key)
    pairs = []
    for i in chosen:
        face = faceworld.render_sample(seed, i, FACEWORLD_RESOLUTION)
        pairs.append(Pair(str(i), faceworld.make_caption(faceworld.sample_factors(seed, i)),
                          index_mask_to_onehot(face.mask), face.image))
    return pairs


def dataset_pairs(root: str | Path, resolution: int, count: int) -> list[Pair]:
    """``count`` test-split pairs of a folder in the preprocessed layout, distinct captions first."""
    data = PreprocessedFaces(str(root), split="test", resolution=resolution, keys=["image", "text", "seg_mask"])
    if len(data) == 0:
        raise DataError(f"{root}: the test split is empty; give a data folder with test pairs")
    order, seen = [], set()
    for strict in (True, False):
        for i in range(len(data)):
            caption = data.captions[data.names[i]]
            if len(order) < count and i not in order and (caption not in seen or not strict):
                order.append(i)
                seen.add(caption)
    items = [data[i] for i in order]
    return [Pair(data.names[i], item["text"], item["seg_mask"], to_uint8(item["image"])) for i, item in zip(order, items)]


@dataclass(frozen=True)
class EditInput:
    """A face to edit and its targets."""

    name: str
    image: Image.Image  # RGB at the model's resolution
    text: str  # target caption
    seg_mask: torch.Tensor  # target mask, one-hot [19, 1024]
    source_mask: Optional[torch.Tensor] = None  # the input's own mask (one-hot), when known
    change: str = ""  # what the targets change, in words

    def targets(self) -> dict[str, Any]:
        return {"text": [self.text], "seg_mask": self.seg_mask.unsqueeze(0)}

    def digest(self) -> str:
        """SHA-256 of the input pixels and the targets (names the edit's run directories)."""
        h = hashlib.sha256(np.asarray(self.image).tobytes())
        h.update(self.text.encode())
        h.update(self.seg_mask.to(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def faceworld_edit_input(seed: int, num: int, resolution: int, test_size: Optional[int] = None) -> EditInput:
    """The first man of the FaceWorld (seed, num) test split (so the beard can change), rendered at
    ``resolution``: target caption with the age two levels on and the beard two levels on, target mask with the
    glasses toggled (the rule of :func:`ldm.evaluation.edit_metrics.faceworld_case`)."""
    from ldm.evaluation.edit_metrics import faceworld_case

    test = faceworld_test_split(num, test_size)
    index = next((i for i in test if faceworld.sample_factors(seed, i).gender == 1), test[0])
    case = faceworld_case(seed, index, resolution, mask_change="glasses")
    f = faceworld.sample_factors(seed, index)
    return EditInput(
        name=case.name, image=case.image, text=case.target_caption, seg_mask=index_mask_to_onehot(case.target_mask),
        source_mask=index_mask_to_onehot(case.source_mask),
        change=f"FaceWorld test face {case.name} (\"{faceworld.make_caption(f)}\"): age and beard two levels on "
               f"(caption), glasses {'off' if f.glasses else 'on'} (mask)",
    )


def dataset_edit_input(root: str | Path, resolution: int, pairs: Sequence[Pair]) -> EditInput:
    """Test face ``pairs[0]`` of a preprocessed folder edited toward the caption and mask of ``pairs[1]``
    (a FaceWorld folder gives exact targets instead, as :func:`faceworld_edit_input`)."""
    meta = read_meta(Path(root))
    if meta.get("kind") == "faceworld":
        if int(meta.get("size", resolution)) != resolution:
            raise DataError(f"{root} holds {meta.get('size')}x{meta.get('size')} faces but the model works at "
                            f"{resolution}x{resolution}; use a FaceWorld of that size")
        return faceworld_edit_input(int(meta["seed"]), int(meta["num"]), resolution, meta.get("test_size"))
    if len(pairs) < 2:
        raise UserError("the edit figure takes its targets from a second test pair; give --pairs 2 or more, or --edit-image/--edit-text/--edit-mask")
    data = PreprocessedFaces(str(root), split="test", resolution=resolution, keys=["image", "seg_mask"])
    item = data[data.names.index(pairs[0].name)]
    image = Image.fromarray(to_uint8(item["image"]))
    return EditInput(pairs[0].name, image, pairs[1].text, pairs[1].seg_mask, item["seg_mask"],
                     change=f"test face {pairs[0].name} toward the caption and mask of test face {pairs[1].name}")


def file_edit_input(image: Image.Image, name: str, text: str, mask: str | Path) -> EditInput:
    """A given face (already at the model's resolution) and target files."""
    if not text.strip():
        raise UserError("empty --edit-text; give the target caption")
    return EditInput(name, image, text, load_mask_condition(mask), change=f"{name} toward the given caption and mask")


def mask_panel(onehot: torch.Tensor) -> np.ndarray:
    """The mask condition as the model sees it: 32x32 class ids in the CelebAMask-HQ palette."""
    return colorize(onehot_to_index(onehot.cpu()).numpy())


# ------------------------------------------------------------------------------------------------
# Sampling every method once, in one batch each


@dataclass(frozen=True)
class GenerationSettings:
    sampling: SamplerOptions = SamplerOptions()
    preset: str = "paper"
    seed: int = 0
    samples: int = 2  # collaborative samples per condition in the teaser (seeds seed, seed + 1, ...)
    influence_steps: int = 10  # the timesteps shown in the influence figures


def sample_methods(model: nn.Module, pairs: Sequence[Pair], settings: GenerationSettings,
                   methods: Sequence[str] = METHODS) -> dict[str, list[Samples]]:
    """``{method: [Samples of every pair from seed s, ...]}``: one batch of all pairs per (method, seed), every
    method from ``settings.seed`` (the same x_T and sampler noise for all of them), the collaborative sampler
    also from the next ``settings.samples - 1`` seeds (the teaser's further samples). The collaborative batch
    of ``settings.seed`` records its trace (influence weights and x_t at every step)."""
    conditions = {"seg_mask": torch.stack([p.seg_mask for p in pairs]), "text": [p.text for p in pairs]}  # [P, 19, 1024]
    options = CollaborativeOptions.from_preset(settings.preset)
    out = {}
    for method in methods:
        seeds = range(settings.seed, settings.seed + (settings.samples if method == "collaborative" else 1))
        out[method] = [sample(model, conditions, method=method, **settings.sampling.to_dict(),
                              generator=torch.Generator().manual_seed(seed), options=options,
                              record_trace=method == "collaborative" and seed == settings.seed) for seed in seeds]
    return out


def describe(settings: GenerationSettings) -> str:
    return f"{settings.sampling.describe()}, {settings.preset} preset, seed {settings.seed}"


# ------------------------------------------------------------------------------------------------
# The figures


def teaser_figure(pairs: Sequence[Pair], samples: Sequence[torch.Tensor], settings: GenerationSettings, size: int,
                  model_name: str) -> Figure:
    """One column per condition: the mask, the caption, then one collaborative sample per seed (``samples``: one
    ``[P, 3, H, W]`` batch per seed)."""
    strip = min(text_height([p.text for p in pairs], size), size)  # the captions as a strip under the masks
    rows = [[mask_panel(p.seg_mask) for p in pairs], [text_panel(p.text, size, strip) for p in pairs]]
    rows += [[to_uint8(image) for image in batch] for batch in samples]
    return panel_grid(
        rows, size=size, smooth={(0, c): False for c in range(len(pairs))}, row_heights=[None, strip] + [None] * len(samples),
        title=f"Collaborative Diffusion: mask + caption -> face ({model_name})",
        column_labels=[f"condition {p.name}" for p in pairs],
        row_labels=["mask condition", "text condition"] + [f"collaborative, seed {settings.seed + j}" for j in range(len(samples))],
        footnote=f"Each column: one (mask, caption) condition and the collaborative sampler's samples for it, one row "
                 f"per seed of x_T and the sampler noise. {describe(settings)}.",
    )


def comparison_figure(pairs: Sequence[Pair], by_method: Mapping[str, torch.Tensor], settings: GenerationSettings,
                      size: int, model_name: str) -> Figure:
    """One row per condition: mask, caption, the test image the condition comes from (when every pair has one),
    then each method's sample (``by_method``: ``[P, 3, H, W]`` each, from the same seed)."""
    methods = list(by_method)
    reference = all(p.image is not None for p in pairs)
    first = 3 if reference else 2  # the first method's column
    rows = [[mask_panel(p.seg_mask), text_panel(p.text, size)] + ([p.image] if reference else [])
            + [to_uint8(by_method[m][i]) for m in methods] for i, p in enumerate(pairs)]
    return panel_grid(
        rows, size=size, smooth={(r, 0): False for r in range(len(pairs))}, column_gaps=(first - 1,),
        title=f"Collaborative vs. composable vs. one expert alone, same conditions and seeds ({model_name})",
        column_labels=["mask condition", "text condition"] + (["test image (reference)"] if reference else [])
        + [METHOD_LABELS.get(m, m) for m in methods],
        row_labels=[f"condition {p.name}" for p in pairs],
        x_label_columns=(first, first - 1 + len(methods)), x_label="method (each row: the same x_T and sampler noise for every method)",
        footnote=(f"test image: the held-out image the mask and caption were taken from, what following both looks like. "
                  if reference else "") + f"composable: the experts' noise predictions with equal global weights; text "
                 f"only / mask only: one expert with its own condition. {describe(settings)}.",
    )


def selected_steps(n: int, count: int) -> list[int]:
    """``count`` step indices spread evenly over ``n`` steps, first and last included."""
    count = min(count, n)
    return sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})


def influence_figure(pair: Pair, trace: Trace, index: int, final_image: torch.Tensor,
                     decode: Callable[[torch.Tensor], torch.Tensor], settings: GenerationSettings, size: int,
                     model_name: str, paper_figure: str) -> Figure:
    """Supplementary Fig. A4/A5 for sample ``index`` of the trace: per modality its condition, then its influence
    map at the selected steps (one colour scale, 0 to 1); last row the final image and the decoded x_t."""
    steps = selected_steps(len(trace.timesteps), settings.influence_steps)
    modalities = sorted(trace.weights, key=lambda m: (m != "seg_mask", m))  # mask first, as in the paper
    rows, labels, smooth = [], [], {}
    letters = iter("abcdefghijklmnop")
    for r, m in enumerate(modalities):
        name = MODALITY_LABELS.get(m, m)
        condition = mask_panel(pair.seg_mask) if m == "seg_mask" else text_panel(pair.text, size) if m == "text" else None
        smooth[(r, 0)] = False
        maps = [colormap(trace.weights[m][s][index, 0].numpy()) for s in steps]
        for c in range(1, len(maps) + 1):
            smooth[(r, c)] = False
        rows.append([condition, *maps])
        labels.append(f"({next(letters)}) {name} condition; ({next(letters)}) its influence I_{name},t")
    with torch.no_grad():
        decoded = [to_uint8(decode(trace.x_t[s][index:index + 1])[0]) for s in steps]
    rows.append([to_uint8(final_image), *decoded])
    labels.append(f"({next(letters)}) final image x_0; ({next(letters)}) x_t decoded by the VAE")
    ts = [trace.timesteps[s] for s in steps]
    return panel_grid(
        rows, size=size, smooth=smooth,
        title=f"Influence of each modality over the sampler steps, condition {pair.name} ({paper_figure}; {model_name})",
        column_labels=["condition / result"] + [f"t = {t}" for t in ts],
        row_labels=labels,
        x_label_columns=(1, len(steps)),
        x_label=f"sampler timestep t ({len(ts)} of the {len(trace.timesteps)} steps; sampling runs left to right, "
                f"x_t is the latent after the step at t)",
        colorbar_rows=(0, len(modalities) - 1), colorbar_range=(0.0, 1.0),
        colorbar_label="influence weight (softmax over modalities)",
        footnote=f"Each map is the dynamic diffuser's weight of that modality's expert at every latent pixel "
                 f"({trace.weights[modalities[0]][0].shape[-1]}x{trace.weights[modalities[0]][0].shape[-2]}, enlarged); "
                 f"the weights of all modalities sum to 1 at every pixel. {describe(settings)}.",
    )


def editing_figure(edit: EditInput, results: Mapping[str, EditResult], options: EditOptions, size: int, model_name: str) -> Figure:
    """One row per edit mode: the input, the masks (input's and target) and the caption the mode uses, then its
    α sweep (α on the axis). The drawn text is ASCII and "·" (the glyphs of Pillow's bundled font)."""
    modes = [m for m in EDIT_ROWS if m in results]
    rows, smooth = [], {}
    for r, mode in enumerate(modes):
        use_mask, use_text = mode != "text", mode != "mask"
        smooth[(r, 1)] = smooth[(r, 2)] = False
        source = mask_panel(edit.source_mask) if use_mask and edit.source_mask is not None else None
        rows.append([np.asarray(edit.image.convert("RGB")), source,
                     mask_panel(edit.seg_mask) if use_mask else None,
                     text_panel(edit.text, size) if use_text else None,
                     *[to_uint8(img) for img in results[mode].images]])
    labels = {"text": "text edit (text expert)", "mask": "mask edit (mask expert)",
              "collaborative": "collaborative edit (both experts + dynamic diffusers)"}
    return panel_grid(
        rows, size=size, smooth=smooth, column_gaps=(3,),
        title=f"Imagic editing, alpha sweeps: {edit.change} ({model_name})",
        column_labels=["input", "input mask", "target mask", "target caption"] + [f"alpha = {a:g}" for a in options.alphas],
        row_labels=[labels[m] for m in modes],
        x_label_columns=(4, 3 + len(options.alphas)),
        x_label="alpha in e(alpha) = alpha·e_target + (1 - alpha)·e_opt: 0 is the embedding fitted to the input, 1 the target's, "
                "beyond 1 extrapolates",
        footnote=f"Stage A: {options.embed_steps} steps on the target embedding (lr {options.embed_lr:g}); stage B: "
                 f"{options.finetune_steps} steps fine-tuning the expert (lr {options.finetune_lr:g}); stage C: "
                 f"{options.sampler_options().describe()}, seed {options.seed}, the same x_T for every alpha"
                 f"{'' if options.strength >= 1 else f', started from the input noised to t < {options.strength:g}·T (SDEdit)'}. The "
                 f"collaborative edit uses the same alpha for both modalities.",
    )


# ------------------------------------------------------------------------------------------------
# Provenance and writing


def weight_files(config: str | Path, ckpt: str | Path, overrides: Sequence[str] = ()) -> list[Path]:
    """``ckpt`` and every existing weight file ``config`` names (the ``ckpt`` values of its model tree, e.g. the
    experts and the VAE a partial checkpoint takes from their own files)."""
    found = [Path(ckpt)]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "ckpt" and isinstance(value, str) and Path(value).is_file():
                    found.append(Path(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(OmegaConf.to_container(load_config(config, overrides).model, resolve=True))
    return found


def weights_digest(files: Sequence[str | Path]) -> str:
    """SHA-256 over the bytes of the weight files (a changed model gets new edit run directories)."""
    h = hashlib.sha256()
    for f in sorted({str(Path(f)) for f in files}):
        h.update(f.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def edit_run_key(edit: EditInput, options: EditOptions, weights: str) -> str:
    """Ten hex digits naming the run directories of one edit: the same input, targets, options and weights reuse
    the same directories (finished stages are skipped), anything else gets new ones."""
    text = json.dumps({"input": edit.digest(), "options": asdict(options), "weights": weights}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def write_figures(figures: Mapping[str, Figure], out: str | Path, settings: Mapping[str, Any]) -> list[Path]:
    """Write each figure as ``<name>.png`` and update ``figures.json`` (entries of figures not made now stay)."""
    out = Path(out)
    manifest_path = out / MANIFEST
    manifest = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
    written = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        save_png(fig.image, path)
        written.append(path)
        manifest[name] = {
            "file": path.name, "paper": PAPER[name], "size": [int(fig.image.shape[1]), int(fig.image.shape[0])],
            "rows": fig.rows, "columns": fig.columns,
            "panels": {f"{r},{c}": list(box) for (r, c), box in sorted(fig.panels.items())},
            "settings": dict(settings),
        }
    atomic_write_bytes(manifest_path, json.dumps(dict(sorted(manifest.items())), indent=1).encode())
    return written + [manifest_path]
