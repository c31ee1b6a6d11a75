"""Generate faces from a mask and/or a caption with a trained model.

Methods: ``collaborative`` (the paper), ``composable`` (global weights), or one expert alone (``text``,
``mask``). Give several, comma-separated, to compare them on the same seeds.

Examples:
  # collaborative, released 256 checkpoint, 4 samples
  python scripts/generate.py --config configs/256_codiff_mask_text.yaml \
      --ckpt checkpoints/256_codiff_mask_text.ckpt \
      --mask ../shared/test_data/256_masks/29980.png --text "She is in her thirties." --batch-size 4
  # all four methods side by side, with influence-map figures
  python scripts/generate.py --config configs/256_codiff_mask_text.yaml --ckpt K --mask M.png \
      --text "This man has beard of medium length. He is in his thirties." \
      --method collaborative,composable,text,mask --save-influence
  # a uni-modal text model
  python scripts/generate.py --config configs/256_text.yaml --ckpt checkpoints/256_text.ckpt --text "He is a teen."
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import existing_file, main_guard, make_parser, setup_logging, writable_dir  # noqa: E402
from ldm.config import load_config, sample_settings  # noqa: E402
from ldm.data.masks import index_mask_to_onehot, load_mask_png  # noqa: E402
from ldm.diffusion.collaborative import CollaborativeOptions  # noqa: E402
from ldm.errors import UserError  # noqa: E402
from ldm.figures import write_comparison  # noqa: E402
from ldm.pipeline import load_model  # noqa: E402

logger = logging.getLogger("generate")


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="model config (LDM or collaborative)")
    p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt, .pt or .safetensors; ours or released)")
    p.add_argument("--mask", help="mask PNG: class ids 0-18 (palette or greyscale) or the 19-colour palette")
    p.add_argument("--text", help="caption, e.g. 'This man has beard of medium length. He is in his thirties.'")
    p.add_argument("--method", default=None, help="collaborative, composable, text, mask, or a comma list (default from config)")
    p.add_argument("--preset", default=None, help="collaborative preset: paper (the method) or official (released sampler's adjustments)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default from config: 50)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default from config: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and of the DDIM noise")
    p.add_argument("--batch-size", type=int, default=None, help="samples per method")
    p.add_argument("--out", default="outputs/generate", help="output directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-influence", action="store_true", help="write influence maps and x_t at every step (Figures A4/A5)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def check_ranges(steps: int, eta: float, batch: int) -> None:
    if not 1 <= steps <= 1000:
        raise UserError(f"--steps {steps} is out of range; use 1 to 1000 (50 as released)")
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"--eta {eta} is out of range; use 0 (deterministic) to 1 (as released)")
    if not 1 <= batch <= 1024:
        raise UserError(f"--batch-size {batch} is out of range; use 1 to 1024")


def read_conditions(args, batch: int) -> dict:
    conditions = {}
    if args.mask is not None:
        index = load_mask_png(existing_file(args.mask, "mask", "--mask"))
        if index.shape[0] != index.shape[1] or index.shape[0] < 32:
            raise UserError(
                f"{args.mask}: mask is {index.shape[1]}x{index.shape[0]}; it must be square and at least 32x32 "
                "(e.g. 256x256 or 512x512, the size of the face it describes)"
            )
        onehot = index_mask_to_onehot(index)
        conditions["seg_mask"] = onehot.unsqueeze(0).repeat(batch, 1, 1)  # [B, 19, 1024]
    if args.text is not None:
        if not args.text.strip():
            raise UserError("empty caption; give a non-empty --text")
        conditions["text"] = [args.text] * batch
    if not conditions:
        raise UserError("give a condition: --mask PNG and/or --text CAPTION")
    return conditions


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    defaults = sample_settings(load_config(args.config, args.overrides))
    steps = args.steps if args.steps is not None else defaults.steps
    eta = args.eta if args.eta is not None else defaults.eta
    batch = args.batch_size if args.batch_size is not None else defaults.batch_size
    check_ranges(steps, eta, batch)
    try:
        options = CollaborativeOptions.from_preset(args.preset or defaults.preset)
    except ValueError as err:
        raise UserError(f"--preset: {err}") from None
    conditions = read_conditions(args, batch)
    out = writable_dir(args.out)
    existing_file(args.ckpt, "checkpoint", "--ckpt")

    model = load_model(args.config, args.ckpt, args.device, args.overrides)
    methods = (args.method or defaults.method).split(",")
    if methods == ["collaborative"] and not model.diffusers:  # a uni-modal model: sample its one expert
        methods = ["mask" if m == "seg_mask" else m for m in model.experts]
    written = write_comparison(
        model, conditions, methods, out, steps=steps, eta=eta, seed=args.seed, options=options,
        save_influence=args.save_influence,
    )
    settings = {"config": args.config, "ckpt": args.ckpt, "mask": args.mask, "text": args.text, "methods": methods,
                "preset": args.preset or defaults.preset, "steps": steps, "eta": eta, "seed": args.seed, "batch_size": batch}
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {len(written)} files; grid: {out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
