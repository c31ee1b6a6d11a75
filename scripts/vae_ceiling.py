"""Score a VAE by what survives it: the FaceWorld evaluators on real test images and on their reconstructions.

Every latent model over the VAE is bounded by the second row (a caption cue the VAE drops cannot be
generated). Uses the same accuracy function as scripts/evaluate.py; the evaluators are the shipped ones
unless --parser/--classifier say otherwise.

Examples:
  python scripts/vae_ceiling.py --config checkpoints/faceworld/vae.yaml --ckpt checkpoints/faceworld/vae.safetensors \\
      --data outputs/faceworld_train/faceworld
  python scripts/vae_ceiling.py --config configs/faceworld/vae.yaml --ckpt outputs/faceworld_train/runs/vae/checkpoints/last.ckpt \\
      --data outputs/faceworld_train/faceworld --num 400 --json
"""

import json
import sys

from ldm.cli import main_guard, make_parser
from ldm.errors import UserError


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="the VAE's config (a VAE config, or any config with model.params.vae)")
    p.add_argument("--ckpt", required=True, help="the VAE's weights (training checkpoint or safetensors)")
    p.add_argument("--data", required=True, help="a FaceWorld folder (with labels.json); its test split is scored")
    p.add_argument("--num", type=int, default=1000, help="test images (the first N of the split)")
    p.add_argument("--parser", default="checkpoints/faceworld/parser.safetensors", help="face parser weights")
    p.add_argument("--classifier", default="checkpoints/faceworld/classifier.safetensors", help="attribute classifier weights")
    p.add_argument("--resolution", type=int, default=64, help="image size of the data the VAE was trained on")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1:
        raise UserError(f"--num ({args.num}) and --batch-size ({args.batch_size}) must be at least 1")
    import torch
    from torch.utils.data import DataLoader

    from ldm.checkpoints import pretrained
    from ldm.data.celeba import PreprocessedFaces
    from ldm.data.faceworld import load_labels
    from ldm.evaluation.evaluators import label_tensors, load_evaluator
    from ldm.evaluation.vae_ceiling import ceiling_scores

    parser = load_evaluator(args.parser, "parser")
    classifier = load_evaluator(args.classifier, "classifier")
    vae = pretrained(args.config, "vae", args.ckpt).eval()
    test = PreprocessedFaces(args.data, split="test", resolution=args.resolution, keys=["image", "seg_mask"])
    test.names = test.names[: args.num]
    labels = load_labels(args.data)
    loader = DataLoader(test, batch_size=args.batch_size, shuffle=False)
    rows = {}
    with torch.no_grad():
        for name, model in (("real test images", None), ("VAE reconstruction", vae)):
            rows[name] = ceiling_scores(parser, classifier, loader, lambda b: label_tensors(labels, b["name"]), vae=model).as_row()
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        attrs = [k for k in rows["real test images"] if k not in ("mask_accuracy", "l1", "images")]
        print(f"{'images':<20} {'mask acc':>9} " + " ".join(f"{a:>7}" for a in attrs) + f" {'L1':>8}   (N = {len(test)})")
        for name, r in rows.items():
            print(f"{name:<20} {100 * r['mask_accuracy']:>8.1f}% " + " ".join(f"{100 * r[a]:>6.1f}%" for a in attrs) + f" {r['l1']:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
