"""Measure Imagic editing on FaceWorld: target accuracy after the edit and preservation of everything else.

Edits --num faces of a FaceWorld test split (the first, or from the --offset-th on) in every mode (text: age
and beard; mask: glasses or hair length; collaborative: both), with exact targets re-rendered by FaceWorld, and measures with the
FaceWorld evaluators (face parser, attribute classifier): the target accuracy, the parser's mask accuracy
outside the edited region, the classifier's agreement on the factors not edited, PSNR (and, with the LPIPS
weights, LPIPS) outside the edited region. See ``ldm/evaluation/edit_metrics.py`` for the definitions. Each edit is a
resumable run directory under --out; the table goes to results.md and results.json.

Examples:
  python scripts/evaluate_editing.py --config checkpoints/faceworld/codiff.yaml \\
      --ckpt checkpoints/faceworld/codiff.safetensors --data outputs/faceworld \\
      --parser checkpoints/faceworld/parser.safetensors --classifier checkpoints/faceworld/classifier.safetensors \\
      --num 20 --embed-steps 100 --finetune-steps 100 --alphas 0.8,1,1.2 --out outputs/edit_eval
  # tune editing settings on test faces 20-39, which the committed 20-face table (--offset 0) does not use:
  python scripts/evaluate_editing.py ... --num 20 --offset 20 --modes text --strength 0.6 --out outputs/edit_tune
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict

import torch

from ldm.cli import add_edit_arguments, edit_values, existing_file, main_guard, make_parser, setup_logging, writable_dir
from ldm.config import load_config
from ldm.editing import EditOptions
from ldm.errors import CheckpointError, UserError
from ldm.evaluation.edit_metrics import EDIT_MODES, evaluate_edits, faceworld_cases, markdown_table, write_results
from ldm.evaluation.evaluators import load_evaluator
from ldm.pipeline import load_model

logger = logging.getLogger("evaluate_editing")
RELEASED = EditOptions()
MEASURED_ALPHAS = "1"  # the alpha the table measures unless --alphas says otherwise


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="collaborative FaceWorld config")
    p.add_argument("--ckpt", required=True, help="its checkpoint")
    p.add_argument("--data", required=True, help="a FaceWorld folder (make_faceworld.py) at the model's resolution")
    p.add_argument("--parser", required=True, help="face parser weights (the resolved config beside them)")
    p.add_argument("--classifier", required=True, help="attribute classifier weights (the resolved config beside them)")
    p.add_argument("--lpips-vgg", default=None, help="VGG-16 weights for LPIPS (optional; else the torch hub cache)")
    p.add_argument("--lpips-lin", default=None, help="LPIPS v0.1 linear heads (optional)")
    p.add_argument("--num", type=int, default=20, help="test faces to edit")
    p.add_argument("--offset", type=int, default=0,
                   help="skip this many test faces first (tune settings on faces the committed table leaves out)")
    p.add_argument("--modes", default=",".join(EDIT_MODES), help="comma list of text, mask, collaborative")
    add_edit_arguments(p, alphas_help=f"the alphas measured (comma list); unset: {MEASURED_ALPHAS}")
    p.add_argument("--seed", type=int, default=RELEASED.seed)
    p.add_argument("--steps", type=int, default=RELEASED.steps, help="DDIM steps")
    p.add_argument("--eta", type=float, default=RELEASED.eta)
    p.add_argument("--preset", default=RELEASED.preset)
    p.add_argument("--out", default="outputs/edit_eval")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def optional_lpips(args, device):
    from ldm.modules.lpips import LPIPS

    try:
        return LPIPS.from_pretrained(args.lpips_vgg, args.lpips_lin, offline=True).to(device)
    except CheckpointError as err:
        logger.warning("LPIPS is left out of the table: %s", err)
        return None


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    if not 1 <= args.num <= 10_000:
        raise UserError(f"--num {args.num} is out of range; use 1 to 10000")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    values = edit_values(args, load_config(args.config, args.overrides), "collaborative", alphas=MEASURED_ALPHAS)
    options = EditOptions(**values, seed=args.seed, steps=args.steps, eta=args.eta, preset=args.preset)
    options.check()
    ckpt = existing_file(args.ckpt, "checkpoint", "--ckpt")
    parser = load_evaluator(args.parser, "parser", args.device)
    classifier = load_evaluator(args.classifier, "classifier", args.device)
    out = writable_dir(args.out)
    model = load_model(args.config, ckpt, args.device, args.overrides)
    cases = faceworld_cases(args.data, args.num, model.vae.resolution, args.offset)
    lpips = optional_lpips(args, args.device)
    settings = {"config": args.config, "ckpt": str(ckpt), "data": args.data, "num": args.num, "offset": args.offset,
                "modes": modes,
                **asdict(options)}
    rows = evaluate_edits(model, cases, parser, classifier, out, options, modes=modes, lpips=lpips,
                          provenance={"config": args.config, "ckpt": str(ckpt), "overrides": list(args.overrides)},
                          progress=True)
    json_path, md_path = write_results(rows, out, settings)
    print(markdown_table(rows))
    print(f"\nN = {args.num} FaceWorld test faces (from face {args.offset} on), seed {args.seed}; wrote {md_path} and {json_path}; "
          f"grids: {out}/<face>_<mode>/grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
