"""Make FaceWorld and train every FaceWorld model on it, then ship them (what `make train-faceworld` runs).

Stages: FaceWorld (64x64) -> face parser and attribute classifier (and their accuracy on the test split)
-> VAE -> its decoder against a PatchGAN (encoder frozen) -> scale_factor -> text and mask experts -> dynamic
diffusers -> the decoder trained on latents the collaborative model re-drew from training images (render) -> export
to checkpoints/faceworld/ as float16 safetensors with resolved configs. Finished stages are
skipped on a re-run; an interrupted one resumes from its last checkpoint. Sizes and step counts are in configs/faceworld/*.yaml.

Examples:
  python scripts/train_faceworld.py                                   # the full recipe (about 2.5 hours, 2 CPU cores)
  python scripts/train_faceworld.py --work /tmp/fw --export /tmp/fw/ckpt --num 32 --steps 2 --batch-size 2   # smoke run
  python scripts/train_faceworld.py --reuse-shipped vae,mask,parser,classifier   # retrain the text expert and the diffusers
  python scripts/train_faceworld.py --work outputs/fw_gpu --export outputs/fw_gpu/ckpt --accelerator gpu --steps 20000  # longer, on a GPU
"""

import json
import sys
from pathlib import Path

from ldm.cli import main_guard, make_parser, setup_logging


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--work", default="outputs/faceworld_train", help="FaceWorld, run directories and logs")
    p.add_argument("--export", default="checkpoints/faceworld", help="where the shipped files go")
    p.add_argument("--num", type=int, default=10_000, help="FaceWorld samples (the last tenth is the test split)")
    p.add_argument("--data-seed", type=int, default=0, help="FaceWorld seed")
    p.add_argument("--steps", type=int, default=None, help="override every stage's train.max_steps (smoke runs)")
    p.add_argument("--batch-size", type=int, default=None, help="override every stage's train.batch_size (smoke runs)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=2, help="FaceWorld rendering processes")
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"],
                   help="where the training stages run (the shipped models: cpu); with gpu, raise the budgets with --steps")
    p.add_argument("--eval-limit", type=int, default=None, help="test images for the evaluator accuracies (default: all)")
    p.add_argument("--reuse-shipped", default=None, metavar="STAGES",
                   help="comma-separated stages (vae, text, mask, parser, classifier; vae brings its decoder and render stages) to take from the shipped files in "
                        "--export instead of training them, e.g. vae,mask,parser,classifier to retrain only the text "
                        "expert and the dynamic diffusers (the run directories must not exist yet)")
    args = p.parse_args(argv)
    setup_logging()
    import torch

    from ldm.faceworld_recipe import Recipe, RecipeOptions

    torch.set_num_threads(args.threads)
    options = RecipeOptions(
        work=Path(args.work), export=Path(args.export), num=args.num, data_seed=args.data_seed, steps=args.steps,
        batch_size=args.batch_size, workers=args.workers, eval_limit=args.eval_limit, accelerator=args.accelerator,
    )
    recipe = Recipe(options)
    if args.reuse_shipped:
        recipe.reuse_shipped([s.strip() for s in args.reuse_shipped.split(",") if s.strip()])
    summary = recipe.run()
    print(json.dumps({"export": str(options.export), "total_mb": summary["total_mb"], "accuracy": summary["stages"]["accuracy"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
