"""Regenerate the paper's figure kinds into docs/figures/ (what `make figures` runs): the teaser (mask + caption
-> faces), the comparison of collaborative, composable, text-only and mask-only samples on the same conditions
and seeds, the influence maps of each modality over the sampler steps (supplementary Fig. A4/A5), and the
α sweeps of the text, mask and collaborative edits of one face. docs/figures.md maps each to the paper;
figures.json beside them records rows, columns, panel boxes and settings. Figures of other names in --out are
left alone.

By default it uses the shipped FaceWorld models (checkpoints/faceworld/) and FaceWorld test conditions
rendered on the fly (the world's seed and size from the models' recipe.json). --data takes the test pairs
(and the face to edit) from a folder in the preprocessed layout instead, e.g. real CelebA. The edits run in
resumable run directories under --edit-runs, named by the input, the options and the weights' SHA-256, so a
second run reuses them and a retrained model gets new ones.

Examples:
  python scripts/figures.py                                  # what `make figures` runs
  python scripts/figures.py --only influence --influence-steps 50 --out outputs/figures
  # the released 256 checkpoints with real CelebA test conditions on a GPU, editing with the released budgets
  python scripts/figures.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --data data/celeba --device cuda --embed-steps 500 --finetune-steps 1000 --finetune-lr 1e-6 \\
      --out outputs/figures_256 --edit-runs outputs/figures_256/edits
  # edit a given face (resized and centre-cropped to the model's resolution)
  python scripts/figures.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --only editing --edit-image ../shared/test_data/test_mask_edit/256_input_image/27044.jpg \\
      --edit-text "He is a teen. The face is covered with short pointed beard." \\
      --edit-mask ../shared/test_data/test_mask_edit/256_edited_masks/27044_0_remove_smile_and_rings.png
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ldm import paper_figures as pf
from ldm.cli import (
    add_sampler_arguments,
    existing_file,
    main_guard,
    make_parser,
    sampler_options,
    setup_logging,
    writable_dir,
)
from ldm.config import edit_settings, load_config, sample_settings
from ldm.data.celeba import read_image
from ldm.editing import EditOptions, edit_defaults, fit_to_resolution, parse_alphas
from ldm.errors import UserError
from ldm.evaluation.edit_metrics import run_edit_modes
from ldm.pipeline import load_model

logger = logging.getLogger("figures")
FACEWORLD = Path("checkpoints/faceworld")
FIGURE_ALPHAS = "0,0.5,1,1.5,2"
RELEASED = EditOptions()  # the editing defaults; the figures shorten stages A and B and raise stage B's rate:
FIGURE_EDIT_STEPS = 50  # stages A and B (released: 500 / 1000), so make figures takes minutes on a CPU
FIGURE_FINETUNE_LR = 1e-4  # released 1e-6 was chosen for the 403.6M experts; small experts need more


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", default=str(FACEWORLD / "codiff.yaml"), help="collaborative config")
    p.add_argument("--ckpt", default=str(FACEWORLD / "codiff.safetensors"), help="its checkpoint (ours or released)")
    p.add_argument("--out", default="docs/figures", help="where the figures go")
    p.add_argument("--only", default=",".join(pf.FIGURES), help=f"comma list of {', '.join(pf.FIGURES)}")
    p.add_argument("--data", default=None, help="test conditions (and the face to edit) from this preprocessed folder")
    p.add_argument("--faceworld-seed", type=int, default=None, help="FaceWorld seed without --data (default: recipe.json, else 0)")
    p.add_argument("--faceworld-num", type=int, default=None, help="FaceWorld size without --data (default: recipe.json, else 10000)")
    p.add_argument("--pairs", type=int, default=4, help="(mask, caption) conditions in the teaser and the comparison")
    p.add_argument("--samples", type=int, default=2, help="collaborative samples per condition in the teaser (seeds --seed, --seed + 1, ...)")
    p.add_argument("--influence-steps", type=int, default=10, help="timesteps shown in the influence figures")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and the sampler noise (and of the edits)")
    add_sampler_arguments(p)
    p.add_argument("--preset", default=None, help="collaborative preset: paper or official (default from config)")
    p.add_argument("--edit-image", default=None, help="face to edit (with --edit-text and --edit-mask)")
    p.add_argument("--edit-text", default=None, help="target caption of the edit")
    p.add_argument("--edit-mask", default=None, help="target mask PNG of the edit")
    p.add_argument("--embed-steps", type=int, default=FIGURE_EDIT_STEPS, help=f"edit stage A steps (released: {RELEASED.embed_steps})")
    p.add_argument("--finetune-steps", type=int, default=FIGURE_EDIT_STEPS, help=f"edit stage B steps (released: {RELEASED.finetune_steps})")
    p.add_argument("--embed-lr", type=float, default=None,
                   help=f"edit stage A learning rate (default: the config's edit section, else the released {RELEASED.embed_lr:g})")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help=f"edit stage B learning rate (default: the config's edit section, else {FIGURE_FINETUNE_LR:g}; released "
                        f"{RELEASED.finetune_lr:g} for the 403.6M experts; small experts need more)")
    p.add_argument("--alphas", default=FIGURE_ALPHAS, help="the α sweep, shared by the three edit modes")
    p.add_argument("--edit-runs", default="outputs/figures/edits", help="the edits' resumable run directories")
    p.add_argument("--size", type=int, default=None, help="panel size in px (default: 128, or the image size above 128 up to 256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def check_args(args) -> list[str]:
    """The figures asked for; a UserError names the first bad flag."""
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in only if f not in pf.FIGURES]
    if unknown or not only:
        raise UserError(f"--only {args.only!r}: choose from {', '.join(pf.FIGURES)} (comma list)")
    for flag, value, lo, hi in (("--pairs", args.pairs, 1, 12), ("--samples", args.samples, 1, 8),
                                ("--influence-steps", args.influence_steps, 2, 1000), ("--seed", args.seed, 0, 2**31 - 1)):
        if not lo <= value <= hi:
            raise UserError(f"{flag} {value} is out of range; use {lo} to {hi}")
    if args.size is not None and not 32 <= args.size <= 512:
        raise UserError(f"--size {args.size} is out of range; use 32 to 512 px")
    given = [f for f in ("edit_image", "edit_text", "edit_mask") if getattr(args, f) is not None]
    if given and len(given) < 3:
        raise UserError("give --edit-image, --edit-text and --edit-mask together (or none: a test face and its targets)")
    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is not a folder; give a folder in the preprocessed layout")
    return only


def faceworld_world(args) -> tuple[int, int]:
    """(seed, num) of the FaceWorld the conditions come from: the flags, else the models' recipe.json, else 0, 10000."""
    recipe = Path(args.ckpt).parent / "recipe.json"
    data = json.loads(recipe.read_text()).get("stages", {}).get("data", {}) if recipe.is_file() else {}
    seed = args.faceworld_seed if args.faceworld_seed is not None else int(data.get("seed", 0))
    num = args.faceworld_num if args.faceworld_num is not None else int(data.get("num", 10000))
    if num < 2:
        raise UserError(f"--faceworld-num {num} is too small; the test split needs at least 2 faces")
    return seed, num


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    only = check_args(args)
    cfg = load_config(args.config, args.overrides)
    defaults = sample_settings(cfg)
    settings = pf.GenerationSettings(sampling=sampler_options(args, defaults), preset=args.preset or defaults.preset,
                                     seed=args.seed, samples=args.samples, influence_steps=args.influence_steps)
    # the model's learning rates (config edit: section over the released ones); the figure keeps its own shorter
    # stages, and without a configured stage B rate its own, since the released 1e-6 hardly moves a small expert
    embed_lr = args.embed_lr if args.embed_lr is not None else edit_defaults(cfg, "collaborative")["embed_lr"]
    finetune_lr = args.finetune_lr if args.finetune_lr is not None else (edit_settings(cfg).finetune_lr or FIGURE_FINETUNE_LR)
    edit_options = EditOptions(
        embed_steps=args.embed_steps, embed_lr=embed_lr, finetune_steps=args.finetune_steps,
        finetune_lr=finetune_lr, alphas=parse_alphas(args.alphas), seed=args.seed, preset=settings.preset,
        strength=edit_defaults(cfg, "collaborative")["strength"],
        **{k: v for k, v in settings.sampling.to_dict().items()},
    )
    edit_options.check()
    ckpt = existing_file(args.ckpt, "checkpoint", "--ckpt")
    out = writable_dir(args.out)
    start = time.time()
    model = load_model(args.config, ckpt, args.device, args.overrides)
    if not getattr(model, "diffusers", None):
        raise UserError(f"{args.config} is not a collaborative model (no dynamic diffusers); give a collaborative config")
    resolution = model.vae.resolution
    size = args.size or min(max(128, resolution), 256)
    model_name = "FaceWorld models" if Path(args.ckpt).parent == FACEWORLD else Path(args.ckpt).name
    if args.data is not None:
        pairs = pf.dataset_pairs(args.data, resolution, args.pairs)
        source = f"test pairs of {args.data}"
    else:
        seed, num = faceworld_world(args)
        pairs = pf.faceworld_pairs(seed, num, args.pairs)
        source = f"FaceWorld test pairs (seed {seed}, {num} faces)"
    model_name = f"{model_name}, {source}"
    run_settings = {"config": args.config, "ckpt": args.ckpt, "overrides": list(args.overrides), "conditions": source,
                    "pairs": [p.name for p in pairs], **asdict(settings), "sampling": settings.sampling.to_dict()}

    figures = {}
    if {"teaser", "comparison", "influence"} & set(only):
        methods = pf.METHODS if "comparison" in only else ("collaborative",)
        results = pf.sample_methods(model, pairs, settings if "teaser" in only else replace(settings, samples=1), methods)
        logger.info("sampled %d conditions with %s (%.0f s)", len(pairs), ", ".join(methods), time.time() - start)
        collaborative = results["collaborative"][0]  # from --seed, with its trace
        if "teaser" in only:
            figures["teaser"] = pf.teaser_figure(pairs, [r.images for r in results["collaborative"]], settings, size, model_name)
        if "comparison" in only:
            figures["comparison"] = pf.comparison_figure(pairs, {m: r[0].images for m, r in results.items()}, settings, size, model_name)
        if "influence" in only:
            decode = lambda z: model.decode_latents(z.to(model.device)).float().cpu()  # noqa: E731
            for i, (letter, paper) in enumerate(zip("ab", ("supplementary Fig. A4", "supplementary Fig. A5"))):
                if i < len(pairs):
                    figures[f"influence_{letter}"] = pf.influence_figure(
                        pairs[i], collaborative.trace, i, collaborative.images[i], decode, settings, size, model_name, paper)
    if "editing" in only:
        if args.edit_image is not None:
            path = existing_file(args.edit_image, "image", "--edit-image")
            image = fit_to_resolution(read_image(path), resolution)
            edit = pf.file_edit_input(image, path.stem, args.edit_text, existing_file(args.edit_mask, "mask", "--edit-mask"))
        elif args.data is not None:
            edit = pf.dataset_edit_input(args.data, resolution, pairs)
        else:
            edit = pf.faceworld_edit_input(*faceworld_world(args), resolution)
        weights = pf.weights_digest(pf.weight_files(args.config, args.ckpt, args.overrides))
        key = pf.edit_run_key(edit, edit_options, weights)
        runs = writable_dir(args.edit_runs)
        run_dirs = {mode: runs / f"{edit.name}_{mode}_{key}" for mode in pf.EDIT_ROWS}
        provenance = {"config": args.config, "ckpt": args.ckpt, "overrides": list(args.overrides),
                      "weights_sha256": weights, "input_sha256": edit.digest()}
        edit_start = time.time()
        results = run_edit_modes(model, edit.image, edit.targets(), run_dirs, edit_options, provenance, progress=False)
        logger.info("edits in %s (%.0f s)", ", ".join(str(d) for d in run_dirs.values()), time.time() - edit_start)
        figures["editing"] = pf.editing_figure(edit, results, edit_options, size, model_name)
        run_settings["edit"] = {**asdict(edit_options), "input": edit.name, "change": edit.change,
                                "run_dirs": [str(d) for d in run_dirs.values()]}
    written = pf.write_figures(figures, out, run_settings)
    for path in written:
        print(path)
    print(f"wrote {len(figures)} figures to {out} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
