"""Edit a real face with Imagic per modality, or with both edits combined by Collaborative Diffusion.

Stage A optimises the target condition's embedding so the expert reconstructs the input, stage B fine-tunes
the expert's UNet with that embedding, stage C samples e = α·target + (1 − α)·optimised over an α sweep
(the released lists by default). Every stage writes its files into --out; run the same command again to
resume an interrupted edit from its last finished stage.

Examples:
  # text edit with the released 256 collaborative checkpoint (its text expert)
  python scripts/edit.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --image ../shared/test_data/test_mask_edit/256_input_image/27044.jpg --mode text \\
      --text "He is a teen. The face is covered with short pointed beard." --out outputs/edit/27044_text
  # mask edit (the mask expert), then both combined (same alpha for both, sweep 0 ... 2.5)
  python scripts/edit.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --image ../shared/test_data/test_mask_edit/256_input_image/27044.jpg --mode mask \\
      --mask ../shared/test_data/test_mask_edit/256_edited_masks/27044_0_remove_smile_and_rings.png
  python scripts/edit.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --image IMG.jpg --mode collaborative --text "He is a teen." --mask TARGET.png
  # stage C with UniPC in 15 steps instead of DDIM 50 (see docs/samplers.md)
  python scripts/edit.py --config C --ckpt K --image IMG.jpg --mode text --text "He is a teen." --sampler unipc --steps 15
  # a uni-modal model works for its own mode
  python scripts/edit.py --config configs/256_text.yaml --ckpt checkpoints/256_text.ckpt --image IMG.jpg \\
      --mode text --text "She is in her thirties."
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from ldm import ranges
from ldm.cli import (
    add_edit_arguments,
    add_sampler_arguments,
    edit_values,
    existing_file,
    flag_names,
    main_guard,
    make_parser,
    sampler_options,
    setup_logging,
    writable_dir,
)
from ldm.config import load_config, sample_settings
from ldm.data.celeba import read_image
from ldm.data.masks import load_mask_condition
from ldm.editing import MODES, EditOptions, edit_provenance, fit_to_resolution, run_edit
from ldm.errors import UserError
from ldm.pipeline import load_model

logger = logging.getLogger("edit")


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="model config (collaborative, or a uni-modal LDM for its mode)")
    p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt, .pt or .safetensors; ours or released)")
    p.add_argument("--image", required=True, help="the input face (8-bit RGB, any size: resized and centre-cropped)")
    p.add_argument("--mode", required=True, choices=sorted(MODES), help="which edit")
    p.add_argument("--text", help="target caption (modes text and collaborative)")
    p.add_argument("--mask", help="target mask PNG (modes mask and collaborative): class ids 0-18 or the palette colours")
    add_edit_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of stages A and B and of the sampling")
    add_sampler_arguments(p)
    p.add_argument("--preset", default=None, help="collaborative preset: paper or official (default from config)")
    p.add_argument("--out", default=None, help="run directory (default outputs/edit/<image stem>_<mode>)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def read_targets(args) -> dict:
    """The mode's target conditions, raw ({"text": [caption]}, {"seg_mask": [1, 19, 1024]}), checked."""
    wanted = MODES[args.mode]
    given = {"text": args.text is not None, "seg_mask": args.mask is not None}
    missing = [m for m in wanted if not given[m]]
    if missing:
        flags = " and ".join("--mask" if m == "seg_mask" else "--text" for m in missing)
        raise UserError(f"--mode {args.mode} needs its target: give {flags}")
    extra = [m for m in given if given[m] and m not in wanted]
    if extra:
        raise UserError(f"--mode {args.mode} does not use {' or '.join('--mask' if m == 'seg_mask' else '--text' for m in extra)}; "
                        "drop it or use --mode collaborative")
    targets = {}
    if "text" in wanted:
        if not args.text.strip():
            raise UserError("empty caption; give a non-empty --text")
        targets["text"] = [args.text]
    if "seg_mask" in wanted:
        targets["seg_mask"] = load_mask_condition(existing_file(args.mask, "mask", "--mask")).unsqueeze(0)
    return targets


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    values = edit_values(args, cfg, args.mode)
    with flag_names():
        ranges.check("seed", args.seed, ranges.SEED)
    sampling = sampler_options(args, sample_settings(cfg))
    options = EditOptions(
        **values, seed=args.seed, steps=sampling.steps, eta=sampling.resolved_eta,
        preset=args.preset or sample_settings(cfg).preset, sampler=sampling.sampler, spacing=sampling.resolved_spacing,
    )
    options.check()
    image_path = existing_file(args.image, "image", "--image")
    image = read_image(image_path)  # 8-bit RGB only: greyscale, RGBA, 16-bit and unreadable files stop here
    targets = read_targets(args)
    ckpt = existing_file(args.ckpt, "checkpoint", "--ckpt")
    out = writable_dir(args.out or Path("outputs/edit") / f"{image_path.stem}_{args.mode}")

    model = load_model(args.config, ckpt, args.device, args.overrides)
    resolution = model.vae.resolution
    if image.size != (resolution, resolution):
        logger.info("input %s is %dx%d: resized (shorter side) and centre-cropped to %dx%d, the model's resolution",
                    image_path, *image.size, resolution, resolution)
    provenance = edit_provenance(args.config, args.overrides, ckpt, args.mode, image_path, args.text, args.mask)
    result = run_edit(model, fit_to_resolution(image, resolution), targets, out, options, provenance)
    if result.skipped:
        logger.info("resumed: %d finished stages skipped (%s)", len(result.skipped), ", ".join(result.skipped[:6]))
    print(f"wrote {out}: {len(result.images)} alpha images; grid: {result.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
